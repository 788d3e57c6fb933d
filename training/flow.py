"""Rectified flow: the straight path from data to noise, the times it is trained at, and the shift.

`x_t = (1 - t) x0 + t noise` and the model learns the velocity `noise - x0`. Training times come from
a logit-normal distribution (SD3), then are shifted towards noise by `s t / (1 + (s - 1) t)`: more
tokens carry more redundant signal, so a large video needs more noise before its content is destroyed;
the shift grows with the square root of the token count (Open-Sora 2 / SD3's resolution shift).
"""

from __future__ import annotations

import math

import torch


def auto_shift(num_tokens: int, base_tokens: int = 1024, max_shift: float = 8.0) -> float:
    """sqrt(tokens / base_tokens), at least 1 (no shift) and at most `max_shift`."""
    return float(min(max_shift, max(1.0, math.sqrt(num_tokens / base_tokens))))


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def sample_time(batch: int, shift: float, mean: float = 0.0, std: float = 1.0, generator=None, device=None):
    """[batch] training times: logit-normal, then shifted."""
    u = torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    return shift_time(u, shift)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0
