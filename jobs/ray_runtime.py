"""One way to get a Ray session: the embedded local Ray by default, a cluster with RAY_ADDRESS.

Without RAY_ADDRESS a job starts a Ray of its own even when another job's Ray runs on the same machine
(plain `ray.init()` would join that one, and lose its workers when that job ends).

Under `ray job submit`, Ray sets RAY_ADDRESS for the entrypoint, so the same command runs on the
cluster unchanged. A session that is already initialized (a notebook, a test fixture) is reused
and left running.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import ray


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[dict]:
    """Yield a description of the Ray session in use (address, resources) for run.json."""
    owned = not ray.is_initialized()
    if owned:
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:  # "local": a Ray of its own, never another job's that happens to run on this machine
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    try:
        context = ray.get_runtime_context()
        yield {
            "address": os.environ.get("RAY_ADDRESS") or "local",
            "node_id": context.get_node_id(),
            "cluster_resources": {k: v for k, v in ray.cluster_resources().items() if "node:" not in k},
        }
    finally:
        if owned:
            ray.shutdown()


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
