"""A clip's mp4 bytes -> the frames a training step sees: resampled, windowed, resized, cropped.

This is the decode that training on clip shards (`training.data`) and the `encode` job share, so a latent
shard holds exactly what the data module would have fed the VAE. It runs in-process with PyAV (no ffmpeg
subprocess per clip, no temporary file), because it runs once per sample in every data-loader worker.

Frames are picked by timestamp, not by index: output frame k of a window starting at output frame s is the
source frame nearest to (s + k) / fps seconds after the clip's first frame (ties go to the later frame, as
`curation.frames.sample_plan` rounds), so a 25 fps and a 30 fps clip give the same motion per output frame
and a variable-frame-rate clip keeps its real clock. The count of output frames a clip has at `fps` is the
same formula for the decoder (from the packets' timestamps) and for the data module's bucketing (from the
clip record), `frames_at_fps`, so both agree on what is too short.
"""

from __future__ import annotations

import io
import itertools
import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import torch

Crop = Literal["start", "center", "random"]


class CorruptSample(ValueError):
    """A sample that cannot be used: an undecodable member, a missing one, a malformed array."""


class CorruptClip(CorruptSample):
    """The clip's bytes are not a decodable video (truncated, garbage, no video stream, frames missing)."""


class ClipTooShort(ValueError):
    """The clip has fewer frames at the requested frame rate than the window needs."""

    def __init__(self, available: int, needed: int, fps: float):
        super().__init__(f"{available} frames at {fps:g} fps, {needed} needed")
        self.available, self.needed, self.fps = available, needed, fps


def frames_at_fps(duration_s: float, fps: float) -> int:
    """How many frames a clip of `duration_s` has when resampled to `fps`: the k with k / fps < duration."""
    return max(0, math.ceil(duration_s * fps - 1e-6))


def window_start(available: int, num_frames: int, crop: Crop, rng: random.Random | None = None) -> int:
    """First output frame of a window of `num_frames` out of `available` (the caller checked it fits)."""
    slack = available - num_frames
    if crop == "start":
        return 0
    if crop == "center":
        return slack // 2
    if crop == "random":
        return (rng or random).randint(0, slack)
    raise ValueError(f"crop must be start, center or random, got {crop!r}")


