"""`reelmill curate`: raw videos in, webdataset clip shards and manifests out, on Ray Data.

The Ray Data pipeline has one row per task: a map of CPU tasks runs the split stage (probe, scene
detection, cut and encode), a second map writes the task's shards, manifest parts and completion
marker. Completed tasks are skipped on a rerun; the run refuses to resume under another config.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import ray

from curation import config as config_lib
from curation import ffmpeg_tools, storage
from curation.curate_config import CurateConfig
from curation.inputs import Task, expand_inputs, make_tasks
from curation.layout import OutputLayout
from curation.splitter import ClipSplitter
from curation.writer import TaskWriter
from jobs.ray_runtime import ray_session
from jobs.run_info import versions


class ResumeRefused(RuntimeError):
    """OUT holds a run made with another config or other inputs, and --overwrite was not given."""


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return keys


def prepare_output(layout: OutputLayout, spec: dict, overwrite: bool) -> None:
    """Start a new run in OUT, or check that a rerun matches the run already there."""
    if overwrite:
        for directory in layout.owned_dirs():
            storage.delete_dir(directory)
        storage.delete(layout.run_json)
    elif storage.exists(layout.spec):
        previous = json.loads(storage.read_bytes(layout.spec))
        if previous["inputs_fingerprint"] != spec["inputs_fingerprint"]:
            raise ResumeRefused(
                f"{layout.root} holds a run over other inputs ({previous['num_inputs']} videos, now "
                f"{spec['num_inputs']}); pass --overwrite to start over, or use another --output"
            )
        if previous["config_fingerprint"] != spec["config_fingerprint"]:
            changes = "; ".join(_diff(previous["config"], spec["config"]))
            raise ResumeRefused(
                f"{layout.root} holds a run made with another config ({changes}); "
                "pass --overwrite to start over, or use another --output"
            )
    storage.write_bytes(layout.spec, json.dumps(spec, indent=1, sort_keys=True).encode())


def _split_row(row: dict, cfg: CurateConfig) -> dict:
    task: Task = pickle.loads(row["task"])
    # the whole task travels as one pickled value: clip records are nested and sparsely filled,
    # which Arrow would otherwise have to infer (and reconcile) block by block
    return {"task_id": task.task_id, "result": pickle.dumps(ClipSplitter(cfg).run(task))}


def _write_row(row: dict, out: str, cfg: CurateConfig, fingerprint: str) -> dict:
    writer = TaskWriter(out, cfg.shards.max_clips, cfg.shards.max_bytes, fingerprint)
    return {"task_id": row["task_id"], "summary": json.dumps(writer.run(pickle.loads(row["result"])))}


def aggregate(summaries: list[dict]) -> dict:
    """Totals over task summaries (from markers, so a resumed run counts every task)."""
    errors, drops = Counter(), Counter()
    for s in summaries:
        errors.update(s["video_errors"])
        drops.update(s["drop_reasons"])
    total = {k: sum(s[k] for s in summaries) for k in ("videos", "videos_ok", "shots", "clips", "clips_kept")}
    total["clips_dropped"] = total["clips"] - total["clips_kept"]
    total["video_errors"] = dict(sorted(errors.items()))
    total["drop_reasons"] = dict(sorted(drops.items()))
    total["hours_in"] = sum(s["seconds_in"] for s in summaries) / 3600
    total["hours_kept"] = sum(s["seconds_kept"] for s in summaries) / 3600
    total["shards"] = sum(len(s["shards"]) for s in summaries)
    return total


def summary_line(counts: dict, wall_s: float, out: str) -> str:
    return (
        f"reelmill curate: {counts['videos']} videos ({counts['videos_ok']} ok, "
        f"{counts['videos'] - counts['videos_ok']} error), {counts['clips']} clips "
        f"({counts['clips_kept']} kept, {counts['clips_dropped']} dropped) in {counts['shards']} shards, "
        f"{wall_s:.1f}s -> {out}"
    )


def run_curate(
    inputs: list[str],
    output: str,
    cfg: CurateConfig,
    overwrite: bool = False,
    num_cpus: int | None = None,
    log=print,
) -> dict:
    """Run the whole curate job; returns what it writes to run.json."""
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    ffmpeg_tools.require_binaries()
    uris = expand_inputs(inputs, cfg.input.extensions)
    tasks = make_tasks(uris, cfg.input.videos_per_task)
    layout = OutputLayout(output)
    fingerprint = config_lib.fingerprint(cfg)
    spec = {
        "config": config_lib.to_dict(cfg),
        "config_fingerprint": fingerprint,
        "inputs_fingerprint": hashlib.sha256("\n".join(uris).encode()).hexdigest()[:16],
        "num_inputs": len(uris),
    }
    prepare_output(layout, spec, overwrite)
    done = {tid for tid, m in layout.completed_markers().items() if m.get("run_fingerprint") == fingerprint}
    pending = [t for t in tasks if t.task_id not in done]
    log(
        f"reelmill curate: {len(uris)} videos in {len(tasks)} tasks; {len(done)} done already, {len(pending)} to run"
    )

    fresh: list[dict] = []
    ray_started = time.perf_counter()
    with ray_session(num_cpus) as ray_info:
        ray_start_s = time.perf_counter() - ray_started
        if pending:
            ds = ray.data.from_items(
                [{"task": pickle.dumps(t)} for t in pending], override_num_blocks=len(pending)
            )
            ds = ds.map(functools.partial(_split_row, cfg=cfg), num_cpus=cfg.resources.split_cpus)
            ds = ds.map(
                functools.partial(_write_row, out=output, cfg=cfg, fingerprint=fingerprint),
                num_cpus=cfg.resources.write_cpus,
            )
            for row in ds.iter_rows():
                fresh.append(json.loads(row["summary"]))
    wall = time.perf_counter() - started

    markers = layout.completed_markers()
    counts = aggregate([markers[t.task_id] for t in tasks if t.task_id in markers])
    seconds_now = sum(s["seconds_in"] for s in fresh)
    run = {
        "job": "curate",
        "command": sys.argv,
        "output": output,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": spec["config"],
        "config_fingerprint": fingerprint,
        "versions": versions(),
        "ray": ray_info,
        "tasks": {"total": len(tasks), "run_now": len(fresh), "skipped_done": len(done)},
        "counts": counts,
        "timings": {
            "wall_s": wall,
            "ray_start_s": ray_start_s,
            "split_and_write_task_s": sum(s["processing_s"] for s in fresh),
        },
        "throughput": {
            "video_s_in": seconds_now,
            "video_s_per_wall_s": seconds_now / wall if wall else 0.0,
            "clips_per_s": sum(s["clips"] for s in fresh) / wall if wall else 0.0,
        },
        "models": None,
    }
    storage.write_bytes(layout.run_json, json.dumps(run, indent=1).encode())
    log(summary_line(counts, wall, output))
    return run
