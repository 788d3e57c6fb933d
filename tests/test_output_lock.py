"""One job per OUT (`OUT/_state/lock.json`), and `--overwrite` that deletes only a run's own files.

The lock is checked in this process (its refusal, takeover, heartbeat and release, locally and on an
object store's rules), then with real `reelmill curate` processes: a second job on a busy OUT, a job
killed with its Ray, and the run after it that takes the dead job's lock over.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import shard_samples
from curation import storage, synthetic
from curation.curate_config import LockConfig
from curation.layout import OutputLayout
from curation.synthetic import VideoSpec, shot_list
from jobs.curate import prepare_output
from jobs.output_lock import OutputBusy, hold_output

REELMILL = str(Path(sys.executable).with_name("reelmill"))
FAST_LOCK = LockConfig(stale_s=2.0, heartbeat_s=0.2)
SETS = [
    "scoring.aesthetic.enabled=false",
    "captioning.enabled=false",
    "filters.mode=score-only",
    "lock.stale_s=6",
    "lock.heartbeat_s=1",
]


def _lock(out: Path) -> dict:
    return json.loads((out / "_state" / "lock.json").read_text())


def test_a_held_lock_refuses_a_second_job_naming_the_first(tmp_path):
    out = tmp_path / "out"
    with hold_output(str(out), "curate", FAST_LOCK, log=print):
        with pytest.raises(OutputBusy) as refused, hold_output(str(out), "encode", FAST_LOCK, log=print):
            pass
        assert _lock(out)["job"] == "curate"  # the refused job left the holder's lock alone
    message = str(refused.value)
    assert f"{out} is in use by reelmill curate (pid {os.getpid()} on host {socket.gethostname()}" in message
    assert "rerun after lock.stale_s (2 s) without a heartbeat" in message and "\n" not in message


def test_a_stale_lock_is_taken_over_and_the_log_says_so(tmp_path):
    out = tmp_path / "out"
    (out / "_state").mkdir(parents=True)
    dead = {"owner": "u", "host": "elsewhere", "pid": 4242, "job": "recaption", "command": ["reelmill"],
            "started": "2026-01-01T00:00:00+00:00", "heartbeat": time.time() - 100, "token": "theirs"}  # fmt: skip
    (out / "_state" / "lock.json").write_text(json.dumps(dead))
    lines = []
    with hold_output(str(out), "curate", FAST_LOCK, log=lines.append):
        assert _lock(out)["token"] != "theirs" and _lock(out)["pid"] == os.getpid()
    (line,) = lines
    assert "taking over" in line and "reelmill recaption (pid 4242 on host elsewhere as user u" in line
    assert "heartbeat 100 s ago" in line and "lock.stale_s (2 s)" in line
    assert list(out.iterdir()) == []  # the lock was all there was, and it is released


def test_the_heartbeat_advances_while_the_lock_is_held(tmp_path):
    out = tmp_path / "out"
    with hold_output(str(out), "curate", FAST_LOCK, log=print):
        first = _lock(out)["heartbeat"]
        time.sleep(3 * FAST_LOCK.heartbeat_s)
        assert _lock(out)["heartbeat"] > first


def test_release_deletes_only_its_own_lock(tmp_path):
    out = tmp_path / "out"
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("the user's")
    with pytest.raises(KeyError), hold_output(str(out), "curate", FAST_LOCK, log=print):
        raise KeyError("a job that fails")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # lock and _state/ gone, OUT stays

    lines = []
    with hold_output(str(out), "curate", FAST_LOCK, log=lines.append):
        taken = {**_lock(out), "token": "another job's", "pid": 4242}
        (out / "_state" / "taken").write_text(json.dumps(taken))
        os.replace(out / "_state" / "taken", out / "_state" / "lock.json")  # as a takeover writes it
        time.sleep(4 * FAST_LOCK.heartbeat_s)
    assert _lock(out) == taken  # neither refreshed nor deleted: no longer ours
    (line,) = lines  # said once, then the heartbeat stops
    assert "is no longer this job's lock (now held by reelmill curate (pid 4242" in line


def test_on_an_object_store_one_of_racing_jobs_wins(s3_server):
    """No exclusive create there: each writes its token, waits, and reads the lock back."""
    out = f"{s3_server.bucket('lock-race')}/out"
    results = []

    def job() -> None:
        try:
            with hold_output(out, "recaption", FAST_LOCK, log=print):
                results.append("held")
                time.sleep(0.5)
        except OutputBusy as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("held") == 1, results
    assert all(r.startswith(f"{out} is in use by reelmill recaption") for r in results if r != "held")
    assert not storage.exists(OutputLayout(out).lock)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_overwrite_deletes_only_the_runs_files_and_keeps_the_lock(where, request, tmp_path):
    out = (
        f"{request.getfixturevalue('s3_server').bucket('lock-overwrite')}/out"
        if where == "s3"
        else str(tmp_path)
    )
    layout = OutputLayout(out)
    run = ["_state/spec.json", "run.json", "shards/shard-000000-000.tar", "shards/shard-000001-000.tar.tmp-7",
           "manifest/clips/task-000000.parquet", "_markers/task-000000.json", "report/index.html",
           "report/plots/funnel.png", "report/sheets/0123.jpg", "_state/attempts/t/x"]  # fmt: skip
    mine = ["notes.txt", "report/notes.txt", "shards/README", "manifest/mine.csv"]
    for name in run + mine:
        storage.write_bytes(layout.path(*name.split("/")), b"{}")
    spec = {"inputs_fingerprint": "i", "config_fingerprint": "c", "num_inputs": 1, "config": {}}
    with hold_output(out, "curate", FAST_LOCK, log=print):
        prepare_output(layout, spec, overwrite=True)
        left = sorted(layout.relative(u) for u in storage.list_files(out))
    assert left == sorted(["_state/lock.json", "_state/spec.json", *mine])  # and the new run's spec
    if where == "local":  # directories the overwrite emptied are gone; those with the user's files stay
        dirs = sorted(str(d.relative_to(tmp_path)) for d in tmp_path.rglob("*") if d.is_dir())
        assert dirs == ["_state", "manifest", "report", "shards"]


@pytest.mark.parametrize(
    ("name", "content", "is_run"),
    [
        ("_state/spec.json", "{}", True),
        ("run.json", '{"job": "encode"}', True),
        ("_markers/task-000003.json", "{}", True),
        ("run.json", '{"name": "my own run.json"}', False),
        ("run.json", "not json", False),
        ("_markers/notes.json", "{}", False),
        ("report/index.html", "", False),
    ],
)
def test_a_run_is_known_by_its_spec_its_run_json_or_a_marker(tmp_path, name, content, is_run):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(content)
    assert OutputLayout(str(tmp_path)).holds_run() is is_run


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lock-videos")
    for i in range(3):
        synthetic.make_video(d / f"v{i}.mp4", VideoSpec(shot_list([70 + 5 * i, 60]), 240, 160))
    return d


def _curate(videos: Path, out: Path, *extra: str) -> list[str]:
    cmd = [REELMILL, "curate", "--input", str(videos), "--output", str(out), "--videos-per-task", "1"]
    return [*cmd, "--num-cpus", "2", *[arg for s in SETS for arg in ("--set", s)], *extra]


@pytest.fixture(scope="module")
def clean_run(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lock-clean") / "out"
    subprocess.run(_curate(videos, out), check=True, capture_output=True, timeout=300)
    return out


def _keys(out: Path) -> set[str]:
    return set(shard_samples(OutputLayout(str(out))))


def test_a_second_curate_on_a_busy_out_exits_2_and_a_dead_ones_lock_is_taken_over(
    videos, clean_run, tmp_path
):
    out = tmp_path / "out"
    first = subprocess.Popen(
        _curate(videos, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 60
        while not (out / "_state" / "lock.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(_curate(videos, out), capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first job must still be running"
        assert second.returncode == 2, second.stderr[-2000:]
        assert (
            f"is in use by reelmill curate (pid {first.pid} on host {socket.gethostname()}" in second.stderr
        )
        assert "Traceback" not in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the job and the Ray it started, like a lost machine
        first.wait()

    while time.time() - _lock(out)["heartbeat"] <= 6.2:  # lock.stale_s: the dead job's lock goes stale
        time.sleep(0.1)
    third = subprocess.run(_curate(videos, out), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over {out / '_state' / 'lock.json'} from reelmill curate (pid {first.pid}" in third.stdout
    assert _keys(out) == _keys(clean_run) and _keys(out)
    assert not (out / "_state" / "lock.json").exists()


def test_overwrite_refuses_a_directory_that_holds_no_run(videos, tmp_path):
    home = tmp_path / "home"
    (home / "report").mkdir(parents=True)
    (home / "report" / "notes.txt").write_text("mine")
    (home / "notes.txt").write_text("mine too")
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    done = subprocess.run(_curate(videos, home, "--overwrite"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"reelmill curate: error: {home} is not empty and holds no reelmill run (found: notes.txt, report/); "
        "--overwrite deletes only a run's own files: choose a new or empty directory"
    )
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before
    assert (home / "report" / "notes.txt").read_text() == "mine"


def test_overwrite_over_a_run_deletes_only_the_runs_files(videos, clean_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean_run, out)
    assert (out / "report" / "index.html").exists() and list((out / "report" / "plots").glob("*.png"))
    mine = {"notes.txt": "top", "report/notes.txt": "in report/", "shards/README": "about the shards"}
    for name, text in mine.items():
        (out / name).write_text(text)
    # what an earlier run with more tasks (and one cut off mid-write) left: the run's own, so it goes
    stale = ["shards/shard-000009-000.tar", "shards/shard-000000-000.tar.tmp-77", "_markers/task-000009.json",
             "manifest/clips/task-000009.parquet", "_state/attempts/task-000009/x"]  # fmt: skip
    for name in stale:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"old")
    old_run = json.loads((out / "run.json").read_text())

    # no report this time: what the first run's report wrote must go with the overwrite itself
    done = subprocess.run(
        _curate(videos, out, "--overwrite", "--set", "report.enabled=false"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert {name: (out / name).read_text() for name in mine} == mine
    assert not any((out / name).exists() for name in stale)
    assert sorted(p.name for p in (out / "report").iterdir()) == ["notes.txt"]
    run = json.loads((out / "run.json").read_text())
    assert run["tasks"]["run_now"] == 3 and run["output"] == str(out) != old_run["output"]
    assert _keys(out) == _keys(clean_run)
    assert sorted(p.name for p in (out / "_markers").iterdir()) == [f"task-00000{i}.json" for i in range(3)]


def test_rebuilding_the_report_replaces_its_own_files_only(clean_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean_run, out)
    (out / "report" / "notes.txt").write_text("mine")
    stale_plot = out / "report" / "plots" / "from-an-older-report.png"
    stale_plot.write_bytes(b"old")
    done = subprocess.run([REELMILL, "report", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "report" / "notes.txt").read_text() == "mine"
    assert not stale_plot.exists() and (out / "report" / "index.html").exists()
