"""Tiny random-weight encoders of the real architectures, for tests and for `make demo` without weights.

`build_tiny_wan_t2v` writes a directory laid out like the default hub repo
(Wan-AI/Wan2.1-T2V-1.3B-Diffusers): `vae/` (an AutoencoderKLWan with Wan's 4x8x8 compression),
`text_encoder/` (a 2-layer UMT5EncoderModel) and `tokenizer/` (a byte-level BPE trained on the spot),
each written with `save_pretrained`, so `VAEConfig(model=directory)` and
`TextEncoderConfig(model=directory)` load it with their default subfolders through the very code
path a user's weights take. `build_tiny_open_clip` and `build_tiny_image_vae` do the same for the
open_clip text tower and per-frame (2D) VAEs. Nothing they encode means anything; every directory
carries a `RANDOM_WEIGHTS_FILE` marker so runs that use one can say `models: random-weights`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from curation.model_labels import write_marker

TINY_WAN_VAE = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1}
"""Wan's layout (3 spatial halvings, 2 temporal ones: 4x8x8) at a width that runs in a blink on CPU."""

TINY_UMT5 = {
    "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
}  # fmt: skip
"""UMT5-XXL's kind of encoder (gated-GELU, relative position buckets), 2 layers of width 32."""

T5_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5's vocabulary

_CORPUS = [
    "A stand-in caption written by a tiny test model.",
    "[0.0-2.5s] The tiny test model writes this first segment for every clip.",
    "[2.5-5.0s] It writes this second segment too, whatever the video shows.",
    "a woman sits down at a wooden table and opens a laptop",
    "the camera pans slowly across a city skyline at dusk, lights turning on",
    "a dog runs through the grass towards the camera, then jumps",
    "close-up of hands kneading dough on a floured surface",
    "0123456789 seconds, frames, shot, scene, cut, zoom, tilt",
]


def _own_rng(build):
    """Seeded builds leave the caller's global torch RNG as it was."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return build(*args, **kwargs)

    return wrapper


def train_t5_tokenizer(vocab_size: int = 512):
    """A byte-level BPE with T5's special tokens (<pad> 0, </s> 1, <unk> 2) that, like T5's tokenizer,
    ends every text with </s>: an empty prompt is one token, never zero."""
    from tokenizers import processors

    from captioning.tiny_vlm import train_tokenizer

    tokenizer = train_tokenizer(
        _CORPUS * 4,
        vocab_size=vocab_size,
        special_tokens=T5_SPECIAL_TOKENS,
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=None,
    )
    tokenizer.unk_token = "<unk>"
    eos = tokenizer.convert_tokens_to_ids("</s>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    tokenizer.model_max_length = 512
    return tokenizer


def _smooth_video(generator: torch.Generator, frames: int = 9, size: int = 64) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1]: moving colour gradients plus a little noise, roughly like footage."""
    t = torch.linspace(0, 1, frames)[:, None, None]
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    phase = torch.rand(3, generator=generator) * 6.28
    video = torch.stack([torch.sin(3 * x + 2 * y + 4 * t + p) for p in phase])  # [3, T, H, W]
    return (0.8 * video + 0.2 * torch.randn(video.shape, generator=generator)).clamp(-1, 1)[None]


@_own_rng
def build_tiny_wan_t2v(directory: str | Path, seed: int = 0) -> str:
    """Write `vae/`, `text_encoder/` and `tokenizer/` as in the Wan 2.1 diffusers repo; returns the path.

    The VAE's latents_mean/latents_std are measured on a synthetic clip, so its normalized latents are
    roughly unit-variance as a real VAE's are (and the normalization is far from the identity)."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**TINY_WAN_VAE).eval()
    with torch.no_grad():
        raw = vae.encode(_smooth_video(generator)).latent_dist.mode()  # [1, C, 3, 8, 8]
    dims = (0, 2, 3, 4)
    mean, std = raw.mean(dims), raw.std(dims).clamp(min=1e-3)
    vae.register_to_config(
        latents_mean=[round(float(v), 5) for v in mean], latents_std=[round(float(v), 5) for v in std]
    )
    vae.save_pretrained(directory / "vae")

    tokenizer = train_t5_tokenizer()
    tokenizer.save_pretrained(directory / "tokenizer")
    config = UMT5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **TINY_UMT5,
    )
    torch.manual_seed(seed)
    UMT5EncoderModel(config).save_pretrained(directory / "text_encoder")
    write_marker(directory, f"{__name__}.build_tiny_wan_t2v", seed)
    return str(directory)


@_own_rng
def build_tiny_open_clip(directory: str | Path, seed: int = 0) -> str:
    """Write an open_clip model directory (open_clip_config.json + weights) of the aesthetic scorer's
    tiny CLIP; returns the `local-dir:` name that `TextEncoderConfig(kind="open_clip", model=...)` takes."""
    import open_clip
    from safetensors.torch import save_file

    from curation.scoring.tiny_models import TINY_CLIP

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}})
    )
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP)  # what create_model builds from that config (without its warnings)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, directory / "open_clip_model.safetensors"
    )
    write_marker(directory, f"{__name__}.build_tiny_open_clip", seed)
    return f"local-dir:{directory}"


@_own_rng
def build_tiny_image_vae(directory: str | Path, seed: int = 0) -> str:
    """Write a tiny 2D AutoencoderKL (8x spatial, 4 latent channels, an SD3-style shift and scale):
    `VAEConfig(model=directory, subfolder=None, cls="AutoencoderKL")` encodes clips frame by frame."""
    from diffusers import AutoencoderKL

    directory = Path(directory)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=1.7,
        shift_factor=0.2,
    )
    vae.save_pretrained(directory)
    write_marker(directory, f"{__name__}.build_tiny_image_vae", seed)
    return str(directory)
