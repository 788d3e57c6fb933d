"""A VideoDiT that saves and loads itself as safetensors plus a config.json (`reelmill export`).

A Lightning checkpoint is a training state: live and EMA weights, optimizer moments, hyperparameters of
the trainer, all in a pickle that must be read with care. What a user of the model needs is less and
safer: one set of weights as safetensors (tensors only, nothing that can run) and the DiT's sizes as
JSON. `PretrainedVideoDiT` is the model class with huggingface_hub's `PyTorchModelHubMixin`, so
`save_pretrained` / `from_pretrained` (a local directory or a hub repo) and `push_to_hub` come from the
hub library itself. What sampling needs beyond the DiT (the VAE and text encoder it was trained with,
the clip size and frame rate, the flow shift) sits beside it in `reelmill.json`: the encoders' weights
are never copied, only the ids or paths their own loaders take.
"""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin, constants

from curation.config import ConfigError
from training.model import DiTConfig, VideoDiT

EXPORT_FILE = "reelmill.json"
"""Beside config.json and model.safetensors: what `reelmill sample` needs to sample from the DiT."""
EXPORT_FORMAT = "reelmill-export"
EXPORT_VERSION = 1
WEIGHTS_FILE = constants.SAFETENSORS_SINGLE_FILE  # model.safetensors
CONFIG_FILE = constants.CONFIG_NAME  # config.json


MODEL_CARD = """
---
{{ card_data }}
---

A latent video diffusion transformer (VideoDiT) trained with reelmill: rectified flow on the latents of
the VAE named in `reelmill.json`, text through the text encoder named there. `config.json` holds its
sizes, `model.safetensors` its weights. Sample it with
`reelmill sample --ckpt DIR --prompt "..." --output video.mp4` (add `--image`, `--extend`, `--keyframes`,
`--inpaint` or `--long` for the conditioned modes), or load the DiT alone with
`training.pretrained.PretrainedVideoDiT.from_pretrained(DIR)`. When `reelmill.json` says
`models: random-weights`, its encoders were tiny random-weight stand-ins and its samples mean nothing.
"""


class PretrainedVideoDiT(
    VideoDiT,
    PyTorchModelHubMixin,
    library_name="reelmill",
    tags=["text-to-video", "image-to-video", "video-diffusion", "rectified-flow"],
    model_card_template=MODEL_CARD,
):
    """VideoDiT with `save_pretrained` / `from_pretrained`: config.json holds the `DiTConfig` fields,
    model.safetensors the weights (the mixin encodes the dataclass and decodes it on the way back)."""

    def __init__(self, config: DiTConfig):  # a real annotation (no postponed ones in this module): the
        super().__init__(config)  # mixin reads it to turn config.json back into a DiTConfig

    @classmethod
    def from_model(cls, model: VideoDiT) -> "PretrainedVideoDiT":
        """A copy of `model`'s weights (e.g. a module's EMA) in this class, on the CPU, ready to save."""
        pretrained = cls(DiTConfig(**asdict(model.cfg)))
        pretrained.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
        return pretrained.eval()

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", strict: bool = True, **kwargs):
        """Strict by default (the mixin's default is lenient): a weights file that does not fit the config
        is an error, not a half-random model. A local directory is read as it is, without a hub lookup."""
        if Path(model_id).is_dir():
            model = cls(kwargs["config"])
            return cls._load_as_safetensor(model, str(Path(model_id) / WEIGHTS_FILE), map_location, strict)
        return super()._from_pretrained(model_id=model_id, map_location=map_location, strict=strict, **kwargs)


def is_export(path: str | Path) -> bool:
    """Whether `path` is a directory written by `reelmill export` (it has reelmill.json)."""
    return Path(path).is_dir() and (Path(path) / EXPORT_FILE).is_file()


def read_export_info(directory: str | Path, flag: str = "--ckpt") -> dict:
    """The reelmill.json of an export directory, checked; ConfigError naming `flag` when it is not one."""
    directory = Path(directory)
    for name in (EXPORT_FILE, CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ConfigError(f"{flag} {directory}: not a directory written by reelmill export (no {name})")
    try:
        info = json.loads((directory / EXPORT_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{flag} {directory}: {EXPORT_FILE} is not readable JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"{flag} {directory}: {EXPORT_FILE} does not say format: {EXPORT_FORMAT}")
    if info.get("version") != EXPORT_VERSION:
        raise ConfigError(
            f"{flag} {directory}: export version {info.get('version')!r}; this reelmill reads {EXPORT_VERSION}"
        )
    return info


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> PretrainedVideoDiT:
    """The DiT of an export directory through `from_pretrained`, on `device`, in eval mode."""
    return PretrainedVideoDiT.from_pretrained(str(directory), map_location=str(device)).eval()
