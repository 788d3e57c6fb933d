"""One decode per clip: the sampled frames that every scorer reads, and where the picture is in them.

ffmpeg decodes the clip once, keeps `fps` frames per second (the `fps` filter), scales them to a
fixed short side and pipes them out as raw RGB. Motion, quality and aesthetic scorers all read
these arrays; none of them opens the file again. Scaling to one short side whatever the source
resolution is what makes the scores comparable between a 360p and a 1080p clip.

The sampler also finds letterbox/pillarbox bars, so scorers measure the picture, not the bars.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import cv2
import ffmpeg
import numpy as np

from curation import ffmpeg_tools
from curation.errors import InputRejected
from curation.probe import probe
from curation.scoring_config import FrameSamplerConfig


@dataclass(frozen=True)
class Box:
    """A rectangle `[x, x + w) x [y, y + h)` in pixels of some frame."""

    x: int
    y: int
    w: int
    h: int

    def as_dict(self, prefix: str = "content_") -> dict[str, int]:
        return {f"{prefix}x": self.x, f"{prefix}y": self.y, f"{prefix}w": self.w, f"{prefix}h": self.h}


@dataclass(frozen=True)
class ContentBox:
    """The picture without bars: whole pixels inside it at sample size, and its edges in source pixels."""

    sample: Box  # rows/columns entirely inside the picture, at the sampled size (what scorers crop)
    source: Box  # the picture's edges in source pixels (what the record reports)


@dataclass
class SampledFrames:
    """A clip's sampled frames. Samples `i` and `i + 1` are one step apart unless `pairs` says not."""

    rgb: np.ndarray  # [N, H, W, 3] uint8, short side the sampler's `short_side` (rounded to even)
    timestamps: np.ndarray  # [N] float64, seconds from the clip start
    step_s: float  # the sampling interval, 1 / fps
    source_size: tuple[int, int]  # (width, height) of the clip as decoded (after rotation)
    duration_s: float
    content: ContentBox | None = None  # the picture inside bars; None means the whole frame

    def __post_init__(self):
        if self.content is None:
            h, w = self.rgb.shape[1:3]
            self.content = ContentBox(Box(0, 0, w, h), Box(0, 0, *self.source_size))

    @property
    def num_frames(self) -> int:
        return len(self.rgb)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the samples."""
        return self.rgb.shape[2], self.rgb.shape[1]

    @cached_property
    def gray(self) -> np.ndarray:
        """[N, H, W] uint8 luma (BT.601), shared by the scorers."""
        n, h, w, _ = self.rgb.shape
        return cv2.cvtColor(self.rgb.reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w)

    def crop(self, images: np.ndarray) -> np.ndarray:
        """`images` ([N, H, W, ...] at sample size) cut to the picture inside the bars."""
        b = self.content.sample
        return images[:, b.y : b.y + b.h, b.x : b.x + b.w]

    def pairs(self) -> list[tuple[int, int]]:
        """Indices of consecutive samples exactly one step apart (motion and freeze are measured on these)."""
        gaps = np.diff(self.timestamps)
        return [(i, i + 1) for i, gap in enumerate(gaps) if abs(gap - self.step_s) < 0.5 * self.step_s]

    def nearest(self, fractions: Sequence[float]) -> list[int]:
        """Index of the sample nearest to each fraction of the clip's duration."""
        return [int(np.argmin(np.abs(self.timestamps - f * self.duration_s))) for f in fractions]

    def at_fractions(self, fractions: Sequence[float]) -> np.ndarray:
        """[K, H, W, 3] the samples nearest to `fractions` of the duration (e.g. 10/50/90 %)."""
        return self.rgb[self.nearest(fractions)]


