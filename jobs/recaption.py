"""`reelmill recaption`: caption the clips of existing webdataset shards with another model or prompt.

Input shards may be ours (a `curate` or `recaption` OUT) or anyone's with a video member per sample
(`KEY.mp4`) and optionally `KEY.json`. Every sample keeps its key and all its members; `KEY.json`
keeps every field and gains the new `caption` (the one it replaces moves to `caption_prev`) and
`caption_metrics`; `KEY.txt` becomes the new training caption. Output, manifests and resume work
as in `curate`: tasks of input shards, completion markers, a refusal to resume under another config.

Foreign shards are untrusted input, and one bad item never ends the job: a shard that cannot be read
(missing, not a tar, compressed when `io.allow_compressed` is false) is a row in `manifest/shards`
with its reason, after the samples before the damage; a sample with a member over the `io` limits,
or whose processing raised (a bug of ours: `internal_error`, with a traceback), is a row in
`manifest/clips` with its `error_code` and is not written; a `KEY.json` with wrongly typed fields is
written with those fields removed, one reason each in its `errors` and the row's `invalid_record`.
Keys are written made safe (`curation.shards.safe_key`); a row keeps the original as `input_key`.
Transient failures (timeouts, a full disk) are not recorded: they end the Ray task, which is retried,
and leave it without a completion marker.

With `captioning.alignment.enabled`, every new caption gets fresh `caption_metrics.alignment`
(`captioning.alignment_stage`; the baseline from the other captioned samples of the task); the old
caption's metrics, alignment included, go with it.

The Ray Data pipeline, one row per task: read the shards and prepare caption frames (CPU tasks)
-> the VLM (actor pool) -> [caption alignment (actor pool)] -> write the shards, manifest parts and
marker (CPU tasks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import pickle
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import ray

from captioning.alignment_stage import (
    FRAMES_COLUMN,
    STATS_COLUMN,
    add_alignment_actors,
    alignment_frames,
    check_alignment_model,
)
from captioning.alignment_stage import STAGE as ALIGNMENT_STAGE
from captioning.captioner import CaptionOutcome
from captioning.prompt_hints import ClipHints
from captioning.stage import CaptionPrep
from curation import config as config_lib
from curation import ffmpeg_tools, storage
from curation.curate_config import IOConfig
from curation.inputs import Task, check_subset, expand_input_shards, in_sample, make_tasks
from curation.layout import OutputLayout
from curation.quarantine import INTERNAL_ERROR, internal_error_row, is_transient, retry_transient
from curation.record import RECAPTION_SCHEMA, SHARD_SCHEMA, manifest_row
from curation.record_check import check_record_json
from curation.resume import log_redone, trusted_markers
from curation.safe_tar import TOO_LARGE
from curation.shard_index import write_shard_index
from curation.shards import (
    TaskShardWriter,
    iter_keys,
    iter_samples,
    member,
    raise_if_transient,
    safe_key,
    shard_failure,
    video_member,
)
from curation.writer import clear_task, parquet_bytes, shard_index_entries, shard_outputs, write_output
from jobs.captioning_stage import add_caption_actors, caption_report, check_captioning
from jobs.curate import prepare_output
from jobs.job_configs import NOT_IN_FINGERPRINT, RecaptionConfig
from jobs.outcomes import error_summary, failure_note, io_report, lost_tasks, tasks_section
from jobs.output_lock import job_output
from jobs.progress import TaskProgress, tally
from jobs.ray_runtime import (
    actor_retry_args,
    fit_actor_cpus,
    keep_going_on_failed_tasks,
    native_notices_hidden,
    quiet_ray_data,
    ray_session,
    retry_args_accepted,
    run_where_files_are_read,
    task_retry_args,
)
from jobs.report import report_after_job
from jobs.run_info import models_note, recaption_models_label, versions

QUARANTINED = "__quarantined__"
"""Set on a sample whose preparation raised: the manifest fields of its internal_error row."""

MAX_RETRIES = 3
"""Ray retries of a task that failed transiently (the row functions raise those as `TransientError`;
anything else about one item is a row) or whose worker died."""


def _count_selected(uri: str, fraction: float, seed: int, allow_compressed: bool) -> tuple[int, bool]:
    """(selected keys of a shard, whether it could be listed to its end). A shard that cannot counts
    the keys before the damage; reading it later records the damage as the shard's row."""
    count = 0
    try:
        for key in iter_keys(uri, allow_compressed):
            count += in_sample(key, fraction, seed)
    except Exception as exc:  # noqa: BLE001 (whatever it is, _read_row meets it again and records it)
        if is_transient(exc):
            raise
        return count, False
    return count, True


