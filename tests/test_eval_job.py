"""`reelmill eval` end to end through the CLI: a tiny checkpoint, tiny clip shards (with a corrupt clip, a
too-short one and an unreadable shard among them) and tiny metric models of the real kinds; then its page in
a headless Chromium, and the inputs it refuses with exit status 2."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import probe_video
from jobs.cli import main
from training.evaluation.tiny_models import build_tiny_eval_models
from training.video_out import write_mp4

FRAMES = {"num_frames": 9, "fps": 8.0, "height": 64, "width": 64}
PROMPTS = ["a red ball rolls across a table", "waves break on a rocky shore", "a dog runs through the grass"]
METRICS = ("fvd", "clipsim", "subject_consistency", "frame_diff", "temporal_flickering", "flicker", "motion")


def clip_bytes(tmp: Path, seed: int, frames: int = 16) -> bytes:
    """An H.264 mp4 of drifting colour gradients, 96x80 at 8 fps."""
    t = np.arange(frames)[:, None, None] / frames
    y, x = np.meshgrid(np.linspace(-1, 1, 80), np.linspace(-1, 1, 96), indexing="ij")
    phase = np.random.default_rng(seed).uniform(0, 6.28, 3)
    video = np.stack([np.sin(3 * x + 2 * y + 4 * t + p) for p in phase], axis=-1)
    path = tmp / f"clip-{seed}-{frames}.mp4"
    write_mp4(((video * 0.8 + 1) * 127.5).clip(0, 255).astype(np.uint8), str(path), fps=8.0)
    return path.read_bytes()


def write_shards(directory: Path, tmp: Path) -> None:
    """Two shards of six good clips, one corrupt clip and one too short; and one shard of garbage."""
    directory.mkdir(parents=True)
    samples = [(f"clip{i:02d}", clip_bytes(tmp, i), f"real clip number {i}") for i in range(6)]
    samples.insert(2, ("corrupt", b"\x00not an mp4" * 50, "a broken clip"))
    samples.insert(5, ("short", clip_bytes(tmp, 99, frames=4), "a clip too short for 9 frames at 8 fps"))
    for part, chunk in enumerate((samples[:4], samples[4:])):
        with wds.TarWriter(str(directory / f"shard-000000-{part:03d}.tar")) as sink:
            for key, mp4, caption in chunk:
                record = {"clip_id": key, "caption": {"summary": caption, "segments": []}}
                sink.write({"__key__": key, "mp4": mp4, "json": json.dumps(record), "txt": caption})
    (directory / "shard-000001-000.tar").write_bytes(b"this is not a tar file" * 40)


def write_checkpoint(path: Path, tiny_wan: str) -> None:
    """A tiny DiT's checkpoint as `reelmill train` writes one (weights, hparams, the clip size)."""
    from training.module import VideoDiTModule

    torch.manual_seed(0)
    module = VideoDiTModule("tiny", vae={"model": tiny_wan}, text_encoder={"model": tiny_wan})
    saved = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "datamodule_hyper_parameters": dict(FRAMES),
        "global_step": 0,
    }
    torch.save(saved, path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_wan):
    d = tmp_path_factory.mktemp("eval-inputs")
    write_shards(d / "shards", d)
    write_checkpoint(d / "tiny.ckpt", tiny_wan)
    (d / "prompts.txt").write_text("# held-out prompts\n" + "\n".join(PROMPTS) + "\n\n")
    return {"dir": d, "sets": build_tiny_eval_models(d / "metric-models")}


