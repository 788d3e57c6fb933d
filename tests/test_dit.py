"""The video DiT on CPU: shapes, spacetime attention, text masking, adaLN-Zero, the overfit proof with
sampling, and checkpoint/resume through Lightning."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from training.model import VideoDiT, flops_per_sample, preset
from training.module import VideoDiTModule
from training.sampler import sample

C, D = 4, 32  # latent channels and text width of the test models


def tiny(**overrides) -> VideoDiT:
    torch.manual_seed(0)
    return VideoDiT(preset("tiny", in_channels=C, text_dim=D, **overrides))


def wake(model: VideoDiT) -> VideoDiT:
    """Give the zero-initialized layers random weights, so every path carries signal."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


def inputs(t=4, h=8, w=8, batch=2, text_len=5):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, C, t, h, w, generator=g),
        torch.rand(batch, generator=g),
        torch.randn(batch, text_len, D, generator=g),
        torch.ones(batch, text_len, dtype=torch.bool),
    )


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2), (1, 1, 1), (2, 4, 4)])
@pytest.mark.parametrize("size", [(4, 8, 8), (2, 4, 12), (8, 16, 8)])
def test_shapes_round_trip(patch, size):
    model = wake(tiny(patch=patch))
    x, t, text, mask = inputs(*size)
    out = model(x, t, text, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_size_that_does_not_fit_the_patch_is_refused():
    model = tiny(patch=(2, 2, 2))
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        model(*inputs(3, 8, 8))


def test_adaln_zero_outputs_zeros_at_initialization():
    out = tiny()(*inputs())
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("factorized", [False, True])
def test_attention_is_spacetime(factorized):
    model = wake(tiny(factorized=factorized))
    x, t, text, mask = inputs(t=4)
    changed = x.clone()
    changed[:, :, 0] += 1.0  # only the first frame
    with torch.no_grad():
        a, b = model(x, t, text, mask), model(changed, t, text, mask)
    assert (a[:, :, -1] - b[:, :, -1]).abs().max() > 1e-4  # the last frame saw it


def test_text_padding_does_not_change_the_output():
    model = wake(tiny())
    x, t, text, _ = inputs(text_len=3)
    outs = []
    for pad in (0, 2, 9):
        garbage = torch.randn(2, pad, D) * 10
        mask = torch.cat([torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, pad, dtype=torch.bool)], dim=1)
        with torch.no_grad():
            outs.append(model(x, t, torch.cat([text, garbage], dim=1), mask))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-4, atol=1e-5)


def first_frame_given(x):
    given = torch.zeros(x.shape[0], 1, *x.shape[2:])
    given[:, :, 0] = 1
    return given


def test_given_frames_change_the_output_and_an_empty_mask_is_no_conditioning():
    model = wake(tiny())
    x, t, text, mask = inputs()
    cond = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = model(x, t, text, mask)
        given = model(x, t, text, mask, cond=cond, cond_mask=first_frame_given(x))
        other = model(x, t, text, mask, cond=cond + 1, cond_mask=first_frame_given(x))
        empty = model(x, t, text, mask, cond=cond, cond_mask=torch.zeros(x.shape[0], 1, *x.shape[2:]))
    assert (given - plain).abs().max() > 1e-3
    assert (other[:, :, -1] - given[:, :, -1]).abs().max() > 1e-4  # the last frame saw the given first one
    assert torch.equal(empty, plain)


def test_sampling_keeps_given_cells_and_an_empty_mask_samples_text_to_video():
    model = wake(tiny())
    x, _, text, mask = inputs()
    region = torch.zeros(x.shape[0], 1, *x.shape[2:])
    region[:, :, 1:3, 2:5, 3:7] = 1  # a spacetime box, not whole frames
    for guidance in (1.0, 3.0):
        out = sample(model, text, mask, (C, 4, 8, 8), steps=3, guidance=guidance, cond=x, cond_mask=region)
        inside = region.expand_as(x).bool()
        assert torch.equal(out[inside], x[inside])
        assert (out[~inside] - x[~inside]).abs().mean() > 0.1
    plain = sample(model, text, mask, (C, 4, 8, 8), steps=3, seed=2)
    empty = sample(
        model, text, mask, (C, 4, 8, 8), steps=3, seed=2, cond=x, cond_mask=torch.zeros_like(region)
    )
    assert torch.equal(plain, empty)