def plan_quotas(
    uris: list[str], limit: int | None, fraction: float, seed: int, allow_compressed: bool = False
) -> tuple[dict[str, int | None], set[str]]:
    """How many selected samples each shard contributes: all (None) without `--limit`; with it, the
    first `limit` selected samples in shard order (shards past the limit get 0, and are not read).
    Also the shards that could not be listed to their end: their tasks run even with nothing to
    caption, so that the damage is recorded."""
    if limit is None:
        return dict.fromkeys(uris), set()
    quotas, damaged, left = {}, set(), limit
    for uri in uris:
        if left == 0:
            quotas[uri] = 0
            continue
        selected, whole = retry_transient(
            lambda uri=uri: _count_selected(uri, fraction, seed, allow_compressed), 3, f"listing {uri}"
        )
        if not whole:
            damaged.add(uri)
        quotas[uri] = min(selected, left)
        left -= quotas[uri]
    return quotas, damaged


def _read_shard(
    uri: str, task_id: int, io: IOConfig, quota: int | None, fraction: float, seed: int
) -> tuple[dict, list[dict]]:
    """(the shard's manifest row, its selected samples). Only the selected samples are held; a shard
    that breaks off keeps the samples before the damage and says why in its row."""
    info = {"uri": uri, "task_id": task_id, "status": "ok"}
    seen, chosen = 0, []
    try:
        for sample in iter_samples(uri, io.max_member_bytes, io.max_sample_bytes, io.allow_compressed):
            seen += 1
            if (quota is None or len(chosen) < quota) and in_sample(sample["__key__"], fraction, seed):
                chosen.append(sample)
    except Exception as exc:  # noqa: BLE001 (shard_failure sorts it: transient, input, or ours)
        info |= {"status": "error", **shard_failure(exc, "recaption.read")}
    return info | {"samples": seen, "selected": len(chosen)}, chosen


def _prepare(ident: str, sample: dict, prep: CaptionPrep, prepared: list, failed: list) -> None:
    """Decode one sample's caption frames into `prepared` (or `failed`, when it does not decode).
    A sample with a member over the limits is not captioned; one whose preparation raises is marked
    `QUARANTINED`, so that the rest of the task goes on."""
    video = video_member(sample)
    if video is None or TOO_LARGE in sample:
        return
    try:
        json_name = member(sample, "json")
        record = check_record_json(sample[json_name] if json_name else None).record
        ready, bad = prep.run([(ident, sample[video])], {ident: ClipHints.from_record(record)})
    except Exception as exc:  # noqa: BLE001 (one sample's bug is that sample's row)
        raise_if_transient(exc)
        sample[QUARANTINED] = internal_error_row(exc, "recaption.prepare")
        return
    prepared += ready
    failed += bad


def _read_row(row: dict, cfg: RecaptionConfig, quotas: dict, fraction: float, seed: int) -> dict:
    """Read a task's shards, pick the selected samples and prepare their frames for the VLM."""
    try:
        return _read_task(row, cfg, quotas, fraction, seed)
    except Exception as exc:
        raise_if_transient(exc)  # so that Ray retries the task (see task_retry_args)
        raise


def _read_task(row: dict, cfg: RecaptionConfig, quotas: dict, fraction: float, seed: int) -> dict:
    io_before = storage.io_retries()
    task: Task = pickle.loads(row["task"])
    prep = CaptionPrep(cfg.captioning)
    shard_rows, samples, prepared, failed = [], [], [], []
    for uri in task.uris:
        info, chosen = _read_shard(uri, task.task_id, cfg.io, quotas[uri], fraction, seed)
        shard_rows.append(info)
        for sample in chosen:
            _prepare(str(len(samples)), sample, prep, prepared, failed)
            samples.append((uri, sample))
    row = {
        "task_id": task.task_id,
        "samples": pickle.dumps(samples),
        "shards": pickle.dumps(shard_rows),
        "prepared": pickle.dumps(prepared),
        "failed": pickle.dumps(failed),
        "io_retries": storage.io_retries() - io_before,
    }
    if cfg.captioning.alignment.enabled:  # a few of the caption frames, for the alignment actors
        row[FRAMES_COLUMN] = pickle.dumps(alignment_frames(prepared, cfg.captioning.alignment))
    return row


