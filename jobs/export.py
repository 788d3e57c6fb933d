"""`reelmill export CKPT DIR`: a training checkpoint to a model directory others can load and sample.

DIR holds the DiT as huggingface_hub's `save_pretrained` writes it (config.json, model.safetensors, a
model card README.md), the EMA weights by default (those `reelmill sample` uses), and `reelmill.json`:
what sampling needs beyond the DiT, namely the VAE and text encoder configs (ids or paths, never their
weights), the clip size and frame rate it trained on, the flow shift, and `models: random-weights`
when its encoders are the tiny random-weight stand-ins, so no such export passes for a real model.
`reelmill.json` is written last: a directory without it is not an export, so an interrupted export
is never sampled from.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from curation.config import ConfigError
from curation.model_labels import models_label
from jobs.sample import SIZE_KEYS, CheckpointRefused, load_checkpoint
from training.module import VideoDiTModule
from training.pretrained import (
    CONFIG_FILE,
    EXPORT_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    WEIGHTS_FILE,
    PretrainedVideoDiT,
    is_export,
)

EXPORT_FILES = (EXPORT_FILE, WEIGHTS_FILE, CONFIG_FILE, "README.md")
"""What an export writes; `--overwrite` removes these and nothing else."""


def prepare_directory(directory: Path, overwrite: bool) -> None:
    """An empty (or new) DIR, or an earlier export with `overwrite`; anything else is refused."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"DIR {directory}: exists and is not a directory")
    if not directory.exists() or not any(directory.iterdir()):
        directory.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise ConfigError(f"DIR {directory}: not empty; pass --overwrite to replace an earlier export there")
    if not is_export(directory):
        raise ConfigError(
            f"DIR {directory}: --overwrite replaces an earlier export, and this directory holds none "
            f"(no {EXPORT_FILE}); choose an empty or new directory"
        )
    for name in EXPORT_FILES:  # the marker first: a half-replaced export is never read as one
        (directory / name).unlink(missing_ok=True)


def export_info(saved: dict, ckpt: str, use_ema: bool) -> dict:
    """reelmill.json: what `reelmill sample` needs beside the DiT, and where the weights came from."""
    hparams = saved.get("hyper_parameters") or {}
    trained = saved.get("datamodule_hyper_parameters") or {}
    if not isinstance(hparams, dict) or not isinstance(trained, dict):
        raise CheckpointRefused(f"CKPT {ckpt}: its hyper_parameters are not a dict")
    encoders = {key: hparams.get(key) for key in ("vae", "text_encoder")}
    for key, cfg in encoders.items():
        if not isinstance(cfg, dict) or not cfg.get("model"):
            raise ConfigError(f"CKPT {ckpt} was trained without model.{key}; an export could not sample")
    models = models_label([cfg["model"] for cfg in encoders.values()], saved.get("models"))
    try:
        version = importlib.metadata.version("reelmill")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "models": models,
        "preset": hparams.get("model", "tiny"),
        "weights": "ema" if use_ema else "live",
        **encoders,
        "clip": {k: trained.get(k) for k in SIZE_KEYS},
        "shift": hparams.get("shift"),  # null: grows with the token count, as in training
        "source": {"checkpoint": str(ckpt), "global_step": saved.get("global_step"), "reelmill": version},
    }


def run_export(ckpt: str, directory: str, use_ema: bool = True, overwrite: bool = False, log=print) -> Path:
    """Write the export of `ckpt` to `directory`; returns it."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"DIR {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:  # before reading a large checkpoint
        raise ConfigError(f"DIR {out}: not empty; pass --overwrite to replace an earlier export there")
    saved = load_checkpoint(ckpt)
    info = export_info(saved, ckpt, use_ema)
    module = VideoDiTModule.from_checkpoint(saved)
    dit = PretrainedVideoDiT.from_model(module.ema if use_ema else module.model)
    prepare_directory(out, overwrite)
    dit.save_pretrained(out)
    (out / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    params = sum(p.numel() for p in dit.parameters())
    log(
        f"reelmill export: {info['preset']} DiT, {params / 1e6:.2f}M parameters ({info['weights']} weights), "
        f"{info['models']} encoders -> {out}"
    )
    return out
