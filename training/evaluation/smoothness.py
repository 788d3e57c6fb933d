"""Motion smoothness and flicker: frame-difference statistics and the curation motion scorer, per video.

A generated video can fail by not moving (a frozen sample scores perfectly on consistency) or by
flickering (content that jumps back and forth between frames). These numbers make both visible:

- `frame_diff`: mean absolute difference between consecutive frames, as a share of the 0-255 range
  (0 for a frozen video);
- `temporal_flickering`: 1 - frame_diff, VBench's temporal flickering score (Huang et al. 2024), meant
  for static scenes: 1 is perfectly steady;
- `flicker`: the share of pixel-channels whose change reverses sign between one frame pair and the next,
  both changes larger than `reversal_threshold` grey levels: a smooth motion rarely reverses within a
  frame, a flicker does so all the time (a video alternating between two frames scores 1, the maximum);
- `motion`: the project's optical-flow motion score (curation/scoring/motion.py, a share of the frame
  diagonal per frame) on every frame pair: ~0 for a frozen video, and flicker alone does not raise it.

Real clips give the reference row: a model whose `flicker` is far above the real clips' flickers, one
whose `frame_diff` and `motion` are far below them barely moves.
"""

from __future__ import annotations

import numpy as np

from curation.frames import SampledFrames
from curation.scoring.motion import MotionScorer
from curation.scoring_config import MotionConfig


def frame_statistics(frames: np.ndarray, reversal_threshold: float = 8.0) -> dict[str, float | None]:
    """`frame_diff`, `temporal_flickering` and `flicker` of uint8 frames [T, H, W, 3]."""
    x = np.asarray(frames, dtype=np.float32)
    if len(x) < 2:
        return {"frame_diff": None, "temporal_flickering": None, "flicker": None}
    diff = np.diff(x, axis=0)  # [T-1, H, W, 3]
    frame_diff = float(np.abs(diff).mean() / 255.0)
    flicker = None
    if len(diff) >= 2:
        big = np.abs(diff) > reversal_threshold
        reversal = (diff[:-1] * diff[1:] < 0) & big[:-1] & big[1:]
        flicker = float(reversal.mean())
    return {"frame_diff": frame_diff, "temporal_flickering": 1.0 - frame_diff, "flicker": flicker}


class Smoothness:
    """Frame statistics and the motion scorer, with the thresholds of the config."""

    def __init__(self, reversal_threshold: float = 8.0, motion: bool = True):
        self.reversal_threshold = reversal_threshold
        self.motion = MotionScorer(MotionConfig()) if motion else None

    def score(self, frames: np.ndarray, fps: float) -> dict[str, float | None]:
        stats = frame_statistics(frames, self.reversal_threshold)
        if self.motion is not None:
            stats["motion"] = self.motion_score(frames, fps)
        return stats

    def motion_score(self, frames: np.ndarray, fps: float) -> float | None:
        n, h, w, _ = frames.shape
        sampled = SampledFrames(
            rgb=np.ascontiguousarray(frames),
            timestamps=np.arange(n) / fps,
            step_s=1.0 / fps,
            source_size=(w, h),
            duration_s=n / fps,
        )
        return self.motion.score(sampled)["motion"]
