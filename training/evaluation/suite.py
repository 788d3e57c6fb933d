"""The metrics of one evaluation, with their models loaded once: a set of videos in, numbers out.

`EvalSuite(cfg)` loads the model of every enabled metric (a missing one is a ConfigError naming its key,
before any sampling starts) and notes why a disabled one has no number. `measure` scores one set of uint8
videos [T, H, W, 3] (the samples, or the real clips as the reference row): per-video values and their
means. `fvd` compares the features of two sets. The same suite serves `reelmill eval` and the training
callback, so their numbers mean the same thing.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from curation.model_labels import RANDOM_WEIGHTS, models_label
from training.evaluation.config import EvalConfig
from training.evaluation.fvd import VideoFeatureNet, fvd

PER_VIDEO = ("clipsim", "subject_consistency", "frame_diff", "temporal_flickering", "flicker", "motion")
"""The per-video metrics, in the order tables show them; `fvd` compares whole sets."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def mean_of(values: list) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


class EvalSuite:
    """The enabled metrics' models, loaded once."""

    def __init__(self, cfg: EvalConfig, device: str | None = None):
        from training.evaluation.clipsim import ClipSim
        from training.evaluation.consistency import SubjectConsistency
        from training.evaluation.smoothness import Smoothness

        self.cfg = cfg
        self.device = resolve_device(device or cfg.device)
        self.skipped: dict[str, str] = {}
        self.fvd_net = self.clipsim = self.consistency = self.smoothness = None
        if cfg.fvd.network:
            self.fvd_net = VideoFeatureNet(cfg.fvd.network, self.device)
        else:
            self.skipped["fvd"] = "fvd.network is not set (a TorchScript I3D file, i3d_torchscript.pt)"
        if cfg.clipsim.enabled:
            self.clipsim = ClipSim(cfg.clipsim, self.device, cfg.batch_size)
        else:
            self.skipped["clipsim"] = "clipsim.enabled is false"
        if cfg.consistency.enabled:
            self.consistency = SubjectConsistency(cfg.consistency.model, self.device, cfg.batch_size)
        else:
            self.skipped["subject_consistency"] = "consistency.enabled is false"
        if cfg.smoothness.enabled:
            self.smoothness = Smoothness(cfg.smoothness.reversal_threshold, cfg.smoothness.motion)
        else:
            for name in ("frame_diff", "temporal_flickering", "flicker", "motion"):
                self.skipped[name] = "smoothness.enabled is false"
        if self.smoothness is not None and not cfg.smoothness.motion:
            self.skipped["motion"] = "smoothness.motion is false"

    def models(self) -> dict:
        """The models each metric used, as eval.json names them."""
        out = {}
        if self.fvd_net is not None:
            out["fvd"] = self.fvd_net.describe()
        if self.clipsim is not None:
            out["clipsim"] = {"model": self.cfg.clipsim.model, "pretrained": self.cfg.clipsim.pretrained}
        if self.consistency is not None:
            out["subject_consistency"] = {"model": self.cfg.consistency.model}
        return out

    def random_weights(self) -> bool:
        """Whether any model in use is a tiny random-weight stand-in."""
        names = [self.cfg.fvd.network if self.fvd_net else None]
        names += [
            self.cfg.clipsim.model if self.clipsim else None,
            self.cfg.clipsim.pretrained if self.clipsim else None,
        ]
        names += [self.cfg.consistency.model if self.consistency else None]
        return models_label(names) == RANDOM_WEIGHTS

    def measure(self, videos: list[np.ndarray], prompts: list[str], fps: float) -> dict:
        """Per-video metrics of `videos` (uint8 [T, H, W, 3]) against `prompts`, their means, and the
        seconds each metric took."""
        per_video: dict[str, list] = {}
        seconds: dict[str, float] = {}
        if not videos:  # every sampling batch failed: no numbers, not an error
            return {"count": 0, "metrics": {}, "per_video": {}, "seconds": {}}
        if self.clipsim is not None:
            start = time.perf_counter()
            per_video["clipsim"] = self.clipsim.score(videos, prompts)
            seconds["clipsim"] = time.perf_counter() - start
        if self.consistency is not None:
            start = time.perf_counter()
            per_video["subject_consistency"] = self.consistency.score(videos)
            seconds["subject_consistency"] = time.perf_counter() - start
        if self.smoothness is not None:
            start = time.perf_counter()
            rows = [self.smoothness.score(v, fps) for v in videos]
            for name in rows[0] if rows else ():
                per_video[name] = [r[name] for r in rows]
            seconds["smoothness"] = time.perf_counter() - start
        means = {name: mean_of(per_video[name]) for name in PER_VIDEO if name in per_video}
        return {"count": len(videos), "metrics": means, "per_video": per_video, "seconds": seconds}

    def features(self, videos: list[np.ndarray]) -> np.ndarray | None:
        """FVD network features [N, D] of `videos`; None without a network."""
        if self.fvd_net is None:
            return None
        return self.fvd_net.features(videos, self.cfg.batch_size)

    def fvd(self, real: np.ndarray | None, fake: np.ndarray | None) -> tuple[float | None, str | None]:
        """(FVD, None), or (None, why there is none)."""
        if real is None or fake is None:
            return None, self.skipped.get("fvd", "no features")
        if len(real) < 2 or len(fake) < 2:
            return None, f"FVD needs 2 or more videos in each set ({len(real)} real, {len(fake)} samples)"
        return fvd(real, fake), None
