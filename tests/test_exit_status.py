"""A finished run exits 0, every time: each command in its own process, so a crash at interpreter shutdown
(after the summary line, when a scheduler reads the status) cannot hide in luck.

The `reelmill` command ends with `os._exit` once its job is done (`jobs.cli.run`), so a crash in the
teardown of native libraries cannot change its status any more; the last test here proves that with a
teardown made to crash. The repeated runs remain for crashes before that point. Each run is a fresh
process with its own embedded Ray; what it works on is small, since what is tested is the start and the
end of a process, not the work in between."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import caption_overrides

REPEATS = int(os.environ.get("REELMILL_EXIT_REPEATS", "1"))
"""Runs of each command (set REELMILL_EXIT_REPEATS=10 for the full check; the suite keeps within its time)."""
REELMILL = str(Path(sys.executable).with_name("reelmill"))
ROOT = Path(__file__).resolve().parent.parent
FAST_CURATE = [
    "scoring.aesthetic.enabled=false",
    "captioning.enabled=false",
    "input.videos_per_task=1",
]


def sets(*assignments: str) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def statuses(make_cmd, tmp_path: Path, repeats: int = REPEATS) -> list[tuple[int, str]]:
    """(exit status, stderr tail) of each of `repeats` runs of `make_cmd(i)`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = []
    for i in range(repeats):
        done = subprocess.run(make_cmd(i), capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        out.append((done.returncode, done.stderr[-1500:]))
    return out


def assert_all_zero(results: list[tuple[int, str]]) -> None:
    bad = [(i, code, err) for i, (code, err) in enumerate(results) if code != 0]
    assert not bad, f"{len(bad)} of {len(results)} runs did not exit 0; first: {bad[0]}"


@pytest.fixture(scope="module")
def own_run(curated_run, tmp_path_factory) -> Path:
    """A copy of the curated run, so rebuilding its report here leaves the shared one as it was."""
    copy = tmp_path_factory.mktemp("exit-run") / "out"
    shutil.copytree(curated_run, copy)
    return copy


@pytest.mark.parametrize("report", [False, True], ids=["curate", "curate-with-report"])
def test_curate_exits_0_every_time(report, two_shot_video, tmp_path):
    def cmd(i: int) -> list[str]:
        out = tmp_path / f"out{i}"
        assignments = [*FAST_CURATE, f"report.enabled={str(report).lower()}"]
        return [REELMILL, "curate", "--input", str(two_shot_video), "--output", str(out), *sets(*assignments)]

    assert_all_zero(statuses(cmd, tmp_path))
    assert (tmp_path / "out0" / "report" / "index.html").exists() == report


def test_recaption_exits_0_every_time(curated_run, tiny_vlm, tmp_path):
    def cmd(i: int) -> list[str]:
        out = tmp_path / f"out{i}"
        assignments = [*caption_overrides(tiny_vlm), "report.enabled=false"]
        return [REELMILL, "recaption", "--input", str(curated_run), "--output", str(out), "--limit", "1",
                *sets(*assignments)]  # fmt: skip

    assert_all_zero(statuses(cmd, tmp_path))


def test_report_exits_0_every_time(own_run, tmp_path):
    assert_all_zero(statuses(lambda i: [REELMILL, "report", str(own_run)], tmp_path))
    assert (own_run / "report" / "index.html").exists()


def test_encode_exits_0_every_time(curated_run, tiny_wan, tmp_path):
    first_shard = sorted((curated_run / "shards").glob("*.tar"))[0]  # two clips: the process is what counts

    def cmd(i: int) -> list[str]:
        assignments = [
            "frames.num_frames=5", "frames.fps=4", "frames.height=32", "frames.width=32", "device=cpu",
            f"vae.model={tiny_wan}", f"text_encoder.model={tiny_wan}",
        ]  # fmt: skip
        return [REELMILL, "encode", "--input", str(first_shard), "--output", str(tmp_path / f"out{i}"),
                *sets(*assignments)]  # fmt: skip

    assert_all_zero(statuses(cmd, tmp_path))


def train_cmd(curated_run: Path, tiny_wan: str, run_dir: Path) -> list[str]:
    encoder = json.dumps({"model": tiny_wan})
    return [
        REELMILL, "train", "fit", "--config", str(ROOT / "configs/train/dit-tiny-cpu.yaml"),
        "--data.shards", str(curated_run / "shards"), "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--model.vae", encoder, "--model.text_encoder", encoder, "--data.num_workers", "0",
    ]  # fmt: skip


def test_train_exits_0_every_time(curated_run, tiny_wan, tmp_path):
    assert_all_zero(statuses(lambda i: train_cmd(curated_run, tiny_wan, tmp_path / f"run{i}"), tmp_path))


def test_sample_exits_0_every_time(curated_run, tiny_wan, tmp_path):
    done = subprocess.run(train_cmd(curated_run, tiny_wan, tmp_path / "run"), capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"

    def cmd(i: int) -> list[str]:
        return [REELMILL, "sample", "--ckpt", str(ckpt), "--prompt", "a test", "--output",
                str(tmp_path / f"video{i}.mp4"), "--steps", "2", "--device", "cpu"]  # fmt: skip

    assert_all_zero(statuses(cmd, tmp_path))
    assert (tmp_path / "video0.mp4").stat().st_size > 0


def test_the_command_exits_with_its_status_whatever_the_teardown_does(tmp_path):
    from importlib.metadata import entry_points

    assert entry_points(group="console_scripts")["reelmill"].value == "jobs.cli:run"
    # a native crash during interpreter teardown (here: an exit handler reading address 0)
    crash_at_teardown = (
        "import atexit, ctypes, sys; atexit.register(ctypes.string_at, 0); "
        f"sys.argv = ['reelmill', 'report', {str(tmp_path / 'not-a-run')!r}]; "
    )
    for entry, want in (
        ("from jobs.cli import run; run()", 2),
        ("from jobs.cli import main; sys.exit(main())", -11),
    ):
        done = subprocess.run(
            [sys.executable, "-c", crash_at_teardown + entry], capture_output=True, text=True
        )
        assert done.returncode == want, (entry, done.returncode, done.stderr[-2000:])
        assert "reelmill report: error:" in done.stderr  # the command itself ran, and ended with status 2
