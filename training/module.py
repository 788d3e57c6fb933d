"""The LightningModule that trains a VideoDiT with rectified flow on latent clips.

A batch is `{"latents": [B, C, T, H, W], "text": [B, L, D], "text_mask": [B, L]}` (latent shards),
or `{"video": uint8 [B, 3, T, H, W], "caption": [str]}` (clip shards), which the frozen VAE and
text encoder named in `vae` / `text_encoder` turn into the former on the device, after the transfer.
The encoders are loaded only when needed (video batches, sampling) and are never part of the
checkpoint: it holds their configs, so `reelmill sample` rebuilds them. Each step draws
logit-normal times (shifted by token count), noises the latents along the straight path, drops the
text of a `text_drop` share of samples (for classifier-free guidance) and regresses the velocity.
An EMA copy of the weights is kept as a submodule, so it is saved and restored with the checkpoint
and sampled from. Validation uses fixed times and fixed noise, so its loss is comparable across steps.
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
        compile: bool = False,
        vae: dict | None = None,
        text_encoder: dict | None = None,
    ):
        """`model`: a preset name (tiny, S, B, L, XL) with `model_overrides` (in_channels, text_dim,
        patch, factorized, checkpointing, ...). `shift`: None grows it with the token count.
        `vae`, `text_encoder`: `training.encoders.VAEConfig` / `TextEncoderConfig` fields; when given,
        `in_channels` and `text_dim` default to theirs (read from their configs, no weights loaded)."""
        super().__init__()
        self.save_hyperparameters()
        self.vae_config = config_lib.from_dict(VAEConfig, vae, "model.vae.") if vae is not None else None
        self.text_config = (
            config_lib.from_dict(TextEncoderConfig, text_encoder, "model.text_encoder.")
            if text_encoder is not None
            else None
        )
        overrides = dict(model_overrides or {})
        if self.vae_config is not None:
            overrides.setdefault("in_channels", vae_latent_channels(self.vae_config))
        if self.text_config is not None:
            overrides.setdefault("text_dim", text_encoder_dim(self.text_config))
        self.model = VideoDiT(preset(model, **overrides))
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        # The compiled wrapper shares the model's weights; it stays out of the module tree so the
        # checkpoint holds every weight once.
        self.__dict__["_compiled"] = torch.compile(self.model) if compile else None

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
    ) -> torch.Tensor:
        """Per-sample MSE between predicted and true velocity at times `t` with `noise`; the text of the
        samples in `drop` is replaced by the empty text."""
        x0, text, mask = batch["latents"], batch["text"], batch["text_mask"]
        if drop is not None and drop.any():
            empty_text, empty_mask = null_text(text, mask)
            keep = ~drop
            text = torch.where(keep[:, None, None], text, empty_text)
            mask = mask.bool() & keep[:, None]
        pred = self.net(use_ema)(interpolate(x0, noise, t), t, text, mask)
        return F.mse_loss(pred.float(), velocity_target(x0, noise).float(), reduction="none").mean(
            dim=(1, 2, 3, 4)
        )

    def training_step(self, batch: dict, batch_idx: int):
        x0 = batch["latents"]
        b = x0.shape[0]
        t = sample_time(
            b, self.time_shift(x0.shape), self.hparams.t_mean, self.hparams.t_std, device=x0.device
        )
        drop = torch.rand(b, device=x0.device) < self.hparams.text_drop
        per_sample = self.flow_loss(batch, t, torch.randn_like(x0), drop)
        loss = per_sample.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
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

    def fixed_loss(self, batch: dict, batch_idx: int = 0, use_ema: bool = False) -> torch.Tensor:
        """Mean loss over `VAL_TIMES` with noise seeded by the batch index: comparable across steps."""
        x0 = batch["latents"]
        generator = torch.Generator(device="cpu").manual_seed(1000 + batch_idx)
        losses = []
        for t_value in VAL_TIMES:
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            t = torch.full((x0.shape[0],), t_value, device=x0.device)
            losses.append(self.flow_loss(batch, t, noise, use_ema=use_ema).mean())
        return torch.stack(losses).mean()

    def validation_step(self, batch: dict, batch_idx: int):
        b = batch["latents"].shape[0]
        self.log("val/loss", self.fixed_loss(batch, batch_idx), prog_bar=True, batch_size=b)
        self.log("val/loss_ema", self.fixed_loss(batch, batch_idx, use_ema=True), batch_size=b)

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
    def generate(self, text, text_mask, shape, use_ema: bool = True, **kwargs) -> torch.Tensor:
        """Latents for `text` (see `training.sampler.sample`), from the EMA weights by default."""
        net = self.ema if use_ema else self.model
        was_training = net.training
        net.eval()
        kwargs.setdefault("shift", self.hparams.shift or auto_shift(math.prod(self.model.grid((1, *shape)))))
        try:
            return sample(net, text, text_mask, shape, **kwargs)
        finally:
            net.train(was_training)

    @torch.no_grad()
    def generate_videos(
        self, prompts: list[str], num_frames: int, height: int, width: int, **kwargs
    ) -> torch.Tensor:
        """Videos [B, 3, T, H, W] in [-1, 1] for `prompts`: text encoder, sampler, VAE decode."""
        vae, text_encoder = self.encoders()
        text, mask = text_encoder.encode(list(prompts))
        latents = self.generate(text, mask, vae.latent_shape(num_frames, height, width), **kwargs)
        return vae.decode(latents)
