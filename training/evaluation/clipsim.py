"""CLIPSIM: how well the frames of a video match its prompt, by an open_clip model.

Each frame and the prompt are embedded by CLIP's image and text towers (L2-normalised); a video scores the
mean over its frames of the text-frame cosine similarity (Wu et al. 2021, "GODIVA", the metric video papers
report as CLIPSIM; some print it x100). It says whether the model follows the text, not whether the video
looks real: compare it with the real clips' own score under their captions (the reference row). With
ViT-B/32, matched real image-caption pairs sit around 0.3 and unrelated pairs around 0.15; a tiny
random-weight CLIP gives numbers that mean nothing.

The model loads through the aesthetic scorer's loader (`curation.scoring.aesthetic.load_clip`, i.e.
`open_clip.create_model_and_transforms`), from a model name with a pretrained tag or checkpoint file, an
`hf-hub:` id or a `local-dir:` directory.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from curation.scoring.aesthetic import MissingModelError, load_clip
from curation.scoring_config import AestheticConfig
from training.evaluation.config import ClipSimConfig

KEYS = {
    "scoring.aesthetic.clip_model_config": "clipsim.model_config",
    "scoring.aesthetic.clip_model": "clipsim.model",
    "scoring.aesthetic.clip_pretrained": "clipsim.pretrained",
}
"""The aesthetic loader's keys, as the eval config names them (longest first: one is a prefix)."""


def clipsim_from_embeddings(frames: np.ndarray, text: np.ndarray) -> float:
    """Mean over frames of cos(frame, text), for frame embeddings [T, D] and a text embedding [D]."""
    f = np.asarray(frames, np.float64)
    t = np.asarray(text, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    t = t / max(float(np.linalg.norm(t)), 1e-12)
    return float(np.mean(f @ t))


class ClipSim:
    """An open_clip model and its tokenizer, loaded once; scores videos against prompts."""

    def __init__(self, cfg: ClipSimConfig, device: torch.device, batch_size: int = 32):
        import open_clip

        loader_cfg = AestheticConfig(
            clip_model=cfg.model, clip_pretrained=cfg.pretrained or "", clip_model_config=cfg.model_config
        )
        try:
            self.model, self.preprocess = load_clip(loader_cfg, device)
        except MissingModelError as exc:
            key = KEYS.get(exc.key, "clipsim.model")
            message = str(exc).removeprefix(f"{exc.key}: ")
            for theirs, ours in KEYS.items():
                message = message.replace(theirs, ours)
            raise MissingModelError(key, message) from None
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        self.device, self.batch_size = device, batch_size

    @torch.inference_mode()
    def embed_text(self, prompts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """L2-normalised image embeddings [T, D] of uint8 frames [T, H, W, 3]."""
        out = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            pixels = torch.stack([self.preprocess(Image.fromarray(f)) for f in chunk]).to(self.device)
            out.append(torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1))
        return torch.cat(out).cpu().numpy()

    def score(self, videos: list[np.ndarray], prompts: list[str]) -> list[float]:
        """CLIPSIM of each video against its prompt."""
        texts = self.embed_text(prompts)
        return [clipsim_from_embeddings(self.embed_frames(v), t) for v, t in zip(videos, texts, strict=True)]
