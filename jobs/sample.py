"""`reelmill sample`: a prompt to an mp4 with a trained VideoDiT checkpoint or an exported model.

The checkpoint holds everything needed: the DiT and its EMA weights, and the configs of the VAE and
text encoder it was trained with (rebuilt here through their libraries' loaders; `--vae-model` and
`--text-encoder-model` point them elsewhere, e.g. on another machine). The clip size defaults to the
one the data module trained on, also kept in a LightningCLI checkpoint. A directory written by
`reelmill export` holds the same (one set of weights, as safetensors) and samples the same videos.

A checkpoint is a pickle, and a pickle can run code while it loads: checkpoints are read with
`torch.load(weights_only=True)`, which builds tensors and plain values only (what `reelmill train`
writes: tensors, dicts, lists, strings, numbers) and refuses anything else before it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from curation.config import ConfigError
from jobs.run_info import encoder_models_label, models_note
from training.module import VideoDiTModule
from training.pretrained import load_pretrained, read_export_info
from training.video_in import evenly_spaced, grow_to_latent_cells, read_clip, read_image, read_mask
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


def load_generator(
    path: str,
    device: str = "cpu",
    vae_model: str | None = None,
    text_encoder_model: str | None = None,
) -> tuple[VideoDiTModule, dict]:
    """The module to sample from (eval mode, on `device`) and the clip size it trained on
    ({"num_frames", "height", "width", "fps"}, None where unknown).

    `path` is a checkpoint written by `reelmill train` (read with weights_only=True) or a directory
    written by `reelmill export`; `vae_model` / `text_encoder_model` replace the `model` of the encoders
    it names (their weights are never in either). An export holds one set of weights, loaded as both the
    live and the EMA ones, so `use_ema` makes no difference there."""
    device = resolve_device(device)
    if Path(path).is_dir():
        module, size = _from_export(path, vae_model, text_encoder_model)
    else:
        module, size = _from_checkpoint(path, vae_model, text_encoder_model)
    return module.to(device).eval(), size


def generator_models_label(module: VideoDiTModule) -> str:
    """`models` of what a generator writes: random-weights when the encoders it samples with are tiny
    stand-ins, or when it was trained with such (its checkpoint or export says so: its DiT learned their
    latents, whichever encoders decode them now); else pretrained."""
    return encoder_models_label(module.vae_config, module.text_config, module.trained_models)


def _encoder_overrides(hparams: dict, source: str, vae_model: str | None, text_model: str | None) -> dict:
    """`vae` and `text_encoder` hparams with the models moved where the flags say; a source trained
    without one cannot sample."""
    out = {}
    for key, model in (("vae", vae_model), ("text_encoder", text_model)):
        if not isinstance(hparams.get(key), dict):
            raise ConfigError(
                f"--ckpt {source} was trained without model.{key}; it cannot decode or encode here"
            )
        out[key] = {**hparams[key], "model": model} if model is not None else dict(hparams[key])
    return out


def _from_checkpoint(ckpt: str, vae_model: str | None, text_model: str | None) -> tuple[VideoDiTModule, dict]:
    saved = load_checkpoint(ckpt)
    hparams = saved.get("hyper_parameters") or {}
    trained = saved.get("datamodule_hyper_parameters") or {}
    if not isinstance(hparams, dict) or not isinstance(trained, dict):
        raise CheckpointRefused(f"--ckpt {ckpt}: its hyper_parameters are not a dict")
    encoders = _encoder_overrides(hparams, ckpt, vae_model, text_model)
    # one sampling run gains nothing from compiling
    module = VideoDiTModule.from_checkpoint(saved, **encoders, compile=False)
    module.trained_models = saved.get("models")  # what `reelmill train` said of its encoders
    return module, {k: trained.get(k) for k in SIZE_KEYS}


def _from_export(
    directory: str, vae_model: str | None, text_model: str | None
) -> tuple[VideoDiTModule, dict]:
    info = read_export_info(directory)
    encoders = _encoder_overrides(info, directory, vae_model, text_model)
    dit = load_pretrained(directory)
    module = VideoDiTModule(
        model=info.get("preset") or "tiny",
        model_overrides=dit.config_dict(),  # every DiTConfig field, so the preset only names it
        shift=info.get("shift"),
        compile=False,
        **encoders,
    )
    weights = dit.state_dict()
    module.model.load_state_dict(weights)
    module.ema.load_state_dict(weights)
    module.trained_models = info.get("models")
    clip = info.get("clip") if isinstance(info.get("clip"), dict) else {}
    return module, {k: clip.get(k) for k in SIZE_KEYS}


MODES = ("image", "extend", "keyframes", "inpaint", "long")
"""Conditioned modes of `reelmill sample` (the flags of the same names); none of them = text-to-video."""


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
    image: str | None = None,
    extend: str | None = None,
    seconds: float | None = None,
    keyframes: list[str] | None = None,
    inpaint: str | None = None,
    mask: str | None = None,
    long: int | None = None,
    log=print,
) -> list[str]:
    """Write one mp4 per prompt (`output`, or `output` with `-N` before the suffix for several).

    At most one mode: `image` (its first frame given), `extend` + `seconds` (the clip continued),
    `keyframes` (images spread over the window), `inpaint` + `mask` (the clip's first window repainted
    where the mask is white), `long` (N windows between keyframes of a first one); none: text-to-video."""
    mode = _check_mode(image, extend, seconds, keyframes, inpaint, mask, long)
    module, trained = load_generator(ckpt, resolve_device(device), vae_model, text_encoder_model)
    given = {"num_frames": num_frames, "height": height, "width": width, "fps": fps}
    size = {k: given[k] if given[k] is not None else trained.get(k) for k in SIZE_KEYS}
    missing = [k for k in SIZE_KEYS if size[k] is None]
    if missing:
        flags = ", ".join("--" + k.replace("num_", "") for k in missing)
        raise ConfigError(f"--ckpt {ckpt} does not say the clip size it trained on; pass {flags}")
    window = Window(module, list(prompts), int(size["num_frames"]), int(size["height"]), int(size["width"]))
    window.check_size()
    if mode is not None and not getattr(module.config, "conditioning", False):
        raise ConfigError(
            f"--{mode}: the model of {ckpt} was trained without frame conditioning (conditioning: false); "
            "it samples text-to-video only"
        )
    sampling = {"use_ema": use_ema, "steps": steps, "guidance": guidance, "method": method}
    rate = float(size["fps"])
    if mode is None:
        videos = window.generate(None, None, seed=seed, **sampling)
    elif mode == "image":
        videos = window.from_frames(
            {0: read_image(image, window.height, window.width, "--image")}, seed, sampling
        )
    elif mode == "keyframes":
        videos = window.from_frames(window.keyframe_images(keyframes), seed, sampling)
    elif mode == "inpaint":
        videos = window.inpaint(inpaint, mask, rate, seed, sampling)
    elif mode == "extend":
        videos = window.extend(extend, seconds, rate, seed, sampling)
    else:
        videos = window.long(long, seed, sampling)
    paths = [output] if len(prompts) == 1 else [_numbered(output, i) for i in range(len(prompts))]
    note = models_note(generator_models_label(module))
    for path, video in zip(paths, videos, strict=True):
        write_mp4(to_frames(video), path, fps=rate)
        what = f" ({mode})" if mode else ""
        log(
            f"reelmill sample: {video.shape[1]} frames {video.shape[3]}x{video.shape[2]}{what} -> {path}{note}"
        )
    return paths


def _check_mode(image, extend, seconds, keyframes, inpaint, mask, long) -> str | None:
    """The one mode asked for; ConfigError naming the flag for a flag without its mode or a bad value."""
    chosen = [
        name
        for name, value in zip(MODES, (image, extend, keyframes, inpaint, long), strict=True)
        if value is not None
    ]
    if len(chosen) > 1:
        raise ConfigError(f"--{chosen[0]} and --{chosen[1]}: choose one conditioning mode")
    if seconds is not None and extend is None:
        raise ConfigError("--seconds goes with --extend CLIP (how long to continue the clip)")
    if extend is not None and (seconds is None or not seconds > 0):
        raise ConfigError(f"--seconds: --extend needs a length to add, > 0 seconds (got {seconds})")
    if mask is not None and inpaint is None:
        raise ConfigError("--mask goes with --inpaint CLIP (the clip to repaint where the mask is white)")
    if inpaint is not None and mask is None:
        raise ConfigError("--mask: --inpaint needs a mask (an image or a video, white = repaint)")
    if keyframes is not None and len(keyframes) < 2:
        raise ConfigError(
            "--keyframes: give at least two images (the first and the last frame); --image for one"
        )
    if long is not None and long < 1:
        raise ConfigError(f"--long: the number of windows between keyframes must be >= 1, got {long}")
    return chosen[0] if chosen else None


class Window:
    """Sampling of one window (the clip size the model generates at once) for a batch of prompts, with
    given frames: the modes below build a pixel video and mask of what is given, and the module fills,
    encodes, samples the rest, and decodes (`VideoDiTModule.generate_videos`)."""

    def __init__(self, module: VideoDiTModule, prompts: list[str], num_frames: int, height: int, width: int):
        self.module, self.prompts = module, prompts
        self.num_frames, self.height, self.width = num_frames, height, width

    def check_size(self) -> None:
        vae, _ = self.module.encoders()
        try:
            vae.latent_shape(self.num_frames, self.height, self.width)
        except ValueError as exc:
            raise ConfigError(f"--frames/--height/--width: {exc}") from None

    @property
    def ratios(self) -> tuple[int, int]:
        vae, _ = self.module.encoders()
        return vae.time_ratio, vae.space_ratio

    def blank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Nothing given yet: a zero video [B, 3, T, H, W] and a zero mask [B, 1, T, H, W]."""
        b, t, h, w = len(self.prompts), self.num_frames, self.height, self.width
        return torch.zeros(b, 3, t, h, w), torch.zeros(b, 1, t, h, w)

    def generate(self, cond_video, cond_mask, seed: int, **sampling) -> torch.Tensor:
        """Videos [B, 3, T, H, W] in [-1, 1]; the given pixels come out as their VAE round trip."""
        return self.module.generate_videos(
            self.prompts, self.num_frames, self.height, self.width,
            cond_video=cond_video, cond_mask=cond_mask, seed=seed, **sampling,
        )  # fmt: skip

    def from_frames(self, frames: dict[int, torch.Tensor], seed: int, sampling: dict) -> torch.Tensor:
        """A window with whole frames given: {frame index: [3, H, W] (every prompt) or [B, 3, H, W]}."""
        video, given = self.blank()
        for index, frame in frames.items():
            video[:, :, index] = frame.to(video)
            given[:, :, index] = 1.0
        return self.generate(video, given, seed, **sampling)

    def keyframe_images(self, paths: list[str]) -> dict[int, torch.Tensor]:
        """The images placed evenly over the window, the first on frame 0 and the last on the last frame."""
        if len(paths) > self.num_frames:
            raise ConfigError(f"--keyframes: {len(paths)} images for a window of {self.num_frames} frames")
        places = evenly_spaced(len(paths), self.num_frames)
        return {
            i: read_image(p, self.height, self.width, "--keyframes")
            for i, p in zip(places, paths, strict=True)
        }

    def inpaint(self, clip_path: str, mask_path: str, fps: float, seed: int, sampling: dict) -> torch.Tensor:
        """The clip's first window, repainted where the mask is white. The white region is grown to whole
        latent cells (the model keeps or generates cells, not pixels), so nothing white is kept."""
        clip = read_clip(clip_path, self.height, self.width, fps, "--inpaint", max_frames=self.num_frames)
        if clip.shape[1] < self.num_frames:
            raise ConfigError(
                f"--inpaint {clip_path}: {clip.shape[1]} frames at {fps:g} fps; the window has {self.num_frames}"
            )
        repaint = read_mask(mask_path, self.num_frames, self.height, self.width, fps, "--mask")
        repaint = grow_to_latent_cells(repaint, *self.ratios)
        b = len(self.prompts)
        return self.generate(
            clip.expand(b, -1, -1, -1, -1), (1 - repaint).expand(b, -1, -1, -1, -1), seed, **sampling
        )

    def context_frames(self) -> int:
        """How many of a window's first frames an extension is given: 1 + time_ratio (two whole latent
        frames: the causal VAE's lone first frame and one group) when the window has room for at least as
        many new ones, else 1. One frame carries the look of the clip but not its motion; 1 + r frames
        carry its motion too and give the model no half-given latent frame."""
        r, _ = self.ratios
        if self.num_frames < 2:
            raise ConfigError(f"--extend: a window of {self.num_frames} frame has no room for new frames")
        return 1 + r if self.num_frames - 1 >= 2 * r else 1

    def extend(self, clip_path: str, seconds: float, fps: float, seed: int, sampling: dict) -> torch.Tensor:
        """The clip followed by `seconds` of continuation: windows chained, each given the last frames of
        what is there so far (the clip, then the clip and the frames generated); window i is seeded
        seed + i. The clip itself is written as read (resampled and sized as the model's clips)."""
        clip = read_clip(clip_path, self.height, self.width, fps, "--extend")
        wanted = round(seconds * fps)
        if wanted < 1:
            raise ConfigError(f"--seconds {seconds:g}: less than one frame at {fps:g} fps")
        video = clip[None].expand(len(self.prompts), -1, -1, -1, -1)
        context, added, i = self.context_frames(), 0, 0
        while added < wanted:
            given = min(context, video.shape[2])
            cond, mask = self.blank()
            cond[:, :, :given] = video[:, :, -given:]
            mask[:, :, :given] = 1.0
            new = self.generate(cond, mask, seed + i, **sampling)[:, :, given:]
            new = new[:, :, : wanted - added]
            video = torch.cat([video, new.to(video)], dim=2)
            added, i = added + new.shape[2], i + 1
        return video

    def long(self, gaps: int, seed: int, sampling: dict) -> torch.Tensor:
        """`gaps` windows one after another: a first window text-to-video (seed) gives gaps + 1 evenly
        spaced keyframes; window i is interpolated between keyframes i and i + 1 (seed + 1 + i). The
        windows share their boundary frames: gaps * (num_frames - 1) + 1 frames."""
        if gaps > self.num_frames - 1:
            raise ConfigError(
                f"--long {gaps}: at most {self.num_frames - 1} (one keyframe per frame of the first window)"
            )
        first = self.generate(None, None, seed, **sampling)
        keys = first[:, :, evenly_spaced(gaps + 1, self.num_frames)]  # [B, 3, gaps + 1, H, W]
        pieces = []
        for i in range(gaps):
            window = self.from_frames(
                {0: keys[:, :, i], self.num_frames - 1: keys[:, :, i + 1]}, seed + 1 + i, sampling
            )
            pieces.append(window if i == 0 else window[:, :, 1:])
        return torch.cat(pieces, dim=2)


def _numbered(path: str, i: int) -> str:
    stem, dot, suffix = path.rpartition(".")
    return f"{stem}-{i}.{suffix}" if dot else f"{path}-{i}"
