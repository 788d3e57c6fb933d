"""From noise to latents: Euler or Heun integration of the learned velocity field, with classifier-free
guidance. Time runs from 1 (noise) to 0 (data) on the same shifted schedule the model trained on;
a seeded generator makes a sample reproducible."""

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
) -> torch.Tensor:
    """Latents [B, C, T, H, W] for the B texts; `shape` is (C, T, H, W). `guidance` 1 is no guidance."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    device = text.device
    if noise is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((text.shape[0], *shape), generator=generator).to(device)
    times = shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)
    empty = null_text(text, text_mask)

    def velocity(x, t):
        tt = t.expand(x.shape[0])
        if guidance == 1.0:
            return model(x, tt, text, text_mask)
        both = model(
            torch.cat([x, x]),
            torch.cat([tt, tt]),
            torch.cat([text, empty[0]]),
            torch.cat([text_mask, empty[1]]),
        )
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    x = noise
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        v = velocity(x, t)
        x_next = x + (t_next - t) * v
        if method == "heun" and t_next > 0:
            x_next = x + (t_next - t) * (v + velocity(x_next, t_next)) / 2
        x = x_next
    return x
