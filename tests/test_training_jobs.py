"""Training on curated shards end to end: `reelmill encode` on a local Ray, latent shards against clip
shards through the same module, and `reelmill train` killed, resumed from `last`, then `reelmill sample`."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import decode_frames, probe_video
from curation import config
from curation.layout import OutputLayout
from curation.model_labels import RANDOM_WEIGHTS_FILE
from jobs.encode import run_encode
from jobs.job_configs import EncodeConfig

ROOT = Path(__file__).resolve().parent.parent
REELMILL = str(Path(sys.executable).with_name("reelmill"))
FRAMES = {"num_frames": 9, "fps": 8.0, "height": 64, "width": 64}


def encode_cfg(tiny_wan: str, **frames) -> EncodeConfig:
    sets = [f"frames.{k}={v}" for k, v in {**FRAMES, **frames}.items()]
    sets += [
        f"vae.model={tiny_wan}",
        f"text_encoder.model={tiny_wan}",
        "device=cpu",
        "shards.clips_per_shard=3",
    ]
    return config.load(EncodeConfig, "encode", "default", sets)


@pytest.fixture(scope="module")
def latents(ray_local, curated_run, tiny_wan, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents") / "out"
    return out, run_encode([str(curated_run)], str(out), encode_cfg(tiny_wan))


def test_encode_writes_a_latent_sample_for_every_clip(latents, curated_run, tiny_wan):
    out, run = latents
    clips = [
        s
        for url in OutputLayout(str(curated_run)).shard_files()
        for s in wds.WebDataset(url, shardshuffle=False)
    ]
    written = {}
    for url in OutputLayout(str(out)).shard_files():
        for sample in wds.WebDataset(url, shardshuffle=False).decode():
            written[sample["__key__"]] = sample
    assert set(written) == {c["__key__"] for c in clips} and run["counts"]["written"] == len(clips)
    for key, sample in written.items():
        latent, text, mask = sample["latent.npy"], sample["text.npy"], sample["text_mask.npy"]
        assert latent.dtype == "float16" and latent.shape[1:] == (3, 8, 8)
        assert text.dtype == "float16" and text.ndim == 3 and mask.shape == text.shape[:2]
        assert len(text) == 2 and mask.any(axis=1).all()  # dense and summary, both with real tokens
        assert (text[~mask] == 0).all()
        record = sample["json"]
        assert record["clip_id"] == key and record["encoding"]["latent_shape"] == list(latent.shape)
        assert sample["txt"].startswith(record["caption"]["summary"])
    rows = OutputLayout(str(out)).read_manifest(OutputLayout(str(out)).samples_manifest).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(written) and {r["status"] for r in rows} == {"ok"}
    index = json.loads((out / "shards" / "index.json").read_text())
    assert index["totals"]["samples"] == len(written)
    assert {s["url"] for s in index["shardlist"]} == {p.name for p in (out / "shards").glob("*.tar")}
    # the tiny Wan VAE and UMT5 carry the builders' marker: the run says what its latents are worth
    assert run["models"] == "random-weights" and run["latent"]["channels"] == latent.shape[0]


def test_encode_skips_clips_too_short_as_rows_and_resumes(ray_local, curated_run, tiny_wan, tmp_path):
    out = tmp_path / "out"
    cfg = encode_cfg(tiny_wan, num_frames=25)  # 3.0 s at 8 fps: the shorter clips cannot fill it
    run = run_encode([str(curated_run)], str(out), cfg)
    layout = OutputLayout(str(out))
    rows = layout.read_manifest(layout.samples_manifest).to_pylist()
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert skipped and {r["reason"] for r in skipped} == {"too_short"}
    assert run["counts"]["skipped"] == {"too_short": len(skipped)}
    assert run["counts"]["written"] == len(rows) - len(skipped) > 0
    index = (out / "shards" / "index.json").read_text()
    again = run_encode([str(curated_run)], str(out), cfg)  # every task has its marker: nothing to redo
    assert again["tasks"]["run_now"] == 0 and again["counts"] == run["counts"]
    assert (out / "shards" / "index.json").read_text() == index  # rebuilt from the markers alone


def batches_by_key(datamodule) -> dict[str, dict]:
    datamodule.setup("fit")
    out = {}
    for batch in datamodule.train_dataloader():
        for i, key in enumerate(batch["__key__"]):
            out[key] = {k: (v[i] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
    return out


def test_latent_shards_give_the_batches_clip_shards_give(latents, curated_run, tiny_wan):
    """The same clips through the video path (decode, VAE and text encoder in the module) and through
    the latent shards `encode` wrote: the same latents and text embeddings, within float16."""
    from training.data import ShardDataModule
    from training.module import VideoDiTModule

    out, _ = latents
    common = dict(
        batch_size=2, num_workers=0, resampled=False, crop="start", dense_caption_prob=1.0, **FRAMES
    )
    video = ShardDataModule(shards=str(curated_run), kind="video", **common)
    latent = ShardDataModule(shards=str(out), kind="latent", **common)
    module = VideoDiTModule("tiny", vae={"model": tiny_wan}, text_encoder={"model": tiny_wan})
    from_video = {}
    for key, sample in batches_by_key(video).items():
        batch = module.on_after_batch_transfer(
            {"video": sample["video"][None], "caption": [sample["caption"]]}, 0
        )
        from_video[key] = batch
    from_latents = batches_by_key(latent)
    assert set(from_video) == set(from_latents) and len(from_video) >= 5
    for key, encoded in from_video.items():
        stored = from_latents[key]
        torch.testing.assert_close(stored["latents"], encoded["latents"][0], atol=2e-2, rtol=1e-2)
        n = int(encoded["text_mask"][0].sum())
        assert int(stored["text_mask"].sum()) == n
        torch.testing.assert_close(stored["text"][:n], encoded["text"][0, :n], atol=2e-2, rtol=1e-2)
        assert stored["caption"] == encoded["caption"][0]


CALLBACKS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 2, save_last: true}
    - class_path: training.sample_callback.SampleVideos
      init_args: {every_n_steps: 4, num_prompts: 1, steps: 2}
    - class_path: training.data.LoaderStatsCallback
"""


