"""Training against hostile input: latent shards built to kill a loader worker (absurd npy headers,
pickled arrays, members over the cap, compressed and broken shards, odd records), streams with nothing
usable, a stuck worker, a shard file named like a command, and checkpoints that carry a pickle payload.

Everything is made here, small: latent shards written with numpy + tarfile, training runs of the tiny
DiT on them in-process through `jobs.train.main`, and `reelmill sample` through `jobs.cli.main`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shlex
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tar_bytes
from jobs import cli
from jobs import train as train_job
from jobs.sample import load_checkpoint
from training import data
from training.clip_decode import CorruptSample
from training.data import COUNTERS, NothingUsable, ShardDataModule, read_npy

ROOT = Path(__file__).resolve().parent.parent
LATENT_SHAPE = (4, 3, 8, 8)  # tiny Wan VAE channels; 9 frames of 64x64
TEXT_DIM = 32
CAP = 64 << 10  # max_member_bytes for these tests: a good sample's members are a few KB


# ---------------------------------------------------------------------------------------------
# helpers: latent shards


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(shape: tuple, descr: str | list, payload: bytes = b"") -> bytes:
    """An npy file whose header says `shape` and `descr`, followed by `payload` (whatever its size)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


def good_members(seed: int, record: object = None) -> dict[str, bytes]:
    """A latent sample as `reelmill encode` writes it: float16 latents, [dense, summary] text."""
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((2, 5, TEXT_DIM)).astype(np.float16)
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    text[1, 3:] = 0
    if record is None:
        record = {"clip_id": f"c{seed}", "width": 64, "height": 64, "caption": {"summary": f"summary {seed}"}}
    return {
        "latent.npy": npy(rng.standard_normal(LATENT_SHAPE).astype(np.float16)),
        "text.npy": npy(text),
        "text_mask.npy": npy(mask),
        "json": record if isinstance(record, bytes) else json.dumps(record).encode(),
        "txt": f"dense caption {seed}".encode(),
    }


