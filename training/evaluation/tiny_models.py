"""Tiny random-weight metric models of the real kinds, for tests and for `make demo` without weights.

`build_tiny_video_net` writes a TorchScript 3D-conv network with the I3D file's call signature (or a plain
one), `build_tiny_dinov2` a 2-layer Dinov2Model with its image processor (`save_pretrained`), and the
CLIP is `training.tiny_encoders.build_tiny_open_clip`'s open_clip directory. Each is loaded back through
the loader a user's weights take, and carries the `RANDOM_WEIGHTS_FILE` marker, so an eval that used one
says `models: random-weights`. Their numbers mean nothing beyond the properties the tests check.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from curation.model_labels import write_marker
from training.tiny_encoders import _own_rng, build_tiny_open_clip


class TinyVideoNet(nn.Module):
    """Two strided 3D convolutions, global average pooling and a linear head: [B, 3, T, H, W] -> [B, D],
    called like the I3D TorchScript file (its keywords are honoured: `rescale` maps [0, 1] input to
    [-1, 1], `resize` scales frames to 64 px, `return_features` skips nothing here)."""

    def __init__(self, features: int = 16):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 16, 3, stride=(1, 2, 2), padding=1)
        self.conv2 = nn.Conv3d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32, features)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ):
        if rescale:
            x = x * 2 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 64, 64), mode="trilinear", align_corners=False)
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.head(h.mean(dim=(2, 3, 4)))


class PlainVideoNet(nn.Module):
    """The same network behind a plain `forward(x)`: how any other video feature network is called."""

    def __init__(self, features: int = 16):
        super().__init__()
        self.inner = TinyVideoNet(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@_own_rng
def build_tiny_video_net(
    directory: str | Path, seed: int = 0, i3d_call: bool = True, features: int = 16
) -> str:
    """Write `video_net.pt` (TorchScript) in `directory`; returns its path (`fvd.network`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = (TinyVideoNet if i3d_call else PlainVideoNet)(features).eval()
    path = directory / "video_net.pt"
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; the I3D file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net), str(path))
    write_marker(directory, f"{__name__}.build_tiny_video_net", seed)
    return str(path)


@_own_rng
def build_tiny_dinov2(directory: str | Path, seed: int = 0) -> str:
    """Write a 2-layer Dinov2Model (patch 8, 64 px) and its image processor; returns the directory."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    directory = Path(directory)
    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8, image_size=64
    )
    Dinov2Model(config).save_pretrained(directory)
    BitImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(directory)  # DINOv2's own normalisation; 64 px where the real one crops 224
    write_marker(directory, f"{__name__}.build_tiny_dinov2", seed)
    return str(directory)


def build_tiny_eval_models(directory: str | Path, seed: int = 0) -> list[str]:
    """Every metric model, tiny, under `directory`; returns the `--set` overrides that load them."""
    directory = Path(directory)
    return [
        f"fvd.network={build_tiny_video_net(directory / 'video-net', seed)}",
        f"clipsim.model={build_tiny_open_clip(directory / 'clip', seed)}",
        "clipsim.pretrained=",
        f"consistency.model={build_tiny_dinov2(directory / 'dinov2', seed)}",
    ]