def _previous_caption(record: dict, sample: dict) -> dict | None:
    if record.get("caption"):
        return record["caption"]
    txt = member(sample, "txt")
    return {"text": sample[txt].decode("utf-8", "replace")} if txt else None


@dataclass
class Recaptioned:
    """One sample after recaptioning: what to write, and what its manifest row says."""

    members: dict[str, bytes]
    """Members to write, names and order as they were."""
    record: dict
    kept: bool
    invalid: list[str]
    """Reasons for the KEY.json fields that were removed."""


def recaption_sample(sample: dict, outcome: CaptionOutcome | None, on_failure: str) -> Recaptioned:
    """The sample with its new caption (or why it has none). Its KEY.json is checked first: wrongly
    typed fields are removed, each with a reason in `errors` (stage `input_record`)."""
    json_name = member(sample, "json")
    checked = check_record_json(sample[json_name] if json_name else None)
    record = checked.record
    errors = list(record.get("errors") or []) + checked.error_entries()
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
    return Recaptioned(members, record, kept, checked.problems)


def _sample_ids(sample: dict, uri: str) -> dict:
    """The manifest's key columns: the key as written, and the input's key when it had to change."""
    key = sample["__key__"]
    written = safe_key(key)
    return {"key": written, "input_key": key if written != key else None, "input_shard": uri}


def _rejected_row(ids: dict, fields: dict) -> dict:
    """The row of a sample that is not written (`fields`: error_code, error, perhaps traceback)."""
    return {
        "clip_id": ids["key"],
        "kept": False,
        "drop_reason": fields["error_code"],
        "errors": [{"stage": "recaption", "message": fields["error"]}],
        **{k: None for k in ("error_code", "error", "traceback")},
        **fields,
        **ids,
    }


class _Writers:
    """A task's kept and (with `shards.keep_dropped`) dropped shard writers."""

    def __init__(self, stack: contextlib.ExitStack, layout: OutputLayout, task_id: int, cfg: RecaptionConfig):
        limits = cfg.shards
        self.kept = stack.enter_context(
            TaskShardWriter(layout.shards, task_id, limits.max_clips, limits.max_bytes)
        )
        self.dropped = None
        if limits.keep_dropped:
            self.dropped = stack.enter_context(
                TaskShardWriter(layout.dropped, task_id, limits.max_clips, limits.max_bytes)
            )

    def write(self, key: str, done: Recaptioned) -> None:
        """Write the sample where it belongs (or nowhere), with its record naming its shard."""
        target = self.kept if done.kept else self.dropped
        record, members = done.record, done.members
        record["shard"] = record["location"] = None
        if target is None:
            return
        json_name = member(members, "json") or "json"
        members[json_name] = b""  # holds the json's place in the member order until it is made
        # the record names its own shard, so the part is chosen before the json is made
        record["shard"] = target.place(sum(len(v) for v in members.values()))
        record["location"] = "shards" if target is self.kept else "dropped"
        members[json_name] = json.dumps(record, sort_keys=True).encode()
        target.write(key, members)


