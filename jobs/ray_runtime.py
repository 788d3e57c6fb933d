"""One way to get a Ray session: the embedded local Ray by default, a cluster with RAY_ADDRESS.

Without RAY_ADDRESS a job starts a Ray of its own even when another job's Ray runs on the same machine
(plain `ray.init()` would join that one, and lose its workers when that job ends).

Under `ray job submit`, Ray sets RAY_ADDRESS for the entrypoint, so the same command runs on the
cluster unchanged. A session that is already initialized (a notebook, a test fixture) is reused
and left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator

import ray


@dataclasses.dataclass
class RayOptions:
    """How this process's jobs start or join Ray, set once from the command line (`--dashboard`,
    `--runtime-env`): one place, so every job's session gets them without threading them through."""

    dashboard: bool = False  # the embedded Ray serves its dashboard on 127.0.0.1 (local runs)
    runtime_env: dict | None = None  # passed to ray.init: env_vars, pip, working_dir, ...


OPTIONS = RayOptions()


def load_runtime_env(value: str) -> dict:
    """`--runtime-env`: inline JSON, or a JSON/YAML file (the format `ray job submit --runtime-env` takes)."""
    import yaml

    from curation.config import ConfigError

    inline = value.lstrip().startswith("{")
    text = value
    if not inline:
        try:
            with open(value) as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"--runtime-env: {value} is neither JSON nor a readable file ({exc})") from None
    try:
        env = yaml.safe_load(text)  # YAML reads JSON too
    except yaml.YAMLError as exc:
        raise ConfigError(f"--runtime-env: not valid JSON/YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(env, dict):
        raise ConfigError(f"--runtime-env: must be a mapping (env_vars, pip, ...), got {type(env).__name__}")
    return env


@contextlib.contextmanager
def stdin_from_devnull() -> Iterator[None]:
    """Start processes with /dev/null as their stdin. The embedded Ray's raylet and, through it, every
    worker inherit the driver's stdin; run from a terminal, that is the terminal, and a worker (or the
    ffmpeg it starts) that touches it while outside the terminal's foreground process group is stopped
    by the kernel (SIGTTIN), so the job would hang forever."""
    try:
        saved = os.dup(0)
    except OSError:  # no stdin at all: nothing to shield
        yield
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None, log=print) -> Iterator[dict]:
    """Yield a description of the Ray session in use (address, resources, dashboard) for run.json."""
    owned = not ray.is_initialized()
    dashboard_url = None
    if owned:
        address = os.environ.get("RAY_ADDRESS")
        env = {"runtime_env": OPTIONS.runtime_env} if OPTIONS.runtime_env else {}
        if address:
            # a cluster's workers do not inherit this environment as the embedded Ray's do: pass the
            # remote I/O settings (`storage.configure`) on, unless the runtime_env sets them itself
            from curation.storage import ENV_VARS

            runtime_env = dict(OPTIONS.runtime_env or {})
            io_vars = {var: os.environ[var] for var in ENV_VARS.values() if var in os.environ}
            if io_vars:
                runtime_env["env_vars"] = {**io_vars, **(runtime_env.get("env_vars") or {})}
            env = {"runtime_env": runtime_env} if runtime_env else {}
            context = ray.init(address=address, logging_level="WARNING", **env)
        else:  # "local": a Ray of its own, never another job's that happens to run on this machine
            with stdin_from_devnull():
                context = ray.init(
                    address="local", num_cpus=num_cpus, include_dashboard=OPTIONS.dashboard,
                    dashboard_host="127.0.0.1", logging_level="WARNING", **env,
                )  # fmt: skip
        dashboard_url = context.dashboard_url or None
        if dashboard_url and OPTIONS.dashboard:
            log(f"reelmill: Ray dashboard at http://{dashboard_url}")
    try:
        runtime = ray.get_runtime_context()
        yield {
            "address": os.environ.get("RAY_ADDRESS") or "local",
            "node_id": runtime.get_node_id(),
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "dashboard": f"http://{dashboard_url}" if dashboard_url else None,
            "runtime_env": described_runtime_env(runtime.runtime_env),
            "cluster_resources": {k: v for k, v in ray.cluster_resources().items() if "node:" not in k},
        }
    finally:
        if owned:
            ray.shutdown()


def described_runtime_env(env: dict | None) -> dict | None:
    """The runtime_env the job's workers run with, for run.json: env_vars by name only (they often carry
    credentials), everything else (pip, working_dir, ...) as given."""
    if not env:
        return None
    described = {k: v for k, v in dict(env).items() if k != "env_vars"}
    if env.get("env_vars"):
        described["env_vars"] = sorted(env["env_vars"])
    return described