def write_callbacks(directory: Path) -> Path:
    path = directory / "callbacks.yaml"
    path.write_text(CALLBACKS)
    return path


def train_args(curated_run: Path, tiny_wan: str, run_dir: Path, max_steps: int) -> list[str]:
    encoder = {"model": tiny_wan}
    callbacks = write_callbacks(run_dir.parent)
    return [
        REELMILL, "train", "fit", "--config", str(ROOT / "configs/train/dit-tiny-cpu.yaml"), "--config", str(callbacks),
        "--data.shards", str(curated_run / "shards"), "--data.val_shards", str(curated_run / "shards"),
        "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", str(max_steps),
        "--trainer.val_check_interval", "4", "--trainer.enable_progress_bar", "false",
        "--model.vae", json.dumps(encoder), "--model.text_encoder", json.dumps(encoder),
        "--data.num_workers", "1", "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip


def assert_a_sample_video(path: Path) -> None:
    """An H.264 mp4 of the trained clip size (9 frames, 64x64) whose frames show something: not one flat
    colour, and not the same frame nine times."""
    info = probe_video(path)
    stream = (info["codec_name"], info["width"], info["height"], info["nb_read_frames"])
    assert stream == ("h264", 64, 64, "9"), path
    frames = decode_frames(path, 64, 64)
    assert frames.shape == (9, 64, 64, 3), path
    assert frames.std(axis=(1, 2, 3)).min() > 2.0, path  # every frame has content
    assert np.abs(np.diff(frames, axis=0)).mean() > 0.5, path  # and they change over time


def train_losses(metrics_csv: Path) -> dict[int, float]:
    """{step: train/loss} of a CSVLogger file; a step logged twice is an error."""
    with metrics_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"steps logged twice in {metrics_csv}: {steps}"
    return {int(r["step"]): float(r["train/loss"]) for r in rows}


def test_train_killed_resumed_from_last_then_sample(curated_run, tiny_wan, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first_log = tmp_path / "first.log"
    # a file, not a pipe: nothing blocks the run while no one reads; unbuffered: SIGKILL loses no line
    with first_log.open("w") as sink:
        first = subprocess.Popen(
            train_args(curated_run, tiny_wan, run_dir, 10_000),
            stdout=sink, stderr=subprocess.STDOUT, text=True, env={**env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while not last.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)  # a checkpoint or two more
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    log = first_log.read_text()
    assert last.exists(), log[-3000:]
    # the encoders are the tiny random-weight stand-ins: said when training starts, kept in checkpoints
    assert "reelmill train: models: random-weights" in log
    stopped = torch.load(last, map_location="cpu", weights_only=True)
    stopped_at = stopped["global_step"]
    assert 0 < stopped_at < 10_000 and stopped["models"] == "random-weights"
    target = stopped_at + 3
    resumed = subprocess.run(
        [*train_args(curated_run, tiny_wan, run_dir, target), "--ckpt_path", "last"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    assert "exists and is not empty" not in resumed.stderr  # resuming into its own run directory is no news
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == target and final["models"] == "random-weights"
    assert final["hyper_parameters"]["vae"]["model"] == tiny_wan

    # the callback sampled the held-out prompt every 4 steps, before the kill and after the resume, and at
    # the end; every one is a whole video of the trained size
    samples = {int(p.name.split("-")[1]): p for p in (run_dir / "samples").glob("step-*-0.mp4")}
    assert set(samples) == {*range(4, target + 1, 4), target}
    for path in samples.values():
        assert_a_sample_video(path)

    # metrics.csv: the resumed run (a new CSV version) logs every step from where the checkpoint stopped
    # to the target, each once, with finite losses
    versions = sorted((run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    assert len(versions) == 2 and (run_dir / "tensorboard").is_dir()
    losses = train_losses(versions[-1] / "metrics.csv")
    assert sorted(losses) == list(range(stopped_at, target)), (stopped_at, sorted(losses))
    assert all(math.isfinite(v) for v in losses.values())

    # sampling from the checkpoint with the same encoders moved elsewhere, without the marker: the DiT
    # learned the stand-ins' latents, so its videos are still marked
    moved = shutil.copytree(
        tiny_wan, tmp_path / "moved-wan", ignore=shutil.ignore_patterns(RANDOM_WEIGHTS_FILE)
    )
    video = tmp_path / "sample.mp4"
    done = subprocess.run(
        [REELMILL, "sample", "--ckpt", str(last), "--prompt", "a stand-in caption", "--output", str(video),
         "--steps", "4", "--device", "cpu", "--vae-model", str(moved), "--text-encoder-model", str(moved)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"-> {video} [models: random-weights]" in done.stdout + done.stderr
    assert_a_sample_video(video)
    bad = subprocess.run(
        [REELMILL, "sample", "--ckpt", str(tmp_path / "nope.ckpt"), "--prompt", "x", "--output", str(video)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "not a readable checkpoint" in bad.stderr


def test_ray_train_runs_the_same_cli_on_two_workers(latents, tiny_wan, tmp_path):
    """`ray_train_loop` under Ray Train's TorchTrainer on the local Ray: two CPU workers in one DDP
    group (Ray's strategy and environment), the recipe and flags as `reelmill train` takes them."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.train import ray_train_loop

    out, _ = latents
    run_dir, encoder = tmp_path / "run", json.dumps({"model": tiny_wan})
    args = [
        "--config", str(ROOT / "configs/train/dit-tiny-cpu.yaml"), "--config", str(write_callbacks(tmp_path)),
        "--trainer.max_steps", "3", "--trainer.default_root_dir", str(run_dir), "--trainer.val_check_interval", "3",
        "--model.vae", encoder, "--model.text_encoder", encoder, "--data.kind", "latent",
        "--data.shards", str(out / "shards"), "--data.num_workers", "0",
    ]  # fmt: skip
    marks = tmp_path / "marks"
    marks.mkdir()

    def loop(config):  # a closure, so Ray ships it by value to the workers
        trainer = ray_train_loop(config)
        seen = {"world": trainer.world_size, "data": list(trainer.datamodule.rank_and_world())}
        (marks / f"rank{trainer.global_rank}.json").write_text(json.dumps(seen))

    result = TorchTrainer(
        loop,
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(storage_path=str(tmp_path / "ray")),
        train_loop_config={"args": args},
    ).fit()
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 3 and final["datamodule_hyper_parameters"]["kind"] == "latent"
    ranks = {p.name: json.loads(p.read_text()) for p in marks.iterdir()}
    assert ranks == {f"rank{r}.json": {"world": 2, "data": [r, 2]} for r in (0, 1)}
    # Ray Train holds the run's checkpoints in storage_path, the final state last
    assert result.checkpoint is not None and Path(result.checkpoint.path).is_relative_to(tmp_path / "ray")
    reported = torch.load(
        Path(result.checkpoint.path) / "checkpoint.ckpt", map_location="cpu", weights_only=True
    )
    assert reported["global_step"] == 3 and result.metrics["step"] == 3
    assert sorted(Path(c.path).name for c, _ in result.best_checkpoints) == ["step-0000002", "step-0000003"]


def test_ray_train_resumes_a_killed_worker_group_from_its_reported_checkpoint(latents, tiny_wan, tmp_path):
    """Two Ray Train workers, rank 1 SIGKILLed on the first attempt past a reported checkpoint: with
    FailureConfig(max_failures=1) Ray restarts the group, `ray_train_loop` resumes from the checkpoint
    Ray hands back (`ray.train.get_checkpoint()`), not from step 0, and trains to max_steps."""
    from lightning.pytorch import Callback
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.train import ray_train_loop

    out, _ = latents
    run_dir, encoder = tmp_path / "run", json.dumps({"model": tiny_wan})
    callbacks = tmp_path / "checkpoints.yaml"
    callbacks.write_text(CALLBACKS.split("    - class_path: training.sample_callback")[0])
    args = [
        "--config", str(ROOT / "configs/train/dit-tiny-cpu.yaml"), "--config", str(callbacks),
        "--trainer.max_steps", "8", "--trainer.default_root_dir", str(run_dir), "--trainer.val_check_interval", "8",
        "--model.vae", encoder, "--model.text_encoder", encoder, "--data.kind", "latent",
        "--data.shards", str(out / "shards"), "--data.num_workers", "0",
    ]  # fmt: skip
    killed, starts = tmp_path / "killed", tmp_path / "starts.jsonl"

    def loop(config):  # a closure, so Ray ships it (and the callback below) by value to the workers
        import ray.train

        import jobs.train

        class KillRankOneOnce(Callback):
            def on_train_start(self, trainer, pl_module):
                restored = ray.train.get_checkpoint()
                seen = {"rank": trainer.global_rank, "step": trainer.global_step}
                seen["restored"] = Path(restored.path).name if restored else None
                with starts.open("a") as f:
                    f.write(json.dumps(seen) + "\n")

            def on_train_batch_end(self, trainer, *args):
                if trainer.global_rank == 1 and trainer.global_step == 5 and not killed.exists():
                    time.sleep(5)  # Ray's controller polls every 2 s: it registers the step-4 report first
                    killed.touch()
                    os.kill(os.getpid(), signal.SIGKILL)

        def fit_with_the_killer(trainer, *args, **kwargs):
            trainer.callbacks.append(KillRankOneOnce())
            return safe_run(trainer, *args, **kwargs)

        safe_run, jobs.train.safe_run = jobs.train.safe_run, fit_with_the_killer
        ray_train_loop(config)

    result = TorchTrainer(
        loop,
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(
            name="killed", storage_path=str(tmp_path / "ray"), failure_config=FailureConfig(max_failures=1)
        ),
        train_loop_config={"args": args},
    ).fit()
    assert killed.exists()
    runs = [json.loads(line) for line in starts.read_text().splitlines()]
    assert len(runs) == 4 and {r["rank"] for r in runs[:2]} == {r["rank"] for r in runs[2:]} == {0, 1}
    first, second = runs[:2], runs[2:]
    assert {(r["step"], r["restored"]) for r in first} == {(0, None)}
    resumed_at = {(r["step"], r["restored"]) for r in second}
    assert len(resumed_at) == 1
    step, restored = resumed_at.pop()
    assert restored == f"step-{step:07d}" and 0 < step < 8  # the reported checkpoint, not step 0
    assert (tmp_path / "ray" / "killed" / restored / "checkpoint.ckpt").is_file()
    assert result.checkpoint is not None and Path(result.checkpoint.path).name == "step-0000008"
    reported = torch.load(
        Path(result.checkpoint.path) / "checkpoint.ckpt", map_location="cpu", weights_only=True
    )
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert reported["global_step"] == final["global_step"] == 8


def test_train_names_a_missing_model_or_input_and_exits_2(tiny_wan, tmp_path):
    recipe = str(ROOT / "configs/train/dit-tiny-cpu.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    tiny = json.dumps({"model": tiny_wan})
    cases = [
        (["--model.vae", json.dumps({"model": str(tmp_path / "no-vae")}), "--model.text_encoder", tiny], "vae.model"),
        (["--model.vae", tiny, "--model.text_encoder", tiny, "--data.shards", str(tmp_path / "none")], "does not exist"),
    ]  # fmt: skip
    for extra, message in cases:
        done = subprocess.run(
            [REELMILL, "train", "fit", "--config", recipe, "--trainer.default_root_dir", str(tmp_path), *extra],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 2 and "reelmill train: error:" in done.stderr and message in done.stderr


def test_train_takes_a_recipe_name_for_config_from_any_directory(tmp_path):
    """`--config dit-tiny-cpu` is the shipped recipe wherever the command runs, files still pass through
    (a later one overrides it), an unknown name is exit status 2 naming the recipes, and nothing else is
    printed (LightningCLI warned about its `args`, which are the command line on purpose)."""
    override = tmp_path / "short.yaml"
    override.write_text("trainer: {max_steps: 7}\n")
    done = subprocess.run(
        [REELMILL, "train", "fit", "--config", "dit-tiny-cpu", f"--config={override}", "--print_config"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "default_root_dir: runs/dit-tiny-cpu" in done.stdout and "max_steps: 7" in done.stdout
    assert done.stderr == ""  # nothing to act on, so nothing printed (LightningCLI warned about `args`)
    bad = subprocess.run(
        [REELMILL, "train", "fit", "--config=no-such-recipe", "--print_config"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "reelmill train: error:" in bad.stderr
    assert "no-such-recipe" in bad.stderr and "dit-tiny-cpu" in bad.stderr and "dit-b-gpu" in bad.stderr
