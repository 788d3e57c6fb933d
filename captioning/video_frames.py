"""The frames a VLM sees of one clip, prepared on CPU ahead of the model, window by window.

A clip (the mp4's bytes) is probed and decoded once by ffmpeg at `captioning.frames.fps`, scaled
down to at most `max_pixels` per frame, and cut into windows of at most `window_s` seconds (equal
parts). Each frame keeps its real time, so a model that encodes absolute time (Qwen2.5-VL) or
writes timestamps into its prompt (SmolVLM2, Qwen3-VL) sees the clip's own clock, with the window
start as zero. This runs in Ray tasks on CPU so that the model actors only ever generate.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from captioning.caption_config import CaptionFramesConfig
from captioning.prompt_hints import ClipHints
from curation import ffmpeg_tools
from curation.errors import InputRejected
from curation.frames import decode_rgb
from curation.probe import probe


@dataclass
class VideoWindow:
    """A stretch `[start_s, end_s)` of a clip and its frames; timestamps count from `start_s`."""

    start_s: float
    end_s: float
    frames: np.ndarray  # [N, H, W, 3] uint8
    timestamps: np.ndarray  # [N] float64, seconds from the window start
    source_fps: float  # the clip's frame rate, for the processor's video metadata

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def metadata(self) -> dict:
        """transformers' video metadata (`VideoMetadata` fields): the frames' indices at the clip's
        frame rate, from which processors derive timestamps and the sampled fps."""
        return {
            "total_num_frames": max(len(self.frames), round(self.duration_s * self.source_fps)),
            "fps": self.source_fps,
            "frames_indices": [round(t * self.source_fps) for t in self.timestamps],
            "duration": self.duration_s,
            "width": int(self.frames.shape[2]),
            "height": int(self.frames.shape[1]),
        }


@dataclass
class PreparedClip:
    """A clip ready for the model: its key, its length, its windows in time order, and what curation
    measured about it for the prompt's hints."""

    key: str
    duration_s: float
    windows: list[VideoWindow]
    hints: ClipHints = ClipHints()


def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, to at most `max_pixels`, with even sides."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    return max(2, math.floor(width * scale / 2) * 2), max(2, math.floor(height * scale / 2) * 2)


def window_bounds(duration_s: float, window_s: float) -> list[tuple[float, float]]:
    """Equal windows of at most `window_s` seconds that tile `[0, duration_s)`."""
    count = max(1, math.ceil(duration_s / window_s - 1e-9))
    length = duration_s / count
    return [(i * length, duration_s if i == count - 1 else (i + 1) * length) for i in range(count)]


def evenly(indices: list[int], limit: int) -> list[int]:
    """At most `limit` of `indices`, spread evenly from the first to the last."""
    if len(indices) <= limit:
        return indices
    picks = np.linspace(0, len(indices) - 1, limit).round().astype(int)
    return [indices[i] for i in picks]


def prepare_clip(
    key: str, mp4: bytes, cfg: CaptionFramesConfig, hints: ClipHints | None = None
) -> PreparedClip:
    """Decode a clip's bytes into its caption windows. Raises InputRejected when it does not decode."""
    with tempfile.TemporaryDirectory(prefix="reelmill-caption-") as tmp:
        path = os.path.join(tmp, "clip.mp4")  # a file: an mp4 without faststart cannot be read from a pipe
        with open(path, "wb") as f:
            f.write(mp4)
        info = probe(path, min_duration_s=0.0, timeout_s=min(cfg.timeout_s, 60.0))
        size = fit_pixels(info.width, info.height, cfg.max_pixels)
        try:
            rgb = decode_rgb(path, size, cfg.fps, cfg.timeout_s)
        except ffmpeg_tools.FFmpegError as err:
            raise InputRejected("undecodable", f"caption frames: {err.detail}") from None
    # the fps filter pads up to the container's end; frames past the clip's duration are not its own
    times = np.arange(len(rgb), dtype=np.float64) / cfg.fps
    keep = times < info.duration_s - 1e-6
    rgb, times = rgb[keep], times[keep]
    if len(rgb) == 0:
        raise InputRejected("undecodable", "caption frames: no frame decoded")
    windows = []
    for start, end in window_bounds(info.duration_s, cfg.window_s):
        inside = [i for i, t in enumerate(times) if start - 1e-6 <= t < end - 1e-6]
        if not inside:  # a window shorter than the sampling step: take the frame nearest its middle
            inside = [int(np.argmin(np.abs(times - (start + end) / 2)))]
        picks = evenly(inside, cfg.max_frames)
        offsets = np.clip(times[picks] - start, 0.0, None)
        windows.append(VideoWindow(start, end, rgb[picks], offsets, info.fps))
    return PreparedClip(key, info.duration_s, windows, hints or ClipHints())
