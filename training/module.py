"""The LightningModule that trains a VideoDiT with rectified flow on latent clips.

A batch is `{"latents": [B, C, T, H, W], "text": [B, L, D], "text_mask": [B, L]}` (latent shards),
or `{"video": uint8 [B, 3, T, H, W], "caption": [str]}` (clip shards), which the frozen VAE and
text encoder named in `vae` / `text_encoder` turn into the former on the device, after the transfer.
The encoders are loaded only when needed (video batches, sampling) and are never part of the
checkpoint: it holds their configs, so `reelmill sample` rebuilds them. Each step draws
logit-normal times (shifted by token count), noises the latents along the straight path, drops the
text of a `text_drop` share of samples (for classifier-free guidance) and regresses the velocity.
With frame conditioning each sample also draws a mask kind from `mask_mix` (`training.conditioning`):
its given latent cells enter the model clean, and the loss is the mean over the cells NOT given (the
given ones are copied at sampling time, so their prediction is never used).
An EMA copy of the weights is kept as a submodule, so it is saved and restored with the checkpoint
and sampled from. Validation uses fixed times and fixed noise, so its loss is comparable across steps;
`val/loss` stays text-to-video (comparable with runs before conditioning), and `val/loss_first_frame`
shows whether image-to-video is being learned.
Precision, devices and DDP/FSDP are the Trainer's (`bf16-mixed` on GPU, fp32 on CPU).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F

from curation import config as config_lib
from training.clip_decode import uint8_to_model_range
from training.conditioning import MASK_KINDS, check_mask_mix, draw_masks, fill_given_chunks, latent_mask
from training.encoders import (
    TextEncoder,
    TextEncoderConfig,
    VAEConfig,
    VideoVAE,
    text_encoder_dim,
    vae_latent_channels,
)
from training.flow import auto_shift, interpolate, sample_time, velocity_target
from training.model import DiTConfig, VideoDiT, preset
from training.sampler import null_text, sample

T_BUCKETS = 4  # training loss is also logged per quarter of the time range
VAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


class VideoDiTModule(L.LightningModule):
    def __init__(
        self,
        model: str = "tiny",
        model_overrides: dict | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 1000,
        schedule: Literal["cosine", "constant"] = "constant",
        total_steps: int = 100_000,
        min_lr_ratio: float = 0.1,
        grad_clip: float = 1.0,
        ema_decay: float = 0.9999,
        text_drop: float = 0.1,
        shift: float | None = None,
        t_mean: float = 0.0,
        t_std: float = 1.0,
        compile: bool | str = False,
        vae: dict | None = None,
        text_encoder: dict | None = None,
        mask_mix: dict[str, float] | None = None,
    ):
        """`model`: a preset name (tiny, S, B, L, XL) with `model_overrides` (in_channels, text_dim,
        patch, factorized, checkpointing, caption_projection, conditioning, ...). `shift`: None grows it
        with the token count. `vae`, `text_encoder`: `training.encoders.VAEConfig` / `TextEncoderConfig`
        fields; when given, `in_channels` and `text_dim` default to theirs (read from their configs, no
        weights loaded). `mask_mix`: share of training samples per mask kind (`MASK_KINDS`; None: the
        default mix, `{"none": 1.0}`: text-to-video only); a model without conditioning ignores it.
        `compile`: True runs the model through `torch.compile` (inductor); a string names another backend
        (`aot_eager` checks capture and autograd graphs without code generation, `cudagraphs`, ...)."""
        super().__init__()
        self.save_hyperparameters()
        self.mask_mix = check_mask_mix(mask_mix)
        self.trained_models: str | None = None
        """`models` of the run that trained these weights, as its checkpoint or export says (set by
        `jobs.sample`'s loaders): a DiT trained on stand-in latents stays marked whatever decodes it now."""
        self.vae_config = config_lib.from_dict(VAEConfig, vae, "model.vae.") if vae is not None else None
        self.text_config = (
            config_lib.from_dict(TextEncoderConfig, text_encoder, "model.text_encoder.")
            if text_encoder is not None
            else None
        )
        overrides = dict(model_overrides or {})
        # read the encoders' config files only for what the overrides leave open (an export names both)
        if self.vae_config is not None and "in_channels" not in overrides:
            overrides["in_channels"] = vae_latent_channels(self.vae_config)
        if self.text_config is not None and "text_dim" not in overrides:
            overrides["text_dim"] = text_encoder_dim(self.text_config)
        try:
            cfg = preset(model, **overrides)
        except (TypeError, ValueError) as exc:
            raise config_lib.ConfigError(f"model.model / model.model_overrides: {exc}") from None
        self.model = VideoDiT(cfg)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        # The compiled wrapper shares the model's weights; it stays out of the module tree so the
        # checkpoint holds every weight once.
        backend = compile if isinstance(compile, str) else "inductor"
        self.__dict__["_compiled"] = torch.compile(self.model, backend=backend) if compile else None

    @property
    def config(self) -> DiTConfig:
        return self.model.cfg

    def net(self, use_ema: bool = False):
        """The network to run: the EMA weights, or the live (possibly compiled) ones."""
        if use_ema:
            return self.ema
        return self._compiled if self._compiled is not None else self.model

    def encoders(self) -> tuple[VideoVAE, TextEncoder]:
        """The frozen VAE and text encoder on this module's device, loaded on first use (kept out of the
        module tree: not trained, not in the checkpoint, not moved or wrapped by the strategy)."""
        if self.vae_config is None or self.text_config is None:
            raise config_lib.ConfigError(
                "model.vae and model.text_encoder: this batch or sample needs the encoders; set both"
            )
        cached = self.__dict__.get("_encoders")
        if cached is None or cached[0] != self.device:
            cached = (
                self.device,
                VideoVAE.from_config(self.vae_config, self.device),
                TextEncoder.from_config(self.text_config, self.device),
            )
            self.__dict__["_encoders"] = cached
        return cached[1], cached[2]

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Clip batches become latent batches here, on the device, before the step sees them."""
        if "latents" in batch:
            return batch
        vae, text_encoder = self.encoders()
        video = batch["video"]  # uint8 from the loader (a quarter of the bytes), or float in [-1, 1]
        if video.dtype == torch.uint8:
            video = uint8_to_model_range(video)
        text, mask = text_encoder.encode(list(batch["caption"]))
        return {**batch, "latents": vae.encode(video), "text": text, "text_mask": mask}

    def time_shift(self, latents_shape) -> float:
        if self.hparams.shift is not None:
            return float(self.hparams.shift)
        return auto_shift(math.prod(self.model.grid(latents_shape)))

    def flow_loss(
        self,
        batch: dict,
        t: torch.Tensor,
        noise: torch.Tensor,
        drop: torch.Tensor | None = None,
        use_ema: bool = False,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample MSE between predicted and true velocity at times `t` with `noise`; the text of the
        samples in `drop` is replaced by the empty text. `given` [B, 1, T, H, W] (1 = given): those
        latent cells are the model's conditioning and are left out of the mean (a sample with none
        given is plain text-to-video)."""
        x0, text, mask = batch["latents"], batch["text"], batch["text_mask"]
        if drop is not None and drop.any():
            empty_text, empty_mask = null_text(text, mask)
            keep = ~drop
            text = torch.where(keep[:, None, None], text, empty_text)
            mask = mask.bool() & keep[:, None]
        extra = {} if given is None else {"cond": x0, "cond_mask": given.to(x0.dtype)}
        pred = self.net(use_ema)(interpolate(x0, noise, t), t, text, mask, **extra)
        return masked_mse(pred, velocity_target(x0, noise), given)

    @property
    def trains_conditioning(self) -> bool:
        """Whether training draws masks: a model with conditioning and a mix beyond text-to-video."""
        return self.config.conditioning and self.mask_mix["none"] < 1.0

    def draw_given(self, latents_shape) -> tuple[torch.Tensor | None, list[str]]:
        """Latent masks [B, 1, T, H, W] of the given cells for a training batch, and each sample's kind
        (drawn from the global torch RNG, which `seed_everything` seeds); None when not conditioning."""
        b = latents_shape[0]
        if not self.trains_conditioning:
            return None, ["none"] * b
        return draw_masks(self.mask_mix, b, tuple(latents_shape[2:]))

    def training_step(self, batch: dict, batch_idx: int):
        x0 = batch["latents"]
        b = x0.shape[0]
        given, kinds = self.draw_given(x0.shape)
        t = sample_time(
            b, self.time_shift(x0.shape), self.hparams.t_mean, self.hparams.t_std, device=x0.device
        )
        drop = torch.rand(b, device=x0.device) < self.hparams.text_drop
        given = given.to(x0.device) if given is not None else None
        per_sample = self.flow_loss(batch, t, torch.randn_like(x0), drop, given=given)
        loss = per_sample.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        if given is not None:
            for kind in MASK_KINDS:
                chosen = torch.tensor([k == kind for k in kinds], device=x0.device)
                if chosen.any():
                    self.log(f"train/loss_{kind}", per_sample[chosen].mean(), batch_size=int(chosen.sum()))
        bucket = (t * T_BUCKETS).long().clamp(max=T_BUCKETS - 1)
        for k in range(T_BUCKETS):
            chosen = bucket == k
            if chosen.any():
                self.log(
                    f"train/loss_t{k / T_BUCKETS:.2f}",
                    per_sample[chosen].mean(),
                    batch_size=int(chosen.sum()),
                )
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=b)
        return loss

    def fixed_loss(
        self, batch: dict, batch_idx: int = 0, use_ema: bool = False, first_frame: bool = False
    ) -> torch.Tensor:
        """Mean loss over `VAL_TIMES` with noise seeded by the batch index: comparable across steps.
        Text-to-video, or with `first_frame` given the first latent frame (image-to-video)."""
        x0 = batch["latents"]
        given = None
        if first_frame:
            given = torch.zeros(x0.shape[0], 1, *x0.shape[2:], device=x0.device)
            given[:, :, 0] = 1
        generator = torch.Generator(device="cpu").manual_seed(1000 + batch_idx)
        losses = []
        for t_value in VAL_TIMES:
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            t = torch.full((x0.shape[0],), t_value, device=x0.device)
            losses.append(self.flow_loss(batch, t, noise, use_ema=use_ema, given=given).mean())
        return torch.stack(losses).mean()

    def validation_step(self, batch: dict, batch_idx: int):
        b = batch["latents"].shape[0]
        self.log("val/loss", self.fixed_loss(batch, batch_idx), prog_bar=True, batch_size=b)
        self.log("val/loss_ema", self.fixed_loss(batch, batch_idx, use_ema=True), batch_size=b)
        if self.trains_conditioning and batch["latents"].shape[2] > 1:
            self.log(
                "val/loss_first_frame", self.fixed_loss(batch, batch_idx, first_frame=True), batch_size=b
            )

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer step, then the EMA, at once: a checkpoint taken after the step (callbacks'
        batch-end hooks run before the module's) must hold the EMA of the same weights."""
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    def update_ema(self) -> None:
        """EMA of the weights (warmed up: decay min(d, (1+n)/(10+n)) at step n)."""
        n = self.global_step
        decay = min(self.hparams.ema_decay, (1 + n) / (10 + n))
        with torch.no_grad():
            for ema, live in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                ema.lerp_(live.detach().to(ema.dtype), 1 - decay)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            if hp.schedule == "constant":
                return 1.0
            progress = min(1.0, (step - hp.warmup_steps) / max(1, hp.total_steps - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    @torch.no_grad()
    def generate(
        self, text, text_mask, shape, use_ema: bool = True, cond=None, cond_mask=None, **kwargs
    ) -> torch.Tensor:
        """Latents for `text` (see `training.sampler.sample`), from the EMA weights by default; `cond`
        [B, C, T, H, W] and `cond_mask` [B, 1, T, H, W] (1 = given) give latent cells, which come out
        unchanged."""
        net = self.ema if use_ema else self.model
        was_training = net.training
        net.eval()
        kwargs.setdefault("shift", self.hparams.shift or auto_shift(math.prod(self.model.grid((1, *shape)))))
        try:
            return sample(net, text, text_mask, shape, cond=cond, cond_mask=cond_mask, **kwargs)
        finally:
            net.train(was_training)

    @torch.no_grad()
    def generate_videos(
        self,
        prompts: list[str],
        num_frames: int,
        height: int,
        width: int,
        cond_video: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Videos [B, 3, T, H, W] in [-1, 1] for `prompts`: text encoder, sampler, VAE decode.

        `cond_video` [B, 3, T, H, W] in [-1, 1] and `cond_mask` [B, 1, T, H, W] (1 = this pixel is
        given): the given frames' latent groups are filled (`fill_given_chunks`) and encoded, the mask
        is mapped to the latent grid (`latent_mask`), and the given latent cells come out unchanged, so
        given frames are their VAE round trip."""
        vae, text_encoder = self.encoders()
        text, mask = text_encoder.encode(list(prompts))
        shape = vae.latent_shape(num_frames, height, width)
        cond = given = None
        if cond_video is not None or cond_mask is not None:
            cond, given = self.encode_given(
                vae, cond_video, cond_mask, (len(prompts), 3, num_frames, height, width)
            )
        latents = self.generate(text, mask, shape, cond=cond, cond_mask=given, **kwargs)
        return vae.decode(latents)

    def encode_given(self, vae: VideoVAE, cond_video, cond_mask, expected: tuple) -> tuple:
        """Conditioning latents and their latent mask from pixels and a pixel mask (see generate_videos)."""
        if cond_video is None or cond_mask is None:
            raise ValueError("cond_video and cond_mask go together: give both or neither")
        if tuple(cond_video.shape) != expected:
            raise ValueError(f"cond_video must be {list(expected)} (prompts, 3, frames, height, width), "
                             f"got {list(cond_video.shape)}")  # fmt: skip
        if tuple(cond_mask.shape) != (expected[0], 1, *expected[2:]):
            raise ValueError(
                f"cond_mask must be {[expected[0], 1, *expected[2:]]}, got {list(cond_mask.shape)}"
            )
        if not self.config.conditioning and bool((cond_mask != 0).any()):
            raise ValueError(
                "this model was trained without frame conditioning (text-to-video only): it cannot take "
                "given frames"
            )
        filled = fill_given_chunks(cond_video.float(), cond_mask, vae.time_ratio)
        given = latent_mask(cond_mask.float(), vae.time_ratio, vae.space_ratio).to(vae.device)
        return vae.encode(filled), given

    @classmethod
    def from_checkpoint(cls, saved: dict, **hparam_overrides) -> VideoDiTModule:
        """The module of a checkpoint dict (as `jobs.sample.load_checkpoint` reads it, weights_only):
        built from its hyper-parameters (only those `__init__` accepts; LightningCLI adds its own), with
        `hparam_overrides` on top (`compile` is False unless overridden), its weights loaded strictly.
        A checkpoint written before caption projection and frame conditioning existed names neither in
        its hparams; the architecture is then read off its weights, so it loads and samples as before."""
        import inspect

        hparams = saved.get("hyper_parameters") or {}
        state = saved.get("state_dict")
        if not isinstance(hparams, dict) or not isinstance(state, dict):
            raise config_lib.ConfigError("not a reelmill checkpoint: no hyper_parameters / state_dict dicts")
        accepted = inspect.signature(cls.__init__).parameters
        hparams = {k: v for k, v in hparams.items() if k in accepted and k != "self"}
        hparams = {"compile": False, **hparams, **hparam_overrides}
        overrides = dict(hparams.get("model_overrides") or {})
        for key, value in architecture_of(state).items():
            overrides.setdefault(key, value)
        hparams["model_overrides"] = overrides
        module = cls(**hparams)
        module.load_state_dict(state)
        return module

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run must have the checkpoint's architecture: a checkpoint from before caption
        projection / frame conditioning is refused with the flag that resumes it, not a size mismatch."""
        state = checkpoint.get("state_dict") or {}
        found = architecture_of(state)
        differs = {k: v for k, v in found.items() if getattr(self.config, k) != v}
        if differs:
            flags = ", ".join(f"{k}: {str(v).lower()}" for k, v in found.items())
            raise config_lib.ConfigError(
                f"the checkpoint's model has {', '.join(f'{k}={v}' for k, v in differs.items())} but this "
                f"run builds {', '.join(f'{k}={getattr(self.config, k)}' for k in differs)}; resume it with "
                f"--model.model_overrides '{{{flags}}}' (with the run's other overrides), or sample it with "
                "reelmill sample, which reads the architecture from the checkpoint"
            )


def architecture_of(state: dict) -> dict[str, bool]:
    """caption_projection / conditioning as a state_dict's weights show them (keys `model.` prefixed,
    as a Lightning checkpoint holds them): a caption projection has its own weights, and a conditioned
    patch embedding reads 2 * C + 1 channels where the output layer writes C per patch cell."""
    found = {"caption_projection": any(k.startswith("model.caption_proj.") for k in state)}
    embed, out = state.get("model.patch_embed.weight"), state.get("model.final.linear.weight")
    if embed is not None and out is not None:
        cells = math.prod(embed.shape[2:])
        found["conditioning"] = embed.shape[1] == 2 * (out.shape[0] // cells) + 1
    return found


def masked_mse(pred: torch.Tensor, target: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean squared error over the latent cells not `given` ([B, 1, T, H, W], 1 = given);
    over all cells when `given` is None. A sample with every cell given has loss 0."""
    err = F.mse_loss(pred.float(), target.float(), reduction="none")
    if given is None:
        return err.mean(dim=(1, 2, 3, 4))
    free = (1 - given.float()).expand_as(err)
    return (err * free).sum(dim=(1, 2, 3, 4)) / free.sum(dim=(1, 2, 3, 4)).clamp(min=1)