def test_a_model_without_conditioning_refuses_given_frames():
    model = wake(tiny(conditioning=False))
    x, t, text, mask = inputs()
    with torch.no_grad():
        model(x, t, text, mask, cond=x, cond_mask=torch.zeros(x.shape[0], 1, *x.shape[2:]))  # nothing given
        with pytest.raises(ValueError, match="without frame conditioning"):
            model(x, t, text, mask, cond=x, cond_mask=first_frame_given(x))


def test_caption_projection_shrinks_the_presets():
    def millions(name, **flags):
        with torch.device("meta"):
            model = VideoDiT(preset(name, in_channels=16, text_dim=4096, **flags))
        return sum(p.numel() for p in model.parameters()) / 1e6

    old = dict(caption_projection=False, conditioning=False)
    assert round(millions("S", **old)) == 76 and round(millions("B", **old)) == 223  # as documented before
    assert round(millions("S")) == 42 and round(millions("B")) == 163
    # what the projection saves: per block, K/V from 4096-wide text, against once width-wide
    width, depth = 384, 12
    kv_and_pool = depth * 2 * width * (4096 - width) + width * (4096 - width)
    saved = kv_and_pool - (4096 * width + width * width + 2 * width)  # less the projection's own weights
    assert millions("S", conditioning=False) == pytest.approx(millions("S", **old) - saved / 1e6, abs=1e-6)


def test_flops_count_grows_quadratically_with_tokens_for_full_attention():
    cfg = preset("B", in_channels=16, text_dim=4096)
    small, large = flops_per_sample(cfg, (4, 16, 16), 128), flops_per_sample(cfg, (8, 16, 16), 128)
    assert 2 < large / small < 4
    factorized = preset("B", in_channels=16, text_dim=4096, factorized=True)
    assert flops_per_sample(factorized, (8, 16, 16), 128) < large
    # the caption projection: 2 FLOPs per multiply-add of 128 text tokens, once (4096 -> 768 -> 768), not
    # per block (12 blocks of K/V from 4096 instead of from 768)
    old = preset("B", in_channels=16, text_dim=4096, caption_projection=False)
    saved = 2 * 128 * (12 * (4096 - 768) * 2 * 768 - (4096 * 768 + 768 * 768))
    assert flops_per_sample(old, (8, 16, 16), 128) - large == pytest.approx(saved)


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = wake(tiny(checkpointing=checkpointing)).train()
        model(*inputs()).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_checkpoint_holds_each_weight_once():
    module = VideoDiTModule("tiny", {"in_channels": C, "text_dim": D})
    keys = module.state_dict().keys()
    assert sum(k.startswith("model.") for k in keys) == sum(k.startswith("ema.") for k in keys)
    assert {k.split(".")[0] for k in keys} == {"model", "ema"}


class Clips(Dataset):
    """Fixed latent clips, each item a clip with a text embedding (clip k % number of clips)."""

    def __init__(self, latents, text, mask, length=64):
        self.latents, self.text, self.mask, self.length = latents, text, mask, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        k = i % len(self.text)
        return {
            "latents": self.latents[k % len(self.latents)],
            "text": self.text[k],
            "text_mask": self.mask[k],
        }


def two_clips():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, C, 4, 8, 8, generator=g),
        torch.randn(2, 4, D, generator=g),
        torch.ones(2, 4, dtype=torch.bool),
    )


