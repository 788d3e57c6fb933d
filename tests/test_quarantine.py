"""No input can stop `reelmill curate`: hostile inputs are rows, transient failures are retried, bugs are
`internal_error` rows; each run is the real command in a subprocess (its own Ray), faults made for real
(a hanging ffprobe, a killed Ray worker, a full scratch file system)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import full_tmpfs, make_bad_inputs
from curation.inputs import Task
from curation.layout import OutputLayout
from curation.quarantine import TransientError
from curation.splitter import TaskResult
from jobs.curate import _guarded

REELMILL = str(Path(sys.executable).with_name("reelmill"))
FAST = [
    "scoring.aesthetic.enabled=false",
    "captioning.enabled=false",
    "report.enabled=false",
    "input.videos_per_task=1",
]


def curate_cmd(inputs: list, out: Path, *sets: str, extra: tuple = ()) -> list[str]:
    cmd = [REELMILL, "curate", "--input", *map(str, inputs), "--output", str(out), "--num-cpus", "2", *extra]
    for assignment in (*FAST, *sets):
        cmd += ["--set", assignment]
    return cmd


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 600):
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd
    )


def videos_rows(out: Path) -> dict[str, dict]:
    return {r["uri"]: r for r in pq.read_table(out / "manifest" / "videos").to_pylist()}


def clip_rows(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest" / "clips").to_pylist()


def shard_keys(out: Path) -> set[str]:
    import webdataset as wds

    return {
        s["__key__"]
        for url in OutputLayout(str(out)).shard_files()
        for s in wds.WebDataset(url, shardshuffle=False)
    }


@pytest.fixture(scope="module")
def good_videos(two_shot_video, multi_shot_video) -> list[Path]:
    return [two_shot_video, multi_shot_video]


@pytest.fixture(scope="module")
def clean_keys(tmp_path_factory, good_videos) -> set[str]:
    """The clips a run with nothing going wrong writes: what every faulted run must end up with."""
    out = tmp_path_factory.mktemp("clean") / "out"
    done = run(curate_cmd(good_videos, out))
    assert done.returncode == 0, done.stderr[-3000:]
    keys = shard_keys(out)
    assert len(keys) >= 4
    return keys


def test_hostile_inputs_are_rows_and_the_run_exits_0(tmp_path, two_shot_video):
    corpus = tmp_path / "corpus"
    bad = make_bad_inputs(corpus, two_shot_video)
    good = corpus / "good.mp4"
    shutil.copy(two_shot_video, good)
    # a name that webdataset or a shell would take for a command, found by a glob
    trap = corpus / "pipe:touch pwned.mp4"
    trap.write_text("not a video")
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{good}\nhttps://unreachable.invalid/a.mp4\nftp://example.invalid/b.mp4\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = run(curate_cmd([f"{corpus}/*.mp4", f"{corpus}/*.mkv", manifest], tmp_path / "out"), cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (cwd / "pwned").exists() and not any(cwd.iterdir())

    rows = videos_rows(tmp_path / "out")
    expected = {str(path): code for path, code in bad.values()}
    expected |= {
        str(trap): "not_a_video",
        "https://unreachable.invalid/a.mp4": "scheme_not_allowed",
        "ftp://example.invalid/b.mp4": "scheme_not_allowed",
    }
    assert {uri: rows[uri]["error_code"] for uri in expected} == expected
    assert rows[str(good)]["status"] == "ok"
    assert set(rows) == set(expected) | {str(good)}
    assert {c["source"] for c in clip_rows(tmp_path / "out") if c["kept"]} == {str(good)}
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["errors"]["in_error"] == len(expected)
    assert summary["errors"]["internal_errors"] == 0


def test_an_unreachable_web_input_is_retried_then_recorded_and_the_error_share_sets_exit_3(
    tmp_path, two_shot_video
):
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{two_shot_video}\nhttps://unreachable.invalid/a.mp4\n")
    out = tmp_path / "out"
    cmd = curate_cmd([manifest], out, "input.schemes=[file, https]", extra=("--max-error-fraction", "0.4"))
    done = run(cmd)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "over --max-error-fraction 0.4" in done.stderr
    rows = videos_rows(out)
    assert rows["https://unreachable.invalid/a.mp4"]["error_code"] == "transient_exhausted"
    assert rows[str(two_shot_video)]["status"] == "ok"
    summary = json.loads((out / "run.json").read_text())
    assert summary["errors"]["fraction"] == 0.5 and summary["errors"]["transient_exhausted"] == 1
    # a share at the limit is not over it (the rerun tries the web input again)
    at_limit = curate_cmd(
        [manifest], out, "input.schemes=[file, https]", extra=("--max-error-fraction", "0.5")
    )
    assert run(at_limit).returncode == 0


def test_a_hanging_first_ffprobe_is_retried_not_recorded(tmp_path, good_videos, clean_keys):
    bin_dir, mark = tmp_path / "bin", tmp_path / "hung-once"
    bin_dir.mkdir()
    wrapper = bin_dir / "ffprobe"
    real = shutil.which("ffprobe")
    # the first call hangs past probe.timeout_s; exec, so the process killed at the timeout is the sleep
    wrapper.write_text(
        f'#!/bin/sh\nif [ ! -e "{mark}" ]; then touch "{mark}"; exec sleep 60; fi\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    done = run(
        curate_cmd(good_videos, out, "probe.timeout_s=3"),
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert mark.exists()  # the hang did happen
    assert all(r["status"] == "ok" for r in videos_rows(out).values())
    assert shard_keys(out) == clean_keys


def _worker_running(marker: str) -> int | None:
    """The pid of a Ray worker whose process title shows it running `marker` (Ray sets `ray::TASK`).
    The worker is the raylet's child: a child it forks for ffmpeg shows the same title until it execs."""
    listing = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    procs = {}
    for line in listing.splitlines():
        pid, ppid, args = line.split(None, 2) if len(line.split(None, 2)) == 3 else (*line.split(None, 1), "")
        procs[int(pid)] = (int(ppid), args)
    for pid, (ppid, args) in procs.items():
        if args.startswith("ray::") and marker in args and "raylet" in procs.get(ppid, (0, ""))[1]:
            return pid
    return None


