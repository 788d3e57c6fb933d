"""Which latent cells a generation is given: the training mask mix and the pixel-to-latent mask mapping.

One DiT does text-to-video, image-to-video, extension, keyframe interpolation and spacetime inpainting
because all of them are the same thing to it: some latent cells are given (their clean latents in the
conditioning channels, 1 in the mask channel) and the rest are generated. Training draws, per sample,
one of `MASK_KINDS` from a mix (Open-Sora's mask ratios do the same), so a single checkpoint learns
them all; text-to-video stays the largest share because it is the hardest task and the one the other
tasks start from.

At sampling time the user gives pixels, not latents: `latent_mask` says which latent cells a pixel
mask covers for a VAE of given compression ratios, and `fill_given_chunks` prepares the pixels so that
the latent of a partly given group of frames encodes the given frames (held still), not whatever the
caller left in the other frames of that group.
"""

from __future__ import annotations

import torch

from curation.config import ConfigError

MASK_KINDS = ("none", "first_frame", "prefix", "keyframes", "boxes")
"""none: text-to-video; first_frame: image-to-video; prefix: extension of the first k latent frames;
keyframes: first and last, or every n-th latent frame (interpolation); boxes: random spacetime boxes
(inpainting inside them, or outpainting around them)."""

DEFAULT_MASK_MIX = {"none": 0.6, "first_frame": 0.15, "prefix": 0.1, "keyframes": 0.1, "boxes": 0.05}
"""Text-to-video the majority (it is what every other task builds on, and validation measures it);
image-to-video next, as the most asked-for conditioned task; boxes the least, as the frame tasks
already teach the model to continue given content."""


