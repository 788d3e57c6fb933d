"""Subject consistency: does the subject stay the same thing from frame to frame (VBench's definition).

Each frame is embedded with DINOv2 (the CLS token, `pooler_output`, L2-normalised); a video scores the mean
over frames i >= 1 of (max(0, cos(f_i, f_0)) + max(0, cos(f_i, f_{i-1}))) / 2: the first term catches a
subject that drifts away over the clip, the second a jump between neighbours (Huang et al. 2024, "VBench",
dimension `subject_consistency`). A still video scores 1; shuffled frames or noise score lower. DINOv2
features are used rather than CLIP's because they tell instances apart (two different dogs), not only
categories. Higher is better, up to the point where the video stops moving (see smoothness.py).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from curation.hub import hub_reachable, probe_failure
from curation.scoring.aesthetic import MissingModelError

KEY = "consistency.model"


def consistency_from_embeddings(embeddings: np.ndarray) -> float | None:
    """VBench's subject consistency of one video's frame embeddings [T, D]; None for a single frame."""
    e = np.asarray(embeddings, dtype=np.float64)
    if len(e) < 2:
        return None
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    to_first = np.clip(e[1:] @ e[0], 0, None)
    to_previous = np.clip((e[1:] * e[:-1]).sum(axis=1), 0, None)
    return float(np.mean((to_first + to_previous) / 2))


class SubjectConsistency:
    """DINOv2 (transformers' AutoModel + AutoImageProcessor) loaded once; scores videos."""

    def __init__(self, model: str, device: torch.device, batch_size: int = 32):
        from transformers import AutoImageProcessor, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise in a job's log
        self.model_id, self.device, self.batch_size = model, device, batch_size
        local = os.path.isdir(model)
        offline = local or not hub_reachable()
        try:
            self.processor = AutoImageProcessor.from_pretrained(model, local_files_only=offline)
            self.model = AutoModel.from_pretrained(model, local_files_only=offline).to(device).eval()
        except (OSError, ValueError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not local and offline:
                why = f"not in the Hugging Face cache; {probe_failure() or 'offline mode (HF_HUB_OFFLINE)'}"
            raise MissingModelError(
                KEY,
                f"cannot load {model!r} ({why}); set it to a local DINOv2 directory or a reachable hub id, "
                "or pass --set consistency.enabled=false",
            ) from None

    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> np.ndarray:
        """L2-normalised CLS embeddings [T, D] of uint8 frames [T, H, W, 3]."""
        out = []
        for start in range(0, len(frames), self.batch_size):
            inputs = self.processor(images=list(frames[start : start + self.batch_size]), return_tensors="pt")
            pooled = self.model(pixel_values=inputs["pixel_values"].to(self.device)).pooler_output
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
        return np.concatenate(out)

    def score(self, videos: list[np.ndarray]) -> list[float | None]:
        return [consistency_from_embeddings(self.embed(v)) for v in videos]
