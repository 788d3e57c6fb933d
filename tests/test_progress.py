"""A job's progress: one line per finished task in a log (one bar on a terminal), run.json as the job goes."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from curation import synthetic
from curation.synthetic import VideoSpec, shot_list
from jobs.progress import TaskProgress, tally

REELMILL = str(Path(sys.executable).with_name("reelmill"))
CURATE = (tally("videos"), tally("clips"), tally("clips kept", "clips_kept"))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(tmp_path, clock, stream, **kwargs) -> TaskProgress:
    kwargs = {"done_before": 1, "seconds_key": "seconds_in", "interactive": False, **kwargs}
    return TaskProgress(
        "curate", str(tmp_path / "run.json"), 4, CURATE, header={"job": "curate"}, stream=stream,
        clock=clock, **kwargs,
    )  # fmt: skip


def read_run(tmp_path) -> dict:
    return json.loads((tmp_path / "run.json").read_text())


def test_a_line_per_task_with_totals_throughput_and_eta(tmp_path):
    clock, out = Clock(), io.StringIO()
    with progress(tmp_path, clock, out) as p:
        assert p.eta_s() is None  # no pace before this run's first task
        clock.now += 10
        p.task_done({"videos": 2, "clips": 5, "clips_kept": 3, "seconds_in": 120.0})
        clock.now += 10
        p.task_done({"videos": 1, "clips": 2, "clips_kept": 2, "seconds_in": 7200.0, "shards": ["a"]})
    lines = out.getvalue().splitlines()
    # a task done before this run counts as done; 2 left at 10 s a task: 20 s, then 10 s
    assert lines == [
        "reelmill curate: tasks 2/4, 2 videos, 5 clips, 3 clips kept, 2.0 min of video in (12.0x real time), "
        "12.0 videos/min, elapsed 0:10, ETA 0:20",
        "reelmill curate: tasks 3/4, 3 videos, 7 clips, 5 clips kept, 2.0 h of video in (366.0x real time), "
        "9.0 videos/min, elapsed 0:20, ETA 0:10",
    ]
    assert p.snapshot()["counts"] == {"videos": 3, "clips": 7, "clips_kept": 5}


def test_failed_tasks_and_dict_tallies(tmp_path):
    clock, out = Clock(), io.StringIO()
    encode = (tally("samples", "written", "skipped"), tally("written"), tally("skipped"))
    p = TaskProgress(
        "encode", str(tmp_path / "run.json"), 2, encode, stream=out, interactive=False, clock=clock
    )
    with p:
        clock.now += 3600
        p.task_done({"written": 3, "skipped": {"too_short": 1, "no_caption": 2}})
        clock.now += 7200
        p.task_done({"task_id": 1, "failed": "OSError: disk full"})
    assert out.getvalue().splitlines()[-1] == (
        "reelmill encode: tasks 2/2 (1 failed), 6 samples, 3 written, 3 skipped, 2.0 samples/h, "
        "elapsed 3:00:00, ETA 0:00"
    )


def test_run_json_while_running_is_throttled_and_says_how_it_ended(tmp_path):
    clock = Clock()
    p = progress(tmp_path, clock, io.StringIO(), write_every_s=5)
    with pytest.raises(RuntimeError, match="lost the cluster"), p:
        run = read_run(tmp_path)  # written as the loop starts
        assert run["job"] == "curate" and run["state"] == "running"
        assert run["tasks"] == {"total": 4, "done": 1, "skipped_done": 1, "run_now": 0, "failed": 0}
        clock.now += 1
        p.task_done({"videos": 1, "seconds_in": 60.0})
        assert read_run(tmp_path)["tasks"]["run_now"] == 0  # 1 s after the last write: not yet
        clock.now += 5
        p.task_done({"videos": 1, "seconds_in": 60.0})
        run = read_run(tmp_path)
        assert run["tasks"]["done"] == 3 and run["progress"]["counts"]["videos"] == 2
        assert run["progress"]["hours_in"] == pytest.approx(2 / 60)
        assert run["progress"]["eta_s"] == pytest.approx(3.0)
        clock.now += 1
        p.task_done({"videos": 1})  # the last task: written whatever the time
        assert read_run(tmp_path)["tasks"]["done"] == 4
        raise RuntimeError("lost the cluster")
    run = read_run(tmp_path)
    assert run["state"] == "failed" and run["error"] == "RuntimeError: lost the cluster"


def test_a_terminal_gets_one_bar_not_a_line_per_task(tmp_path):
    clock, out = Clock(), io.StringIO()
    with progress(tmp_path, clock, out, interactive=True) as p:
        for _ in range(3):
            clock.now += 2
            p.task_done({"videos": 2, "clips": 3, "clips_kept": 1, "seconds_in": 30.0})
    text = out.getvalue()
    assert "tasks 2/4" not in text  # no log lines
    assert text.count("\n") <= 1 and "\r" in text  # one bar, redrawn in place
    assert "reelmill curate" in text and "4/4" in text and "6 videos, 9 clips, 3 clips kept" in text


def _curate(videos: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [REELMILL, "curate", "--input", str(videos), "--output", str(out), "--videos-per-task", "1"]
    cmd += [
        "--num-cpus",
        "2",
        "--set",
        "scoring.aesthetic.enabled=false",
        "--set",
        "captioning.enabled=false",
    ]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


def test_curate_log_has_a_progress_line_per_task_and_no_ray_data_progress(tmp_path):
    videos = tmp_path / "videos"
    for i in range(3):
        synthetic.make_video(videos / f"v{i}.mp4", VideoSpec(shot_list([40, 30])[: 1 + i % 2], 160, 120))
    out = tmp_path / "out"
    proc = _curate(videos, out)
    log = proc.stdout
    assert proc.returncode == 0, log[-3000:]
    (tmp_path / "curate.log").write_text(log)
    progress_lines = re.findall(r"^reelmill curate: tasks (\d+)/(\d+), .*ETA .*$", log, re.M)
    assert progress_lines == [("1", "3"), ("2", "3"), ("3", "3")]
    run = json.loads((out / "run.json").read_text())
    assert run["state"] == "finished" and run["tasks"]["total"] == 3
    for noise in (
        "Total Progress",
        "Starting execution",
        "Execution plan",
        "logging_progress",
        "core_worker.cc",
    ):
        assert noise not in log
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), log
    # a rerun skips the done tasks, and counts them as done
    (out / "_markers" / os.listdir(out / "_markers")[0]).unlink()
    again = _curate(videos, out).stdout
    assert re.findall(r"^reelmill curate: tasks (\d+)/(\d+), 1 videos", again, re.M) == [("3", "3")]


def test_curate_run_from_a_terminal_finishes_and_draws_one_bar(tmp_path):
    """On a terminal (a pseudo-terminal from `script`), Ray's workers must not inherit it as stdin: a worker
    or its ffmpeg touching the terminal from outside its foreground process group is stopped by the
    kernel, and the job would never end."""
    videos = tmp_path / "videos"
    for i in range(2):
        synthetic.make_video(videos / f"v{i}.mp4", VideoSpec(shot_list([40, 30]), 160, 120))
    out = tmp_path / "out"
    cmd = [REELMILL, "curate", "--input", str(videos), "--output", str(out), "--videos-per-task", "1",
           "--num-cpus", "2", "--set", "scoring.aesthetic.enabled=false", "--set", "captioning.enabled=false"]  # fmt: skip
    proc = subprocess.run(
        ["script", "-qec", f"stty cols 120 rows 40; {shlex.join(cmd)}", "/dev/null"], stdin=subprocess.DEVNULL, capture_output=True,
        timeout=240,
    )  # fmt: skip
    screen = proc.stdout.decode(errors="replace").replace("\r\n", "\n")
    assert proc.returncode == 0, screen[-3000:]
    assert json.loads((out / "run.json").read_text())["state"] == "finished"
    assert "\r" in screen and "2/2" in screen, screen  # a bar redrawn in place ...
    assert not re.search(r"^reelmill curate: tasks \d+/\d+", screen, re.M)  # ... instead of log lines
