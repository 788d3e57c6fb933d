"""One way to get a Ray session: the embedded local Ray by default, a cluster with RAY_ADDRESS.

Under `ray job submit`, Ray sets RAY_ADDRESS for the entrypoint, so the same command runs on the
cluster unchanged. A session that is already initialized (a notebook, a test fixture) is reused
and left running.
"""

from __future__ import annotations

import contextlib
import os
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
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
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