def hostile_samples() -> tuple[list[tuple[str, dict[str, bytes]]], set[str], dict[str, int]]:
    """(samples, keys the loader must yield, skips by reason) for the mixed shard."""
    good = [(f"good-{i}", good_members(i)) for i in range(6)]
    base = good_members(100)
    nan_latent = np.zeros(LATENT_SHAPE, np.float16)
    nan_latent[0, 0, 0, 0] = np.nan
    odd_records = [  # records of the wrong shape: training reads none of these fields, so they train
        ("odd-width-string", good_members(7, {"width": "1920", "height": 1080})),
        ("odd-errors-int", good_members(8, {"errors": 5})),
        ("odd-record-list", good_members(9, [1, 2, 3])),
        ("odd-record-deep", good_members(10, b"[" * 20_000 + b"]" * 20_000)),  # RecursionError in json
        (
            "odd-caption-types",
            {**good_members(11, {"caption": {"summary": 5, "segments": "abc"}}), "txt": b""},
        ),
    ]
    bad = {
        "bad-absurd-shape": ("bad_array", {"latent.npy": npy_header((1 << 40,), "<f4", b"\0" * 64)}),
        "bad-structured": ("bad_array", {"latent.npy": npy(np.zeros(8, [("a", "<f4"), ("b", "<i4")]))}),
        "bad-object": (
            "bad_array",
            {"latent.npy": npy(np.array([{"x": 1}, None], object), allow_pickle=True)},
        ),
        "bad-truncated-npy": ("corrupt", {"latent.npy": base["latent.npy"][:-10]}),
        "bad-nan": ("corrupt", {"latent.npy": npy(nan_latent)}),
        "bad-too-large": ("member_too_large", {"latent.npy": npy(np.zeros((4, 3, 64, 64), np.float32))}),
    }
    samples = good[:2] + odd_records[:2]
    for key, (_, members) in bad.items():
        samples.append((key, {**base, **members}))
    samples += good[2:] + odd_records[2:]
    keep = {k for k, _ in good + odd_records}
    skips = dict.fromkeys(COUNTERS, 0)
    for reason, _ in bad.values():
        skips[reason] += 1
    return samples, keep, skips


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A directory of latent shards: one mixing good and hostile samples, one cut off inside a member,
    one gzip-compressed, one not a tar, one empty; with what the loader must yield and skip."""
    d = tmp_path_factory.mktemp("hostile")
    samples, keep, skips = hostile_samples()
    (d / "mixed.tar").write_bytes(tar_bytes(samples))
    whole = tar_bytes([("cut-good", good_members(20)), ("cut-lost", good_members(21))])
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        cut_at = tar.getmember("cut-lost.latent.npy").offset_data + 100
    (d / "truncated.tar").write_bytes(whole[:cut_at])  # inside cut-lost's first member
    (d / "compressed.tar").write_bytes(gzip.compress(tar_bytes([("gz-good", good_members(30))])))
    (d / "not-a-tar.tar").write_bytes(np.random.default_rng(0).bytes(30_000))
    (d / "empty.tar").write_bytes(b"")
    skips["shard_errors"] = 4  # truncated (its tail), compressed, not a tar, empty
    return {"dir": d, "keep": keep | {"cut-good"}, "skips": skips}


def latent_module(shards, **kwargs) -> ShardDataModule:
    settings = {"kind": "latent", "batch_size": 2, "num_workers": 2, "resampled": False,
                "shuffle_buffer": 0, "max_member_bytes": CAP, "max_sample_bytes": 4 * CAP}  # fmt: skip
    return ShardDataModule(shards, **(settings | kwargs))


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch["__key__"]]


# ---------------------------------------------------------------------------------------------
# the loader


def test_hostile_latent_shards_are_counted_skips(corpus):
    dm = latent_module(str(corpus["dir"]))
    loader = dm.train_dataloader()
    keys = keys_of(loader)
    assert sorted(keys) == sorted(corpus["keep"])  # every usable sample once, nothing else
    assert dm.counts() == corpus["skips"] | {"samples": len(corpus["keep"])}
    assert loader.timeout == 600.0  # workers > 0: a stuck worker is an error, not a hang

    # the compressed shard is read when allowed, bounded all the same
    allowed = latent_module(str(corpus["dir"] / "compressed.tar"), allow_compressed=True, num_workers=0)
    assert keys_of(allowed.train_dataloader()) == ["gz-good"]


def test_a_bug_on_one_sample_is_an_internal_error_not_a_dead_worker(corpus, monkeypatch):
    """Stands in for a bug of ours that only one sample trips (workers are forked: they see the patch)."""
    real = data.caption_variants

    def buggy(sample: dict) -> list[str]:
        if sample["__key__"] == "good-3":
            raise KeyError("a bug of ours")
        return real(sample)

    monkeypatch.setattr(data, "caption_variants", buggy)
    dm = latent_module(str(corpus["dir"]))
    assert sorted(keys_of(dm.train_dataloader())) == sorted(corpus["keep"] - {"good-3"})
    assert dm.counts()["internal_error"] == 1


def test_wrongly_typed_records_are_read_as_far_as_they_make_sense():
    """What clip (video) samples read from KEY.json: fields of the wrong type or out of range are as
    good as absent (the clip is then probed), never an exception."""
    assert data.record_geometry({"width": "1920", "height": 1080, "duration_s": 2}, 8.0) == (1920, 1080, 16)
    for record in (
        {"width": [1], "height": 1080, "duration_s": 2},
        {"width": 64, "height": 64, "duration_s": float("inf")},  # JSON's 1e999
        {"width": 64, "height": 64, "duration_s": float("nan")},
        {"width": float("inf"), "height": 64, "duration_s": 2},
        {"width": 64, "height": 64, "num_frames": 10, "fps": 0},
    ):
        assert data.record_geometry(record, 8.0) is None, record
    segments = [{"start_s": "abc", "end_s": 1, "text": "x"}, 5, {"start_s": 0, "end_s": 1.5, "text": "runs"}]
    for caption, expected in (
        ({"summary": 5, "segments": 5}, []),
        ({"summary": "a dog", "segments": segments}, ["a dog\n[0.0-1.5s] runs", "a dog"]),
    ):
        assert data.caption_variants({"json": json.dumps({"caption": caption}).encode()}) == expected


def test_npy_headers_are_checked_before_allocating():
    big_endian = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    assert np.array_equal(read_npy(npy(big_endian), "x", CAP), big_endian)
    fortran = np.asfortranarray(big_endian.astype("<i2"))
    assert np.array_equal(read_npy(npy(fortran), "x", CAP), fortran)
    cases = {
        "over max_member_bytes": npy_header((1 << 40,), "<f4", b"\0" * 64),
        "not a plain numeric": npy_header((3,), "<U4", b"\0" * 48),
        "the member has": npy_header((4,), "<f4", b"\0" * 8),  # header promises more than is there
        "unreadable npy header": b"\x93NUMPY garbage",
        "negative size": npy_header((-1,), "<f4"),
    }
    for message, content in cases.items():
        with pytest.raises(CorruptSample, match=message):
            read_npy(content, "x", CAP)


@pytest.mark.timeout(60)
def test_streams_with_nothing_usable_end_with_a_clear_error(corpus, tmp_path):
    d = corpus["dir"]
    failing = [str(d / name) for name in ("compressed.tar", "not-a-tar.tar", "empty.tar")]
    # endless (resampled): every shard fails, so the skips in a row end it, in a worker process
    endless = latent_module(failing, resampled=True, num_workers=1)
    with pytest.raises(NothingUsable, match="in a row skipped"):
        next(iter(endless.train_dataloader()))
    assert endless.counts()["shard_errors"] >= 1000
    # one pass: an empty, silent epoch is an error too, whether shards or samples failed
    bad_only = tmp_path / "bad-only.tar"
    bad_only.write_bytes(
        tar_bytes([(f"b{i}", {"latent.npy": npy_header((1 << 40,), "<f4")}) for i in range(3)])
    )
    for shards in (failing, [str(bad_only)]):
        with pytest.raises(NothingUsable, match="gave no usable sample"):
            keys_of(latent_module(shards).train_dataloader())


@pytest.mark.timeout(60)
def test_a_stuck_worker_times_out(tmp_path):
    """A shard that never delivers a byte (a FIFO nobody writes: a hung remote read) is an error once
    the worker has said nothing for worker_timeout_s."""
    fifo = tmp_path / "stuck.tar"
    os.mkfifo(fifo)
    dm = latent_module(str(tmp_path), num_workers=1, worker_timeout_s=2)
    dm.train_urls = [str(fifo)]  # as if listed: input expansion takes only regular files
    with pytest.raises(RuntimeError, match="timed out"):
        next(iter(dm.train_dataloader()))


def test_a_shard_named_like_a_command_is_opened_not_run(tmp_path, monkeypatch):
    """`pipe:...` is a command only when the user typed it: a file of that name found by listing the
    working directory is a file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipe:touch pwned.tar").write_bytes(tar_bytes([("named", good_members(1))]))
    dm = latent_module(".", num_workers=0)
    assert keys_of(dm.train_dataloader()) == ["named"]
    assert not list(tmp_path.glob("pwned*"))
    typed = latent_module(f"pipe:cat {shlex.quote(str(tmp_path / 'pipe:touch pwned.tar'))}", num_workers=0)
    assert keys_of(typed.train_dataloader()) == ["named"]  # a typed command still runs


