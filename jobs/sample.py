"""`reelmill sample`: a prompt to an mp4 with a trained VideoDiT checkpoint.

The prompt is embedded by a text encoder and the latents decoded by a VAE. Until the shard-trained
encoders are wired in, both are named as `module:factory` import specs that return objects with
`encode(prompts) -> (embeddings [B, L, D], mask [B, L])` and `decode(latents) -> video in [-1, 1]`.
"""

from __future__ import annotations

import importlib

from curation.config import ConfigError
from training.module import VideoDiTModule
from training.video_out import decode_latents, to_frames, write_mp4


def load_object(spec: str, what: str):
    """Call the factory named `package.module:name` and return what it makes."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"--{what}: expected package.module:factory, got {spec!r}")
    return getattr(importlib.import_module(module), name)()


def run_sample(
    ckpt: str,
    prompt: str,
    output: str,
    latent_shape: tuple[int, int, int, int],
    text_encoder: str,
    vae: str,
    steps: int = 30,
    guidance: float = 5.0,
    method: str = "euler",
    seed: int = 0,
    fps: float = 16.0,
    device: str = "cpu",
    use_ema: bool = True,
    log=print,
) -> str:
    module = VideoDiTModule.load_from_checkpoint(ckpt, map_location=device).eval()
    encoder, decoder = load_object(text_encoder, "text-encoder"), load_object(vae, "vae")
    text, mask = encoder.encode([prompt])
    latents = module.generate(
        text.to(device), mask.to(device), latent_shape, use_ema=use_ema, steps=steps, guidance=guidance,
        method=method, seed=seed,
    )  # fmt: skip
    video = decode_latents(decoder, latents)[0]
    write_mp4(to_frames(video), output, fps=fps)
    log(f"reelmill sample: {video.shape[1]} frames {video.shape[3]}x{video.shape[2]} -> {output}")
    return output


def parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 1:
        raise ConfigError(f"--latent-shape: expected C,T,H,W, got {text!r}")
    return parts