def _sample_row(
    uri: str,
    sample: dict,
    outcome: CaptionOutcome | None,
    writers: _Writers,
    on_failure: str,
    alignment_error: str | None = None,
) -> dict:
    """Recaption and write one sample; returns its manifest row. An input problem found while reading
    is a row, and the sample is not written. A sample the alignment stage failed on (a bug of ours) is
    written with its new caption, without `caption_metrics.alignment`, and counted as internal_error."""
    ids = _sample_ids(sample, uri)
    if QUARANTINED in sample:
        return _rejected_row(ids, sample[QUARANTINED])
    if TOO_LARGE in sample:
        return _rejected_row(ids, {"error_code": "member_too_large", "error": sample[TOO_LARGE]})
    done = recaption_sample(sample, outcome, on_failure)
    error = _outcome_error(outcome)
    if alignment_error is not None:
        done.record["errors"].append({"stage": ALIGNMENT_STAGE, "message": alignment_error})
        error = error if error["error_code"] else {"error_code": INTERNAL_ERROR, "error": alignment_error}
    writers.write(ids["key"], done)
    return manifest_row(done.record) | {
        "clip_id": done.record.get("clip_id") or ids["key"],
        **ids,
        **error,
        "traceback": None,
        "invalid_record": done.invalid or None,
    }


def _outcome_error(outcome: CaptionOutcome | None) -> dict:
    """The row's error columns for what captioning made of the sample: no video, or a bug of ours met
    while captioning it (the captioning stage reports those as a failure, and they count as such)."""
    if outcome is None:
        return {"error_code": "no_video", "error": "no video member (mp4, webm, mkv, mov, avi)"}
    if outcome.caption is None and outcome.failure == INTERNAL_ERROR:
        return {"error_code": INTERNAL_ERROR, "error": outcome.detail}
    return {"error_code": None, "error": None}


def _write_row(row: dict, out: str, cfg: RecaptionConfig, fingerprint: str) -> dict:
    """Write a task's samples, manifest parts and marker."""
    try:
        return _write_task(row, out, cfg, fingerprint)
    except Exception as exc:
        raise_if_transient(exc)  # so that Ray retries the task (see task_retry_args); no marker is left
        raise


def _write_task(row: dict, out: str, cfg: RecaptionConfig, fingerprint: str) -> dict:
    io_before = storage.io_retries()
    layout = OutputLayout(out)
    samples = pickle.loads(row["samples"])
    outcomes = {o.key: o for o in pickle.loads(row["outcomes"])}
    alignment = pickle.loads(row[STATS_COLUMN]) if STATS_COLUMN in row else None
    if alignment is not None:  # the baseline's clip by the key it is written under, not its place in the task
        written = {str(i): safe_key(sample["__key__"]) for i, (_, sample) in enumerate(samples)}
        for outcome in outcomes.values():
            aligned = (outcome.metrics or {}).get("alignment") or {}
            if aligned.get("baseline_clip") is not None:
                aligned["baseline_clip"] = written[aligned["baseline_clip"]]
    task_id = row["task_id"]
    clear_task(layout, task_id)
    rows = []
    results = defaultdict(Counter)  # input shard -> captioned / failed
    with contextlib.ExitStack() as stack:
        writers = _Writers(stack, layout, task_id, cfg)
        for i, (uri, sample) in enumerate(samples):
            outcome = outcomes.get(str(i))
            if outcome is not None:
                results[uri]["captioned" if outcome.caption is not None else "failed"] += 1
            try:
                failed_alignment = (alignment or {}).get("errors", {}).get(str(i))
                on_failure = cfg.captioning.on_failure
                rows.append(_sample_row(uri, sample, outcome, writers, on_failure, failed_alignment))
            except Exception as exc:  # noqa: BLE001 (one sample's bug is that sample's row)
                raise_if_transient(exc)
                fields = internal_error_row(exc, "recaption.write")
                rows.append(_rejected_row(_sample_ids(sample, uri), fields))
    shard_rows = pickle.loads(row["shards"])
    for info in shard_rows:
        info["captioned"], info["failed"] = results[info["uri"]]["captioned"], results[info["uri"]]["failed"]
    outputs = shard_outputs(layout, writers.kept) | (
        shard_outputs(layout, writers.dropped) if writers.dropped else {}
    )
    for directory, table_rows, schema in (
        (layout.shards_manifest, shard_rows, SHARD_SCHEMA),
        (layout.clips_manifest, rows, RECAPTION_SCHEMA),
    ):
        write_output(
            layout, outputs, layout.manifest_part(directory, task_id),
            parquet_bytes(table_rows, schema, fingerprint),
        )  # fmt: skip
    summary = _summary(task_id, shard_rows, rows, len(samples), pickle.loads(row["caption_stats"]))
    if alignment is not None:
        summary["alignment"] = alignment
    summary["shards"] = writers.kept.written
    summary["shard_index"] = shard_index_entries(layout, writers.kept) | (
        shard_index_entries(layout, writers.dropped) if writers.dropped else {}
    )
    summary["outputs"] = outputs
    # the marker comes last, naming every file above with its size and checksum (`curation.resume`)
    storage.write_bytes(
        layout.marker(task_id), json.dumps({**summary, "run_fingerprint": fingerprint}).encode()
    )
    retried = row["io_retries"] + storage.io_retries() - io_before  # for run.json: not the marker's
    return {"task_id": task_id, "summary": json.dumps(summary | {"io_retries": retried})}


