"""The frozen encoders (training/encoders.py) on tiny random-weight models of the real architectures,
built into temp dirs and loaded back through the same `from_config` path users take."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from curation.config import ConfigError, from_dict
from curation.model_labels import RANDOM_WEIGHTS_FILE, is_random_weights
from training.encoders import (
    EncoderError,
    TextEncoder,
    TextEncoderConfig,
    VAEConfig,
    VideoVAE,
    text_encoder_dim,
    vae_latent_channels,
)
from training.tiny_encoders import (
    TINY_UMT5,
    TINY_WAN_VAE,
    build_tiny_image_vae,
    build_tiny_open_clip,
    build_tiny_wan_t2v,
)

PROMPTS = [
    "a dog runs through the grass towards the camera",
    "",
    "close-up of hands kneading dough on a floured surface, then the camera pulls back to the whole kitchen",
]


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory) -> str:
    return build_tiny_wan_t2v(tmp_path_factory.mktemp("tiny-wan"), seed=0)


@pytest.fixture(scope="module")
def vae(wan_dir) -> VideoVAE:
    return VideoVAE.from_config(VAEConfig(model=wan_dir))


@pytest.fixture(scope="module")
def text_encoder(wan_dir) -> TextEncoder:
    return TextEncoder.from_config(TextEncoderConfig(model=wan_dir))


@pytest.fixture(scope="module")
def open_clip_name(tmp_path_factory) -> str:
    return build_tiny_open_clip(tmp_path_factory.mktemp("tiny-open-clip"), seed=0)


def video(batch: int, frames: int, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1]: smooth moving gradients plus noise, different for every sample."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, frames)[None, None, :, None, None]
    y = torch.linspace(-1, 1, height)[None, None, None, :, None]
    x = torch.linspace(-1, 1, width)[None, None, None, None, :]
    phase = torch.rand(batch, 3, 1, 1, 1, generator=g) * 6.28
    base = torch.sin(3 * x + 2 * y + 4 * t + phase)
    return (0.8 * base + 0.2 * torch.randn(base.shape, generator=g)).clamp(-1, 1)


# -- building and loading ------------------------------------------------------------------------------


def test_tiny_wan_is_laid_out_like_the_hub_repo_and_loads_frozen(wan_dir, vae, text_encoder):
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    root = Path(wan_dir)
    for sub in ("vae", "text_encoder", "tokenizer"):
        assert (root / sub).is_dir()
    assert is_random_weights(wan_dir) and (root / RANDOM_WEIGHTS_FILE).is_file()
    assert isinstance(vae.model, AutoencoderKLWan)
    assert vae.model.config.base_dim == TINY_WAN_VAE["base_dim"]
    assert isinstance(text_encoder.model, UMT5EncoderModel)
    assert text_encoder.model.config.num_layers == 2
    for model in (vae.model, text_encoder.model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    # the normalization statistics are far from the identity, so the scaling tests below mean something
    config = json.loads((root / "vae" / "config.json").read_text())
    assert max(abs(m) for m in config["latents_mean"]) > 0.05
    assert max(abs(s - 1) for s in config["latents_std"]) > 0.5
    assert vae.describe() == {
        "model": wan_dir,
        "class": "AutoencoderKLWan",
        "latent_channels": TINY_WAN_VAE["z_dim"],
        "time_ratio": 4,
        "space_ratio": 8,
    }
    assert text_encoder.describe() == {"kind": "t5", "model": wan_dir, "dim": 32, "max_length": 256}


def test_builds_are_deterministic_in_the_seed(tmp_path, vae, text_encoder):
    again = build_tiny_wan_t2v(tmp_path / "same", seed=0)
    other = build_tiny_wan_t2v(tmp_path / "other", seed=1)
    same_vae = VideoVAE.from_config(VAEConfig(model=again))
    other_vae = VideoVAE.from_config(VAEConfig(model=other))
    for name, p in vae.model.state_dict().items():
        assert torch.equal(p, same_vae.model.state_dict()[name]), name
    assert not torch.equal(vae.model.encoder.conv_in.weight, other_vae.model.encoder.conv_in.weight)
    same_text = TextEncoder.from_config(TextEncoderConfig(model=again))
    a, _ = text_encoder.encode(PROMPTS)
    b, _ = same_text.encode(PROMPTS)
    assert torch.equal(a, b)


def test_config_only_readers_need_no_weights(wan_dir, vae, text_encoder, tmp_path):
    """`vae_latent_channels` / `text_encoder_dim` size the DiT from config files: they still work with
    every weight file deleted, and agree with the loaded models."""
    bare = tmp_path / "no-weights"
    shutil.copytree(wan_dir, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    vae_cfg, text_cfg = VAEConfig(model=str(bare)), TextEncoderConfig(model=str(bare))
    assert vae_latent_channels(vae_cfg) == vae.latent_channels == TINY_WAN_VAE["z_dim"]
    assert text_encoder_dim(text_cfg) == text_encoder.dim == TINY_UMT5["d_model"]
    with pytest.raises(ConfigError, match="vae.model"):
        VideoVAE.from_config(vae_cfg)  # ... while loading really needs the weights


@pytest.mark.parametrize(
    ("make", "key", "words"),
    [
        (lambda d, tmp: VAEConfig(model=str(tmp / "nowhere")), "vae.model", "not a directory"),
        (lambda d, tmp: VAEConfig(model="reelmill-tests/no-such-model"), "vae.model", "Hugging Face cache"),
        (lambda d, tmp: VAEConfig(model=d, subfolder="vae_x"), "vae.subfolder", "no folder 'vae_x'"),
        (
            lambda d, tmp: VAEConfig(model=d, subfolder=None),
            "vae.subfolder",
            "folders with one: text_encoder, vae",
        ),
        (lambda d, tmp: VAEConfig(model=d, cls="AutoencoderKLCogVideoX"), "vae.cls", "AutoencoderKLWan"),
        (lambda d, tmp: VAEConfig(model=d, cls="AutoencoderKLNope"), "vae.cls", "AutoencoderKLCogVideoX"),
        (
            lambda d, tmp: TextEncoderConfig(model=str(tmp / "nowhere")),
            "text_encoder.model",
            "not a directory",
        ),
        (lambda d, tmp: TextEncoderConfig(model="reelmill-tests/nope"), "text_encoder.model", "(offline)"),
        (lambda d, tmp: TextEncoderConfig(model=d, subfolder="te"), "text_encoder.subfolder", "'te'"),
        (
            lambda d, tmp: TextEncoderConfig(kind="open_clip", model=f"local-dir:{tmp}"),
            "text_encoder.model",
            "open_clip_config.json",
        ),
        (
            lambda d, tmp: TextEncoderConfig(kind="open_clip", model="NoSuchCLIP"),
            "text_encoder.model",
            "no model",
        ),
    ],
)
def test_missing_models_are_config_errors_naming_the_key(wan_dir, tmp_path, make, key, words):
    cfg = make(wan_dir, tmp_path)
    load = VideoVAE.from_config if isinstance(cfg, VAEConfig) else TextEncoder.from_config
    read = vae_latent_channels if isinstance(cfg, VAEConfig) else text_encoder_dim
    for call in (load, read):
        with pytest.raises(ConfigError) as caught:
            call(cfg)
        assert isinstance(caught.value, EncoderError)
        assert caught.value.key == key
        assert str(caught.value).startswith(f"{key}: ") and words in str(caught.value)
        assert f"- set {key}" in str(caught.value)  # the message ends with what to do


def test_missing_tokenizer_names_its_key(wan_dir):
    with pytest.raises(ConfigError) as caught:
        TextEncoder.from_config(TextEncoderConfig(model=wan_dir, tokenizer_subfolder="tok"))
    assert caught.value.key == "text_encoder.tokenizer_subfolder"


def test_bad_values_are_refused_by_key():
    with pytest.raises(ConfigError, match="vae.dtype"):
        VAEConfig(dtype="fp8")
    with pytest.raises(ConfigError, match="vae.chunk_frames"):
        VAEConfig(chunk_frames=-1)
    with pytest.raises(ConfigError, match="text_encoder.kind"):
        from_dict(TextEncoderConfig, {"kind": "bert"})
    with pytest.raises(ConfigError, match="text_encoder.max_length"):
        TextEncoderConfig(max_length=0)
    with pytest.raises(ConfigError, match="did you mean 'chunk_frames'"):
        from_dict(VAEConfig, {"chunk_frame": 4})
    cfg = from_dict(VAEConfig, {"model": "/models/wan", "subfolder": None, "tiling": True})
    assert (cfg.model, cfg.subfolder, cfg.tiling, cfg.cls) == ("/models/wan", None, True, "AutoencoderKLWan")


# -- the VAE -------------------------------------------------------------------------------------------


def test_vae_shapes_and_latent_shape(vae):
    x = video(2, 9)
    z = vae.encode(x)
    assert z.shape == (2, 4, 3, 8, 8) and z.dtype == torch.float32
    assert tuple(z.shape[1:]) == vae.latent_shape(9, 64, 64)
    out = vae.decode(z)
    assert out.shape == (2, 3, 9, 64, 64) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    # one frame (an image) and a non-square size
    z1 = vae.encode(video(1, 1, 32, 48))
    assert tuple(z1.shape[1:]) == vae.latent_shape(1, 32, 48) == (4, 1, 4, 6)
    assert vae.decode(z1).shape == (1, 3, 1, 32, 48)
    # normalized latents of footage-like clips are roughly unit-variance (the stats were measured so)
    assert 0.3 < float(z.std()) < 3.0


@pytest.mark.parametrize(
    ("frames", "height", "width", "words"),
    [
        (8, 64, 64, "1 + 4k frames"),
        (10, 64, 64, "use 9 or 13"),
        (0, 64, 64, "not 0"),
        (9, 60, 64, "multiples of 8, not 60x64"),
        (9, 64, 4, "multiples of 8"),
    ],
)
def test_vae_refuses_sizes_it_cannot_encode(vae, frames, height, width, words):
    with pytest.raises(ValueError, match=words.replace("+", r"\+").replace("(", r"\(")):
        vae.latent_shape(frames, height, width)
    if frames:
        with pytest.raises(ValueError, match="AutoencoderKLWan"):
            vae.encode(video(1, frames, height, width))


def test_vae_refuses_wrong_inputs(vae):
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        vae.encode(torch.zeros(3, 9, 64, 64))
    with pytest.raises(TypeError, match="uint8"):
        vae.encode(torch.zeros(1, 3, 9, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 4, T, H, W\]"):
        vae.decode(torch.zeros(1, 16, 3, 8, 8))


def test_latent_normalization_is_the_vae_configs(wan_dir, vae):
    """Normalized latents are (posterior mode - latents_mean) / latents_std, checked against diffusers
    itself with statistics read from the saved config; decode undoes exactly that."""
    from diffusers import AutoencoderKLWan

    raw_vae = AutoencoderKLWan.from_pretrained(wan_dir, subfolder="vae").eval()
    config = json.loads((Path(wan_dir) / "vae" / "config.json").read_text())
    mean = torch.tensor(config["latents_mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(config["latents_std"]).view(1, -1, 1, 1, 1)
    x = video(2, 5, seed=3)
    with torch.no_grad():
        raw = raw_vae.encode(x).latent_dist.mode()
        expected = (raw - mean) / std
        z = vae.encode(x)
        assert (expected - raw).abs().max() > 0.1  # not the identity
        torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-4)
        decoded = raw_vae.decode(raw).sample.clamp(-1, 1)
        torch.testing.assert_close(vae.decode(z), decoded, atol=1e-5, rtol=1e-4)


def test_vae_encode_is_deterministic_and_batch_independent(vae):
    x = video(3, 9, seed=5)
    z = vae.encode(x)
    assert torch.equal(z, vae.encode(x))  # the posterior mode, not a sample
    for i in range(3):
        torch.testing.assert_close(vae.encode(x[i : i + 1]), z[i : i + 1], atol=1e-5, rtol=1e-4)
    assert (z[0] - z[1]).abs().max() > 0.01  # different clips, different latents
    out = vae.decode(z)
    torch.testing.assert_close(vae.decode(z[1:2]), out[1:2], atol=1e-5, rtol=1e-4)


def test_tiling_is_switched_on(wan_dir, vae):
    tiled = VideoVAE.from_config(VAEConfig(model=wan_dir, tiling=True))
    assert tiled.model.use_tiling and not vae.model.use_tiling
    x = video(1, 5)  # smaller than a tile: the same computation
    torch.testing.assert_close(tiled.encode(x), vae.encode(x), atol=1e-5, rtol=1e-4)


def test_image_vae_encodes_frame_by_frame(tmp_path):
    from diffusers import AutoencoderKL

    directory = build_tiny_image_vae(tmp_path / "image-vae")
    cfg = VAEConfig(model=directory, subfolder=None, cls="AutoencoderKL")
    whole = VideoVAE.from_config(cfg)
    chunked = VideoVAE.from_config(
        VAEConfig(model=directory, subfolder=None, cls="AutoencoderKL", chunk_frames=2)
    )
    assert whole.per_frame and (whole.time_ratio, whole.space_ratio) == (1, 8)
    assert vae_latent_channels(cfg) == whole.latent_channels == 4
    x = video(2, 5, 32, 32, seed=7)
    z = whole.encode(x)
    assert z.shape == (2, 4, 5, 4, 4) == (2, *whole.latent_shape(5, 32, 32))
    torch.testing.assert_close(chunked.encode(x), z, atol=1e-5, rtol=1e-4)
    raw_vae = AutoencoderKL.from_pretrained(directory).eval()
    with torch.no_grad():  # frame 3 of sample 1, alone, through diffusers: (mode - shift) * scale
        raw = raw_vae.encode(x[1:2, :, 3]).latent_dist.mode()
    torch.testing.assert_close(z[1:2, :, 3], (raw - 0.2) * 1.7, atol=1e-5, rtol=1e-4)
    out = chunked.decode(z)
    assert out.shape == x.shape
    torch.testing.assert_close(out, whole.decode(z), atol=1e-5, rtol=1e-4)


# -- the text encoder ----------------------------------------------------------------------------------


def test_text_shapes_mask_and_padding(wan_dir, text_encoder):
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(wan_dir, subfolder="tokenizer")
    counts = [len(tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert counts[1] == 1  # the empty prompt still has its end token
    emb, mask = text_encoder.encode(PROMPTS)
    assert emb.shape == (3, max(counts), 32) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == counts
    assert mask[:, 0].all() and not mask[1, 1:].any()  # right padding
    assert torch.equal(emb[~mask], torch.zeros_like(emb[~mask]))
    assert (emb[mask].abs().sum(-1) > 0).all()
    # the embeddings are the encoder's own last hidden states
    raw_model = UMT5EncoderModel.from_pretrained(wan_dir, subfolder="text_encoder").eval()
    ids = tokenizer(PROMPTS[2], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = raw_model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(emb[2, : counts[2]], hidden, atol=1e-5, rtol=1e-4)


def test_text_embedding_does_not_depend_on_the_batch(text_encoder):
    alone, alone_mask = text_encoder.encode([PROMPTS[0]])
    batch, batch_mask = text_encoder.encode(PROMPTS)
    n = int(alone_mask.sum())
    assert batch.shape[1] > n  # padded in the batch, not alone
    torch.testing.assert_close(batch[0, :n], alone[0, :n], atol=1e-5, rtol=1e-4)
    assert torch.equal(batch_mask[0, :n], alone_mask[0])
    assert (batch[0] - batch[2]).abs().max() > 1e-3


def test_text_truncates_at_max_length(wan_dir):
    short = TextEncoder.from_config(TextEncoderConfig(model=wan_dir, max_length=5))
    emb, mask = short.encode([PROMPTS[2], "a dog"])
    assert emb.shape == (2, 5, 32)
    assert mask[0].all() and mask[1].sum() < 5
    ids = short.tokenizer([PROMPTS[2]], truncation=True, max_length=5)["input_ids"][0]
    assert len(ids) == 5 and ids[-1] == short.tokenizer.eos_token_id  # truncation keeps the end token


def test_text_encode_edge_cases(text_encoder):
    emb, mask = text_encoder.encode([])
    assert emb.shape == (0, 0, 32) and mask.shape == (0, 0)
    with pytest.raises(TypeError, match="list of prompts"):
        text_encoder.encode("a dog")
    assert next(text_encoder.model.parameters()).dtype == torch.float32  # auto on CPU


def test_open_clip_text_tower(open_clip_name):
    import open_clip

    cfg = TextEncoderConfig(kind="open_clip", model=open_clip_name)
    encoder = TextEncoder.from_config(cfg)
    assert text_encoder_dim(cfg) == encoder.dim == 32
    assert is_random_weights(open_clip_name)
    tokens = open_clip.get_tokenizer(open_clip_name)(PROMPTS)
    counts = ((tokens == encoder.tokenizer.eot_token_id).int().argmax(1) + 1).tolist()  # sot ... eot
    emb, mask = encoder.encode(PROMPTS)
    assert emb.shape == (3, max(counts), 32) and mask.sum(1).tolist() == counts
    assert torch.equal(emb[~mask], torch.zeros_like(emb[~mask]))
    assert (emb[mask].abs().sum(-1) > 0).all()
    alone, _ = encoder.encode([PROMPTS[0]])
    torch.testing.assert_close(emb[0, : counts[0]], alone[0], atol=1e-5, rtol=1e-4)
    short = TextEncoder.from_config(TextEncoderConfig(kind="open_clip", model=open_clip_name, max_length=6))
    emb6, mask6 = short.encode(PROMPTS)
    assert emb6.shape == (3, 6, 32) and mask6[2].all() and mask6[1].sum() == 2
    assert short.describe()["kind"] == "open_clip"
    with pytest.raises(ConfigError, match="text_encoder.pretrained"):
        TextEncoder.from_config(
            TextEncoderConfig(kind="open_clip", model=open_clip_name, pretrained="openai")
        )
