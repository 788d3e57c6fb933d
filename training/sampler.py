"""From noise to latents: Euler or Heun integration of the learned velocity field, with classifier-free
guidance. Time runs from 1 (noise) to 0 (data) on the same shifted schedule the model trained on;
a seeded generator makes a sample reproducible.

Given latent cells (`cond` where `cond_mask` is 1) reach the model at every step in its conditioning
channels, and their noisy-latent input is kept on the straight path from `cond` to the starting noise,
exactly as training builds it, so the model never sees a drifted version of what it was given. After the
last step the given cells are set to `cond`: given frames come out as their VAE round trip. Guidance
contrasts texts only: both branches see the same given cells."""

from __future__ import annotations

from typing import Literal

import torch

from training.flow import shift_time


def null_text(text: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional input: no real text token (the model then attends to one zero token)."""
    return torch.zeros_like(text), torch.zeros_like(text_mask, dtype=torch.bool)


@torch.no_grad()
def sample(
    model,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    shape: tuple[int, int, int, int],
    steps: int = 30,
    guidance: float = 1.0,
    shift: float = 1.0,
    method: Literal["euler", "heun"] = "euler",
    seed: int = 0,
    noise: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    cond_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Latents [B, C, T, H, W] for the B texts; `shape` is (C, T, H, W). `guidance` 1 is no guidance.
    `cond` [B, C, T, H, W] and `cond_mask` [B, 1, T, H, W] (1 = given): the result equals `cond` where
    `cond_mask` is 1; None is text-to-video."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    device = text.device
    if noise is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((text.shape[0], *shape), generator=generator).to(device)
    times = shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)
    empty = null_text(text, text_mask)
    given = None
    if cond_mask is not None:
        if cond is None:
            raise ValueError("cond_mask is given without cond: pass the conditioning latents too")
        cond = cond.to(noise)
        given = (cond_mask != 0).to(device).expand(noise.shape[0], 1, *shape[1:])  # [B, 1, T, H, W]
        if not given.any():
            given = None  # nothing given: text-to-video, with the very same calls

    def pinned(x, t):
        """x with the given cells on their training path (1 - t) cond + t noise."""
        if given is None:
            return x
        return torch.where(given, (1 - t) * cond + t * noise, x)

    def velocity(x, t):
        tt = t.expand(x.shape[0])
        extra = {} if given is None else {"cond": cond, "cond_mask": given.to(x.dtype)}
        if guidance == 1.0:
            return model(x, tt, text, text_mask, **extra)
        if extra:
            extra = {k: torch.cat([v, v]) for k, v in extra.items()}
        both = model(
            torch.cat([x, x]),
            torch.cat([tt, tt]),
            torch.cat([text, empty[0]]),
            torch.cat([text_mask, empty[1]]),
            **extra,
        )
        with_text, uncond = both.chunk(2)
        return uncond + guidance * (with_text - uncond)

    x = noise
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        x = pinned(x, t)
        v = velocity(x, t)
        x_next = x + (t_next - t) * v
        if method == "heun" and t_next > 0:
            x_next = x + (t_next - t) * (v + velocity(pinned(x_next, t_next), t_next)) / 2
        x = x_next
    if given is not None:
        x = torch.where(given, cond, x)  # the given cells exactly, whatever the last step made of them
    return x
