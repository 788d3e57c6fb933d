"""VideoDiT: a latent video diffusion transformer with spacetime patches and full 3D attention.

Latents `[B, C, T, H, W]` are cut into spacetime patches `(pt, ph, pw)` and embedded as tokens. Every
block attends over all spacetime tokens at once (or, with `factorized=True`, within each frame and then
across frames at each position), through `scaled_dot_product_attention`, so FlashAttention serves it on
GPU. Positions enter as 3D rotary embeddings over (t, h, w): nothing in the weights depends on the grid
size, so a model trained on one clip size samples another. Text conditions twice: cross-attention to
the text encoder's token embeddings (padding masked), and its masked mean, added to the timestep
embedding, drives adaLN-Zero: every block's residual branches are scaled by a gate that starts at
zero, so a fresh model is the identity map and outputs zeros (DiT, Peebles & Xie 2023).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class DiTConfig:
    """Sizes of a VideoDiT; `PRESETS` names the DiT-S/B/L/XL sizes."""

    in_channels: int = 16
    """Latent channels (16 for Wan's VAE)."""
    text_dim: int = 4096
    """Width of the text encoder's token embeddings (4096 for UMT5-XXL)."""
    depth: int = 12
    width: int = 768
    heads: int = 12
    patch: tuple[int, int, int] = (1, 2, 2)
    """Spacetime patch (pt, ph, pw) in latent cells."""
    mlp_ratio: float = 4.0
    factorized: bool = False
    """Attention within each frame, then across frames at each position, instead of over all tokens:
    cost O(T*(HW)^2 + HW*T^2) instead of O((THW)^2), for long clips."""
    checkpointing: bool = False
    """Recompute each block's activations in the backward pass (less memory, about a third more compute)."""
    rope_theta: float = 10_000.0
    caption_projection: bool = True
    """Project the text tokens once to `width` (Linear, GELU, Linear) before the blocks, so every
    cross-attention's K/V and the pooled text read width-wide tokens. False: each block projects the
    `text_dim`-wide tokens itself (the architecture of checkpoints written before this option)."""
    conditioning: bool = True
    """The patch embedding takes 2 * in_channels + 1 channels: noisy latents, conditioning latents and
    the mask of given cells, so frames or regions can be given. False: text-to-video only (as checkpoints
    written before this option)."""

    @property
    def embed_channels(self) -> int:
        """Channels the patch embedding reads."""
        return 2 * self.in_channels + 1 if self.conditioning else self.in_channels

    @property
    def context_dim(self) -> int:
        """Width of the text tokens the blocks read."""
        return self.width if self.caption_projection else self.text_dim

    def __post_init__(self):
        self.patch = tuple(self.patch)
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if (self.width // self.heads) % 2 or self.width // self.heads < 6:
            raise ValueError("head width must be even and at least 6 (rotary pairs split over t, h, w)")


PRESETS: dict[str, dict] = {
    "tiny": {"depth": 2, "width": 96, "heads": 4},
    "S": {"depth": 12, "width": 384, "heads": 6},
    "B": {"depth": 12, "width": 768, "heads": 12},
    "L": {"depth": 24, "width": 1024, "heads": 16},
    "XL": {"depth": 28, "width": 1152, "heads": 16},
}
"""Depth, width and heads as DiT-S/B/L/XL (head widths 64, 64, 64, 72); `tiny` for tests (head 24)."""


def preset(name: str, **overrides) -> DiTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; one of {', '.join(PRESETS)}")
    return DiTConfig(**{**PRESETS[name], **overrides})


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[B] times in [0, 1] -> [B, dim] sinusoidal features (times scaled by 1000, as DiT's steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).to(
            x.dtype
        ) * self.weight


def rope_3d(
    grid: tuple[int, int, int], head_dim: int, theta: float, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, head_dim / 2] for the N = t*h*w tokens of `grid`: the rotary pairs are split over
    the frame index, the row and the column (rows and columns a third each, time the rest, as in Wan)."""
    half = head_dim // 2
    split = (half - 2 * (head_dim // 6), head_dim // 6, head_dim // 6)
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in grid]
    positions = torch.meshgrid(*axes, indexing="ij")
    angles = []
    for pos, pairs in zip(positions, split, strict=True):
        freqs = 1.0 / theta ** (torch.arange(pairs, device=device, dtype=torch.float32) / pairs)
        angles.append(pos.reshape(-1, 1) * freqs)
    angles = torch.cat(angles, dim=-1)  # [N, half]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, N, D] rotated pairwise by the angles of its token (cos, sin [N, D/2])."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with QK-norm and 3D rotary positions, over the tokens it is given."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm, self.k_norm = RMSNorm(width // heads), RMSNorm(width // heads)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # [B, h, N, Dh]
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Tokens attend to the text tokens; padded text tokens are masked out."""

    def __init__(self, width: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(text_dim, 2 * width)
        self.q_norm, self.k_norm = RMSNorm(width // heads), RMSNorm(width // heads)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        dh = d // self.heads
        q = self.q_norm(self.q(x).view(b, n, self.heads, dh).transpose(1, 2))
        k, v = self.kv(text).view(b, text.shape[1], 2, self.heads, dh).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, self.k_norm(k), v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, cross-attention, MLP; shift/scale/gate from the conditioning.
    Factorized, the self-attention is spatial (within a frame) followed by a temporal one (across frames
    at one position), each with its own weights and its own modulation."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        w = cfg.width
        self.factorized = cfg.factorized
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(w, cfg.heads)
        if self.factorized:
            self.norm_t = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
            self.temporal_attn = SelfAttention(w, cfg.heads)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=True, eps=1e-6)
        self.cross = CrossAttention(w, cfg.context_dim, cfg.heads)
        self.norm3 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        hidden = int(w * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(w, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, w))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(w, (9 if self.factorized else 6) * w))

    def forward(self, x, c, text, mask, grid, rope_full, rope_space, rope_time):
        """x [B, N, width] tokens in (t, h, w) order; c [B, width] conditioning."""
        mods = self.ada(c).chunk(9 if self.factorized else 6, dim=-1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods[:6]
        h = modulate(self.norm1(x), shift1, scale1)
        if self.factorized:
            b, (t, hh, ww), d = x.shape[0], grid, x.shape[-1]
            space = self.attn(h.reshape(b * t, hh * ww, d), *rope_space)  # [B*T, HW, width]
            x = x + gate1[:, None] * space.reshape(b, -1, d)
            shift_t, scale_t, gate_t = mods[6:]
            h = modulate(self.norm_t(x), shift_t, scale_t)
            frames = h.reshape(b, t, hh * ww, d).transpose(1, 2).reshape(b * hh * ww, t, d)
            time = self.temporal_attn(frames, *rope_time)  # [B*HW, T, width]
            x = x + gate_t[:, None] * time.reshape(b, hh * ww, t, d).transpose(1, 2).reshape(b, -1, d)
        else:
            x = x + gate1[:, None] * self.attn(h, *rope_full)
        x = x + self.cross(self.norm2(x), text, mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm3(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        out = cfg.in_channels * math.prod(cfg.patch)
        self.norm = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))
        self.linear = nn.Linear(cfg.width, out)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class VideoDiT(nn.Module):
    """Predicts the rectified-flow velocity of latents `x` [B, C, T, H, W] at times `t` [B] given text
    token embeddings `text` [B, L, text_dim] and their mask `text_mask` [B, L] (True = real token), and
    optionally given latents `cond` [B, C, T, H, W] where `cond_mask` [B, 1, T, H, W] is 1."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.patch_embed = nn.Conv3d(cfg.embed_channels, w, kernel_size=cfg.patch, stride=cfg.patch)
        self.time_mlp = nn.Sequential(nn.Linear(256, w), nn.SiLU(), nn.Linear(w, w))
        if cfg.caption_projection:
            self.caption_proj = nn.Sequential(
                nn.Linear(cfg.text_dim, w), nn.GELU(approximate="tanh"), nn.Linear(w, w)
            )
        self.text_pool = nn.Sequential(nn.Linear(cfg.context_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        self.initialize()

    def initialize(self) -> None:
        """Xavier linears, then zero every adaLN modulation and the output layer (adaLN-Zero)."""

        def xavier(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(xavier)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for layer in (self.final.ada[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def grid(self, shape) -> tuple[int, int, int]:
        (_, _, t, h, w), (pt, ph, pw) = shape, self.cfg.patch
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent size {(t, h, w)} is not a multiple of the patch {self.cfg.patch}")
        return t // pt, h // ph, w // pw

    def embed_input(self, x, cond, cond_mask) -> torch.Tensor:
        """The patch embedding's input: `x`, or [x, cond * cond_mask, cond_mask] with frame conditioning
        (nothing given when `cond_mask` is None)."""
        if not self.cfg.conditioning:
            if cond_mask is not None and bool((cond_mask != 0).any()):
                raise ValueError(
                    "this model was built without frame conditioning (DiTConfig.conditioning=False): "
                    "it generates from text only and cannot take given frames (cond_mask)"
                )
            return x
        b, _, t, h, w = x.shape
        if cond_mask is None:
            return torch.cat([x, x.new_zeros(b, self.cfg.in_channels + 1, t, h, w)], dim=1)
        if cond is None:
            raise ValueError("cond_mask is given without cond: pass the conditioning latents too")
        cond_mask = cond_mask.to(x.dtype)
        if cond_mask.dim() != 5 or cond_mask.shape[1] != 1:
            raise ValueError(f"cond_mask must be [B, 1, T, H, W], got {tuple(cond_mask.shape)}")
        cond_mask = cond_mask.expand(b, 1, t, h, w)
        if cond.shape != x.shape:
            raise ValueError(f"cond must have the latents' shape {tuple(x.shape)}, got {tuple(cond.shape)}")
        return torch.cat([x, cond.to(x.dtype) * cond_mask, cond_mask], dim=1)

    def forward(self, x, t, text, text_mask, cond=None, cond_mask=None):
        grid = self.grid(x.shape)
        head_dim = self.cfg.width // self.cfg.heads
        rope = lambda g: rope_3d(g, head_dim, self.cfg.rope_theta, x.device)  # noqa: E731
        rope_full = rope(grid)
        rope_space, rope_time = rope((1, *grid[1:])), rope((grid[0], 1, 1))
        tokens = self.patch_embed(self.embed_input(x, cond, cond_mask))
        tokens = tokens.flatten(2).transpose(1, 2)  # [B, N, width], N = T'H'W'
        if self.cfg.caption_projection:
            text = self.caption_proj(text.to(tokens.dtype))  # [B, L, width], once for every block
        mask = text_mask.bool().clone()
        mask[:, 0] |= ~mask.any(dim=1)  # an empty text (the unconditional branch) attends to its first token
        pooled = (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        c = self.time_mlp(timestep_embedding(t, 256).to(tokens.dtype)) + self.text_pool(pooled)
        for block in self.blocks:
            args = (tokens, c, text, mask, grid, rope_full, rope_space, rope_time)
            if self.cfg.checkpointing and self.training:
                tokens = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens = block(*args)
        out = self.final(tokens, c)  # [B, N, C * pt * ph * pw]
        return self.unpatchify(out, grid)

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        (gt, gh, gw), (pt, ph, pw), c = grid, self.cfg.patch, self.cfg.in_channels
        out = out.view(out.shape[0], gt, gh, gw, c, pt, ph, pw)
        return out.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(out.shape[0], c, gt * pt, gh * ph, gw * pw)

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def flops_per_sample(cfg: DiTConfig, grid: tuple[int, int, int], text_len: int) -> float:
    """Forward FLOPs of one sample (2 per multiply-add): linear layers and attention, analytically. With
    the caption projection the text tokens are projected once per sample and each block's K/V read
    width-wide tokens; without it each block projects `text_dim`-wide tokens."""
    n, w, depth = math.prod(grid), cfg.width, cfg.depth
    hidden = int(w * cfg.mlp_ratio)
    linear = n * (3 * w * w + w * w + w * w + w * w + 2 * w * hidden) + text_len * cfg.context_dim * 2 * w
    if cfg.factorized:
        t, hw = grid[0], grid[1] * grid[2]
        attention = 2 * (t * hw * hw + hw * t * t) * w
        linear += n * 4 * w * w  # the temporal attention's qkv and projection
    else:
        attention = 2 * n * n * w  # QK^T and AV
    cross = 2 * n * text_len * w
    patch = n * cfg.embed_channels * math.prod(cfg.patch) * w * 2
    projection = text_len * (cfg.text_dim * w + w * w) if cfg.caption_projection else 0
    return 2.0 * (depth * (linear + attention + cross) + patch + projection)
