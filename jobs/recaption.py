"""`reelmill recaption`: caption the clips of existing webdataset shards with another model or prompt.

Input shards may be ours (a `curate` or `recaption` OUT) or anyone's with a video member per sample
(`KEY.mp4`) and optionally `KEY.json`. Every sample keeps its key and all its members; `KEY.json`
keeps every field and gains the new `caption` (the one it replaces moves to `caption_prev`) and
`caption_metrics`; `KEY.txt` becomes the new training caption. Output, manifests and resume work
as in `curate`: tasks of input shards, completion markers, a refusal to resume under another config.

The Ray Data pipeline, one row per task: read the shards and prepare caption frames (CPU tasks)
-> the VLM (actor pool) -> write the shards, manifest parts and marker (CPU tasks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import pickle
import sys
import tarfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime

import ray

from captioning.captioner import CaptionOutcome
from curation import config as config_lib
from curation import ffmpeg_tools, storage
from curation.inputs import Task, check_subset, expand_input_shards, in_sample, make_tasks
from curation.layout import OutputLayout
from curation.record import RECAPTION_SCHEMA, SHARD_SCHEMA, flatten_record
from curation.shards import TaskShardWriter, list_keys, member, read_samples, video_member
from curation.writer import clear_task, parquet_bytes
from jobs.captioning_stage import add_caption_actors, caption_report, check_captioning, prep_columns
from jobs.curate import prepare_output
from jobs.job_configs import NOT_IN_FINGERPRINT, RecaptionConfig
from jobs.ray_runtime import fit_actor_cpus, ray_session
from jobs.report import report_after_job
from jobs.run_info import versions


def plan_quotas(uris: list[str], limit: int | None, fraction: float, seed: int) -> dict[str, int | None]:
    """How many selected samples each shard contributes: all (None) without `--limit`; with it, the
    first `limit` selected samples in shard order (shards past the limit get 0, and are not read)."""
    if limit is None:
        return dict.fromkeys(uris)
    quotas, left = {}, limit
    for uri in uris:
        if left == 0:
            quotas[uri] = 0
            continue
        selected = sum(in_sample(key, fraction, seed) for key in list_keys(uri))
        quotas[uri] = min(selected, left)
        left -= quotas[uri]
    return quotas


def _read_row(row: dict, cfg: RecaptionConfig, quotas: dict, fraction: float, seed: int) -> dict:
    """Read a task's shards, pick the selected samples and prepare their frames for the VLM."""
    task: Task = pickle.loads(row["task"])
    shard_rows, samples = [], []
    for uri in task.uris:
        info = {"uri": uri, "task_id": task.task_id, "status": "ok"}
        try:
            every = read_samples(uri)
        except (tarfile.TarError, OSError, ValueError, EOFError) as exc:  # a broken or missing shard
            shard_rows.append(info | {"status": "error", "error": f"unreadable: {exc}"})
            continue
        chosen = [s for s in every if in_sample(s["__key__"], fraction, seed)][: quotas[uri]]
        shard_rows.append(info | {"samples": len(every), "selected": len(chosen)})
        samples += [(uri, s) for s in chosen]
    clips = [(str(i), s[m]) for i, (_, s) in enumerate(samples) if (m := video_member(s))]
    return {
        "task_id": task.task_id,
        "samples": pickle.dumps(samples),
        "shards": pickle.dumps(shard_rows),
        **prep_columns(clips, cfg.captioning),
    }


def _load_record(sample: dict) -> tuple[dict, str | None]:
    """The sample's JSON record (empty when it has none), and why it could not be read, if it could not."""
    name = member(sample, "json")
    if name is None:
        return {}, None
    try:
        record = json.loads(sample[name])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"KEY.json unreadable ({exc}); a new one replaces it"
    return (
        (record, None)
        if isinstance(record, dict)
        else ({}, "KEY.json is not an object; a new one replaces it")
    )


def _previous_caption(record: dict, sample: dict) -> dict | None:
    if record.get("caption"):
        return record["caption"]
    txt = member(sample, "txt")
    return {"text": sample[txt].decode("utf-8", "replace")} if txt else None