def trainer(root, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root,
    )  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def test_overfit_two_clips_and_sample_each_back(tmp_path):
    """Trained with the mask mix on each clip under its own text AND both clips under one shared text:
    the own texts must regenerate each clip (text-to-video); under the shared text, with the same noise
    for both, only the given frames tell the clips apart, so regenerating each one from its first frame,
    or its first and last frames, shows the conditioning was learned."""
    latents, own_text, mask = two_clips()
    shared = torch.randn(1, 4, D, generator=torch.Generator().manual_seed(9))
    text = torch.cat([own_text, shared, shared])  # items: clip 0 / A, clip 1 / B, clip 0 / S, clip 1 / S
    torch.manual_seed(0)
    module = VideoDiTModule(
        "tiny", {"in_channels": C, "text_dim": D}, lr=2e-3, warmup_steps=20, ema_decay=0.99, text_drop=0.0,
        mask_mix={"none": 0.4, "first_frame": 0.3, "keyframes": 0.3},
    )  # fmt: skip
    batch = {"latents": latents, "text": own_text, "text_mask": mask}
    with torch.no_grad():
        start = module.fixed_loss(batch).item()
    trainer(tmp_path, max_steps=1500, enable_checkpointing=False).fit(
        module, DataLoader(Clips(latents, text, torch.ones(4, 4, dtype=torch.bool)), batch_size=8)
    )
    with torch.no_grad():
        end = module.fixed_loss(batch, use_ema=True).item()  # the EMA weights, which sampling uses
    assert end < start / 20, (start, end)
    between = ((latents[0] - latents[1]) ** 2).mean()
    shape = tuple(latents.shape[1:])
    for method in ("euler", "heun"):
        out = module.generate(own_text, mask, shape, steps=25, method=method, seed=3)
        own = ((out - latents) ** 2).mean(dim=(1, 2, 3, 4))
        assert (own < between / 20).all(), (method, own, between)
    same_noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(3)).expand(2, *shape)
    for frames in ([0], [0, 3]):
        given = torch.zeros(2, 1, *shape[1:])
        given[:, :, frames] = 1
        for method in ("euler", "heun"):
            out = module.generate(
                shared.expand(2, -1, -1), mask, shape, steps=25, method=method, noise=same_noise,
                cond=latents, cond_mask=given,
            )  # fmt: skip
            own = ((out - latents) ** 2).mean(dim=(1, 2, 3, 4))
            assert (own < between / 10).all(), (frames, method, own, between)
            assert torch.equal(out[:, :, frames], latents[:, :, frames])
    other_size = module.generate(own_text, mask, (C, 8, 12, 16), steps=2)  # trained at 4x8x8
    assert other_size.shape == (2, C, 8, 12, 16) and torch.isfinite(other_size).all()


def test_sampling_is_deterministic_with_a_seed():
    model = wake(tiny())
    _, _, text, mask = inputs()
    a = sample(model, text, mask, (C, 4, 8, 8), steps=3, seed=7, guidance=3.0)
    b = sample(model, text, mask, (C, 4, 8, 8), steps=3, seed=7, guidance=3.0)
    c = sample(model, text, mask, (C, 4, 8, 8), steps=3, seed=8, guidance=3.0)
    assert torch.equal(a, b) and not torch.equal(a, c)


class Capture(L.Callback):
    """What the trainer holds when training (re)starts and when it ends."""

    def __init__(self):
        self.at_start = self.at_end = None

    @staticmethod
    def state(trainer, module):
        optimizer = trainer.optimizers[0]
        first = next(iter(module.model.parameters()))
        return {
            "step": trainer.global_step,
            "sched": trainer.lr_scheduler_configs[0].scheduler.last_epoch,
            "adam_step": float(optimizer.state[first]["step"]) if first in optimizer.state else 0.0,
            "exp_avg": optimizer.state[first]["exp_avg"].clone() if first in optimizer.state else None,
            "ema": [p.clone() for p in module.ema.parameters()],
            "lr": optimizer.param_groups[0]["lr"],
        }

    def on_train_start(self, trainer, module):
        self.at_start = self.state(trainer, module)

    def on_train_end(self, trainer, module):
        self.at_end = self.state(trainer, module)


def test_resume_continues_optimizer_ema_steps_and_schedule(tmp_path):
    latents, text, mask = two_clips()
    loader = DataLoader(Clips(latents, text, mask), batch_size=2)
    hp = dict(lr=1e-3, warmup_steps=4, schedule="cosine", total_steps=20, ema_decay=0.9)

    def module():
        torch.manual_seed(0)
        return VideoDiTModule("tiny", {"in_channels": C, "text_dim": D}, **hp)

    first = Capture()
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=6)
    trainer(tmp_path, max_steps=6, callbacks=[first, checkpoints]).fit(module(), loader)
    second = Capture()
    trainer(tmp_path, max_steps=10, callbacks=[second], enable_checkpointing=False).fit(
        module(), loader, ckpt_path=str(tmp_path / "last.ckpt")
    )
    stopped, resumed = first.at_end, second.at_start
    assert resumed["step"] == stopped["step"] == 6 and resumed["sched"] == stopped["sched"] == 6
    assert resumed["adam_step"] == stopped["adam_step"] == 6 and resumed["lr"] == pytest.approx(stopped["lr"])
    torch.testing.assert_close(resumed["exp_avg"], stopped["exp_avg"])
    for a, b in zip(resumed["ema"], stopped["ema"], strict=True):
        torch.testing.assert_close(a, b)
    assert second.at_end["step"] == 10 and second.at_end["sched"] == 10


