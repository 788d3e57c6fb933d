"""Frozen encoders for training the video DiT: a video VAE (diffusers) and a text encoder (transformers
or open_clip), loaded from a hub id or a local directory named in the config.

The DiT never sees raw VAE latents: `VideoVAE.encode` returns them normalized per channel to roughly
unit variance (Wan's `latents_mean`/`latents_std`, or the `shift_factor`/`scaling_factor` of other
diffusers VAEs), and `decode` undoes exactly that, so the sampler and `reelmill sample` can hand the
DiT's output straight back. Encoding is deterministic (the posterior mode, not a sample), so a clip
encoded once for `reelmill encode` and again on the fly gives the same latents.

`vae_latent_channels` and `text_encoder_dim` read only the models' config files: a training run can
size the DiT (`in_channels`, `text_dim`) before loading any weights. A model that cannot be found is an
`EncoderError` (a ConfigError) naming the config key to set, as every other missing model in reelmill.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from curation.config import ConfigError, check
from curation.hub import hub_reachable, probe_failure

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch, diffusers, transformers and open_clip are imported where they are used: the job configs import
# this module's dataclasses, and the CLI should not pay seconds of imports to parse its arguments.

VAE_KEY = "vae"
TEXT_KEY = "text_encoder"
DTYPES = ("auto", "float32", "bfloat16", "float16")
TEXT_KINDS = ("t5", "open_clip")
OPEN_CLIP_SCHEMAS = ("hf-hub:", "local-dir:")


class EncoderError(ConfigError):
    """A VAE or text encoder named in the config cannot be found or does not fit; `key` is the key to set.

    The same shape as the aesthetic scorer's MissingModelError ("key: message", `.key`), without
    importing open_clip to get it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def _no_grad(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return method(*args, **kwargs)

    return wrapper


@dataclass
class VAEConfig:
    """The frozen video autoencoder: any diffusers autoencoder class, loaded with its `from_pretrained`."""

    model: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    """Hub id or local directory (a diffusers pipeline repo, with the VAE in `subfolder`)."""
    subfolder: str | None = "vae"
    """Where the VAE lives inside `model`; null when `model` is the VAE's own directory."""
    cls: str = "AutoencoderKLWan"
    """The diffusers class: AutoencoderKLWan, AutoencoderKLCogVideoX, AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo, ... or AutoencoderKL (an image VAE, applied frame by frame)."""
    dtype: str = "auto"
    """auto = float32: video VAEs are usually run in full precision (their latents feed every step)."""
    chunk_frames: int = 0
    """Per-frame (2D) VAEs only: encode/decode this many frames at a time (0 = a whole clip at once).
    Video VAEs always work one sample at a time (Wan's already runs causally in 4-frame chunks)."""
    tiling: bool = False
    """Call the class's `enable_tiling()`: bounded memory at large frame sizes, at some speed."""

    def __post_init__(self):
        check(bool(self.model), f"{VAE_KEY}.model", "must name a hub id or a local directory")
        check(bool(self.cls), f"{VAE_KEY}.cls", "must name a diffusers autoencoder class")
        check(self.dtype in DTYPES, f"{VAE_KEY}.dtype", f"{self.dtype!r} is not one of {', '.join(DTYPES)}")
        check(self.chunk_frames >= 0, f"{VAE_KEY}.chunk_frames", "must be >= 0 (0 = all frames at once)")


@dataclass
class TextEncoderConfig:
    """The frozen text encoder whose token embeddings the DiT cross-attends to."""

    kind: str = "t5"
    """t5: a transformers encoder (T5/UMT5/MT5 encoders load only the encoder weights; other models
    through AutoModel); open_clip: the token embeddings of an open_clip text tower."""
    model: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    """Hub id or local directory; for open_clip an open_clip model name, `hf-hub:ID` or `local-dir:PATH`."""
    subfolder: str | None = "text_encoder"
    """t5: where the encoder lives inside `model` (null: at the top level)."""
    tokenizer_subfolder: str | None = "tokenizer"
    """t5: where the tokenizer lives inside `model` (null: at the top level)."""
    pretrained: str | None = None
    """open_clip only, with a plain model name: a pretrained tag (`openai`, ...) or a checkpoint file."""
    max_length: int = 256
    """Prompts are truncated to this many tokens (special tokens included)."""
    dtype: str = "auto"
    """auto = bfloat16 on GPU, float32 on CPU; embeddings are returned in float32 either way."""

    def __post_init__(self):
        check(
            self.kind in TEXT_KINDS,
            f"{TEXT_KEY}.kind",
            f"{self.kind!r} is not one of {', '.join(TEXT_KINDS)}",
        )
        check(bool(self.model), f"{TEXT_KEY}.model", "must name a hub id, a local directory or a model")
        check(self.max_length >= 1, f"{TEXT_KEY}.max_length", "must be >= 1")
        check(self.dtype in DTYPES, f"{TEXT_KEY}.dtype", f"{self.dtype!r} is not one of {', '.join(DTYPES)}")


# -- finding models ------------------------------------------------------------------------------------


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {
        "1",
        "ON",
        "YES",
        "TRUE",
    }


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.exists(model) or model.count("/") > 1


def _locate(
    model: str,
    subfolder: str | None,
    key: str,
    subfolder_key: str,
    filename: str = "config.json",
    need_file_locally: bool = True,
) -> None:
    """Fail fast, before any weights load, when `model` (a directory or a hub id) lacks `subfolder`.

    Hub ids are checked by fetching one small file (`filename`) through the hub client, which honours
    HF_HUB_OFFLINE and the cache, so a missing model fails in a second with the key to set, not
    after a library's retries with its own message. Local directories need the folder and, when
    `need_file_locally`, that file in it."""
    where = f"{subfolder}/{filename}" if subfolder else filename
    fix = f"set {key}.model to a local directory or hub id"
    if os.path.isdir(model):
        folder = Path(model, subfolder or "")
        if not folder.is_dir():
            raise EncoderError(
                subfolder_key,
                f"{model!r} has no folder {subfolder!r} - set {subfolder_key} (null: the top level)",
            )
        if need_file_locally and not (folder / filename).is_file():
            if subfolder is None:  # a pipeline directory given where the model's own folder was meant
                holders = sorted(p.parent.name for p in Path(model).glob(f"*/{filename}"))
                found = f" (folders with one: {', '.join(holders)})" if holders else ""
                raise EncoderError(
                    subfolder_key,
                    f"{model!r} has no {filename} at its top level{found} - set {subfolder_key} "
                    f"to the folder that holds the model, or {key}.model to the model's own directory",
                )
            raise EncoderError(f"{key}.model", f"{model!r} has no {where} - {fix}")
        return
    if _looks_like_path(model):
        raise EncoderError(f"{key}.model", f"{model!r} is not a directory - {fix}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError

    hub_reachable()  # asked once per process: unreachable, look-ups read the cache instead of retrying
    try:
        hf_hub_download(model, filename, subfolder=subfolder)
    except LocalEntryNotFoundError:
        state = probe_failure() or ("offline" if _offline() else "the hub is unreachable")
        raise EncoderError(
            f"{key}.model",
            f"{model!r} is neither a local directory nor in the Hugging Face cache ({state}) - {fix}",
        ) from None
    except EntryNotFoundError:
        raise EncoderError(
            subfolder_key, f"the hub repo {model!r} has no {where} - set {subfolder_key}"
        ) from None
    except (OSError, HFValidationError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EncoderError(
            f"{key}.model", f"{model!r} is neither a local directory nor a hub model ({reason}) - {fix}"
        ) from None


def _dtype(name: str, auto: torch.dtype) -> torch.dtype:
    import torch

    return auto if name == "auto" else getattr(torch, name)


# -- the VAE -------------------------------------------------------------------------------------------


def _vae_class(cfg: VAEConfig):
    import diffusers

    cls = getattr(diffusers, cfg.cls, None)
    if not (inspect.isclass(cls) and issubclass(cls, diffusers.ModelMixin)):
        known = sorted(n for n in dir(diffusers) if n.startswith(("Autoencoder", "AsymmetricAutoencoder")))
        raise EncoderError(
            f"{VAE_KEY}.cls",
            f"diffusers has no model class {cfg.cls!r} - set {VAE_KEY}.cls to one of {', '.join(known)}",
        )
    return cls


def _vae_config(cfg: VAEConfig) -> tuple[type, dict]:
    """The VAE class and its full config (the file's values over the class's defaults), no weights."""
    cls = _vae_class(cfg)
    _locate(cfg.model, cfg.subfolder, VAE_KEY, f"{VAE_KEY}.subfolder")
    try:
        raw = cls.load_config(cfg.model, subfolder=cfg.subfolder)
    except (OSError, ValueError) as exc:
        raise EncoderError(
            f"{VAE_KEY}.model", f"cannot read the VAE config of {cfg.model!r} ({exc}) - set {VAE_KEY}.model"
        ) from None
    found = raw.get("_class_name")
    if found and found != cls.__name__:
        raise EncoderError(
            f"{VAE_KEY}.cls",
            f"{cfg.model!r} holds an {found}, not an {cls.__name__} - set {VAE_KEY}.cls: {found}",
        )
    defaults = {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return cls, {**defaults, **{k: v for k, v in raw.items() if not k.startswith("_")}}


def _latent_channels(conf: dict) -> int:
    for name in ("z_dim", "latent_channels"):
        if conf.get(name):
            return int(conf[name])
    raise EncoderError(
        f"{VAE_KEY}.cls",
        f"the VAE config names no latent channels (z_dim, latent_channels) - set {VAE_KEY}.cls",
    )


def _ratios(conf: dict, model: nn.Module, per_frame: bool) -> tuple[int, int]:
    """(time, space) compression: from the architecture where the config spells it out (Wan's
    downsampling flags), else the ratios the class states (attributes set in its __init__, as LTX
    computes them there, then config keys)."""
    own = vars(model)  # instance attributes only: diffusers' config-attribute fallback is deprecated
    space = time = None
    if "temperal_downsample" in conf and "dim_mult" in conf:  # Wan and its relatives; patch_size: Wan 2.2
        time = 2 ** sum(bool(d) for d in conf["temperal_downsample"])
        space = 2 ** (len(conf["dim_mult"]) - 1) * int(conf.get("patch_size") or 1)
    space = space or own.get("spatial_compression_ratio")
    space = space or conf.get("scale_factor_spatial") or conf.get("spatial_compression_ratio")
    if space is None and conf.get("spatial_expansions"):  # Mochi
        space = math.prod(conf["spatial_expansions"])
    if space is None and conf.get("block_out_channels"):
        space = 2 ** (len(conf["block_out_channels"]) - 1)
    if per_frame:
        time = 1
    time = time or own.get("temporal_compression_ratio")
    time = time or conf.get("scale_factor_temporal") or conf.get("temporal_compression_ratio")
    if time is None and conf.get("temporal_expansions"):  # Mochi
        time = math.prod(conf["temporal_expansions"])
    if not space or not time:
        raise EncoderError(
            f"{VAE_KEY}.cls",
            f"cannot tell the compression ratios of a {type(model).__name__} - set {VAE_KEY}.cls",
        )
    return int(time), int(space)


def _normalization(conf: dict, model: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale) [1, C, 1, 1, 1] with normalized = (z - mean) * scale.

    Per-channel statistics when the VAE has them (Wan's and Mochi's config, LTX's buffers):
    scale = scaling_factor / std, as those pipelines do. Otherwise one shift and scale for all
    channels: (z - shift_factor) * scaling_factor (CogVideoX, HunyuanVideo, SD-style VAEs)."""
    import torch

    scaling = float(conf.get("scaling_factor") or 1.0)
    mean, std = conf.get("latents_mean"), conf.get("latents_std")
    if mean is None or std is None:
        buffers = dict(model.named_buffers(recurse=False))  # LTX keeps its statistics as buffers
        if "latents_mean" in buffers and "latents_std" in buffers:
            mean, std = (
                buffers[name].detach().float().cpu().flatten() for name in ("latents_mean", "latents_std")
            )
    if mean is not None and std is not None:
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.numel() != channels or std.numel() != channels:
            raise EncoderError(
                f"{VAE_KEY}.model",
                f"latents_mean/latents_std have {mean.numel()} values for {channels} channels - set {VAE_KEY}.model",
            )
        scale = scaling / std
    else:
        mean = torch.full((channels,), float(conf.get("shift_factor") or 0.0))
        scale = torch.full((channels,), scaling)
    return mean.view(1, -1, 1, 1, 1), scale.view(1, -1, 1, 1, 1)


def _mode(output) -> torch.Tensor:
    """The deterministic latent of an encoder output: the posterior mode, or the plain latent of
    autoencoders without a distribution (AutoencoderDC, AutoencoderTiny)."""
    import torch

    dist = getattr(output, "latent_dist", None)
    if dist is not None:
        return dist.mode()
    for name in ("latent", "latents"):
        if isinstance(getattr(output, name, None), torch.Tensor):
            return getattr(output, name)
    if isinstance(output, tuple) and output:
        return _mode(output[0]) if not isinstance(output[0], torch.Tensor) else output[0]
    raise TypeError(f"cannot read latents from a {type(output).__name__}")


def _sample(output) -> torch.Tensor:
    return output.sample if hasattr(output, "sample") else output[0]


class VideoVAE:
    """Frozen (eval, requires_grad False). encode/decode work on NORMALIZED latents: (z - mean) / std
    with the per-channel latents_mean/latents_std of the VAE config (Wan), or (z - shift_factor) *
    scaling_factor (other diffusers VAEs), so the DiT sees roughly unit-variance latents."""

    def __init__(
        self, model: nn.Module, cfg: VAEConfig, conf: dict, device: torch.device, dtype: torch.dtype
    ):
        from torch import nn

        self.model, self.cfg, self.device, self.dtype = model, cfg, device, dtype
        # A VAE without a 3D convolution is an image VAE: it sees frames, not clips.
        self.per_frame = not any(isinstance(m, nn.Conv3d) for m in model.modules())
        self.latent_channels = _latent_channels(conf)
        self.time_ratio, self.space_ratio = _ratios(conf, model, self.per_frame)
        mean, scale = _normalization(conf, model, self.latent_channels)
        self.mean, self.scale = mean.to(device), scale.to(device)

    @classmethod
    def from_config(cls, cfg: VAEConfig, device: str | torch.device = "cpu") -> VideoVAE:
        """Load through the class's own `from_pretrained`, as a user of diffusers would."""
        import torch

        model_cls, conf = _vae_config(cfg)
        device = torch.device(device)
        dtype = _dtype(cfg.dtype, torch.float32)
        low_memory = importlib.util.find_spec("accelerate") is not None  # diffusers needs it for that
        try:
            model = model_cls.from_pretrained(
                cfg.model, subfolder=cfg.subfolder, torch_dtype=dtype, low_cpu_mem_usage=low_memory
            )
        except (OSError, ValueError) as exc:
            raise EncoderError(
                f"{VAE_KEY}.model", f"cannot load the VAE from {cfg.model!r} ({exc}) - set {VAE_KEY}.model"
            ) from None
        model = model.to(device).eval().requires_grad_(False)
        if cfg.tiling:
            try:
                model.enable_tiling()
            except (AttributeError, NotImplementedError):
                warnings.warn(f"{VAE_KEY}.tiling: {cfg.cls} cannot tile; encoding whole frames", stacklevel=2)
        return cls(model, cfg, conf, device, dtype)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T', H', W') of a clip of `num_frames` frames of height x width; ValueError if it cannot be
        encoded whole: causal video VAEs take 1 + k * time_ratio frames (the first frame alone, then
        groups), and every VAE takes sides that are multiples of its spatial ratio."""
        r, s = self.time_ratio, self.space_ratio
        if num_frames < 1 or (num_frames - 1) % r:
            lower = max(1, (max(num_frames, 1) - 1) // r * r + 1)
            raise ValueError(
                f"{self.cfg.cls} encodes 1 + {r}k frames (1, {1 + r}, {1 + 2 * r}, ...), not {num_frames}; "
                f"use {lower} or {lower + r}"
            )
        if height < s or width < s or height % s or width % s:
            raise ValueError(
                f"{self.cfg.cls} needs height and width that are multiples of {s}, not {height}x{width}; "
                f"use {max(s, height // s * s)}x{max(s, width // s * s)}"
            )
        return self.latent_channels, 1 + (num_frames - 1) // r, height // s, width // s

    @_no_grad
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] (any device) -> normalized latents [B, C, T', H', W'] float32 on
        the VAE's device; one sample at a time, so memory is bounded by one clip whatever the batch."""
        import torch

        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected a video [B, 3, T, H, W], got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise TypeError(
                f"expected a float video in [-1, 1], got {video.dtype} (map uint8 pixels x to x / 127.5 - 1)"
            )
        self.latent_shape(*video.shape[2:])
        latents = []
        for sample in video:
            x = sample[None].to(self.device, self.dtype)  # [1, 3, T, H, W]
            if self.per_frame:
                frames = x[0].transpose(0, 1)  # [T, 3, H, W]
                z = torch.cat([_mode(self.model.encode(chunk)) for chunk in self._chunks(frames)])
                z = z.transpose(0, 1)[None]  # [1, C, T, H', W']
            else:
                z = _mode(self.model.encode(x))  # [1, C, T', H', W']
            latents.append(z.float())
        return (torch.cat(latents) - self.mean) * self.scale

    @_no_grad
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalized latents [B, C, T', H', W'] -> video [B, 3, T, H, W] float32 in [-1, 1]."""
        import torch

        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents [B, {self.latent_channels}, T, H, W], got {tuple(latents.shape)}"
            )
        raw = latents.to(self.device, torch.float32) / self.scale + self.mean
        videos = []
        for z in raw:
            z = z[None].to(self.dtype)  # [1, C, T', H', W']
            if self.per_frame:
                frames = z[0].transpose(0, 1)  # [T', C, H', W']
                x = torch.cat([_sample(self.model.decode(chunk)) for chunk in self._chunks(frames)])
                x = x.transpose(0, 1)[None]  # [1, 3, T, H, W]
            else:
                x = _sample(self.model.decode(z))
            videos.append(x.float())
        return torch.cat(videos).clamp(-1, 1)

    def _chunks(self, frames: torch.Tensor) -> list[torch.Tensor]:
        n = self.cfg.chunk_frames or len(frames)
        return list(frames.split(n))

    def describe(self) -> dict:
        return {
            "model": self.cfg.model,
            "class": self.cfg.cls,
            "latent_channels": self.latent_channels,
            "time_ratio": self.time_ratio,
            "space_ratio": self.space_ratio,
        }


def vae_latent_channels(cfg: VAEConfig) -> int:
    """What the DiT's `in_channels` must be, from the VAE's config file alone (no weights loaded)."""
    return _latent_channels(_vae_config(cfg)[1])


# -- the text encoder ----------------------------------------------------------------------------------


def _hidden_size(conf) -> int:
    for c in (conf, getattr(conf, "text_config", None)):
        for name in ("d_model", "hidden_size"):
            if c is not None and isinstance(getattr(c, name, None), int):
                return getattr(c, name)
    raise EncoderError(
        f"{TEXT_KEY}.model",
        f"a {type(conf).__name__} names no width (d_model, hidden_size) - set {TEXT_KEY}.model",
    )


def _transformers_config(cfg: TextEncoderConfig):
    from transformers import AutoConfig

    _locate(cfg.model, cfg.subfolder, TEXT_KEY, f"{TEXT_KEY}.subfolder")
    try:
        return AutoConfig.from_pretrained(cfg.model, subfolder=cfg.subfolder or "")
    except (OSError, ValueError) as exc:
        raise EncoderError(
            f"{TEXT_KEY}.model", f"cannot read the config of {cfg.model!r} ({exc}) - set {TEXT_KEY}.model"
        ) from None


def _open_clip_config(cfg: TextEncoderConfig) -> dict:
    import open_clip

    key = f"{TEXT_KEY}.model"
    if cfg.model.startswith("local-dir:") and not os.path.isfile(
        os.path.join(cfg.model.removeprefix("local-dir:"), "open_clip_config.json")
    ):
        raise EncoderError(
            key,
            f"{cfg.model!r} has no open_clip_config.json - set {key} to local-dir:PATH of an open_clip model",
        )
    if cfg.model.startswith("hf-hub:"):
        hub_reachable()  # its config is fetched through the hub client
    try:
        conf = open_clip.get_model_config(cfg.model)
    except Exception as exc:  # hf-hub: whatever the hub client raises when it cannot fetch
        raise EncoderError(
            key, f"cannot read the open_clip config of {cfg.model!r} ({exc}) - set {key} to local-dir:PATH "
            "(or pre-fill the Hugging Face cache)",
        ) from None  # fmt: skip
    if conf is None:
        raise EncoderError(
            key,
            f"open_clip has no model {cfg.model!r} - set {key} to an open_clip name, hf-hub:ID or local-dir:PATH",
        )
    return conf


class TextEncoder:
    """Frozen. `encode(prompts)` gives token embeddings and their mask, as the DiT cross-attends to them."""

    def __init__(self, cfg: TextEncoderConfig, model: nn.Module, tokenizer, dim: int, device: torch.device):
        self.cfg, self.model, self.tokenizer, self.dim, self.device = cfg, model, tokenizer, dim, device

    @classmethod
    def from_config(cls, cfg: TextEncoderConfig, device: str | torch.device = "cpu") -> TextEncoder:
        import torch

        device = torch.device(device)
        dtype = _dtype(cfg.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
        if cfg.kind == "open_clip":
            model, tokenizer, dim = _load_open_clip(cfg, device)
        else:
            model, tokenizer, dim = _load_transformers(cfg, dtype)
        return cls(cfg, model.to(device, dtype).eval().requires_grad_(False), tokenizer, dim, device)

    @_no_grad
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (embeddings [B, L, dim] float32, mask [B, L] bool) on the encoder's device: L is the
        longest prompt's token count (at most max_length); padded positions are zero and False."""
        import torch

        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not one string")
        prompts = list(prompts)
        if not prompts:
            empty = torch.zeros(0, 0, self.dim, device=self.device)
            return empty, torch.zeros(0, 0, dtype=torch.bool, device=self.device)
        if self.cfg.kind == "open_clip":
            hidden, mask = self._encode_open_clip(prompts)
        else:
            batch = self.tokenizer(
                prompts,
                padding="longest",
                truncation=True,
                max_length=self.cfg.max_length,
                return_tensors="pt",
            )
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device).bool()
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, dim]
        return hidden.float() * mask[..., None], mask

    def _encode_open_clip(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text tower always runs at its full context (its positions and masks are built for it), so
        a prompt's embedding never depends on the batch; the output is cut to the longest prompt."""
        import torch

        context = self.model.context_length
        tokens = self.tokenizer(prompts, context_length=min(self.cfg.max_length, context))  # [B, n]
        eot = getattr(self.tokenizer, "eot_token_id", None)
        # CLIP's BPE: every prompt ends at its first end-of-text token (kept on truncation)
        if eot is not None:
            lengths = (tokens == eot).int().argmax(dim=1) + 1
            pad = 0
        else:
            pad = self.tokenizer.tokenizer.pad_token_id or 0
            lengths = (tokens != pad).sum(dim=1)
        tokens = torch.nn.functional.pad(tokens, (0, context - tokens.shape[1]), value=pad).to(self.device)
        out = self.model.forward_intermediates(
            text=tokens, text_indices=1, normalize_intermediates=True, intermediates_only=True
        )
        hidden = out["text_intermediates"][-1]  # [B, context, width], after the final LayerNorm
        longest = int(lengths.max())
        mask = torch.arange(longest)[None] < lengths[:, None]  # [B, L]
        return hidden[:, :longest], mask.to(self.device)

    def describe(self) -> dict:
        out = {
            "kind": self.cfg.kind,
            "model": self.cfg.model,
            "dim": self.dim,
            "max_length": self.cfg.max_length,
        }
        if self.cfg.kind == "open_clip":
            out["pretrained"] = self.cfg.pretrained
        return out


def _load_transformers(cfg: TextEncoderConfig, dtype: torch.dtype):
    """The encoder alone: T5-family checkpoints (even whole encoder-decoders) through their
    `*EncoderModel` class, which loads no decoder weights; anything else through AutoModel."""
    import transformers
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per encode actor is noise in job logs
    conf = _transformers_config(cfg)
    _locate(
        cfg.model, cfg.tokenizer_subfolder, TEXT_KEY, f"{TEXT_KEY}.tokenizer_subfolder",
        filename="tokenizer_config.json", need_file_locally=False,
    )  # fmt: skip
    encoder_cls = getattr(transformers, type(conf).__name__.removesuffix("Config") + "EncoderModel", None)
    try:
        model = (encoder_cls or AutoModel).from_pretrained(
            cfg.model, subfolder=cfg.subfolder or "", dtype=dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, subfolder=cfg.tokenizer_subfolder or "")
    except (OSError, ValueError) as exc:
        raise EncoderError(
            f"{TEXT_KEY}.model",
            f"cannot load the text encoder from {cfg.model!r} ({exc}) - set {TEXT_KEY}.model",
        ) from None
    if encoder_cls is None and getattr(conf, "is_encoder_decoder", False):
        model = model.get_encoder()
    if tokenizer.pad_token is None:  # decoder-style tokenizers: any id will do, padding is masked
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model, tokenizer, _hidden_size(conf)


def _load_open_clip(cfg: TextEncoderConfig, device: torch.device):
    import open_clip
    from torch import nn

    conf = _open_clip_config(cfg)
    quick_gelu = False
    if cfg.model.startswith(OPEN_CLIP_SCHEMAS):
        if cfg.pretrained:
            raise EncoderError(
                f"{TEXT_KEY}.pretrained",
                f"{cfg.model!r} brings its own weights - set {TEXT_KEY}.pretrained to null",
            )
    elif cfg.pretrained:
        tag = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained)
        if not tag and not os.path.isfile(cfg.pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.model)) or "none"
            raise EncoderError(
                f"{TEXT_KEY}.pretrained",
                f"{cfg.pretrained!r} is neither a checkpoint file nor a pretrained tag of {cfg.model} - set "
                f"{TEXT_KEY}.pretrained to a checkpoint file or one of: {tags}",
            )
        quick_gelu = bool(tag.get("quick_gelu", False))  # OpenAI's weights need QuickGELU (see aesthetic.py)
    else:
        raise EncoderError(
            f"{TEXT_KEY}.pretrained",
            f"unset - set {TEXT_KEY}.pretrained to a pretrained tag or checkpoint file of {cfg.model}",
        )
    if cfg.model.startswith("hf-hub:") or (cfg.pretrained and not os.path.isfile(cfg.pretrained)):
        hub_reachable()  # the weights are fetched through the hub client
    try:
        model = open_clip.create_model(
            cfg.model, pretrained=cfg.pretrained or None, device=device, force_quick_gelu=quick_gelu
        )
        tokenizer = open_clip.get_tokenizer(cfg.model)
    except (RuntimeError, OSError, ValueError) as exc:
        key = f"{TEXT_KEY}.pretrained" if cfg.pretrained else f"{TEXT_KEY}.model"
        raise EncoderError(
            key,
            f"could not load {cfg.model} weights ({exc}) - set {key} to a local checkpoint file or directory",
        ) from None
    if hasattr(model, "visual"):
        model.visual = nn.Identity()  # the image tower is never used here: free its memory
    return model, tokenizer, int(conf["text_cfg"]["width"])


def text_encoder_dim(cfg: TextEncoderConfig) -> int:
    """What the DiT's `text_dim` must be, from the encoder's config alone (d_model / text tower width)."""
    if cfg.kind == "open_clip":
        return int(_open_clip_config(cfg)["text_cfg"]["width"])
    return _hidden_size(_transformers_config(cfg))