def eval_args(inputs: dict, output: Path, *extra: str) -> list[str]:
    d = inputs["dir"]
    sets = [arg for s in inputs["sets"] for arg in ("--set", s)]
    return [
        "eval", "--ckpt", str(d / "tiny.ckpt"), "--prompts", str(d / "prompts.txt"), "--real", str(d / "shards"),
        "--output", str(output), "--num-samples", "3", "--batch-size", "2", "--steps", "2", "--guidance", "2",
        "--device", "cpu", "--set", "device=cpu", *sets, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    status = main(eval_args(inputs, out))
    return status, out


def test_eval_writes_every_metric_for_samples_and_real_clips(evaluated, inputs, capsys):
    status, out = evaluated
    assert status == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["skipped_metrics"] == {}
    for name in METRICS:
        assert result["metrics"]["samples"][name] is not None, name
        if name != "fvd":  # FVD is one distance between the sets, in the samples' row
            assert result["metrics"]["real"][name] is not None, name
    assert result["metrics"]["samples"]["fvd"] > 0
    assert 0 < result["metrics"]["real"]["subject_consistency"] <= 1 + 1e-6
    network = result["feature_network"]
    assert network["path"] == inputs["sets"][0].split("=", 1)[1] and len(network["sha256"]) == 64
    assert network["call"] == "i3d"
    assert result["models"] == "random-weights"  # tiny metric models and a tiny Wan: said so
    assert result["counts"]["samples"] == 3 and result["counts"]["failed_samples"] == 0
    assert result["counts"]["real"] == 6  # the corrupt clip, the short one and the garbage shard are counted
    assert result["counts"]["real_skipped"] == {
        "shard_errors": 1,
        "corrupt": 1,
        "too_short": 1,
        "no_video": 0,
    }
    assert result["sampling"]["seeds"] == [0, 1] and result["clip"] == FRAMES  # 2 batches, seeded 0 and 1


def test_eval_samples_are_playable_mp4s_beside_their_prompts(evaluated):
    _, out = evaluated
    result = json.loads((out / "eval.json").read_text())
    page = (out / "index.html").read_text()
    assert [row["prompt"] for row in result["samples"]] == PROMPTS
    for row in result["samples"]:
        video = out / row["video"]
        info = probe_video(video)
        assert (info["codec_name"], info["width"], info["height"], info["nb_read_frames"]) == (
            "h264",
            64,
            64,
            "9",
        )
        assert video.with_suffix(".txt").read_text().strip() == row["prompt"]
        assert f'src="{row["video"]}"' in page and row["prompt"] in page
    assert "models: random-weights" in page and network_named(page, result)


def network_named(page: str, result: dict) -> bool:
    return result["feature_network"]["sha256"] in page


def test_eval_page_plays_its_videos_in_chromium(evaluated):
    from cdp import Chromium

    _, out = evaluated
    with Chromium(1200, 800) as browser:
        browser.open((out / "index.html").as_uri())
        states = browser.wait_for(
            "(() => { const v = [...document.querySelectorAll('video')];"
            " return v.length && v.every(x => x.readyState >= 1) ? v.map(x => x.readyState) : null; })()",
            timeout_s=20,
        )
        assert len(states) == 3
        assert browser.errors == []


def test_eval_without_a_feature_network_says_why_there_is_no_fvd(inputs, tmp_path):
    out = tmp_path / "out"
    args = eval_args(
        inputs, out, "--set", "fvd.network=", "--set", "clipsim.enabled=false", "--num-samples", "1"
    )
    assert main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    assert (
        result["metrics"]["samples"]["fvd"] is None
        and "fvd.network is not set" in result["skipped_metrics"]["fvd"]
    )
    assert result["skipped_metrics"]["clipsim"] == "clipsim.enabled is false"
    assert result["feature_network"] is None
    assert "fvd.network is not set" in (out / "index.html").read_text()


def test_eval_refuses_bad_input_with_exit_status_2(inputs, tmp_path, capsys):
    d = inputs["dir"]
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    cases = [
        (["--ckpt", str(tmp_path / "nope.ckpt")], "--ckpt"),
        (["--prompts", str(tmp_path / "empty.txt")], "no prompts"),
        (["--real", str(tmp_path / "no-shards")], "--real"),
        (["--set", f"consistency.model={tmp_path / 'no-dinov2'}"], "consistency.model: cannot load"),
        (["--set", "clipsim.model=no-such-clip"], "clipsim.model: open_clip has no model"),
    ]
    for extra, message in cases:
        args = eval_args(inputs, tmp_path / "out", *extra)
        assert main(args) == 2, extra
        err = capsys.readouterr().err
        assert "reelmill eval: error:" in err and message in err, (extra, err)
    # real shards whose clips are all too short for the model's clip size
    short = tmp_path / "short"
    short.mkdir()
    with wds.TarWriter(str(short / "shard-000000-000.tar")) as sink:
        sink.write({"__key__": "s", "mp4": clip_bytes(tmp_path, 5, frames=4), "txt": "short"})
    assert main(eval_args(inputs, tmp_path / "out", "--real", str(short))) == 2
    assert "no clip decoded at the model's clip size" in capsys.readouterr().err
    assert not list((d / "shards").glob("*.json"))  # inputs untouched


class LatentBatches(torch.utils.data.Dataset):
    """Random latent batches of the tiny Wan's shapes (4 channels, 3x8x8; 32-wide text): training steps
    that cost nothing, so the test's time goes to what it checks."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {
            "latents": torch.randn(4, 3, 8, 8, generator=g),
            "text": torch.randn(6, 32, generator=g),
            "text_mask": torch.ones(6, dtype=torch.bool),
        }


def test_eval_callback_logs_its_metrics_to_csv_and_tensorboard(inputs, tiny_wan, tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.eval_callback import EvalMetrics
    from training.module import VideoDiTModule

    torch.manual_seed(0)
    module = VideoDiTModule("tiny", vae={"model": tiny_wan}, text_encoder={"model": tiny_wan}, warmup_steps=1)
    callback = EvalMetrics(
        every_n_steps=2, prompts=PROMPTS[:2], steps=2, guidance=2.0, eval_set=[*inputs["sets"], "device=cpu"],
        real_shards=str(inputs["dir"] / "shards"), num_real=4, **FRAMES,
    )  # fmt: skip
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=loggers, callbacks=[callback], enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(LatentBatches(), batch_size=2))
    assert [row["step"] for row in callback.logged] == [2]  # every 2 steps; the last step not twice
    names = {f"eval/{m}" for m in METRICS}
    assert names <= set(callback.logged[-1])
    # the CSV log holds each value at its step
    import csv

    with open(next(tmp_path.glob("csv/version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    for logged in callback.logged:
        row = next(r for r in rows if r["step"] == str(logged["step"]) and r.get("eval/clipsim"))
        for name in names:
            assert float(row[name]) == pytest.approx(logged[name], rel=1e-6), name
    # and TensorBoard's event file holds the same scalars
    events = EventAccumulator(str(next(tmp_path.glob("tb/version_*")))).Reload()
    assert names <= set(events.Tags()["scalars"])
    flicker = events.Scalars("eval/flicker")
    assert [e.step for e in flicker] == [2]
    assert flicker[-1].value == pytest.approx(callback.logged[-1]["eval/flicker"], rel=1e-6)
