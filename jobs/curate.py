"""`reelmill curate`: raw videos in, webdataset clip shards and manifests out, on Ray Data.

The Ray Data pipeline has one row per task: the split stage (probe, scene detection, cut and
encode), the CPU scorers, the aesthetic actor pool, the filters and the caption frames, the VLM (an
actor pool), and the write of the task's shards, manifest parts and completion marker. Stages that
follow each other on CPU run as one Ray task, so with the model stages off a task is one Ray task
from its videos to its marker. Completed tasks are skipped on a rerun; the run refuses to resume
under another config.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import pickle
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow.parquet as pq
import ray

from captioning.alignment_stage import STATS_COLUMN as ALIGNMENT_STATS
from captioning.alignment_stage import (
    add_alignment_actors,
    alignment_frames_row,
    check_alignment_model,
    settle_alignment,
)
from captioning.prompt_hints import ClipHints
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
from curation.resume import log_redone, trusted_markers
from curation.scoring_stage import CpuScoringStage
from curation.shard_index import write_shard_index
from curation.splitter import ClipSplitter, TaskResult
from curation.writer import TaskWriter, apply_filters, clear_task, parquet_bytes
from jobs.attempts import clear_attempts, count_attempts, note_attempt
from jobs.captioning_stage import add_caption_actors, caption_report, check_captioning, prep_columns
from jobs.job_configs import NOT_IN_FINGERPRINT, CurateJobConfig
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
from jobs.run_info import curate_models_label, models_note, versions


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


class NotARun(ResumeRefused):
    """--overwrite was given for an OUT that holds files but no reelmill run."""


def prepare_output(layout: OutputLayout, spec: dict, overwrite: bool) -> None:
    """Start a new run in OUT, or check that a rerun matches the run already there.

    `--overwrite` deletes only the files a run writes (`OutputLayout.OWNED`), and only in an OUT that
    holds a run: OUT may be a directory that also holds the user's own files, or one given by mistake.
    The caller holds OUT's lock (`jobs.output_lock`), which stays."""
    if overwrite:
        if layout.holds_run():
            for uri in layout.owned_files():
                storage.delete(uri)
            for directory in layout.owned_dirs():
                layout.remove_dir_if_empty(directory)
        else:
            held = layout.entries("_state") == ["lock.json"]  # this job's lock is not the user's
            found = [e for e in layout.entries() if not (e == "_state/" and held)]
            if found:
                shown = ", ".join(found[:5]) + (f", ... ({len(found)} entries)" if len(found) > 5 else "")
                raise NotARun(
                    f"{layout.root} is not empty and holds no reelmill run (found: {shown}); --overwrite "
                    "deletes only a run's own files: choose a new or empty directory"
                )
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


def _live(value):
    """A row's `task` or `result` as an object: rows carry them pickled from one Ray task to the next
    (through the object store), and as they are from one stage to the next within a `_chain`."""
    return pickle.loads(value) if isinstance(value, bytes) else value


def _wire(row: dict) -> dict:
    """The row as it leaves a Ray task: a whole task's result travels as one pickled value (clip
    records are nested and sparsely filled, which Arrow would otherwise have to infer, and reconcile,
    block by block)."""
    return {k: pickle.dumps(v) if isinstance(v, Task | TaskResult) else v for k, v in row.items()}


def _quarantined_task(row: dict, exc: Exception, stage: str) -> dict:
    """The row a stage hands on when it failed on a whole task (a bug of ours): every clip of the task
    (or, before the split, every video) is recorded as `internal_error`, and the pipeline goes on."""
    if "result" in row:
        result: TaskResult = _live(row["result"])
        for record in result.clips:
            if record.kept:
                drop_clip(record, exc, stage)
    else:
        task: Task = _live(row["task"])
        error = {"status": "error", **internal_error_row(exc, stage)}
        result = TaskResult(
            task.task_id, videos=[{"uri": u, "task_id": task.task_id, **error} for u in task.uris]
        )
    return {"task_id": result.task_id, "result": pickle.dumps(result)}