def _summary(task_id: int, shard_rows: list[dict], rows: list[dict], selected: int, stats: dict) -> dict:
    """A task's counts, for its marker and run.json."""
    codes = Counter(r["error_code"] for r in rows if r.get("error_code"))
    return {
        "task_id": task_id,
        "shards_in": len(shard_rows),
        "shard_errors": sum(r["status"] != "ok" for r in shard_rows),
        "samples": sum(r.get("samples") or 0 for r in shard_rows),
        "selected": selected,
        "captioned": stats["captioned"],
        "caption_failed": sum(stats["failed"].values()),
        "kept": sum(bool(r["kept"]) for r in rows),
        "drop_reasons": dict(Counter(r.get("drop_reason") or "dropped" for r in rows if not r["kept"])),
        "sample_errors": dict(codes),
        "invalid_records": sum(bool(r.get("invalid_record")) for r in rows),
        "internal_errors": codes[INTERNAL_ERROR]
        + sum(r.get("error_code") == INTERNAL_ERROR for r in shard_rows),
        "captioning": stats,
    }


def aggregate(summaries: list[dict]) -> dict:
    """Totals over task summaries (from markers, so a resumed run counts every task)."""
    drops, codes = Counter(), Counter()
    for s in summaries:
        drops.update(s["drop_reasons"])
        codes.update(s.get("sample_errors", {}))
    keys = ("shards_in", "shard_errors", "samples", "selected", "captioned", "caption_failed", "kept")
    total = {k: sum(s[k] for s in summaries) for k in keys}
    total["drop_reasons"] = dict(sorted(drops.items()))
    total["sample_errors"] = dict(sorted(codes.items()))
    # markers written before these counts existed have none
    total["invalid_records"] = sum(s.get("invalid_records", 0) for s in summaries)
    total["internal_errors"] = sum(s.get("internal_errors", 0) for s in summaries)
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

    run.json's `models` is random-weights when the VLM or the alignment CLIP is a tiny stand-in
    (`curation.model_labels`), or when `models` says so (e.g. the label of the run that made the input).

    The job holds OUT (`jobs.output_lock`) from before it changes anything there until run.json and
    the report are written, so a second job on the same OUT stops before it starts Ray.
    """
    with job_output(output, "recaption", cfg, log):
        return _run_recaption(inputs, output, cfg, overwrite, num_cpus, limit, sample, log, models)


def _run_recaption(inputs, output, cfg, overwrite, num_cpus, limit, sample, log, models) -> dict:
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    ffmpeg_tools.require_binaries()
    check_subset(sample, limit)
    if not cfg.captioning.enabled:
        raise config_lib.ConfigError(
            "captioning.enabled: recaption needs captioning; it cannot be false here"
        )
    io_before = storage.io_retries()
    uris = expand_input_shards(inputs, output)
    layout = OutputLayout(output)
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
    quotas, damaged = plan_quotas(uris, limit, fraction, seed, cfg.io.allow_compressed)
    tasks = [t for t in tasks if any(quotas[u] != 0 or u in damaged for u in t.uris)]
    resume = trusted_markers(output, fingerprint, cfg.resume.verify)
    done = set(resume.done)
    pending = [t for t in tasks if t.task_id not in done]
    redone = log_redone("recaption", resume.redo, {t.task_id for t in pending}, log)
    log(
        f"reelmill recaption: {len(uris)} shards in {len(tasks)} tasks; {len(done)} done already, "
        f"{len(pending)} to run"
    )
    keep_going_on_failed_tasks()
    quiet_ray_data()
    fresh: list[dict] = []
    with ray_session(num_cpus) as ray_info:
        run_where_files_are_read(check_captioning, cfg.captioning, session=ray_info)
        run_where_files_are_read(check_alignment_model, cfg.captioning, session=ray_info)
        models = run_where_files_are_read(recaption_models_label, cfg, models, session=ray_info)
        aligned = cfg.captioning.alignment
        if pending:
            pools = {"captioning": (cfg.captioning.cpus, cfg.captioning.actors)}
            if aligned.enabled:
                pools["alignment"] = (aligned.cpus, aligned.actors)
            fitted = fit_actor_cpus(pools, cfg.read_cpus, ray_info, log)
            ds = ray.data.from_items(
                [{"task": pickle.dumps(t)} for t in pending], override_num_blocks=len(pending)
            )
            read = functools.partial(_read_row, cfg=cfg, quotas=quotas, fraction=fraction, seed=seed)
            write = functools.partial(_write_row, out=output, cfg=cfg, fingerprint=fingerprint)
            captioning = dataclasses.replace(
                cfg.captioning,
                cpus=fitted["captioning"],
                alignment=dataclasses.replace(aligned, cpus=fitted.get("alignment", aligned.cpus)),
            )
            with retry_args_accepted():  # every stage retried on a TransientError or a dead worker
                ds = ds.map(read, num_cpus=cfg.read_cpus, **task_retry_args(MAX_RETRIES))
                ds = add_caption_actors(ds, captioning, actor_retry_args(MAX_RETRIES))
                if aligned.enabled:  # no scoring section here: the CLIP is the alignment section's
                    clip = aligned.clip_config()
                    ds = add_alignment_actors(ds, captioning, clip, actor_retry_args(MAX_RETRIES))
                ds = ds.map(write, num_cpus=cfg.write_cpus, **task_retry_args(MAX_RETRIES))
            progress = TaskProgress(
                "recaption", layout.run_json, len(tasks), (tally("samples", "selected"), tally("written", "kept")),
                done_before=len(done),
                header={"job": "recaption", "command": sys.argv, "inputs": inputs, "output": output,
                        "started_at": started_at, "selection": selection},
            )  # fmt: skip
            with progress, native_notices_hidden():
                for row in ds.iter_rows():  # a row per finished task: its summary
                    fresh.append(json.loads(row["summary"]))
                    progress.task_done(fresh[-1])
    wall = time.perf_counter() - started
    lost = lost_tasks(pending, {s["task_id"] for s in fresh})
    markers = resume.done | {s["task_id"]: s for s in fresh}
    summaries = [markers[t.task_id] for t in tasks if t.task_id in markers]
    counts = aggregate(summaries)
    counts["transient_exhausted"] = sum(len(t.uris) for t in lost)
    run = {
        "job": "recaption",
        "state": "finished",
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
        "tasks": tasks_section(len(tasks), len(fresh), len(done), len(lost), redone),
        "counts": counts,
        "errors": error_summary(
            counts["shards_in"] + counts["transient_exhausted"],
            counts["shard_errors"] + counts["transient_exhausted"],
            counts,
        ),
        "captioning": caption_report(
            cfg.captioning, [s["captioning"] for s in summaries], [s["captioning"] for s in fresh], wall
        ),
        "io": io_report(
            cfg.io, sum(s.get("io_retries", 0) for s in fresh) + storage.io_retries() - io_before
        ),
        "timings": {"wall_s": wall},
        "models": models,
    }
    write_shard_index(layout, summaries, log)
    storage.write_bytes(layout.run_json, json.dumps(run, indent=1).encode())
    log(
        f"reelmill recaption: {counts['shards_in']} shards ({counts['shard_errors']} unreadable), "
        f"{counts['selected']} of {counts['samples']} samples selected, {counts['captioned']} captioned, "
        f"{counts['caption_failed']} failed, {counts['kept']} written in {counts['shards']} shards, "
        f"{counts['invalid_records']} with invalid records, {wall:.1f}s -> {output}"
        + failure_note(counts)
        + models_note(models)
    )
    report_after_job(output, cfg.report, log)
    return run