def run_killing_a_split_worker(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    """Run `cmd`, SIGKILL the first Ray worker seen running a split task, wait for the end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = None, time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        pid = _worker_running("_split_row")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=600)
    assert killed is not None, "no split task was seen running"
    return proc, stderr


def test_a_killed_ray_worker_is_retried_and_the_run_completes(tmp_path, good_videos, clean_keys):
    out = tmp_path / "out"
    proc, stderr = run_killing_a_split_worker(curate_cmd(good_videos, out))
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "run.json").read_text())
    assert summary["errors"]["transient_exhausted"] == 0 and summary["tasks"]["failed"] == 0
    assert shard_keys(out) == clean_keys


def test_a_task_whose_retries_are_spent_is_recorded_and_a_rerun_completes(tmp_path, good_videos, clean_keys):
    out = tmp_path / "out"
    cmd = curate_cmd(good_videos, out, "resources.task_retries=0")
    proc, stderr = run_killing_a_split_worker(cmd)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "run.json").read_text())
    assert summary["tasks"]["failed"] == 1 and summary["errors"]["transient_exhausted"] == 1
    lost = [r for r in videos_rows(out).values() if r["error_code"] == "transient_exhausted"]
    assert len(lost) == 1 and lost[0]["uri"] in map(str, good_videos)

    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["tasks"] == {
        "total": 2,
        "run_now": 1,
        "skipped_done": 1,
        "failed": 0,
        "redone": {},
    }
    assert shard_keys(out) == clean_keys


@pytest.fixture
def full_scratch(tmp_path):
    """Room for Python's check that TMPDIR is writable, none for a clip."""
    mount = tmp_path / "scratch"
    with full_tmpfs(mount) as filler:
        yield mount, filler


def test_a_full_scratch_disk_is_transient_and_a_rerun_completes(
    tmp_path, good_videos, clean_keys, full_scratch
):
    mount, filler = full_scratch
    out = tmp_path / "out"
    cmd = curate_cmd(good_videos, out, "resources.transient_attempts=2")
    env = {"TMPDIR": str(mount), "RAY_TMPDIR": "/tmp"}
    done = run(cmd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    reasons = {c["drop_reason"] for c in clip_rows(out)}
    assert "transient_exhausted" in reasons
    assert not reasons & {"transcode_failed", "unscorable", "internal_error"}  # nothing wrongly permanent
    first = json.loads((out / "run.json").read_text())
    assert first["errors"]["transient_exhausted"] > 0
    assert "run the same command again" in done.stdout

    filler.unlink()
    again = run(cmd, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((out / "run.json").read_text())
    assert second["tasks"]["skipped_done"] == 0  # every task had items to retry
    assert second["errors"]["transient_exhausted"] == 0
    assert shard_keys(out) == clean_keys


def test_a_bug_on_a_task_becomes_internal_error_rows_and_a_transient_failure_a_retry():
    def split_with_a_bug(row: dict) -> dict:
        return {"result": 1 / 0}

    task = Task(7, ("/videos/a.mp4", "/videos/b.mp4"))
    row = _guarded("split")(split_with_a_bug)({"task": pickle.dumps(task)})
    result: TaskResult = pickle.loads(row["result"])
    assert row["task_id"] == 7 and [v["uri"] for v in result.videos] == list(task.uris)
    for video in result.videos:
        assert video["status"] == "error" and video["error_code"] == "internal_error"
        assert video["error"] == "split: ZeroDivisionError: division by zero"
        assert "split_with_a_bug" in video["traceback"]

    def split_out_of_space(row: dict) -> dict:
        raise OSError(28, "No space left on device")

    with pytest.raises(TransientError, match="No space left"):
        _guarded("split")(split_out_of_space)({"task": pickle.dumps(task)})
