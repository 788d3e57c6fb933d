"""What run.json records about the software a run used: package versions, and which kind of weights its
models are (`models`: pretrained, random-weights or none; see `curation.model_labels`)."""

from __future__ import annotations

import importlib.metadata
import platform

from captioning.caption_config import CaptionConfig
from curation import ffmpeg_tools
from curation.model_labels import models_label
from curation.scoring_config import AestheticConfig

PACKAGES = (
    "reelmill",
    "ray",
    "pyarrow",
    "webdataset",
    "scenedetect",
    "opencv-python",
    "ffmpeg-python",
    "numpy",
)


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    out = {"python": platform.python_version(), "ffmpeg": ffmpeg_tools.version()}
    for name in (*PACKAGES, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def clip_models(clip: AestheticConfig) -> list[str | None]:
    """Where an open_clip model's weights come from: its name (`local-dir:PATH`), its pretrained tag or
    checkpoint file, and its config file."""
    return [clip.clip_model, clip.clip_pretrained, clip.clip_model_config]


def caption_models(captioning: CaptionConfig, aesthetic: AestheticConfig | None) -> list[str | None]:
    """The models the captioning section loads: the VLM, and the alignment CLIP when that stage runs
    (the run's aesthetic scorer's CLIP unless the section names its own, as the stage resolves it)."""
    if not captioning.enabled:
        return []
    models = [captioning.vlm.model]
    if captioning.alignment.enabled:
        models += clip_models(captioning.alignment.clip_config(aesthetic))
    return models


def curate_models_label(cfg, extra: str | None = None) -> str:
    """`models` of a curate run (`CurateJobConfig`): the aesthetic CLIP and head, the VLM, the alignment CLIP."""
    aesthetic = cfg.scoring.aesthetic
    models = [*clip_models(aesthetic), aesthetic.head_weights] if aesthetic.enabled else []
    return models_label([*models, *caption_models(cfg.captioning, aesthetic)], extra)


def recaption_models_label(cfg, extra: str | None = None) -> str:
    """`models` of a recaption run (`RecaptionConfig`): the VLM, and the alignment section's CLIP."""
    return models_label(caption_models(cfg.captioning, None), extra)


def encoder_models_label(vae, text_encoder, extra: str | None = None) -> str:
    """`models` of a job that loads a VAE and a text encoder (`VAEConfig`, `TextEncoderConfig`, either
    None when not loaded): encode, train, sample."""
    return models_label([getattr(c, "model", None) for c in (vae, text_encoder)], extra)


def models_note(label: str) -> str:
    """What a job's summary line adds: the label when it is random-weights, so no one misses it."""
    return f" [models: {label}]" if label == "random-weights" else ""
