"""`reelmill curate`: raw videos in, webdataset clip shards and manifests out, on Ray Data.

The Ray Data pipeline has one row per task: a map of CPU tasks runs the split stage (probe, scene
detection, cut and encode), then the scorers (CPU tasks, then the aesthetic actor pool), then the
filters and the caption frames (CPU tasks) and the VLM (an actor pool), and a last map writes the
task's shards, manifest parts and completion marker. Completed tasks are skipped on a rerun; the
run refuses to resume under another config.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import pickle
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import ray

from captioning.stage import apply_to_clip
from curation import config as config_lib
from curation import ffmpeg_tools, storage
from curation.filters import ClipFilter, rule_reasons
from curation.inputs import Task, check_subset, expand_inputs, in_sample, make_tasks
from curation.layout import OutputLayout
from curation.quarantine import (
    TRANSIENT_EXHAUSTED,
    TransientError,
    describe,
    drop_clip,
    internal_error_row,
    is_transient,
)
from curation.record import VIDEO_SCHEMA
from curation.scoring_stage import CpuScoringStage
from curation.splitter import ClipSplitter, TaskResult
from curation.writer import TaskWriter, apply_filters, clear_task, parquet_bytes
from jobs.captioning_stage import add_caption_actors, caption_report, check_captioning, prep_columns
from jobs.job_configs import NOT_IN_FINGERPRINT, CurateJobConfig
from jobs.outcomes import error_summary, failure_note, finished, lost_tasks
from jobs.ray_runtime import (
    actor_retry_args,
    fit_actor_cpus,
    keep_going_on_failed_tasks,
    ray_session,
    retry_args_accepted,
    task_retry_args,
)
from jobs.report import report_after_job
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
                f"{layout.root} holds a run over other inputs ({previous['num_inputs']} inputs, now "
                f"{spec['num_inputs']}); pass --overwrite to start over, or use another --output"
            )
        if previous["config_fingerprint"] != spec["config_fingerprint"]:
            changes = "; ".join(_diff(previous["config"], spec["config"]))
            raise ResumeRefused(
                f"{layout.root} holds a run made with another config ({changes}); "
                "pass --overwrite to start over, or use another --output"
            )
    storage.write_bytes(layout.spec, json.dumps(spec, indent=1, sort_keys=True).encode())


def _quarantined_task(row: dict, exc: Exception, stage: str) -> dict:
    """The row a stage hands on when it failed on a whole task (a bug of ours): every clip of the task
    (or, before the split, every video) is recorded as `internal_error`, and the pipeline goes on."""
    if "result" in row:
        result: TaskResult = pickle.loads(row["result"])
        for record in result.clips:
            if record.kept:
                drop_clip(record, exc, stage)
    else:
        task: Task = pickle.loads(row["task"])
        error = {"status": "error", **internal_error_row(exc, stage)}
        result = TaskResult(
            task.task_id, videos=[{"uri": u, "task_id": task.task_id, **error} for u in task.uris]
        )
    return {"task_id": result.task_id, "result": pickle.dumps(result)}


def _guarded(stage: str, fallback=_quarantined_task):
    """Run a row function so that no exception ends the job: a transient one is raised as
    `TransientError` (Ray starts the task again, `resources.task_retries` times), anything else
    becomes the stage's `fallback` row."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs) -> dict:  # (row, ...) or, for an actor's method, (self, row)
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if is_transient(exc):
                    raise TransientError(f"{stage}: {describe(exc)}") from exc
                return fallback(args[-1], exc, stage)

        return run

    return wrap


@_guarded("split")
def _split_row(row: dict, cfg: CurateJobConfig) -> dict:
    task: Task = pickle.loads(row["task"])
    # the whole task travels as one pickled value: clip records are nested and sparsely filled,
    # which Arrow would otherwise have to infer (and reconcile) block by block
    return {"task_id": task.task_id, "result": pickle.dumps(ClipSplitter(cfg).run(task))}


@_guarded("scoring")
def _cpu_score_row(row: dict, cfg: CurateJobConfig) -> dict:
    result = CpuScoringStage(cfg).run(pickle.loads(row["result"]))
    return {"task_id": row["task_id"], "result": pickle.dumps(result)}


class _AestheticActor:
    """Ray Data actor: the aesthetic models are loaded once, then score task after task."""

    def __init__(self, cfg: CurateJobConfig):
        from curation.scoring_stage import AestheticStage

        self.stage = AestheticStage(cfg)

    def __call__(self, batch: dict) -> dict:
        rows = [
            self._score_row({"task_id": task_id, "result": blob})
            for task_id, blob in zip(batch["task_id"], batch["result"], strict=True)
        ]
        return {"task_id": [r["task_id"] for r in rows], "result": [r["result"] for r in rows]}

    @_guarded("aesthetic")
    def _score_row(self, row: dict) -> dict:
        return {
            "task_id": row["task_id"],
            "result": pickle.dumps(self.stage.run(pickle.loads(row["result"]))),
        }


