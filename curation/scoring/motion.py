"""Motion scores from dense optical flow (OpenCV Farneback) between consecutive sampled frames.

Flow is computed on grayscale samples (bars cropped away) scaled to a fixed short side, one
sampling step apart (0.5 s at the default 2 fps), so the numbers mean the same thing whatever the
clip's resolution or frame rate:

- `motion_px`: mean flow magnitude in pixels at the reference short side, per sampling step;
- `motion`: the same divided by the reference frame's diagonal (a share of the picture);
- `moving_fraction`: share of pixels moving more than `moving_threshold_px`.

Each is averaged over the sample pairs. `motion` grows with the speed of the content (including
pans far beyond what Farneback follows alone, see `MotionScorer._flow`), stays near zero on a still
shot with encoder noise, and is high on chaotic footage (shake, whip pans, random change).
Farneback ignores uniform brightness changes, so flicker alone does not raise it.
"""

from __future__ import annotations

import cv2
import numpy as np

from curation.frames import SampledFrames
from curation.scoring.camera import PairMotion, fit_pair
from curation.scoring_config import MotionConfig

MOTION_SCORES = ("motion", "motion_px", "moving_fraction")
MIN_PHASE_RESPONSE = 0.05  # below this the phase correlation peak is noise, not a global shift
PRESMOOTH_SIGMA = 1.0  # pixels at the reference size
RESIDUAL_TIE = 0.5  # grey levels: warping residuals closer than this cannot tell two flows apart


def reference_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, aspect kept."""
    w, h = size
    scale = short_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


class MotionScorer:
    """Scores a clip's samples for motion (state: its config and cached FFT windows)."""

    names = MOTION_SCORES

    def __init__(self, cfg: MotionConfig):
        self.cfg = cfg
        self._windows: dict[tuple[int, int], np.ndarray] = {}

    def score(self, frames: SampledFrames) -> dict[str, float | None]:
        """Motion scores of one clip; all None when the scorer is off or the clip has no pair."""
        return self.measure(frames)[0]

    def measure(self, frames: SampledFrames) -> tuple[dict[str, float | None], list[PairMotion]]:
        """Motion scores of one clip, and the camera motion fitted to each pair's flow
        (`curation.scoring.camera`): one flow per pair serves both."""
        pairs = frames.pairs()
        if not self.cfg.enabled or not pairs:
            return dict.fromkeys(self.names), []
        gray = frames.crop(frames.gray)
        size = reference_size((gray.shape[2], gray.shape[1]), self.cfg.short_side)
        used = sorted({i for pair in pairs for i in pair})
        small = {i: self._prepare(gray[i], size) for i in used}
        diagonal = float(np.hypot(*size))
        mean_px, moving, camera = [], [], []
        for a, b in pairs:
            flow = self._flow(small[a], small[b])
            magnitude = np.hypot(flow[..., 0], flow[..., 1])
            mean_px.append(float(magnitude.mean()))
            moving.append(float((magnitude > self.cfg.moving_threshold_px).mean()))
            camera.append(fit_pair(flow))
        motion_px = float(np.mean(mean_px))
        scores = {
            "motion": motion_px / diagonal,
            "motion_px": motion_px,
            "moving_fraction": float(np.mean(moving)),
        }
        return scores, camera

    @staticmethod
    def _prepare(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Scale to the reference size and smooth away codec noise and aliasing, which differ
        between resolutions of the same clip (this is what keeps 360p and 720p within a few %)."""
        small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(small, (0, 0), PRESMOOTH_SIGMA)

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """[H, W, 2] flow in pixels from `a` to `b`.

        Farneback's pyramid stops at 32 px, so from a zero start it follows shifts of ~12 px at
        128 px and underestimates anything faster: a moderate pan at 0.5 s steps already moves
        more. Phase correlation finds the dominant global shift (a pan) at any speed, so each
        pixel takes whichever of three flows explains it best: Farneback from zero (objects on a
        still background), Farneback started from that shift (the pan plus local motion), or the
        shift itself (textured regions Farneback lost).
        """
        zero = self._farneback(a, b, None)
        shift, response = cv2.phaseCorrelate(a.astype(np.float64), b.astype(np.float64), self._window(a))
        if response < MIN_PHASE_RESPONSE or np.hypot(*shift) < 1.0:
            return zero
        pan = np.empty((*a.shape, 2), np.float32)
        pan[...] = shift
        refined = self._farneback(a, b, pan.copy())  # the flow argument is overwritten in place
        candidates = np.stack([zero, refined, pan])  # [3, H, W, 2], in order of preference
        residuals = np.stack([_residual(a, b, flow) for flow in candidates])  # [3, H, W]
        # Each pixel takes the first candidate within a tie of the best, so a pixel that every flow
        # explains (a flat region, which says nothing about motion) keeps Farneback's own answer.
        close = residuals <= residuals.min(axis=0) + RESIDUAL_TIE
        choice = np.argmax(close, axis=0)  # [H, W]
        return np.take_along_axis(candidates, choice[None, ..., None], axis=0)[0]

    def _farneback(self, a: np.ndarray, b: np.ndarray, init: np.ndarray | None) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(
            a,
            b,
            init,
            pyr_scale=0.5,
            levels=self.cfg.levels,
            winsize=self.cfg.winsize,
            iterations=3,
            poly_n=5,
            poly_sigma=1.1,
            flags=0 if init is None else cv2.OPTFLOW_USE_INITIAL_FLOW,
        )

    def _window(self, image: np.ndarray) -> np.ndarray:
        """A Hanning window, so the frame borders do not dominate phase correlation."""
        key = image.shape
        if key not in self._windows:
            self._windows[key] = cv2.createHanningWindow((image.shape[1], image.shape[0]), cv2.CV_64F)
        return self._windows[key]


def _residual(a: np.ndarray, b: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """[H, W] local mean of |a - b warped back by flow|: how well the flow explains each pixel."""
    h, w = a.shape
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(
        b, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    error = cv2.absdiff(a, warped).astype(np.float32)
    return cv2.blur(error, (7, 7))