def recaption_sample(
    sample: dict, outcome: CaptionOutcome | None, on_failure: str
) -> tuple[dict, dict, bool]:
    """(members to write, the updated record, kept) for one sample; members keep their names and order."""
    record, problem = _load_record(sample)
    errors = list(record.get("errors") or [])
    if problem:
        errors.append({"stage": "recaption", "message": problem})
    kept = record.get("kept", True) is not False
    if outcome is None:
        errors.append({"stage": "recaption", "message": "no video member (mp4, webm, mkv, mov, avi)"})
    elif outcome.caption is not None:
        previous = _previous_caption(record, sample)
        if previous is not None:
            record["caption_prev"] = previous
        record["caption"], record["caption_metrics"] = outcome.caption, outcome.metrics
    else:
        errors.append(outcome.error())
        if on_failure == "drop":
            kept = False
            record["drop_reason"] = "caption_failed"
    record["errors"] = errors
    record["kept"] = kept
    members = {k: v for k, v in sample.items() if not k.startswith("__")}
    txt = member(members, "txt") or "txt"
    if outcome is not None and outcome.caption is not None:
        members[txt] = outcome.text.encode()
    return members, record, kept


def _write_row(row: dict, out: str, cfg: RecaptionConfig, fingerprint: str) -> dict:
    layout, limits = OutputLayout(out), cfg.shards
    samples = pickle.loads(row["samples"])
    outcomes = {o.key: o for o in pickle.loads(row["outcomes"])}
    task_id = row["task_id"]
    clear_task(layout, task_id)
    rows, drops = [], Counter()
    results = defaultdict(Counter)  # input shard -> captioned / failed
    with contextlib.ExitStack() as stack:
        kept_writer = stack.enter_context(
            TaskShardWriter(layout.shards, task_id, limits.max_clips, limits.max_bytes)
        )
        dropped_writer = None
        if limits.keep_dropped:
            dropped_writer = stack.enter_context(
                TaskShardWriter(layout.dropped, task_id, limits.max_clips, limits.max_bytes)
            )
        for i, (uri, sample) in enumerate(samples):
            outcome = outcomes.get(str(i))
            members, record, kept = recaption_sample(sample, outcome, cfg.captioning.on_failure)
            if outcome is not None:
                results[uri]["captioned" if outcome.caption is not None else "failed"] += 1
            key = sample["__key__"]
            target = kept_writer if kept else dropped_writer
            record["shard"] = None
            if target is not None:
                json_name = member(members, "json") or "json"
                members[json_name] = b""  # holds the json's place in the member order until it is made
                # the record names its own shard, so the part is chosen before the json is made
                record["shard"] = target.place(sum(len(v) for v in members.values()))
                members[json_name] = json.dumps(record, sort_keys=True).encode()
                target.write(key, members)
            if not kept:
                drops[record.get("drop_reason") or "dropped"] += 1
            rows.append(
                flatten_record(record)
                | {"clip_id": record.get("clip_id", key), "key": key, "input_shard": uri}
            )
    shard_rows = pickle.loads(row["shards"])
    for info in shard_rows:
        info["captioned"], info["failed"] = results[info["uri"]]["captioned"], results[info["uri"]]["failed"]
    for directory, table_rows, schema in (
        (layout.shards_manifest, shard_rows, SHARD_SCHEMA),
        (layout.clips_manifest, rows, RECAPTION_SCHEMA),
    ):
        storage.write_bytes(layout.manifest_part(directory, task_id), parquet_bytes(table_rows, schema))
    stats = pickle.loads(row["caption_stats"])
    summary = {
        "task_id": task_id,
        "shards_in": len(shard_rows),
        "shard_errors": sum(r["status"] != "ok" for r in shard_rows),
        "samples": sum(r.get("samples") or 0 for r in shard_rows),
        "selected": len(samples),
        "captioned": stats["captioned"],
        "caption_failed": sum(stats["failed"].values()),
        "kept": sum(r["kept"] for r in rows),
        "drop_reasons": dict(drops),
        "shards": kept_writer.written,
        "captioning": stats,
    }
    storage.write_bytes(
        layout.marker(task_id), json.dumps({**summary, "run_fingerprint": fingerprint}).encode()
    )
    return {"task_id": task_id, "summary": json.dumps(summary)}


def aggregate(summaries: list[dict]) -> dict:
    """Totals over task summaries (from markers, so a resumed run counts every task)."""
    drops = Counter()
    for s in summaries:
        drops.update(s["drop_reasons"])
    keys = ("shards_in", "shard_errors", "samples", "selected", "captioned", "caption_failed", "kept")
    total = {k: sum(s[k] for s in summaries) for k in keys}
    total["drop_reasons"] = dict(sorted(drops.items()))
    total["shards"] = sum(len(s["shards"]) for s in summaries)
    return total