def _guarded(stage: str, fallback=_quarantined_task):
    """Run a row function so that no exception ends the job: a transient one is raised as
    `TransientError` (Ray starts the task again, `resources.task_retries` times), anything else
    becomes the stage's `fallback` row. The stage's time is counted to the task's result."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs) -> dict:  # (row, ...) or, for an actor's method, (self, row)
            started, started_unix, io_before = time.perf_counter(), time.time(), storage.io_retries()
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:
                if is_transient(exc):
                    raise TransientError(f"{stage}: {describe(exc)}") from exc
                return fallback(args[-1], exc, stage)
            if isinstance(out.get("result"), TaskResult):
                elapsed, retried = time.perf_counter() - started, storage.io_retries() - io_before
                out["result"].clock(stage, started_unix, elapsed, retried)
            return out

        return run

    return wrap


_PARENT = os.getppid()  # in a Ray worker, the raylet that started it


def _job_gone() -> bool:
    """Whether the Ray that started this worker is gone (the job was killed, its machine lost): the
    worker lives on for a few seconds, and must not start another stage, least of all a write, for a
    job that no longer exists (its rerun may be writing the same task)."""
    return os.getppid() != _PARENT


def _chain(*stages: functools.partial, out: str):
    """One Ray task for consecutive CPU stages: each stage hands its result to the next as it is (no
    pickling, no trip through the object store, no second task to schedule), and keeps its own guard.
    A transient failure in any of them starts the whole chain again. Each start is noted in OUT
    (`jobs.attempts`), so run.json counts the tasks Ray ran again (a lost node, a killed worker)."""
    label = "+".join(stage.func.__name__.strip("_").removesuffix("_row") for stage in stages)

    def run(row: dict) -> dict:
        note_attempt(out, row["task_id"], label)
        for stage in stages:
            if _job_gone():
                raise TransientError(f"{stage.func.__name__}: the job's Ray is gone")
            row = stage(row)
        return _wire(row)

    # Ray Data names the operator, its progress bar and its workers' process titles after this
    run.__name__ = "+".join(stage.func.__name__ for stage in stages)
    return run


@_guarded("split")
def _split_row(row: dict, cfg: CurateJobConfig) -> dict:
    task: Task = _live(row["task"])
    return {"task_id": task.task_id, "result": ClipSplitter(cfg).run(task)}


@_guarded("scoring")
def _cpu_score_row(row: dict, cfg: CurateJobConfig) -> dict:
    return {"task_id": row["task_id"], "result": CpuScoringStage(cfg).run(_live(row["result"]))}


class _AestheticActor:
    """Ray Data actor: the aesthetic models are loaded once, then score task after task."""

    def __init__(self, cfg: CurateJobConfig):
        from curation.scoring_stage import AestheticStage

        self.stage = AestheticStage(cfg)

    def __call__(self, batch: dict) -> dict:
        rows = [
            _wire(self._score_row({"task_id": task_id, "result": blob}))
            for task_id, blob in zip(batch["task_id"], batch["result"], strict=True)
        ]
        return {"task_id": [r["task_id"] for r in rows], "result": [r["result"] for r in rows]}

    @_guarded("aesthetic")
    def _score_row(self, row: dict) -> dict:
        return {"task_id": row["task_id"], "result": self.stage.run(_live(row["result"]))}


class _TextActor(_AestheticActor):
    """Ray Data actor: the text detector is loaded once (onnxruntime threads: the actor's CPUs)."""

    def __init__(self, cfg: CurateJobConfig):
        from curation.scoring_stage import TextStage

        self.stage = TextStage(cfg, threads=max(1, round(cfg.resources.text_cpus)))

    @_guarded("text")
    def _score_row(self, row: dict) -> dict:
        result = self.stage.run(_live(row["result"]))
        result.samples.clear()  # nothing after it reads them: the row goes on without them
        return {"task_id": row["task_id"], "result": result}


def _text_actors(cfg: CurateJobConfig) -> int:
    """Actors of the text pool; 0: text detection runs inside the CPU scoring task (`resources.text_actors`)."""
    text = cfg.scoring.text
    if not text.enabled:
        return 0
    return max(cfg.resources.text_actors, 1 if text.num_gpus > 0 else 0)


_TEXT_STAGES: dict[str, object] = {}  # per worker process: the model loads once, not once per task


@_guarded("text")
def _text_row(row: dict, cfg: CurateJobConfig) -> dict:
    """Text detection in the CPU scoring task, on the CPU unless `scoring.text.device` says cuda (a GPU is
    the pool's: a model per worker process on one GPU would crowd it)."""
    from curation.scoring_stage import TextStage

    device = "cuda" if cfg.scoring.text.device == "cuda" else "cpu"
    key = f"{cfg.scoring.text!r} {cfg.resources.score_cpus} {device}"
    if key not in _TEXT_STAGES:
        _TEXT_STAGES[key] = TextStage(cfg, threads=max(1, round(cfg.resources.score_cpus)), device=device)
    return {"task_id": row["task_id"], "result": _TEXT_STAGES[key].run(_live(row["result"]))}


def _unprepared(row: dict, exc: Exception, stage: str) -> dict:
    """`_caption_prep_row`'s row after a bug of ours: the task's clips are quarantined, none captioned."""
    return _quarantined_task(row, exc, stage) | {"prepared": pickle.dumps([]), "failed": pickle.dumps([])}


@_guarded("caption frames", fallback=_unprepared)
def _caption_prep_row(row: dict, cfg: CurateJobConfig) -> dict:
    """Filter the task's clips, then decode the kept ones for the VLM (CPU, ahead of the model)."""
    result = _live(row["result"])
    result.samples.clear()  # scored already; nothing downstream reads them
    apply_filters(result, ClipFilter(cfg.filters))
    kept = [r for r in result.clips if r.kept and r.clip_id in result.media]
    clips = [(r.clip_id, result.media[r.clip_id]["mp4"]) for r in kept]
    hints = {r.clip_id: ClipHints.from_record(vars(r)) for r in kept}
    return {"task_id": row["task_id"], "result": result, **prep_columns(clips, cfg.captioning, hints)}


def _unwritten(row: dict, exc: Exception, stage: str) -> dict:
    """`_write_row`'s row after a bug of ours: the task has no marker; the driver records it."""
    return {
        "task_id": row["task_id"],
        "summary": json.dumps({"task_id": row["task_id"], "failed": describe(exc)}),
    }


@_guarded("write", fallback=_unwritten)
def _write_row(row: dict, out: str, cfg: CurateJobConfig, fingerprint: str) -> dict:
    started, started_unix, io_before = time.perf_counter(), time.time(), storage.io_retries()
    result = _live(row["result"])
    result.samples.clear()  # scored already; nothing downstream reads them
    extra = {}
    if "outcomes" in row:
        records = {r.clip_id: r for r in result.clips}
        for outcome in pickle.loads(row["outcomes"]):
            record = records[outcome.key]
            apply_to_clip(record, result.media[record.clip_id], outcome, cfg.captioning.on_failure)
        extra["captioning"] = pickle.loads(row["caption_stats"])
        if ALIGNMENT_STATS in row:  # the rules again, now with the caption scores
            extra["alignment"] = pickle.loads(row[ALIGNMENT_STATS])
            settle_alignment(result, extra["alignment"], cfg.filters)
    summary = TaskWriter(out, cfg, fingerprint).run(result, extra)
    result.clock("write", started_unix, time.perf_counter() - started, storage.io_retries() - io_before)
    # for run.json only (the marker has been written): where the task's time went, the I/O it retried
    timings = {
        "stage_s": result.stage_s, "started_unix": result.started_unix, "finished_unix": time.time(),
        "io_retries": result.io_retries,
    }  # fmt: skip
    return {"task_id": row["task_id"], "summary": json.dumps(summary | timings)}


def check_models(cfg: CurateJobConfig) -> None:
    """Fail before any work starts when a model the config asks for cannot be found."""
    aesthetic = cfg.scoring.aesthetic
    if aesthetic.enabled:
        _check_aesthetic(cfg)
    check_captioning(cfg.captioning)


def check_gpus(cfg: CurateJobConfig, session: dict) -> None:
    """Fail before any work starts when the config reserves GPUs and the embedded Ray has none: its
    tasks and actors would wait forever. A cluster (RAY_ADDRESS) may add GPU nodes as they are asked for."""
    wanted = {
        "scenes.num_gpus": cfg.scenes.num_gpus,
        "scoring.aesthetic.num_gpus": cfg.scoring.aesthetic.num_gpus if cfg.scoring.aesthetic.enabled else 0,
        "scoring.text.num_gpus": cfg.scoring.text.num_gpus if cfg.scoring.text.enabled else 0,
        "captioning.num_gpus": cfg.captioning.num_gpus if cfg.captioning.enabled else 0,
        "captioning.alignment.num_gpus": cfg.captioning.alignment.num_gpus
        if cfg.captioning.enabled and cfg.captioning.alignment.enabled
        else 0,
    }
    wanted = {key: value for key, value in wanted.items() if value > 0}
    if wanted and session["address"] == "local" and not session["cluster_resources"].get("GPU"):
        settings = ", ".join(f"{key}={value:g}" for key, value in wanted.items())
        raise config_lib.ConfigError(
            f"{settings}: this machine has no GPU that Ray can see; set them to 0 "
            "(the gpu preset is for machines with GPUs)"
        )
    if cfg.scoring.text.enabled and cfg.scoring.text.device == "cuda" and session["address"] == "local":
        from curation.scoring.text import use_cuda

        use_cuda("cuda")  # ConfigError when this onnxruntime has no CUDA provider


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

    CPU stages that follow each other run as one Ray task (`_chain`): with the model stages off the
    whole pipeline is one task per row, and a task's clips are pickled once, for the driver's trip
    back, not once per stage. An actor stage (aesthetic, captioning) ends a chain. The aesthetic
    actors reserve their own memory (`resources.aesthetic_memory_gb`); besides placing the model,
    that keeps Ray Data from fusing the split into the actor pool, where, with as many actors as
    model copies, the video work would run one task at a time.
    """
    with retry_args_accepted():
        return _build_pipeline(ds, output, cfg, fingerprint)


def _map_chain(
    ds,
    stages: list[tuple[functools.partial, float, int | None]],
    task_args: dict,
    out: str,
    gpus: float = 0.0,
):
    """A map of `stages` (row function, CPUs, memory bytes or None) as one task per row, which
    reserves what the most demanding of them needs (and `gpus`: the split's learned shot detector)."""
    memory = max((m for _, _, m in stages if m is not None), default=None)
    return ds.map(
        _chain(*(fn for fn, _, _ in stages), out=out),
        num_cpus=max(cpus for _, cpus, _ in stages),
        num_gpus=gpus or None,
        memory=memory,
        **task_args,
    )


def _build_pipeline(ds, output: str, cfg: CurateJobConfig, fingerprint: str):
    res, scoring = cfg.resources, cfg.scoring
    task_args = task_retry_args(res.task_retries)
    memory = int(res.task_memory_gb * 2**30)
    cpu = [(functools.partial(_split_row, cfg=cfg), res.split_cpus, memory)]
    split_gpus = cfg.scenes.num_gpus  # reserved by the chain the split runs in, the first
    # with text on, it also decodes the samples the split did not take (frame-rate resampling)
    if scoring.motion.enabled or scoring.quality.enabled or scoring.text.enabled:
        cpu.append((functools.partial(_cpu_score_row, cfg=cfg), res.score_cpus, memory))
    text_actors = _text_actors(cfg)
    if scoring.text.enabled and not text_actors:  # cheap enough to share the task (resources.text_actors)
        cpu.append((functools.partial(_text_row, cfg=cfg), res.score_cpus, memory))
    if scoring.aesthetic.enabled:
        ds = _map_chain(ds, cpu, task_args, output, split_gpus)
        cpu, split_gpus = [], 0.0
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
    if text_actors:  # the last to read the samples: it lets them go
        if cpu:  # none left after the aesthetic pool
            ds = _map_chain(ds, cpu, task_args, output, split_gpus)
        cpu, split_gpus = [], 0.0
        ds = ds.map_batches(
            _TextActor,
            fn_constructor_kwargs={"cfg": cfg},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=text_actors),
            num_cpus=res.text_cpus,
            num_gpus=scoring.text.num_gpus,
            **actor_retry_args(res.task_retries),
        )
    if cfg.captioning.enabled:
        cpu.append((functools.partial(_caption_prep_row, cfg=cfg), cfg.captioning.prep_cpus, None))
        aligned = cfg.captioning.alignment.enabled
        if aligned:  # a few of the caption frames, taken now, for the alignment actors
            check_alignment_model(cfg.captioning, scoring.aesthetic)
            frames = functools.partial(alignment_frames_row, cfg=cfg.captioning)
            cpu.append((frames, cfg.captioning.prep_cpus, None))
        ds = _map_chain(ds, cpu, task_args, output, split_gpus)
        cpu, split_gpus = [], 0.0
        ds = add_caption_actors(ds, cfg.captioning, actor_retry_args(res.task_retries))
        if aligned:
            clip = cfg.captioning.alignment.clip_config(scoring.aesthetic)
            ds = add_alignment_actors(ds, cfg.captioning, clip, actor_retry_args(res.task_retries))
    write = functools.partial(_write_row, out=output, cfg=cfg, fingerprint=fingerprint)
    return _map_chain(ds, [*cpu, (write, res.write_cpus, None)], task_args, output, split_gpus)


def _fit_to_session(cfg: CurateJobConfig, session: dict, log) -> CurateJobConfig:
    """The config with actor CPU reservations that leave room for the split tasks on this Ray."""
    res, pools = cfg.resources, {}
    if cfg.scoring.aesthetic.enabled:
        pools["aesthetic"] = (res.aesthetic_cpus, res.aesthetic_actors)
    if _text_actors(cfg) and res.text_cpus > 0:
        pools["text"] = (res.text_cpus, _text_actors(cfg))
    if cfg.captioning.enabled:
        pools["captioning"] = (cfg.captioning.cpus, cfg.captioning.actors)
        if cfg.captioning.alignment.enabled:
            pools["alignment"] = (cfg.captioning.alignment.cpus, cfg.captioning.alignment.actors)
    fitted = fit_actor_cpus(pools, res.split_cpus, session, log)
    cfg = copy.deepcopy(cfg)
    cfg.resources.aesthetic_cpus = fitted.get("aesthetic", res.aesthetic_cpus)
    cfg.resources.text_cpus = fitted.get("text", res.text_cpus)
    cfg.captioning.alignment.cpus = fitted.get("alignment", cfg.captioning.alignment.cpus)
    cfg.captioning.cpus = fitted.get("captioning", cfg.captioning.cpus)
    return cfg


def aggregate(summaries: list[dict]) -> dict:
    """Totals over task summaries (from markers, so a resumed run counts every task)."""
    errors, drops, transitions = Counter(), Counter(), Counter()
    for s in summaries:
        errors.update(s["video_errors"])
        drops.update(s["drop_reasons"])
        transitions.update(s.get("transitions", {}))
    keys = ("videos", "videos_ok", "shots", "clips", "clips_kept", "internal_errors", "transient_exhausted")
    total = {k: sum(s.get(k, 0) for s in summaries) for k in keys}
    total["clips_dropped"] = total["clips"] - total["clips_kept"]
    total["video_errors"] = dict(sorted(errors.items()))
    total["drop_reasons"] = dict(sorted(drops.items()))
    total["transitions"] = dict(sorted(transitions.items()))  # cut, gradual: rows of the clips manifest
    total["hours_in"] = sum(s["seconds_in"] for s in summaries) / 3600
    total["hours_kept"] = sum(s["seconds_kept"] for s in summaries) / 3600
    total["shards"] = sum(len(s["shards"]) for s in summaries)
    return total


def score_distributions(layout: OutputLayout) -> dict[str, dict]:
    """Per score over every scored candidate clip: count, min, percentiles, max (for run.json).
    Reads only the score columns of the clips manifest (which also holds errors and captions)."""
    parts: dict[str, list[np.ndarray]] = {}
    for uri in layout.manifest_parts(layout.clips_manifest):
        part = pq.ParquetFile(storage.open_input_file(uri))
        struct = "scores" in part.schema_arrow.names  # the layout before structs had `scores.NAME` columns
        table = part.read(columns=["scores"] if struct else None).flatten()
        for name in [n for n in table.column_names if n.startswith("scores.")]:
            column = table.column(name).drop_null()
            parts.setdefault(name, []).append(column.to_numpy().astype(np.float64))
    out = {}
    for name, arrays in parts.items():
        values = np.concatenate(arrays)
        if len(values):
            pct = np.percentile(values, [5, 25, 50, 75, 95])
            out[name.removeprefix("scores.")] = {
                "count": int(len(values)), "min": float(values.min()),
                **{f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95), pct, strict=True)},
                "max": float(values.max()),
            }  # fmt: skip
    return out