def test_ddp_on_two_processes_keeps_ranks_in_step(tmp_path):
    """Lightning DDP (gloo, 2 CPU ranks): the ranks train on different batches, yet end with the same
    weights and the same EMA, which moved away from the initialization."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("ddp_training.py")
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(rank0["seen"]) == len(rank1["seen"]) == 4
    assert not set(rank0["seen"]) & set(rank1["seen"])
    for key, value in rank0["state"].items():
        torch.testing.assert_close(value, rank1["state"][key], msg=key)
    torch.manual_seed(0)
    init = VideoDiTModule("tiny", {"in_channels": 4, "text_dim": 16}).state_dict()
    moved = [k for k in init if k.startswith("ema.") and not torch.equal(init[k], rank0["state"][k])]
    assert moved


OLD_HPARAMS = (
    "model", "model_overrides", "lr", "weight_decay", "betas", "warmup_steps", "schedule", "total_steps",
    "min_lr_ratio", "grad_clip", "ema_decay", "text_drop", "shift", "t_mean", "t_std", "compile", "vae",
    "text_encoder",
)  # fmt: skip
"""The hyper-parameters VideoDiTModule saved before caption projection and frame conditioning."""


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    """A Lightning checkpoint as the code before caption projection and frame conditioning wrote it: the
    old architecture (text_dim-wide K/V in every block, a patch embedding of C channels) and hparams that
    name neither option. Returns its path and the module that wrote it."""
    root = tmp_path_factory.mktemp("old-ckpt")
    latents, text, mask = two_clips()
    torch.manual_seed(0)
    old_arch = {"in_channels": C, "text_dim": D, "caption_projection": False, "conditioning": False}
    module = VideoDiTModule("tiny", old_arch, warmup_steps=1, ema_decay=0.5)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True)
    trainer(root, max_steps=2, callbacks=[checkpoints]).fit(module, DataLoader(Clips(latents, text, mask)))
    saved = torch.load(root / "last.ckpt", weights_only=True)
    saved["hyper_parameters"] = {k: v for k, v in saved["hyper_parameters"].items() if k in OLD_HPARAMS}
    saved["hyper_parameters"]["model_overrides"] = {"in_channels": C, "text_dim": D}
    state = saved["state_dict"]
    assert not any("caption_proj" in k for k in state)
    assert state["model.blocks.0.cross.kv.weight"].shape == (2 * 96, D)  # K/V straight from the text
    assert state["model.patch_embed.weight"].shape == (96, C, 1, 2, 2)
    torch.save(saved, root / "old.ckpt")
    return root / "old.ckpt", module


def test_a_checkpoint_from_before_conditioning_loads_and_samples(old_checkpoint):
    from jobs.sample import load_checkpoint

    path, writer = old_checkpoint
    module = VideoDiTModule.from_checkpoint(load_checkpoint(str(path)))
    assert not module.config.caption_projection and not module.config.conditioning
    _, text, mask = two_clips()
    out = module.generate(text, mask, (C, 4, 8, 8), steps=3, seed=1)
    torch.testing.assert_close(out, writer.generate(text, mask, (C, 4, 8, 8), steps=3, seed=1))
    assert out.abs().sum() > 0
    with pytest.raises(ValueError, match="without frame conditioning"):
        module.generate(text, mask, (C, 4, 8, 8), steps=1, cond=out, cond_mask=torch.ones(2, 1, 4, 8, 8))


def test_resuming_a_checkpoint_from_before_conditioning_names_the_flag(old_checkpoint, tmp_path):
    from curation.config import ConfigError

    path, _ = old_checkpoint
    latents, text, mask = two_clips()
    loader = DataLoader(Clips(latents, text, mask))
    with pytest.raises(
        ConfigError, match=r"--model.model_overrides '\{caption_projection: false, conditioning"
    ):
        trainer(tmp_path, max_steps=3, enable_checkpointing=False).fit(
            VideoDiTModule("tiny", {"in_channels": C, "text_dim": D}), loader, ckpt_path=str(path)
        )
    old_arch = {"in_channels": C, "text_dim": D, "caption_projection": False, "conditioning": False}
    resumed = trainer(tmp_path, max_steps=3, enable_checkpointing=False)
    resumed.fit(VideoDiTModule("tiny", old_arch), loader, ckpt_path=str(path))
    assert resumed.global_step == 3
