"""The caption frames are the clip's frames at the times they are labelled with: the captioner's prompt
timestamps, the alignment spans and the report's contact sheets all read `PreparedClip` times."""

import subprocess

import numpy as np
import pytest

from captioning.caption_config import CaptionFramesConfig
from captioning.video_frames import prepare_clip
from conftest import decode_frames

FPS = 25


@pytest.fixture(scope="module")
def counting_clip(tmp_path_factory):
    """A 4 s 25 fps clip whose frame n is a flat grey of luma 16 + 2.1 n: its picture says its frame index."""
    path = tmp_path_factory.mktemp("counting") / "counting.mp4"
    source = f"color=c=black:s=64x48:r={FPS}:d=4,format=yuv444p,geq=lum='16+2.1*N':cb=128:cr=128"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", source, "-c:v", "libx264", "-qp", "0",
         "-pix_fmt", "yuv444p", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.mark.xfail(
    strict=True,
    reason="known bug: decode_rgb's fps filter (round=near) fills sample k with the last frame before "
    "(k + 0.5) / fps, while prepare_clip labels it k / fps: frames are about half a sampling step late",
)
@pytest.mark.parametrize("fps", [1.0, 2.0])
def test_each_caption_frame_is_the_clip_frame_at_its_time(counting_clip, fps):
    levels = decode_frames(counting_clip).mean(axis=(1, 2, 3))  # every frame, decoded apart
    assert np.all(np.diff(levels) > 1)  # each frame tells its index
    clip = prepare_clip("k", counting_clip.read_bytes(), CaptionFramesConfig(fps=fps, window_s=16.0))
    for window in clip.windows:
        for frame, offset in zip(window.frames, window.timestamps, strict=True):
            shown = int(np.argmin(np.abs(levels - frame.mean())))
            assert abs(shown - round((window.start_s + offset) * FPS)) <= 1, (window.start_s + offset, shown)