def _unprepared(row: dict, exc: Exception, stage: str) -> dict:
    """`_caption_prep_row`'s row after a bug of ours: the task's clips are quarantined, none captioned."""
    return _quarantined_task(row, exc, stage) | {"prepared": pickle.dumps([]), "failed": pickle.dumps([])}


@_guarded("caption frames", fallback=_unprepared)
def _caption_prep_row(row: dict, cfg: CurateJobConfig) -> dict:
    """Filter the task's clips, then decode the kept ones for the VLM (CPU, ahead of the model)."""
    result = pickle.loads(row["result"])
    result.samples.clear()  # scored already; nothing downstream reads them
    apply_filters(result, ClipFilter(cfg.filters))
    kept = [
        (r.clip_id, result.media[r.clip_id]["mp4"])
        for r in result.clips
        if r.kept and r.clip_id in result.media
    ]
    return {"task_id": row["task_id"], "result": pickle.dumps(result), **prep_columns(kept, cfg.captioning)}


def _unwritten(row: dict, exc: Exception, stage: str) -> dict:
    """`_write_row`'s row after a bug of ours: the task has no marker; the driver records it."""
    return {
        "task_id": row["task_id"],
        "summary": json.dumps({"task_id": row["task_id"], "failed": describe(exc)}),
    }


@_guarded("write", fallback=_unwritten)
def _write_row(row: dict, out: str, cfg: CurateJobConfig, fingerprint: str) -> dict:
    result = pickle.loads(row["result"])
    result.samples.clear()  # scored already; nothing downstream reads them
    extra = {}
    if "outcomes" in row:
        records = {r.clip_id: r for r in result.clips}
        for outcome in pickle.loads(row["outcomes"]):
            record = records[outcome.key]
            apply_to_clip(record, result.media[record.clip_id], outcome, cfg.captioning.on_failure)
        extra["captioning"] = pickle.loads(row["caption_stats"])
    writer = TaskWriter(out, cfg, fingerprint)
    return {"task_id": row["task_id"], "summary": json.dumps(writer.run(result, extra))}


def check_models(cfg: CurateJobConfig) -> None:
    """Fail before any work starts when a model the config asks for cannot be found."""
    aesthetic = cfg.scoring.aesthetic
    if aesthetic.enabled:
        _check_aesthetic(cfg)
    check_captioning(cfg.captioning)


def _check_aesthetic(cfg: CurateJobConfig) -> None:
    aesthetic = cfg.scoring.aesthetic
    if not aesthetic.head_weights:
        raise config_lib.ConfigError(
            "scoring.aesthetic.head_weights is not set: point it at the LAION aesthetic head "
            "(sac+logos+ava1-l14-linearMSE.pth from christophschuhmann/improved-aesthetic-predictor), "
            "or pass --set scoring.aesthetic.enabled=false"
        )
    for key in ("head_weights", "clip_model_config"):
        path = getattr(aesthetic, key)
        if path and not storage.exists(path):
            raise config_lib.ConfigError(f"scoring.aesthetic.{key}: {path} does not exist")


def build_pipeline(ds, output: str, cfg: CurateJobConfig, fingerprint: str):
    """The curate pipeline on Ray Data, one row per task: split -> score -> caption -> write.

    The aesthetic actors reserve memory (`resources.aesthetic_memory_gb`) and the CPU stages do
    not; besides placing the model, that keeps Ray Data from fusing the split into the actor pool,
    where, with as many actors as model copies, the video work would run one task at a time.
    """
    with retry_args_accepted():
        return _build_pipeline(ds, output, cfg, fingerprint)


def _build_pipeline(ds, output: str, cfg: CurateJobConfig, fingerprint: str):
    res, scoring = cfg.resources, cfg.scoring
    task_args = task_retry_args(res.task_retries)
    memory = int(res.task_memory_gb * 2**30)
    ds = ds.map(functools.partial(_split_row, cfg=cfg), num_cpus=res.split_cpus, memory=memory, **task_args)
    if scoring.motion.enabled or scoring.quality.enabled:
        ds = ds.map(
            functools.partial(_cpu_score_row, cfg=cfg), num_cpus=res.score_cpus, memory=memory, **task_args
        )
    if scoring.aesthetic.enabled:
        ds = ds.map_batches(
            _AestheticActor,
            fn_constructor_kwargs={"cfg": cfg},
            batch_size=1,  # a row is a whole task: many clips, batched inside the scorer
            compute=ray.data.ActorPoolStrategy(size=res.aesthetic_actors),
            num_cpus=res.aesthetic_cpus,
            num_gpus=scoring.aesthetic.num_gpus,
            memory=int(res.aesthetic_memory_gb * 2**30),
            **actor_retry_args(res.task_retries),
        )
    if cfg.captioning.enabled:
        ds = ds.map(
            functools.partial(_caption_prep_row, cfg=cfg), num_cpus=cfg.captioning.prep_cpus, **task_args
        )
        ds = add_caption_actors(ds, cfg.captioning, actor_retry_args(res.task_retries))
    return ds.map(
        functools.partial(_write_row, out=output, cfg=cfg, fingerprint=fingerprint),
        num_cpus=res.write_cpus,
        **task_args,
    )


