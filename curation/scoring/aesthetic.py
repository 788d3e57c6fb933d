"""Aesthetic score of a clip: open_clip image embeddings of a few frames, rated by the LAION head.

The head is the "improved aesthetic predictor" (christophschuhmann/improved-aesthetic-predictor):
an MLP over L2-normalised CLIP ViT-L/14 image embeddings, trained to predict mean human ratings on
a 0-10 scale (`sac+logos+ava1-l14-linearMSE.pth`). Frames at 10/50/90 % of the clip (configurable)
are scored and the per-frame scores reduced by mean or min.

The scorer also returns each clip's normalised embeddings (float16, one row per scored frame), so
they can be written to `manifest/embeddings/` for deduplication and search without a second pass.

Both models load once, in `__init__`, through open_clip's own loader and `load_state_dict`, from
the names and paths in the config; a missing model is a MissingModelError naming the key to set.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn

from curation.config import ConfigError
from curation.frames import SampledFrames
from curation.hub import hub_reachable
from curation.scoring_config import AestheticConfig

AESTHETIC_SCORES = ("aesthetic",)
KEY = "scoring.aesthetic"
SCHEMAS = ("hf-hub:", "local-dir:")


class MissingModelError(ConfigError):
    """A model named in the config cannot be found or loaded; `key` is the config key to set."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class AestheticHead(nn.Module):
    """The LAION improved aesthetic predictor MLP; its state dict keys are `layers.{0,2,4,6,7}.*`."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B, D] normalised image embeddings -> [B] scores."""
        return self.layers(embeddings).squeeze(-1)


def resolve_device(device: str) -> torch.device:
    """`auto` is cuda when torch sees a GPU, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{KEY}.device: {device!r} asked for, but torch sees no CUDA device")
    return torch.device(device)


def load_head(path: str | None, device: torch.device) -> AestheticHead:
    """The head from its state dict file (e.g. sac+logos+ava1-l14-linearMSE.pth)."""
    key = f"{KEY}.head_weights"
    if not path:
        raise MissingModelError(
            key,
            "not set; download sac+logos+ava1-l14-linearMSE.pth from "
            "christophschuhmann/improved-aesthetic-predictor and set this to its path",
        )
    if not os.path.isfile(path):
        raise MissingModelError(key, f"no such file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        head = AestheticHead(input_size=state["layers.0.weight"].shape[1])
        head.load_state_dict(state)
    except (KeyError, RuntimeError, OSError, ValueError) as exc:
        raise MissingModelError(key, f"{path} is not an aesthetic head state dict: {exc}") from exc
    return head.to(device).eval()


def load_clip(cfg: AestheticConfig, device: torch.device) -> tuple[nn.Module, object]:
    """(model, preprocess) through `open_clip.create_model_and_transforms`, as a user would call it."""
    if cfg.clip_model_config:
        if not os.path.exists(cfg.clip_model_config):
            raise MissingModelError(f"{KEY}.clip_model_config", f"no such file: {cfg.clip_model_config}")
        open_clip.add_model_config(Path(cfg.clip_model_config))
    name, pretrained = cfg.clip_model, cfg.clip_pretrained
    quick_gelu = False
    if not name.startswith(SCHEMAS):
        if open_clip.get_model_config(name) is None:
            raise MissingModelError(
                f"{KEY}.clip_model",
                f"open_clip has no model {name!r}; for a custom architecture set "
                f"{KEY}.clip_model_config to its config JSON",
            )
        tag = open_clip.get_pretrained_cfg(name, pretrained)
        if not tag and not os.path.isfile(pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise MissingModelError(
                f"{KEY}.clip_pretrained",
                f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {name} ({tags})",
            )
        # OpenAI's weights were trained with QuickGELU; the plain config would load them silently
        # and produce wrong embeddings (the aesthetic head was fit on OpenAI ViT-L/14 features).
        quick_gelu = bool(tag.get("quick_gelu", False))
        if tag:
            hub_reachable()  # asked once per process: unreachable, the download reads the cache only
            try:  # found or fetched before the model is built: a missing file fails in a second, not ten
                open_clip.pretrained.download_pretrained(tag)
            except (RuntimeError, OSError, ValueError) as exc:
                raise _weights_missing(name, pretrained, exc) from exc
    elif name.startswith("hf-hub:"):
        hub_reachable()  # the model is fetched through the hub client
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, device=device, force_quick_gelu=quick_gelu
        )
    except (RuntimeError, OSError, ValueError) as exc:
        raise _weights_missing(name, pretrained, exc) from exc
    return model.eval(), preprocess


def _weights_missing(name: str, pretrained: str, exc: Exception) -> MissingModelError:
    return MissingModelError(
        f"{KEY}.clip_pretrained",
        f"could not load {name} weights {pretrained!r} ({exc}); without a network, set this to "
        "a local checkpoint file or pre-fill the Hugging Face cache",
    )


class AestheticScorer:
    """Scores clips with CLIP + the aesthetic head; loads both once and batches across clips."""

    names = AESTHETIC_SCORES

    def __init__(self, cfg: AestheticConfig):
        self.cfg = cfg
        if not cfg.enabled:
            return
        self.device = resolve_device(cfg.device)
        self.model, self.preprocess = load_clip(cfg, self.device)
        self.head = load_head(cfg.head_weights, self.device)
        embed_dim = getattr(self.model.visual, "output_dim", self.head.input_size)
        if embed_dim != self.head.input_size:
            raise MissingModelError(
                f"{KEY}.head_weights",
                f"the head takes {self.head.input_size}-d embeddings but {cfg.clip_model} "
                f"makes {embed_dim}-d ones (the LAION head needs ViT-L-14)",
            )

    def score(self, frames: SampledFrames) -> tuple[dict[str, float | None], np.ndarray | None]:
        """(scores, embeddings [K, D] float16) of one clip."""
        return self.score_batch([frames])[0]

    def score_batch(
        self, clips: list[SampledFrames]
    ) -> list[tuple[dict[str, float | None], np.ndarray | None]]:
        """Per clip: ({"aesthetic": score}, its K frames' normalised embeddings [K, D] float16)."""
        if not self.cfg.enabled or not clips:
            return [(dict.fromkeys(self.names), None) for _ in clips]
        positions = self.cfg.frame_positions
        k = len(positions)
        scores, embeddings = [], []
        for start in range(0, len(clips), self.cfg.batch_size):
            chunk = clips[start : start + self.cfg.batch_size]
            # Bars are cropped away: the head was fit on pictures, not on letterboxed frames.
            images = [Image.fromarray(f) for clip in chunk for f in clip.crop(clip.at_fractions(positions))]
            s, e = self._embed_and_score(images)
            scores.append(s)
            embeddings.append(e)
        per_frame = np.concatenate(scores).reshape(len(clips), k)
        all_embeddings = np.concatenate(embeddings).reshape(len(clips), k, -1)
        reduce = np.min if self.cfg.reduce == "min" else np.mean
        results = []
        for frame_scores, clip_embeddings in zip(per_frame, all_embeddings, strict=True):
            value = float(reduce(frame_scores))
            results.append(({"aesthetic": value if math.isfinite(value) else None}, clip_embeddings))
        return results

    @torch.inference_mode()
    def _embed_and_score(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """[B] scores and [B, D] float16 normalised embeddings of a list of images."""
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            features = self.model.encode_image(pixels)
        features = nn.functional.normalize(features.float(), dim=-1)
        scores = self.head(features)
        return scores.float().cpu().numpy(), features.cpu().numpy().astype(np.float16)
