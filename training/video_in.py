"""Images, clips and masks a user gives `reelmill sample`, as tensors of the model's clip size.

Everything is brought to the size the model samples the way training data was: scaled to cover
height x width with the aspect ratio kept, then centre-cropped (`clip_decode.cover_crop`), and clips are
resampled to the model's frame rate by timestamp with the very decoder the data module uses
(`clip_decode.decode_clip`), so a given frame looks like what the model saw in training. Images are
read with PIL (EXIF rotation applied). Pixels come out in [-1, 1], the VAE's range; masks as {0, 1}.
A file that cannot be read is a ConfigError naming the flag it came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from curation.config import ConfigError
from training.clip_decode import (
    ClipTooShort,
    CorruptClip,
    cover_crop,
    decode_clip,
    frames_at_fps,
    probe_clip,
    to_model_range,
)


def _read_bytes(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def _open_image(path: str, flag: str):
    """The image at `path` (PIL), EXIF-rotated, or None when PIL does not recognise the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _read_bytes(path, flag)  # a missing or unreadable file is named as such, not as "not an image"
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def _fit(image, height: int, width: int):
    """Scale to cover height x width (aspect kept), centre-crop: the region is cropped first and then
    scaled, with area averaging when shrinking, as the training decoder does."""
    from PIL import Image

    x, y, w, h = cover_crop(image.width, image.height, width, height)
    shrinking = w >= width and h >= height
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    return image.resize((width, height), method, box=(x, y, x + w, y + h))


def read_image(path: str, height: int, width: int, flag: str) -> torch.Tensor:
    """[3, height, width] float in [-1, 1]: the image resized to cover the clip size and centre-cropped."""
    image = _open_image(path, flag)
    if image is None:
        raise ConfigError(f"{flag} {path}: not an image PIL can read (PNG, JPEG, WebP, ...)")
    pixels = np.array(_fit(image.convert("RGB"), height, width))  # [H, W, 3] uint8, writable
    return to_model_range(pixels[None])[:, 0]


def read_clip(
    path: str, height: int, width: int, fps: float, flag: str, max_frames: int | None = None
) -> torch.Tensor:
    """[3, T, height, width] float in [-1, 1]: the clip (its first `max_frames` frames when given) at
    `fps`, resized to cover the clip size and centre-cropped."""
    data = _read_bytes(path, flag)
    try:
        available = frames_at_fps(probe_clip(data).duration_s, fps)
        if available < 1:
            raise CorruptClip("no frame")
        count = available if max_frames is None else min(available, max_frames)
        frames = decode_clip(data, count, fps, height, width, crop="start", threads=1)
    except (CorruptClip, ClipTooShort) as exc:
        raise ConfigError(f"{flag} {path}: not a readable video ({exc})") from None
    return to_model_range(frames)


def read_mask(path: str, num_frames: int, height: int, width: int, fps: float, flag: str) -> torch.Tensor:
    """[1, num_frames, height, width] float in {0, 1}, 1 where the mask is white (lighter than mid-grey).
    An image applies to every frame; a video gives one mask per frame and must last `num_frames` frames
    at `fps`. Either is scaled and cropped as the clip it masks."""
    image = _open_image(path, flag)
    if image is not None:
        gray = np.asarray(_fit(image.convert("L"), height, width))  # [H, W] uint8
        white = torch.from_numpy(gray >= 128).float()
        return white.expand(1, num_frames, height, width).clone()
    video = read_clip(path, height, width, fps, flag, max_frames=num_frames)
    if video.shape[1] < num_frames:
        raise ConfigError(
            f"{flag} {path}: a mask video of {video.shape[1]} frames at {fps:g} fps; the clip's window "
            f"has {num_frames} (give an image to use one mask for every frame)"
        )
    return (video.mean(dim=0, keepdim=True) > 0).float()


def evenly_spaced(count: int, num_frames: int) -> list[int]:
    """`count` >= 2 frame indices spread evenly over `num_frames`, the first and the last included."""
    return [round(i * (num_frames - 1) / (count - 1)) for i in range(count)]


def grow_to_latent_cells(repaint: torch.Tensor, time_ratio: int, space_ratio: int) -> torch.Tensor:
    """A pixel mask [..., T, H, W] (1 = repaint) grown so that every latent cell it touches is repainted
    whole: a latent cell is kept only when none of its pixels is to be repainted. (A latent cell of a
    causal VAE covers pixel frame 0 alone, then groups of `time_ratio` frames, and `space_ratio`^2 pixels.)
    Without it a cell half inside the region would be kept, and the region would shrink to the cells
    wholly inside it."""
    *lead, t, h, w = repaint.shape
    if h % space_ratio or w % space_ratio:
        raise ValueError(f"mask size {h}x{w} is not a multiple of the VAE's {space_ratio}")
    cells = repaint.reshape(-1, t, h // space_ratio, space_ratio, w // space_ratio, space_ratio)
    cells = cells.amax(dim=(3, 5))  # [N, T, H', W']
    group = torch.tensor([0] + [(f - 1) // time_ratio + 1 for f in range(1, t)])  # latent frame of each
    unions = torch.stack([cells[:, group == g].amax(dim=1) for g in range(int(group[-1]) + 1)], dim=1)
    cells = unions[:, group]  # every pixel frame carries its latent frame's union
    grown = cells.repeat_interleave(space_ratio, dim=2).repeat_interleave(space_ratio, dim=3)
    return grown.reshape(*lead, t, h, w)