def _fit_to_session(cfg: CurateJobConfig, session: dict, log) -> CurateJobConfig:
    """The config with actor CPU reservations that leave room for the split tasks on this Ray."""
    res, pools = cfg.resources, {}
    if cfg.scoring.aesthetic.enabled:
        pools["aesthetic"] = (res.aesthetic_cpus, res.aesthetic_actors)
    if cfg.captioning.enabled:
        pools["captioning"] = (cfg.captioning.cpus, cfg.captioning.actors)
    fitted = fit_actor_cpus(pools, res.split_cpus, session, log)
    cfg = copy.deepcopy(cfg)
    cfg.resources.aesthetic_cpus = fitted.get("aesthetic", res.aesthetic_cpus)
    cfg.captioning.cpus = fitted.get("captioning", cfg.captioning.cpus)
    return cfg


def aggregate(summaries: list[dict]) -> dict:
    """Totals over task summaries (from markers, so a resumed run counts every task)."""
    errors, drops = Counter(), Counter()
    for s in summaries:
        errors.update(s["video_errors"])
        drops.update(s["drop_reasons"])
    keys = ("videos", "videos_ok", "shots", "clips", "clips_kept", "internal_errors", "transient_exhausted")
    total = {k: sum(s.get(k, 0) for s in summaries) for k in keys}
    total["clips_dropped"] = total["clips"] - total["clips_kept"]
    total["video_errors"] = dict(sorted(errors.items()))
    total["drop_reasons"] = dict(sorted(drops.items()))
    total["hours_in"] = sum(s["seconds_in"] for s in summaries) / 3600
    total["hours_kept"] = sum(s["seconds_kept"] for s in summaries) / 3600
    total["shards"] = sum(len(s["shards"]) for s in summaries)
    return total


def score_distributions(layout: OutputLayout) -> dict[str, dict]:
    """Per score over every scored candidate clip: count, min, percentiles, max (for run.json)."""
    table = layout.read_manifest(layout.clips_manifest)
    out = {}
    if table is None:
        return out
    for name in (n for n in table.column_names if n.startswith("scores.")):
        values = np.array([v for v in table.column(name).to_pylist() if v is not None], dtype=np.float64)
        if len(values):
            pct = np.percentile(values, [5, 25, 50, 75, 95])
            out[name.removeprefix("scores.")] = {
                "count": int(len(values)), "min": float(values.min()),
                **{f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95), pct, strict=True)},
                "max": float(values.max()),
            }  # fmt: skip
    return out


def rule_drops(cfg: CurateJobConfig, drop_reasons: dict[str, int]) -> dict[str, int]:
    """Clips dropped by each configured filter rule, in rule order (zeros included)."""
    return {
        reason: drop_reasons.get(reason, 0) for rule in cfg.filters.rules for reason in rule_reasons(rule)
    }


def record_lost_task(layout: OutputLayout, task: Task, why: str) -> dict:
    """A task that failed for good (its worker died every time, or our writer failed on it): its videos
    get `transient_exhausted` rows in the videos manifest and it gets no marker, so it counts, is seen,
    and a rerun tries it again. Returns the task's summary for run.json's counts."""
    rows = [
        {
            "uri": u,
            "task_id": task.task_id,
            "status": "error",
            "error_code": TRANSIENT_EXHAUSTED,
            "error": why,
        }
        for u in task.uris
    ]
    try:
        clear_task(layout, task.task_id)
        storage.write_bytes(
            layout.manifest_part(layout.videos_manifest, task.task_id), parquet_bytes(rows, VIDEO_SCHEMA)
        )
    except OSError as exc:  # the output itself is failing (full, unreachable): the count still stands
        print(f"reelmill curate: task {task.task_id}: its rows could not be written: {exc}", file=sys.stderr)
    return {
        "task_id": task.task_id, "videos": len(rows), "videos_ok": 0, "shots": 0, "clips": 0, "clips_kept": 0,
        "internal_errors": 0, "transient_exhausted": len(rows), "seconds_in": 0.0, "seconds_kept": 0.0,
        "video_errors": {TRANSIENT_EXHAUSTED: len(rows)}, "drop_reasons": {}, "shards": [],
    }  # fmt: skip


