"""Decoded videos to an mp4: map [-1, 1] to pixels, encode H.264 with ffmpeg (`reelmill sample` and the
sampling callback)."""

from __future__ import annotations

import ffmpeg
import numpy as np
import torch

from curation import ffmpeg_tools


def to_frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8."""
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def write_mp4(frames: np.ndarray, path: str, fps: float = 16.0, timeout_s: float = 600.0) -> None:
    """[T, H, W, 3] uint8 frames to an H.264 yuv420p mp4 (odd sides are padded by one pixel)."""
    t, h, w, _ = frames.shape
    stream = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=fps)
        .video.filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2")
        .output(path, vcodec="libx264", pix_fmt="yuv420p", crf=18, preset="veryfast", movflags="+faststart")
    )
    ffmpeg_tools.run(
        ffmpeg_tools.compile_stream(stream), timeout_s, input_bytes=np.ascontiguousarray(frames).tobytes()
    )