def sample_size(source_size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, the aspect ratio kept and even sides."""
    w, h = source_size
    scale = short_side / min(w, h)
    return max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)


def sample_stride(expected: int, max_frames: int) -> int:
    """Keep samples `k` with `k % stride < 2`: evenly spread pairs of consecutive samples.

    1 keeps everything. Pairs, not single frames, survive the thinning of long clips so that
    motion is always measured over one sampling step.
    """
    if expected <= max_frames:
        return 1
    return max(3, math.ceil(expected / (max_frames // 2)))


def kept_samples(expected: int, stride: int) -> list[int]:
    """Sample numbers that survive thinning by `stride` (see `sample_stride`)."""
    return [k for k in range(expected) if stride == 1 or k % stride < 2]


def _edges(level: np.ndarray, spread: np.ndarray, dark: float, flat: float) -> tuple[float, float] | None:
    """Sub-pixel (start, end) of the picture along one axis, from per-line brightness, or None.

    A bar line is dark and flat in every sample. The partly covered line at an edge is resolved
    from its brightness between the bar's and the picture's next line (coverage is linear when
    frames are downscaled by area averaging).
    """
    n = len(level)
    bar = (level <= dark) & (spread <= flat)
    start = int(np.argmin(bar)) if not bar.all() else n
    end = n - int(np.argmin(bar[::-1])) if not bar.all() else 0
    if start == 0 and end == n:
        return float(0), float(n)
    if end - start < 0.25 * n:  # mostly dark: a dark shot, not a letterbox
        return None
    black = float(np.median(level[bar])) if bar.any() else 0.0

    def coverage(line: int, inner: int) -> float:
        ref = level[inner] - black
        return float(np.clip((level[line] - black) / ref, 0, 1)) if ref > 8 else 1.0

    lo, hi = float(start), float(end)
    if start > 0 and start + 1 < n:
        lo = start - coverage(start - 1, start + 1) + 1 - coverage(start, start + 1)
    if end < n and end - 2 >= 0:
        hi = end + coverage(end, end - 2) - 1 + coverage(end - 1, end - 2)
    return lo, hi


def find_content_box(
    gray: np.ndarray, source_size: tuple[int, int], bar_level: float = 0.1
) -> ContentBox | None:
    """The picture inside letterbox/pillarbox bars, or None when there are none (or all is dark)."""
    _, h, w = gray.shape
    dark, flat = bar_level * 255, 6.0
    g = gray.astype(np.float32)
    rows = _edges(g.mean(axis=2).max(axis=0), g.std(axis=2).max(axis=0), dark, flat)
    if rows is None:
        return None
    y0, y1 = math.ceil(rows[0] - 0.1), math.floor(rows[1] + 0.1)
    inner = g[:, y0:y1]
    cols = _edges(inner.mean(axis=1).max(axis=0), inner.std(axis=1).max(axis=0), dark, flat)
    if cols is None:
        return None
    x0, x1 = math.ceil(cols[0] - 0.1), math.floor(cols[1] + 0.1)
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return None
    sx, sy = source_size[0] / w, source_size[1] / h
    src = [round(cols[0] * sx), round(rows[0] * sy), round(cols[1] * sx), round(rows[1] * sy)]
    return ContentBox(
        sample=Box(x0, y0, x1 - x0, y1 - y0),
        source=Box(src[0], src[1], src[2] - src[0], src[3] - src[1]),
    )


def decode_rgb(path: str, size: tuple[int, int], fps: float, timeout_s: float, stride: int = 1) -> np.ndarray:
    """[N, H, W, 3] uint8: the video at `fps` frames per second (sample k at k / fps s), scaled to `size`
    (width, height); with `stride` > 1 only samples `k % stride < 2` (see `sample_stride`)."""
    video = ffmpeg_tools.input_stream(path).video.filter("fps", fps=fps)
    if stride > 1:
        video = video.filter("select", f"lt(mod(n,{stride}),2)")  # ffmpeg-python escapes the commas
    # Area averaging: no aliasing when downscaling, and bar edges stay linear in coverage.
    video = video.filter("scale", size[0], size[1], flags="area").filter("setsar", 1)
    out = ffmpeg.output(video, "pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", an=None)
    raw = ffmpeg_tools.run_stream(out, timeout_s)
    frame_bytes = size[0] * size[1] * 3
    n = len(raw) // frame_bytes
    return np.frombuffer(raw, np.uint8, count=n * frame_bytes).reshape(n, size[1], size[0], 3)


def sample_frames(
    source: str | os.PathLike | bytes,
    cfg: FrameSamplerConfig,
    duration_s: float | None = None,
    source_size: tuple[int, int] | None = None,
) -> SampledFrames:
    """Decode a clip (a path or the file's bytes) once into the samples every scorer reads.

    `duration_s` and `source_size` (width, height as displayed) come from the clip record when the
    caller has them; otherwise the file is probed (headers only, no decode). Raises InputRejected
    when the clip does not decode.
    """
    with tempfile.TemporaryDirectory(prefix="reelmill-frames-") as tmp:
        if isinstance(source, bytes | bytearray | memoryview):
            # A file, not a pipe: an mp4 without faststart cannot be demuxed from a pipe.
            path = os.path.join(tmp, "clip")
            with open(path, "wb") as f:
                f.write(source)
        else:
            path = os.fspath(source)
        if duration_s is None or source_size is None:
            info = probe(path, min_duration_s=0.0, timeout_s=min(cfg.timeout_s, 60.0))
            duration_s = info.duration_s if duration_s is None else duration_s
            source_size = (info.width, info.height) if source_size is None else source_size
        size = sample_size(source_size, cfg.short_side)
        expected = max(1, math.ceil(duration_s * cfg.fps - 1e-6))
        stride = sample_stride(expected, cfg.max_frames)
        try:
            rgb = decode_rgb(path, size, cfg.fps, cfg.timeout_s, stride)
        except ffmpeg_tools.FFmpegError as err:
            raise InputRejected("undecodable", f"frame sampling: {err.detail}") from None
    if len(rgb) == 0:
        raise InputRejected("undecodable", "frame sampling: no frame decoded")
    rgb = rgb[: cfg.max_frames]
    kept = kept_samples(stride * (len(rgb) + 2), stride)[: len(rgb)]
    return frames_from_samples(rgb, kept, cfg, source_size, duration_s)


def frames_from_samples(
    rgb: np.ndarray, sample_numbers: Sequence[int], cfg: FrameSamplerConfig, source_size, duration_s: float
) -> SampledFrames:
    """Wrap decoded samples (sample k taken at k / fps seconds) and find bars in them."""
    frames = SampledFrames(
        rgb=rgb,
        timestamps=np.asarray(sample_numbers, dtype=np.float64) / cfg.fps,
        step_s=1.0 / cfg.fps,
        source_size=(int(source_size[0]), int(source_size[1])),
        duration_s=float(duration_s),
    )
    if cfg.detect_bars:
        frames.content = find_content_box(frames.gray, frames.source_size, cfg.bar_level) or frames.content
    return frames


def sample_plan(num_frames: int, clip_fps: float, cfg: FrameSamplerConfig) -> tuple[list[int], list[int]]:
    """Which samples a clip of `num_frames` frames gets, and the clip frame each one is.

    Sample k is the frame nearest k / fps seconds (frame floor(k * step + 0.5), step = clip_fps / fps),
    long clips thinned to pairs as in `sample_frames`; for a decoder that picks frames by number,
    such as the transcoder's own decode.
    """
    step = clip_fps / cfg.fps
    expected = max(1, math.ceil(num_frames / step - 1e-6))
    stride = sample_stride(expected, cfg.max_frames)
    numbers = [k for k in kept_samples(expected, stride) if math.floor(k * step + 0.5) < num_frames]
    numbers = numbers[: cfg.max_frames]
    return numbers, [math.floor(k * step + 0.5) for k in numbers]
