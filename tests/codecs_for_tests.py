"""Stand-ins for the text encoder and VAE that `reelmill sample` takes as `module:factory` (the real
transformers and diffusers encoders come with training on shards): small, deterministic, no weights."""

import hashlib

import torch
import torch.nn.functional as F

TEXT_DIM = 32


class WordHashTextEncoder:
    """Each word becomes a fixed random vector seeded by its hash; the mask marks the words."""

    def encode(self, prompts: list[str], max_len: int = 8):
        out = torch.zeros(len(prompts), max_len, TEXT_DIM)
        mask = torch.zeros(len(prompts), max_len, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            for j, word in enumerate(prompt.lower().split()[:max_len]):
                seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[i, j] = torch.randn(TEXT_DIM, generator=torch.Generator().manual_seed(seed))
                mask[i, j] = True
        return out, mask


class PixelVAE:
    """Latents are RGB frames at half size: decode upsamples them (2x) and squashes them into [-1, 1]."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = latents.shape
        frames = latents.transpose(1, 2).reshape(b * t, c, h, w)
        up = F.interpolate(frames, scale_factor=2, mode="nearest").reshape(b, t, c, 2 * h, 2 * w)
        return torch.tanh(up.transpose(1, 2))


def text_encoder() -> WordHashTextEncoder:
    return WordHashTextEncoder()


def vae() -> PixelVAE:
    return PixelVAE()
