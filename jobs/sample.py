"""`reelmill sample`: a prompt to an mp4 with a trained VideoDiT checkpoint.

The checkpoint holds everything needed: the DiT and its EMA weights, and the configs of the VAE and
text encoder it was trained with (rebuilt here through their libraries' loaders; `--vae-model` and
`--text-encoder-model` point them elsewhere, e.g. on another machine). The clip size defaults to the
one the data module trained on, also kept in a LightningCLI checkpoint.

A checkpoint is a pickle, and a pickle can run code while it loads: checkpoints are read with
`torch.load(weights_only=True)`, which builds tensors and plain values only (what `reelmill train`
writes: tensors, dicts, lists, strings, numbers) and refuses anything else before it runs.
"""

from __future__ import annotations

import inspect
import pickle

import torch

from curation.config import ConfigError
from training.module import VideoDiTModule
from training.video_out import to_frames, write_mp4

SIZE_KEYS = ("num_frames", "height", "width", "fps")


class CheckpointRefused(ConfigError):
    """A checkpoint that is not plain weights (or not a checkpoint at all): nothing of it was run."""


def refused(ckpt: str, exc: Exception) -> CheckpointRefused:
    """The error for a checkpoint `torch.load(weights_only=True)` refused, naming what it held."""
    return CheckpointRefused(
        f"checkpoint {ckpt} holds objects that are not plain weights, so it was not loaded (only tensors "
        f"and plain values are read from a checkpoint; nothing in it was run): {str(exc).strip()[:600]}"
    )


def load_checkpoint(ckpt: str) -> dict:
    """The checkpoint at `ckpt`, read with weights_only=True; CheckpointRefused for one that holds other
    objects, is not a readable checkpoint, or is not a Lightning checkpoint's dict."""
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: a class, a function, a payload
        raise refused(ckpt, exc) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointRefused(f"--ckpt {ckpt}: not a readable checkpoint ({exc})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise CheckpointRefused(f"--ckpt {ckpt}: not a checkpoint written by reelmill train (no state_dict)")
    return saved


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def run_sample(
    ckpt: str,
    prompts: list[str],
    output: str,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    fps: float | None = None,
    steps: int = 30,
    guidance: float = 5.0,
    method: str = "euler",
    seed: int = 0,
    device: str = "auto",
    use_ema: bool = True,
    vae_model: str | None = None,
    text_encoder_model: str | None = None,
    log=print,
) -> list[str]:
    """Write one mp4 per prompt (`output`, or `output` with `-N` before the suffix for several)."""
    device = resolve_device(device)
    saved = load_checkpoint(ckpt)
    hparams = saved.get("hyper_parameters") or {}
    trained = saved.get("datamodule_hyper_parameters") or {}
    if not isinstance(hparams, dict) or not isinstance(trained, dict):
        raise CheckpointRefused(f"--ckpt {ckpt}: its hyper_parameters are not a dict")
    given = {"num_frames": num_frames, "height": height, "width": width, "fps": fps}
    size = {k: given[k] if given[k] is not None else trained.get(k) for k in SIZE_KEYS}
    missing = [k for k in SIZE_KEYS if size[k] is None]
    if missing:
        flags = ", ".join("--" + k.replace("num_", "") for k in missing)
        raise ConfigError(f"--ckpt {ckpt} does not say the clip size it trained on; pass {flags}")
    accepted = inspect.signature(VideoDiTModule.__init__).parameters
    hparams = {k: v for k, v in hparams.items() if k in accepted}  # LightningCLI adds its own keys
    for key, model in (("vae", vae_model), ("text_encoder", text_encoder_model)):
        if hparams.get(key) is None:
            raise ConfigError(
                f"--ckpt {ckpt} was trained without model.{key}; it cannot decode or encode here"
            )
        if model is not None:
            hparams[key] = {**hparams[key], "model": model}
    hparams["compile"] = False  # one sampling run gains nothing from compiling
    module = VideoDiTModule(**hparams)
    module.load_state_dict(saved["state_dict"])  # the checkpoint is read once, above
    module = module.to(device).eval()
    videos = module.generate_videos(
        prompts, int(size["num_frames"]), int(size["height"]), int(size["width"]),
        use_ema=use_ema, steps=steps, guidance=guidance, method=method, seed=seed,
    )  # fmt: skip
    paths = [output] if len(prompts) == 1 else [_numbered(output, i) for i in range(len(prompts))]
    for path, video in zip(paths, videos, strict=True):
        write_mp4(to_frames(video), path, fps=float(size["fps"]))
        log(f"reelmill sample: {video.shape[1]} frames {video.shape[3]}x{video.shape[2]} -> {path}")
    return paths


def _numbered(path: str, i: int) -> str:
    stem, dot, suffix = path.rpartition(".")
    return f"{stem}-{i}.{suffix}" if dot else f"{path}-{i}"