def run_recaption(
    inputs: list[str],
    output: str,
    cfg: RecaptionConfig,
    overwrite: bool = False,
    num_cpus: int | None = None,
    limit: int | None = None,
    sample: float | None = None,
    log=print,
    models: str | None = None,
) -> dict:
    """Run the whole recaption job; returns what it writes to run.json.

    `limit` captions only the first N selected samples, `sample` a deterministic fraction of the
    samples (by key); only those are written, so a subset can be looked at before the full run.
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    ffmpeg_tools.require_binaries()
    check_subset(sample, limit)
    if not cfg.captioning.enabled:
        raise config_lib.ConfigError(
            "captioning.enabled: recaption needs captioning; it cannot be false here"
        )
    uris = expand_input_shards(inputs, output)
    layout = OutputLayout(output)
    check_captioning(cfg.captioning)
    fraction, seed = sample or 1.0, cfg.captioning.vlm.seed
    tasks = make_tasks(uris, cfg.input.shards_per_task)
    fingerprint = config_lib.fingerprint(cfg, ignore=NOT_IN_FINGERPRINT)
    selection = {"sample": sample, "limit": limit}
    spec = {
        "config": config_lib.to_dict(cfg),
        "config_fingerprint": fingerprint,
        "inputs_fingerprint": hashlib.sha256(json.dumps([uris, selection]).encode()).hexdigest()[:16],
        "num_inputs": len(uris),
        "selection": selection,
    }
    prepare_output(layout, spec, overwrite)
    quotas = plan_quotas(uris, limit, fraction, seed)
    tasks = [t for t in tasks if any(quotas[u] != 0 for u in t.uris)]
    done = {tid for tid, m in layout.completed_markers().items() if m.get("run_fingerprint") == fingerprint}
    pending = [t for t in tasks if t.task_id not in done]
    log(
        f"reelmill recaption: {len(uris)} shards in {len(tasks)} tasks; {len(done)} done already, "
        f"{len(pending)} to run"
    )
    fresh: list[dict] = []
    with ray_session(num_cpus) as ray_info:
        if pending:
            ds = ray.data.from_items(
                [{"task": pickle.dumps(t)} for t in pending], override_num_blocks=len(pending)
            )
            ds = ds.map(
                functools.partial(_read_row, cfg=cfg, quotas=quotas, fraction=fraction, seed=seed),
                num_cpus=cfg.read_cpus,
            )
            fitted = fit_actor_cpus(
                {"captioning": (cfg.captioning.cpus, cfg.captioning.actors)}, cfg.read_cpus, ray_info, log
            )
            ds = add_caption_actors(ds, dataclasses.replace(cfg.captioning, cpus=fitted["captioning"]))
            ds = ds.map(
                functools.partial(_write_row, out=output, cfg=cfg, fingerprint=fingerprint),
                num_cpus=cfg.write_cpus,
            )
            fresh = [json.loads(row["summary"]) for row in ds.iter_rows()]
    wall = time.perf_counter() - started
    markers = layout.completed_markers()
    summaries = [markers[t.task_id] for t in tasks if t.task_id in markers]
    counts = aggregate(summaries)
    run = {
        "job": "recaption",
        "command": sys.argv,
        "inputs": inputs,
        "output": output,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": spec["config"],
        "config_fingerprint": fingerprint,
        "selection": selection,
        "versions": versions(),
        "ray": ray_info,
        "tasks": {"total": len(tasks), "run_now": len(fresh), "skipped_done": len(done)},
        "counts": counts,
        "captioning": caption_report(
            cfg.captioning, [s["captioning"] for s in summaries], [s["captioning"] for s in fresh], wall
        ),
        "timings": {"wall_s": wall},
        "models": models or "pretrained",
    }
    storage.write_bytes(layout.run_json, json.dumps(run, indent=1).encode())
    log(
        f"reelmill recaption: {counts['shards_in']} shards ({counts['shard_errors']} unreadable), "
        f"{counts['selected']} of {counts['samples']} samples selected, {counts['captioned']} captioned, "
        f"{counts['caption_failed']} failed, {counts['kept']} written in {counts['shards']} shards, {wall:.1f}s "
        f"-> {output}" + (f" [models: {models}]" if models else "")
    )
    report_after_job(output, cfg.report, log)
    return run
