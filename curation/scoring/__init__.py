"""Clip scorers: each reads a clip's SampledFrames (curation.frames) and returns named scores.

A scorer is built from its config section and has one entry method, `score(frames)`, returning
JSON-ready floats (None where it could not measure, or is switched off):

- `motion.MotionScorer`: motion, motion_px, moving_fraction (CPU, OpenCV);
- `quality.QualityScorer`: sharpness, brightness, contrast, colorfulness, frozen_fraction and the
  content box inside bars (CPU, OpenCV);
- `aesthetic.AestheticScorer`: aesthetic, plus CLIP embeddings (torch; import it explicitly, so
  that CPU-only workers never import torch and open_clip).

Deciding what to keep is not a scorer's job: see curation.filters.
"""

from curation.scoring.motion import MotionScorer
from curation.scoring.quality import QualityScorer
from curation.scoring_config import CONTENT_BOX_NAMES, SCORE_NAMES


def null_scores() -> dict[str, float | None]:
    """Every score name with no value: the scores of a clip that was never scored."""
    return dict.fromkeys(SCORE_NAMES)


__all__ = ["CONTENT_BOX_NAMES", "SCORE_NAMES", "MotionScorer", "QualityScorer", "null_scores"]
