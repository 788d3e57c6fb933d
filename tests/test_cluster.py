"""reelmill on a real multi-node Ray cluster on this machine, as a Ray user runs it: the head (with the
dashboard's job server) and a second node started with `ray start`, reelmill installed from its wheel,
curate sent with `ray job submit`, and the second node's raylet killed mid-run.

Only the nodes this module starts are stopped (by pid, with their process trees), never another Ray on
the machine. Ray 2.60 enables token authentication, so every node and client gets RAY_AUTH_MODE=token.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from curation import synthetic
from curation.layout import OutputLayout
from curation.synthetic import VideoSpec, shot_list

NODE_ARGS = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
CURATE_ARGS = [
    "--config", "fast", "--videos-per-task", "1",
    "--set", "scoring.aesthetic.enabled=false", "--set", "captioning.enabled=false",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_processes(temp_dir: str, gcs_port: int) -> list[psutil.Process]:
    """This cluster's processes: those naming its temp dir or its GCS address (the Ray client server), and
    all their descendants (workers and agents rename themselves `ray::...` and keep no path in their
    command line)."""
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(temp_dir in part or part.endswith(f":{gcs_port}") for part in cmd):
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for root in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update({c.pid: c for c in root.children(recursive=True)})
    return list(found.values())


def raylets(temp_dir: str) -> dict[int, str]:
    """pid -> node id of this cluster's raylets."""
    out = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "raylet" and any(temp_dir in part for part in cmd):
            out[proc.pid] = next(a.split("=", 1)[1] for a in cmd if a.startswith("--node_id="))
    return out


@dataclass
class Cluster:
    env: dict
    python: Path
    temp_dir: str
    address: str
    dashboard: str
    worker_raylet: int = 0
    worker_node_id: str = ""

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.python, "-m", "ray.scripts.scripts", *args], env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def add_worker_node(self) -> None:
        """Start the second node (2 CPUs; the head has 1, so most tasks run here) and note its raylet."""
        before = set(raylets(self.temp_dir))
        started = self.ray("start", "--address", self.address, "--num-cpus", "2", *NODE_ARGS)
        assert started.returncode == 0, started.stderr
        ((self.worker_raylet, self.worker_node_id),) = [
            (p, n) for p, n in raylets(self.temp_dir).items() if p not in before
        ]

    def submit(self, *entrypoint: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
        cmd = [
            self.python, "-m", "ray.scripts.scripts", "job", "submit", "--address", self.dashboard,
            "--runtime-env-json", json.dumps({"env_vars": {"REELMILL_CLUSTER_TEST": "1"}}),
            *(() if wait else ("--no-wait",)), "--", *entrypoint,
        ]  # fmt: skip
        if wait:
            # a new head takes a while to register the agent that runs submitted jobs, and says so
            deadline = time.monotonic() + 120
            while True:
                done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)
                if "No available agent to submit job" not in done.stderr or time.monotonic() > deadline:
                    return done
                time.sleep(2)
        return subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def job_result(self, job_id: str, timeout_s: float = 300) -> tuple[str, str]:
        """(status, logs) of a submitted job once it has ended."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.ray("job", "status", "--address", self.dashboard, job_id)
            # "Job 'raysubmit_...' succeeded" once it has ended
            ended = re.findall(r"Job '[^']+' (succeeded|failed|stopped)", status.stdout + status.stderr)
            if ended:
                return ended[0].upper(), self.ray("job", "logs", "--address", self.dashboard, job_id).stdout
            time.sleep(1)
        logs = self.ray("job", "logs", "--address", self.dashboard, job_id).stdout
        raise TimeoutError(f"job {job_id} did not end in {timeout_s}s; its log:\n{logs[-5000:]}")


@pytest.fixture(scope="module")
def cluster(wheel_install):
    temp_dir = tempfile.mkdtemp(prefix="rmc-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    # a home of its own: the head makes the cluster's token in ~/.ray as on a fresh machine
    env |= {"PATH": f"{wheel_install}{os.pathsep}{env['PATH']}", "RAY_AUTH_MODE": "token", "HOME": temp_dir}
    port, dashboard_port = free_port(), free_port()
    cluster = Cluster(
        env, wheel_install / "python", temp_dir, f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}"
    )
    try:
        token = cluster.ray("get-auth-token", "--generate")  # the recipe's first step on a new cluster
        assert token.returncode == 0, token.stderr
        head = cluster.ray(
            "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--temp-dir", temp_dir,
            *NODE_ARGS,
        )  # fmt: skip
        assert head.returncode == 0, head.stderr
        cluster.add_worker_node()
        yield cluster
    finally:
        for proc in ray_processes(temp_dir, port):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Six videos of three shots each: one task per video, a few seconds of work each."""
    d = tmp_path_factory.mktemp("cluster_inputs")
    for i in range(6):
        synthetic.make_video(d / f"video{i}.mp4", VideoSpec(shot_list([100, 100, 100])[i % 2 :], 320, 240))
    return d