def summary_line(counts: dict, wall_s: float, out: str, models: str | None = None) -> str:
    line = (
        f"reelmill curate: {counts['videos']} videos ({counts['videos_ok']} ok, "
        f"{counts['videos'] - counts['videos_ok']} error), {counts['clips']} clips "
        f"({counts['clips_kept']} kept, {counts['clips_dropped']} dropped) in {counts['shards']} shards, "
        f"{wall_s:.1f}s -> {out}"
    ) + failure_note(counts)
    return f"{line} [models: {models}]" if models else line


def run_curate(
    inputs: list[str],
    output: str,
    cfg: CurateJobConfig,
    overwrite: bool = False,
    num_cpus: int | None = None,
    log=print,
    models: str | None = None,
    limit: int | None = None,
    sample: float | None = None,
) -> dict:
    """Run the whole curate job; returns what it writes to run.json.

    `sample` keeps a deterministic fraction of the input videos (by URI) and `limit` the first N of
    them, to look at a subset's clips, captions and report before paying for the whole run.

    `models` labels the run's model weights in run.json and the summary (the demo passes
    "random-weights" when it had to stand in tiny random models for missing ones).
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    ffmpeg_tools.require_binaries()
    check_subset(sample, limit)
    uris = [u for u in expand_inputs(inputs, cfg.input.extensions) if in_sample(u, sample or 1.0)][:limit]
    check_models(cfg)
    tasks = make_tasks(uris, cfg.input.videos_per_task)
    layout = OutputLayout(output)
    fingerprint = config_lib.fingerprint(cfg, ignore=NOT_IN_FINGERPRINT)
    spec = {
        "config": config_lib.to_dict(cfg),
        "config_fingerprint": fingerprint,
        "inputs_fingerprint": hashlib.sha256("\n".join(uris).encode()).hexdigest()[:16],
        "num_inputs": len(uris),
        "selection": {"sample": sample, "limit": limit},
    }
    prepare_output(layout, spec, overwrite)
    done = {tid for tid, m in layout.completed_markers().items() if finished(m, fingerprint)}
    pending = [t for t in tasks if t.task_id not in done]
    log(
        f"reelmill curate: {len(uris)} videos in {len(tasks)} tasks; {len(done)} done already, {len(pending)} to run"
    )
    keep_going_on_failed_tasks()

    fresh: list[dict] = []
    ray_started = time.perf_counter()
    with ray_session(num_cpus) as ray_info:
        ray_start_s = time.perf_counter() - ray_started
        if pending:
            ds = ray.data.from_items(
                [{"task": pickle.dumps(t)} for t in pending], override_num_blocks=len(pending)
            )
            for row in build_pipeline(
                ds, output, _fit_to_session(cfg, ray_info, log), fingerprint
            ).iter_rows():
                fresh.append(json.loads(row["summary"]))
    failed = {s["task_id"]: s["failed"] for s in fresh if "failed" in s}
    fresh = [s for s in fresh if "failed" not in s]
    returned = {s["task_id"] for s in fresh}
    lost = {
        t.task_id: record_lost_task(
            layout, t, failed.get(t.task_id, f"the task failed {cfg.resources.task_retries + 1} times")
        )
        for t in lost_tasks(pending, returned)
    }
    wall = time.perf_counter() - started

    markers = layout.completed_markers()
    counts = aggregate([markers[t.task_id] for t in tasks if t.task_id in markers] + list(lost.values()))
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
        "tasks": {"total": len(tasks), "run_now": len(fresh), "skipped_done": len(done), "failed": len(lost)},
        "counts": counts,
        "errors": error_summary(counts["videos"], counts["videos"] - counts["videos_ok"], counts),
        "scores": score_distributions(layout),
        "filters": {"mode": cfg.filters.mode, "drops_by_rule": rule_drops(cfg, counts["drop_reasons"])},
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
        "captioning": caption_report(
            cfg.captioning,
            [m["captioning"] for t in tasks if "captioning" in (m := markers.get(t.task_id, {}))],
            [s["captioning"] for s in fresh if "captioning" in s],
            wall,
        ),
        "models": models
        or ("pretrained" if cfg.scoring.aesthetic.enabled or cfg.captioning.enabled else "none"),
    }
    storage.write_bytes(layout.run_json, json.dumps(run, indent=1).encode())
    log(summary_line(counts, wall, output, models))
    report_after_job(output, cfg.report, log)
    return run
