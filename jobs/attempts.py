"""Task attempts, noted in the output where each task runs, so run.json counts Ray's retries.

A task that Ray starts again (its node was lost, its worker killed for memory, a `TransientError`) leaves
no trace in its result: the retry returns the same rows. Each stage therefore drops a small note,
`OUT/_state/attempts/task-TTTTTT/STAGE-NODE-PID-RANDOM`, when it starts on a task; after the run the
driver counts notes beyond one per (task, stage), and the nodes they ran on. The notes live in the
output's storage, which every node writes, so this works the same on a laptop and on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections import Counter

from curation import storage
from curation.layout import OutputLayout


def _task_dir(layout: OutputLayout, task_id: int) -> str:
    return layout.path("_state", "attempts", f"task-{task_id:06d}")


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a note never stops a task
        pass
    return "driver"


def note_attempt(out: str, task_id: int, stage: str) -> None:
    """Record that `stage` starts on task `task_id` here and now. Best effort: a note that cannot be
    written (the output briefly unreachable) costs a count, never the task."""
    node = _node_id()
    name = f"{stage.replace(' ', '_')}-{node[:12]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"stage": stage, "node_id": node, "pid": os.getpid(), "unix": time.time()}).encode()
    with contextlib.suppress(OSError):
        storage.write_bytes(storage.join(_task_dir(OutputLayout(out), task_id), name), body)


def clear_attempts(out: str) -> None:
    """Forget earlier runs' notes (tasks done then are skipped now), so the count is this run's."""
    storage.delete_dir(OutputLayout(out).path("_state", "attempts"))


def count_attempts(out: str) -> dict:
    """run.json `retries`: attempts beyond the first per (task, stage), the tasks that needed them, and the
    attempts each node started."""
    per_stage, nodes = Counter(), Counter()
    for uri in storage.list_files(OutputLayout(out).path("_state", "attempts"), recursive=True):
        task_dir, name = uri.rsplit("/", 2)[-2:]
        if not task_dir.startswith("task-") or name.count("-") < 3 or ".tmp-" in name:
            continue
        stage, node = name.rsplit("-", 3)[:2]
        per_stage[int(task_dir[5:]), stage] += 1
        nodes[node] += 1
    retried = sorted({task for (task, _), n in per_stage.items() if n > 1})
    return {
        "retries": sum(n - 1 for n in per_stage.values()),
        "retried_tasks": retried,
        "attempts_by_node": dict(sorted(nodes.items())),
    }