def nearest_frames(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the frame (of sorted `times`) nearest to each target time; a tie goes to the later frame."""
    midpoints = (times[1:] + times[:-1]) / 2
    return np.searchsorted(midpoints, targets + 1e-9, side="right")


def cover_crop(
    width: int, height: int, out_w: int, out_h: int, sar: float = 1.0
) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the centered region of a `width` x `height` frame (coded pixels, `sar` wide each)
    that, scaled to `out_w` x `out_h`, is the frame scaled to cover that size with its aspect kept and
    then center-cropped. Cropping first means only the kept pixels are scaled."""
    scale = max(out_w / (width * sar), out_h / height)  # output pixels per displayed pixel
    crop_w = min(width, max(1, round(out_w / scale / sar)))
    crop_h = min(height, max(1, round(out_h / scale)))
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


@dataclass(frozen=True)
class ClipInfo:
    """What the container says about a clip, without decoding it."""

    width: int  # displayed (sample aspect ratio applied)
    height: int
    duration_s: float


def _open(data: bytes):
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise CorruptClip(f"cannot open: {err}") from None
    if not container.streams.video:
        container.close()
        raise CorruptClip("no video stream")
    return container


def _display_size(stream) -> tuple[int, int, float]:
    """(width, height) as displayed, and the sample aspect ratio (the width of a coded pixel)."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise CorruptClip(f"video stream has no size ({width}x{height})")
    sar = float(stream.sample_aspect_ratio or 1) or 1.0
    return max(1, round(width * sar)), height, sar


class _CropScale:
    """ffmpeg's crop, scale (area averaging) and RGB conversion in one filter graph, built for the first
    frame and rebuilt if the frame size changes mid-stream."""

    def __init__(self, out_w: int, out_h: int, sar: float, time_base, threads: int):
        self.out_w, self.out_h, self.sar, self.time_base, self.threads = out_w, out_h, sar, time_base, threads
        self.graph, self.shape = None, None

    def __call__(self, frame) -> np.ndarray:
        import av.filter

        shape = (frame.width, frame.height, frame.format.name)
        if shape != self.shape:
            x, y, w, h = cover_crop(frame.width, frame.height, self.out_w, self.out_h, self.sar)
            graph = av.filter.Graph()
            graph.threads = self.threads
            nodes = [
                graph.add_buffer(
                    width=frame.width, height=frame.height, format=frame.format, time_base=self.time_base
                ),
                graph.add("crop", f"{w}:{h}:{x}:{y}:exact=1"),
                graph.add("scale", f"{self.out_w}:{self.out_h}:flags=area"),
                graph.add("format", "rgb24"),
                graph.add("buffersink"),
            ]
            for a, b in itertools.pairwise(nodes):
                a.link_to(b)
            graph.configure()
            self.graph, self.shape = graph, shape
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()  # [H, W, 3] uint8


def _packets_and_times(container, stream) -> tuple[list, np.ndarray, list[int]]:
    """The stream's packets in decode order, the sorted presentation times (s, from the first frame) and
    the sorted pts; the duration of the last frame is appended to the times as a sentinel."""
    import av

    try:
        packets = [p for p in container.demux(stream) if p.size]
    except av.FFmpegError as err:
        raise CorruptClip(f"cannot demux: {err}") from None
    if not packets:
        raise CorruptClip("no video packets")
    for p in packets:
        if p.pts is None:
            p.pts = p.dts
    if any(p.pts is None for p in packets):
        raise CorruptClip("packets without timestamps")
    base = Fraction(stream.time_base)
    pts = sorted({p.pts for p in packets})
    times = np.array([float((t - pts[0]) * base) for t in pts], dtype=np.float64)
    last = max(packets, key=lambda p: p.pts)
    if last.duration:
        step = float(last.duration * base)
    elif stream.average_rate:
        step = 1.0 / float(stream.average_rate)
    else:
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    return packets, np.append(times, times[-1] + step), pts


def probe_clip(data: bytes) -> ClipInfo:
    """Size and duration from the container's packets (no frame is decoded): for bucketing a clip whose
    record does not say."""
    container = _open(data)
    try:
        stream = container.streams.video[0]
        width, height, _ = _display_size(stream)
        _, times, _ = _packets_and_times(container, stream)
    finally:
        container.close()
    return ClipInfo(width, height, float(times[-1]))


def decode_clip(
    data: bytes,
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    crop: Crop = "start",
    rng: random.Random | None = None,
    *,
    threads: int = 1,
) -> torch.Tensor:
    """uint8 [num_frames, height, width, 3] RGB: a window of `num_frames` of the clip at `fps`.

    The window starts at the first frame ("start"), the middle ("center") or a place drawn from `rng`
    ("random"); frames are scaled (area averaging) so that they cover `height` x `width` with the aspect
    ratio kept, then center-cropped (cropped first, in ffmpeg's filters, so only kept pixels are scaled).
    Only the packets from the keyframe before the window to its last frame are decoded, and only the
    frames picked are converted. `threads`: decoder and filter threads (1 in data-loader workers, which
    are the parallelism).
    Raises ClipTooShort when the clip has fewer than `num_frames` frames at `fps`, and CorruptClip when
    the bytes do not decode. Deterministic for "start" and "center".
    """
    import av

    if num_frames < 1 or fps <= 0 or height < 1 or width < 1:
        raise ValueError(f"bad clip shape: {num_frames} frames at {fps} fps, {height}x{width}")
    container = _open(data)
    try:
        stream = container.streams.video[0]
        codec = stream.codec_context
        codec.thread_count = threads
        if threads > 1:
            codec.thread_type = "FRAME"
        _, _, sar = _display_size(stream)
        packets, times, pts = _packets_and_times(container, stream)
        available = frames_at_fps(float(times[-1]), fps)
        if available < num_frames:
            raise ClipTooShort(available, num_frames, fps)
        start = window_start(available, num_frames, crop, rng)
        picks = nearest_frames(times[:-1], (start + np.arange(num_frames)) / fps)  # [T] source frame indices
        wanted = {pts[i] for i in picks}
        first = pts[picks[0]]
        begin = max((i for i, p in enumerate(packets) if p.is_keyframe and p.pts <= first), default=0)
        convert = _CropScale(width, height, sar, stream.time_base, threads)
        rgb: dict[int, np.ndarray] = {}
        try:
            for packet in [*packets[begin:], None]:
                for frame in codec.decode(packet):
                    if frame.pts in wanted and frame.pts not in rgb:
                        rgb[frame.pts] = convert(frame)
                if len(rgb) == len(wanted):
                    break
        except av.FFmpegError as err:
            raise CorruptClip(f"cannot decode: {err}") from None
    finally:
        container.close()
    missing = wanted - rgb.keys()
    if missing:
        raise CorruptClip(f"{len(missing)} of {len(wanted)} frames did not decode")
    return torch.from_numpy(np.stack([rgb[pts[i]] for i in picks]))  # [T, H, W, 3] uint8


def to_channels_first(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [3, T, H, W], the VAE's layout, still a quarter of float32's bytes."""
    return torch.as_tensor(frames).permute(3, 0, 1, 2).contiguous()


def uint8_to_model_range(video: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, T, H, W] -> float32 in [-1, 1], the range the VAE takes (done on the device)."""
    return video.to(torch.float32).div_(127.5).sub_(1.0)


def to_model_range(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, T, H, W] in [-1, 1], the layout and range the VAE takes."""
    return uint8_to_model_range(to_channels_first(frames))
