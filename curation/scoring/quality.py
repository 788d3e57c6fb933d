"""Model-free picture quality of a clip, measured on its sampled frames inside any bars.

- `brightness`: mean luma, 0 (black) to 1 (white);
- `contrast`: RMS contrast, the standard deviation of luma, 0 to 0.5;
- `colorfulness`: Hasler & Suesstrunk (2003) on 0-255 RGB: about 0 for grey, 15 "slightly",
  33 "moderately", 59 "quite", 82+ "highly" colourful in their scale;
- `sharpness`: variance of the Laplacian of luma at a fixed short side (it falls with blur, and
  depends on scale, hence the fixed size);
- `frozen_fraction`: share of consecutive sample pairs that are (nearly) the same picture;
- `content_x`, `content_y`, `content_w`, `content_h`: the picture inside letterbox/pillarbox
  bars, in source pixels (the whole frame when there are none).

Per-frame values are averaged over the samples, except sharpness: its median ignores the odd
frame blurred by fast motion or a focus pull.
"""

from __future__ import annotations

import cv2
import numpy as np

from curation.frames import SampledFrames
from curation.scoring_config import CONTENT_BOX_NAMES, QualityConfig

QUALITY_SCORES = ("sharpness", "brightness", "contrast", "colorfulness", "frozen_fraction")
FROZEN_SHORT_SIDE = 64  # compare pairs this small: codec noise averages out, any real change stays


def _scaled(images: np.ndarray, scale: float, interpolation: int = cv2.INTER_AREA) -> list[np.ndarray]:
    if abs(scale - 1.0) < 1e-6:
        return list(images)
    h, w = images.shape[1:3]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return [cv2.resize(image, size, interpolation=interpolation) for image in images]


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk's colourfulness of one [H, W, 3] uint8 RGB image."""
    r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of one [H, W] uint8 image."""
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


class QualityScorer:
    """Scores a clip's samples for exposure, contrast, colour, sharpness and frozen frames."""

    names = QUALITY_SCORES + CONTENT_BOX_NAMES

    def __init__(self, cfg: QualityConfig):
        self.cfg = cfg

    def score(self, frames: SampledFrames) -> dict[str, float | None]:
        """Quality scores of one clip; all None when the scorer is off."""
        if not self.cfg.enabled:
            return dict.fromkeys(self.names)
        gray = frames.crop(frames.gray)  # [N, h, w]
        rgb = frames.crop(frames.rgb)  # [N, h, w, 3]
        # Scale relative to the whole sampled frame, so a letterboxed picture is not enlarged.
        sharp_scale = self.cfg.short_side / min(frames.size)
        sharp_gray = _scaled(gray, sharp_scale, cv2.INTER_AREA if sharp_scale < 1 else cv2.INTER_LINEAR)
        luma = gray.astype(np.float32) / 255.0
        scores: dict[str, float | None] = {
            "sharpness": float(np.median([sharpness(g) for g in sharp_gray])),
            "brightness": float(luma.mean()),
            "contrast": float(np.mean([frame.std() for frame in luma])),
            "colorfulness": float(np.mean([colorfulness(frame) for frame in rgb])),
            "frozen_fraction": self._frozen_fraction(frames, gray),
        }
        scores.update(frames.content.source.as_dict())
        return scores

    def _frozen_fraction(self, frames: SampledFrames, gray: np.ndarray) -> float | None:
        pairs = frames.pairs()
        if not pairs:
            return None
        small = _scaled(gray.astype(np.float32), FROZEN_SHORT_SIDE / min(gray.shape[1:3]))
        frozen = [float(cv2.absdiff(small[a], small[b]).mean()) < self.cfg.frozen_threshold for a, b in pairs]
        return float(np.mean(frozen))