def clip_keys(out: Path) -> set[str]:
    layout = OutputLayout(str(out))
    return {r["clip_id"] for r in layout.read_manifest(layout.clips_manifest).to_pylist() if r["kept"]}


@pytest.fixture(scope="module")
def submitted(cluster, corpus, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One `ray job submit` of curate over the corpus on the whole cluster: (OUT, the submit's result)."""
    out = tmp_path_factory.mktemp("cluster_clean") / "clean"
    return out, cluster.submit(
        "reelmill", "curate", "--input", str(corpus), "--output", str(out), *CURATE_ARGS
    )


def test_ray_job_submit_runs_curate_from_the_wheel(submitted):
    out, done = submitted
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["ray"]["address"] != "local" and run["ray"]["nodes"] == 2
    assert run["counts"]["videos_ok"] == 6 and run["tasks"]["failed"] == 0
    assert run["retries"]["retries"] == 0
    # the job ran where the runtime_env says, on both nodes
    assert len(run["retries"]["attempts_by_node"]) == 2


def test_curate_loses_nothing_when_a_node_dies_mid_run(cluster, corpus, submitted, tmp_path):
    clean, done = submitted
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "killed"
    submit = cluster.submit(
        "reelmill", "curate", "--input", str(corpus), "--output", str(out), *CURATE_ARGS, wait=False
    )
    job_line = submit.stdout.read()
    submit.wait(timeout=60)
    job_id = next(w.strip("'") for w in job_line.split() if w.strip("'").startswith("raysubmit_"))
    # kill the worker node's raylet as soon as a task has started there
    attempts = out / "_state" / "attempts"
    deadline = time.monotonic() + 120
    while not any(cluster.worker_node_id[:12] in p.name for p in attempts.rglob("*")):
        assert time.monotonic() < deadline, "no task started on the second node"
        time.sleep(0.05)
    os.kill(cluster.worker_raylet, signal.SIGKILL)
    try:
        status, logs = cluster.job_result(job_id)
    finally:
        cluster.add_worker_node()  # the cluster as the other tests expect it
    assert status == "SUCCEEDED", logs[-4000:]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["videos_ok"] == 6 and run["tasks"]["failed"] == 0
    assert run["counts"]["transient_exhausted"] == 0 and run["counts"]["internal_errors"] == 0
    assert run["retries"]["retries"] >= 1
    assert clip_keys(out) == clip_keys(clean) and len(clip_keys(clean)) >= 12
    shards = {p.name for p in (out / "shards").glob("*.tar")}
    assert shards == {p.name for p in (clean / "shards").glob("*.tar")}


def test_a_job_on_the_cluster_passes_its_io_settings_to_the_workers(cluster):
    """Workers on a cluster are started by raylets that never saw the driver's environment: the io
    settings reach them only through the runtime_env the job joins with."""
    driver = (
        "import os, ray\n"
        "from curation import storage\n"
        "from jobs.ray_runtime import ray_session\n"
        "storage.configure(attempts=7, request_timeout_s=12.5)\n"
        "@ray.remote\n"
        "def settings():\n"
        "    from curation import storage\n"
        "    return os.environ.get('REELMILL_IO_ATTEMPTS'), storage.io_settings()\n"
        "with ray_session(log=lambda line: None):\n"
        "    print(ray.get(settings.remote()))\n"
    )
    done = subprocess.run(
        [cluster.python, "-c", driver], env={**cluster.env, "RAY_ADDRESS": cluster.address},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    env_value, settings = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert env_value == "7"
    assert settings["attempts"] == 7 and settings["request_timeout_s"] == 12.5