def stage_timings(fresh: list[dict], ray_ready_unix: float, ray_stopped_unix: float) -> dict:
    """Where the pipeline's time went, from the summaries of the tasks run now (run.json `timings`):
    Ray ready -> first task start (planning, worker start-up), first start -> last end, the task time
    of each stage summed over tasks, the time tasks spent between their stages (queues, object store),
    and last end -> Ray stopped (the results' way back to the driver, the shutdown)."""
    timed = [s for s in fresh if s.get("started_unix") is not None]
    if not timed:
        return {}
    first = min(s["started_unix"] for s in timed)
    last = max(s["finished_unix"] for s in timed)
    stages: Counter = Counter()
    for s in timed:
        stages.update(s["stage_s"])
    between = sum(s["finished_unix"] - s["started_unix"] - sum(s["stage_s"].values()) for s in timed)
    return {
        "first_task_start_s": first - ray_ready_unix,
        "tasks_span_s": last - first,
        "stage_task_s": dict(stages),
        "between_stages_s": between,
        "after_tasks_s": ray_stopped_unix - last,
    }


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
    return line + models_note(models or "")


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

    run.json's `models` says which kind of weights the run's models are (`curation.model_labels`):
    random-weights when any model it loads is a tiny stand-in, or when `models` says so.

    The job holds OUT (`jobs.output_lock`) from before it changes anything there until run.json and
    the report are written, so a second job on the same OUT stops before it starts Ray.
    """
    with job_output(output, "curate", cfg, log):
        return _run_curate(inputs, output, cfg, overwrite, num_cpus, log, models, limit, sample)


def _run_curate(inputs, output, cfg, overwrite, num_cpus, log, models, limit, sample) -> dict:
    started, start_unix = time.perf_counter(), time.time()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    ffmpeg_tools.require_binaries()
    check_subset(sample, limit)
    io_before = storage.io_retries()
    uris = [u for u in expand_inputs(inputs, cfg.input.extensions) if in_sample(u, sample or 1.0)][:limit]
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
    resume = trusted_markers(output, fingerprint, cfg.resume.verify)
    done = set(resume.done)
    pending = [t for t in tasks if t.task_id not in done]
    redone = log_redone("curate", resume.redo, {t.task_id for t in pending}, log)
    log(
        f"reelmill curate: {len(uris)} videos in {len(tasks)} tasks; {len(done)} done already, {len(pending)} to run"
    )
    keep_going_on_failed_tasks()
    quiet_ray_data()

    fresh: list[dict] = []
    ray_started = time.perf_counter()
    clear_attempts(output)
    with ray_session(num_cpus) as ray_info:
        ray_start_s = time.perf_counter() - ray_started
        run_where_files_are_read(check_models, cfg, session=ray_info)
        models = run_where_files_are_read(curate_models_label, cfg, models, session=ray_info)
        check_gpus(cfg, ray_info)
        if pending:
            ds = ray.data.from_items(
                [{"task_id": t.task_id, "task": pickle.dumps(t)} for t in pending],
                override_num_blocks=len(pending),
            )
            pipeline = build_pipeline(ds, output, _fit_to_session(cfg, ray_info, log), fingerprint)
            progress = TaskProgress(
                "curate", layout.run_json, len(tasks),
                (tally("videos"), tally("clips"), tally("clips kept", "clips_kept")),
                done_before=len(done), seconds_key="seconds_in",
                header={"job": "curate", "command": sys.argv, "output": output, "started_at": started_at},
            )  # fmt: skip
            with progress, native_notices_hidden():
                for row in pipeline.iter_rows():  # a row per finished task: its summary
                    fresh.append(json.loads(row["summary"]))
                    progress.task_done(fresh[-1])
    ray_stopped = time.perf_counter()
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

    # the markers now: those read at the start that still stand, and the tasks run now (their summaries
    # are their markers' content), without listing and reading every marker again
    markers = resume.done | {s["task_id"]: s for s in fresh}
    counts = aggregate([markers[t.task_id] for t in tasks if t.task_id in markers] + list(lost.values()))
    seconds_now = sum(s["seconds_in"] for s in fresh)
    run = {
        "job": "curate",
        "state": "finished",
        "command": sys.argv,
        "output": output,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": spec["config"],
        "config_fingerprint": fingerprint,
        "versions": versions(),
        "ray": ray_info,
        "tasks": tasks_section(len(tasks), len(fresh), len(done), len(lost), redone),
        "retries": count_attempts(output),
        "io": io_report(
            cfg.io, sum(s.get("io_retries", 0) for s in fresh) + storage.io_retries() - io_before
        ),
        "counts": counts,
        "errors": error_summary(counts["videos"], counts["videos"] - counts["videos_ok"], counts),
        "scores": score_distributions(layout),
        "filters": {"mode": cfg.filters.mode, "drops_by_rule": rule_drops(cfg, counts["drop_reasons"])},
        "timings": {
            "wall_s": wall,
            "ray_start_s": ray_start_s,
            **stage_timings(
                fresh,
                start_unix + (ray_started - started) + ray_start_s,
                start_unix + (ray_stopped - started),
            ),
            "setup_s": ray_started - started,
            "start_unix": start_unix,
            "finish_s": time.perf_counter() - ray_stopped,
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
        "models": models,
    }
    write_shard_index(layout, [markers[t.task_id] for t in tasks if t.task_id in markers], log)
    storage.write_bytes(layout.run_json, json.dumps(run, indent=1).encode())
    log(summary_line(counts, wall, output, models))
    report_after_job(output, cfg.report, log)
    return run