def run_where_files_are_read(fn, *args, session: dict):
    """`fn(*args)` where the stages will read files: on a cluster whose nodes share no disk, a check that a
    model directory or weights file exists must look on a worker, not on the machine that submitted the
    job, so there it runs as a Ray task and its exception (a ConfigError) is raised here as it is. On the
    embedded local Ray the driver's disk is the workers' disk, and it runs in place."""
    if session["address"] == "local":
        return fn(*args)
    try:
        return ray.get(ray.remote(num_cpus=0, max_retries=0)(fn).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from None
        raise


def fit_actor_cpus(
    pools: dict[str, tuple[float, int]], task_cpus: float, session: dict, log=print
) -> dict[str, float]:
    """CPUs per actor for each actor pool (`name -> (cpus per actor, actors)`) on the embedded Ray.

    Actor pools hold their CPUs for the whole run. On a small machine (2 cores: an aesthetic actor
    and a captioning actor) they would leave no CPU for the tasks that feed them and the pipeline
    would wait forever; there the actors' reservations shrink so one task of `task_cpus` still fits.
    On a cluster (RAY_ADDRESS) the autoscaler adds nodes, so the config is used as it is.
    """
    wanted = {name: cpus for name, (cpus, _) in pools.items()}
    total = session["cluster_resources"].get("CPU", 0.0)
    held = sum(cpus * actors for cpus, actors in pools.values())
    if session["address"] != "local" or not pools or held + task_cpus <= total:
        return wanted
    scale = max(total - task_cpus, 0.0) / held
    fitted = {name: max(round(cpus * scale, 2), 0.01) for name, cpus in wanted.items()}
    log(
        f"reelmill: {total:g} CPUs cannot hold the actor pools ({held:g} CPUs) and a {task_cpus:g}-CPU task; "
        f"actors reserve {', '.join(f'{n} {c:g}' for n, c in fitted.items())} CPUs each instead"
    )
    return fitted


def task_retry_args(retries: int) -> dict:
    """Ray remote args that retry a task `retries` times after its worker died (killed, out of memory,
    a lost node) or it raised `TransientError`; Ray Data's default retries a dead worker forever, so an
    item that is killed for its memory every time would never let the job end."""
    from curation.quarantine import TransientError

    return {"max_retries": retries, "retry_exceptions": [TransientError]}


def actor_retry_args(retries: int) -> dict:
    """The same bound for an actor pool: a dead actor is restarted (its model loads again), and the task
    it held is tried `retries` more times, not forever."""
    return {"max_task_retries": retries}


def keep_going_on_failed_tasks() -> None:
    """Let a dataset finish when a task has failed for good (its retries spent): the job records that
    task's items itself (`transient_exhausted`) instead of Ray Data ending the job at the first one."""
    ray.data.DataContext.get_current().max_errored_blocks = -1


@contextlib.contextmanager
def retry_args_accepted() -> Iterator[None]:
    """Build map stages with `task_retry_args`/`actor_retry_args` without a warning the user cannot act
    on: Ray 2.60 deprecates `**ray_remote_args` on `map`/`map_batches` but has no named parameter yet
    for `max_retries`, `retry_exceptions` or `max_task_retries`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        yield


# -- what Ray prints -----------------------------------------------------------------------------------

RAY_NOTICES = {
    # Ray Data, once progress bars are off (the job shows its own: jobs.progress)
    "ray.data._internal.progress": r"Progress bars disabled\. To enable",
    # every new local Ray: token authentication is on by default, nothing for the user to do
    "ray._private.authentication.authentication_token_setup": r"Token authentication is enabled for this Ray",
}
"""Ray's log messages that tell the user nothing they can act on: logger name -> message pattern."""

NATIVE_NOTICES = (
    # Ray Data always passes an actor pool's function by reference and restarts dead actors: Ray core
    # warns about that pair (ray-project/ray#53727, #57733), whatever the job does
    rb"core_worker\.cc:\d+: Actor with class name: '[^']*' and ID: '\w+' has constructor arguments in the "
    rb"object store and max_restarts > 0",
)
"""Lines Ray's C++ core writes straight to the driver's stderr (fd 2) that are not ours to act on."""


def quiet_ray_data() -> None:
    """Ray Data prints nothing per operator: the job shows one progress line per finished task (or one bar)
    instead of Ray Data's bars or, in a log, its "Total Progress" blocks every 10 s. Ray Data's INFO lines
    (execution start and plan, finish) still go to its log file (logs/ray-data/ in the Ray session); its
    warnings and errors still print. Call it before making the dataset: a dataset keeps a copy of the
    DataContext it was made with."""
    import logging

    from jobs.logs import drop_messages

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if handler.name == "console":  # as Ray Data's logging config names it; "file" keeps everything
            handler.setLevel(logging.WARNING)
    for name, pattern in RAY_NOTICES.items():
        drop_messages(name, pattern)


@contextlib.contextmanager
def native_notices_hidden(patterns: tuple[bytes, ...] = NATIVE_NOTICES) -> Iterator[None]:
    """Drop the lines matching `patterns` from what this process writes to its stderr (fd 2), while the
    block runs: Ray's C++ core writes there directly, past Python's logging. Everything else goes through
    at once; only a line that starts like a C++ log line ("[") waits for its end."""
    import re
    import sys
    import threading

    regex = re.compile(b"|".join(patterns))
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        with open(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not regex.search(line))
                if not pending.startswith(b"["):  # a bar redrawn in place, a prompt: show it now
                    out, pending = out + pending, b""
                _write_all(saved, out)
        _write_all(saved, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end here: the pump reads to the end and stops
        thread.join(timeout=5)
        if not thread.is_alive():  # else a child still holds the pipe: keep `saved` for the pump
            os.close(saved)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