# ---------------------------------------------------------------------------------------------
# training runs and checkpoints


class Payload:
    """Pickles to a call of os.system: what a crafted checkpoint runs on an unguarded torch.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": 0, "hyper_parameters": Payload(marker)}, path)
    return path


@pytest.fixture
def cli_argv(monkeypatch):
    """LightningCLI warns when sys.argv (pytest's here) and its args both hold arguments."""
    monkeypatch.setattr(sys, "argv", ["reelmill"])


def train_argv(tmp_path: Path, shards: Path, run_dir: Path, max_steps: int) -> list[str]:
    """`reelmill train fit` on latent shards, no encoders (the DiT sized from the latents), checkpoints
    every 2 steps, loader counts logged every step."""
    recipe = {
        "model": {"vae": None, "text_encoder": None,
                  "model_overrides": {"in_channels": LATENT_SHAPE[0], "text_dim": TEXT_DIM}},
        "trainer": {"callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"every_n_train_steps": 2, "save_last": True}},
            {"class_path": "training.data.LoaderStatsCallback", "init_args": {"every_n_batches": 1}},
        ]},
    }  # fmt: skip
    override = tmp_path / "latent-recipe.yaml"
    override.write_text(yaml.safe_dump(recipe))
    return [
        "fit", "--config", str(ROOT / "configs/train/dit-tiny-cpu.yaml"), "--config", str(override),
        "--data.kind", "latent", "--data.shards", str(shards), "--data.num_workers", "1",
        "--data.max_member_bytes", str(CAP), "--data.shuffle_buffer", "8",
        "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", str(max_steps),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip


@pytest.mark.timeout(120)
def test_train_over_hostile_corpus_then_resume_and_refuse_crafted(
    corpus, tmp_path, monkeypatch, capsys, cli_argv
):
    run_dir = tmp_path / "run"
    assert train_job.main(train_argv(tmp_path, corpus["dir"], run_dir, 3)) == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = load_checkpoint(str(last))  # what reelmill train writes loads as plain weights
    assert saved["global_step"] == 3 and saved["models"] == "none"  # latents in, no encoder loaded
    metrics = (next((run_dir / "csv").glob("version_*/metrics.csv"))).read_text()
    assert "data/bad_array" in metrics and "data/internal_error" in metrics

    # resuming honours weights_only=True even where the environment would turn it off
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert train_job.main([*train_argv(tmp_path, corpus["dir"], run_dir, 5), "--ckpt_path", "last"]) == 0
    assert load_checkpoint(str(last))["global_step"] == 5

    marker = tmp_path / "payload-ran"
    crafted_dir = tmp_path / "crafted-run"
    crafted = crafted_checkpoint(crafted_dir / "checkpoints" / "last.ckpt", marker)
    capsys.readouterr()
    for resume in ("last", str(crafted)):  # found by Lightning, or named (LightningCLI reads it first)
        argv = [*train_argv(tmp_path, corpus["dir"], crafted_dir, 5), "--ckpt_path", resume]
        assert train_job.main(argv) == 2
        err = capsys.readouterr().err
        assert "reelmill train: error:" in err and "not plain weights" in err and str(crafted) in err
        assert not marker.exists()
    assert train_job.main([*train_argv(tmp_path, corpus["dir"], run_dir, 6), "--weights_only", "false"]) == 2


@pytest.mark.timeout(60)
def test_train_over_shards_that_all_fail_exits_2(corpus, tmp_path, capsys, cli_argv):
    failing = tmp_path / "failing"
    failing.mkdir()
    for name in ("compressed.tar", "not-a-tar.tar", "empty.tar"):
        (failing / name).write_bytes((corpus["dir"] / name).read_bytes())
    assert train_job.main(train_argv(tmp_path, failing, tmp_path / "run", 3)) == 2
    err = capsys.readouterr().err
    assert "reelmill train: error:" in err and "in a row skipped" in err


def test_sample_refuses_a_crafted_checkpoint(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    crafted = crafted_checkpoint(tmp_path / "crafted.ckpt", marker)
    argv = ["sample", "--ckpt", str(crafted), "--prompt", "a dog", "--output", str(tmp_path / "out.mp4"),
            "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "reelmill sample: error:" in err and "not plain weights" in err
    assert not marker.exists() and not (tmp_path / "out.mp4").exists()
    # the payload is armed: an unguarded load runs it
    torch.load(crafted, weights_only=False)
    assert marker.exists()