def check_mask_mix(mix: dict[str, float] | None, key: str = "model.mask_mix") -> dict[str, float]:
    """The mix normalized to sum 1 (None: `DEFAULT_MASK_MIX`); ConfigError naming `key` for unknown
    kinds, negative shares or an empty mix."""
    if mix is None:
        mix = DEFAULT_MASK_MIX
    if not isinstance(mix, dict):
        raise ConfigError(f"{key} must be a mapping of mask kind to share, got {mix!r}")
    unknown = sorted(set(mix) - set(MASK_KINDS))
    if unknown:
        raise ConfigError(f"{key}: unknown mask kind(s) {', '.join(unknown)}; one of {', '.join(MASK_KINDS)}")
    shares = {}
    for kind, share in mix.items():
        if isinstance(share, bool) or not isinstance(share, int | float) or share < 0:
            raise ConfigError(f"{key}.{kind} must be a share >= 0, got {share!r}")
        shares[kind] = float(share)
    total = sum(shares.values())
    if total <= 0:
        raise ConfigError(f"{key}: the shares sum to 0; give at least one kind a positive share")
    return {kind: shares.get(kind, 0.0) / total for kind in MASK_KINDS}


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """An integer uniform in [low, high] (both included)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _box(size: int, generator: torch.Generator | None) -> slice:
    """A random interval of `size` cells, at least one cell long."""
    length = _randint(1, size, generator)
    start = _randint(0, size - length, generator)
    return slice(start, start + length)


def kind_mask(
    kind: str, grid: tuple[int, int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """[1, T, H, W] float mask of the given latent cells for one sample of mask `kind`.

    prefix: the first k frames, k uniform in 1..T-1; keyframes: first and last (half the draws), or
    every n-th frame from the first, n uniform in 2..T-1; boxes: one to three random spacetime boxes,
    the cells outside them given (inpainting, half the draws) or those inside (outpainting). A mask that
    would give every cell gives none instead (nothing would be left to learn); with a single latent frame
    the frame kinds give none."""
    t, h, w = grid
    mask = torch.zeros(1, t, h, w)
    if kind == "none" or (t < 2 and kind != "boxes"):
        return mask
    if kind == "first_frame":
        mask[:, 0] = 1
    elif kind == "prefix":
        mask[:, : _randint(1, t - 1, generator)] = 1
    elif kind == "keyframes":
        if t < 3 or _randint(0, 1, generator) == 0:
            mask[:, 0] = mask[:, -1] = 1
        else:
            mask[:, :: _randint(2, t - 1, generator)] = 1
    elif kind == "boxes":
        inside = torch.zeros(1, t, h, w)
        for _ in range(_randint(1, 3, generator)):
            inside[:, _box(t, generator), _box(h, generator), _box(w, generator)] = 1
        mask = 1 - inside if _randint(0, 1, generator) == 0 else inside
    else:
        raise ValueError(f"unknown mask kind {kind!r}; one of {', '.join(MASK_KINDS)}")
    if bool(mask.all()):
        mask.zero_()
    return mask


def draw_masks(
    mix: dict[str, float],
    batch: int,
    grid: tuple[int, int, int],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """[B, 1, T, H, W] masks and the kind of each sample, kinds drawn from `mix` (shares summing to 1,
    as `check_mask_mix` returns); `generator` None draws from the global torch RNG, as training does."""
    shares = torch.tensor([mix.get(kind, 0.0) for kind in MASK_KINDS], dtype=torch.float64)
    picks = torch.multinomial(shares, batch, replacement=True, generator=generator)
    kinds = [MASK_KINDS[int(i)] for i in picks]
    return torch.stack([kind_mask(kind, grid, generator) for kind in kinds]), kinds


def latent_mask(pixel_mask: torch.Tensor, time_ratio: int, space_ratio: int) -> torch.Tensor:
    """A pixel mask [B, 1, T, H, W] (1 = given) on the latent grid [B, 1, T', H', W'] of a causal VAE:
    latent frame 0 covers pixel frame 0, latent frame j >= 1 pixel frames (j-1)*r+1 .. j*r, and each
    latent cell `space_ratio` pixels square; a latent cell is given when any pixel it covers is."""
    if pixel_mask.dim() != 5 or pixel_mask.shape[1] != 1:
        raise ValueError(f"a pixel mask is [B, 1, T, H, W], got {tuple(pixel_mask.shape)}")
    b, _, t, h, w = pixel_mask.shape
    r, s = int(time_ratio), int(space_ratio)
    if (t - 1) % r or h % s or w % s:
        raise ValueError(
            f"a mask of {t} frames of {h}x{w} does not fit a VAE of ratios {r}x{s}x{s} "
            f"(1 + {r}k frames, sides multiples of {s})"
        )
    given = (pixel_mask != 0).float()
    rest = given[:, :, 1:].reshape(b, 1, (t - 1) // r, r, h, w).amax(dim=3)
    frames = torch.cat([given[:, :, :1], rest], dim=2)  # [B, 1, T', H, W]
    frames = frames.reshape(b, 1, frames.shape[2], h // s, s, w // s, s)
    return frames.amax(dim=(4, 6))


def frame_groups(num_frames: int, time_ratio: int) -> list[range]:
    """The pixel frames of each latent frame of a causal VAE: [0], [1..r], [r+1..2r], ..."""
    return [range(0, 1)] + [range(start, start + time_ratio) for start in range(1, num_frames, time_ratio)]


def fill_given_chunks(video: torch.Tensor, pixel_mask: torch.Tensor, time_ratio: int) -> torch.Tensor:
    """`video` [B, 3, T, H, W] with, inside each latent frame's group of pixel frames that holds a given
    frame (any given pixel), every frame that is not given replaced by the nearest given frame of that
    group (the earlier one on a tie): a keyframe alone in a group of r frames then encodes as that
    keyframe held still, not mixed with frames nobody gave. Groups without a given frame are kept."""
    b, _, t = video.shape[:3]
    if pixel_mask.shape[0] != b or pixel_mask.shape[2] != t:
        raise ValueError(
            f"the mask {tuple(pixel_mask.shape)} does not match the video {tuple(video.shape)} in batch or frames"
        )
    given = (pixel_mask != 0).flatten(3).any(dim=3)[:, 0]  # [B, T]: frames with a given pixel
    out = video.clone()
    for i in range(b):
        for group in frame_groups(t, time_ratio):
            held = [f for f in group if f < t and bool(given[i, f])]
            if not held:
                continue
            for f in group:
                if f < t and not bool(given[i, f]):
                    out[i, :, f] = video[i, :, min(held, key=lambda g: (abs(g - f), g))]
    return out
