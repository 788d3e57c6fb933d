"""Fréchet Video Distance: how far a set of generated videos is from real ones, in a video network's features.

FVD (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video") fits a Gaussian to the
features of each set and reports the Fréchet (2-Wasserstein) distance between the two Gaussians:
||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2). The standard features are the 400 logits
of an I3D network trained on Kinetics-400, used as a TorchScript file (`i3d_torchscript.pt`, called as
`net(x, rescale=False, resize=True, return_features=True)` on [B, 3, T, H, W] in [-1, 1], the StyleGAN-V
convention); any TorchScript video network taking [B, 3, T, H, W] in [-1, 1] and returning [B, D] works the
same way, and the number is only comparable between runs that name the same network (its sha256 is
reported with it) on clips of the same size and length. Lower is better; a set against itself is 0.

The matrix square root uses a symmetric eigen decomposition in float64 (no scipy): S_r^1/2 is symmetric,
so S_r^1/2 S_g S_r^1/2 is symmetric positive semi-definite and the trace of its square root is the sum of
the square roots of its eigenvalues (negative round-off clipped to 0).
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import torch

from curation.scoring.aesthetic import MissingModelError

KEY = "fvd.network"
I3D_KWARGS = {"rescale": False, "resize": True, "return_features": True}
"""How the StyleGAN-V I3D TorchScript file is asked for its features (input already in [-1, 1])."""


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, float64) of features [N, D]."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"a Gaussian needs features [N >= 2, D], got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())
    distance = float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)
    return max(distance, 0.0)


def fvd(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """FVD between two sets of video features [N, D] (N >= 2 each)."""
    return frechet_distance(*gaussian(real_features), *gaussian(fake_features))


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class VideoFeatureNet:
    """A TorchScript video network from a file: features [N, D] of videos in [-1, 1].

    The I3D call (`rescale`, `resize`, `return_features` keywords) is used when the network's forward takes
    those arguments; any other network is called with the videos alone."""

    def __init__(self, path: str | None, device: torch.device):
        if not path:
            raise MissingModelError(KEY, "not set; set it to a TorchScript I3D (i3d_torchscript.pt) file")
        if not os.path.isfile(path):
            raise MissingModelError(KEY, f"no such file: {path}")
        try:
            with warnings.catch_warnings():  # torch marks TorchScript deprecated; the I3D file is TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(path, map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as exc:
            raise MissingModelError(
                KEY, f"{path} is not a TorchScript file ({str(exc).strip()[:300]})"
            ) from None
        self.path, self.device, self.sha256 = path, device, sha256_of(path)
        arguments = {a.name for a in self.net.forward.schema.arguments}
        self.is_i3d = set(I3D_KWARGS) <= arguments

    def describe(self) -> dict:
        """What eval.json names beside the number: the file, its hash and how it was called."""
        return {
            "path": os.path.abspath(self.path),
            "sha256": self.sha256,
            "call": "i3d" if self.is_i3d else "plain",
        }

    @torch.inference_mode()
    def features(self, videos: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Features [N, D] float64 of uint8 videos [T, H, W, 3] (all of one size)."""
        out = []
        for start in range(0, len(videos), batch_size):
            chunk = np.stack(videos[start : start + batch_size])  # [B, T, H, W, 3]
            x = torch.from_numpy(chunk).to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
            y = self.net(x, **I3D_KWARGS) if self.is_i3d else self.net(x)
            out.append(y.reshape(len(chunk), -1).double().cpu().numpy())
        return np.concatenate(out)
