"""`reelmill dedup OUT`: semantic near-duplicates among a run's kept clips, marked without rewriting shards.

Re-uploads, one shot cut from two edits, loops: near-identical clips waste training compute and bias
the model. The job reads the CLIP embeddings `curate` wrote (`manifest/embeddings/`, one mean-of-frames
vector per clip, written when `scoring.aesthetic` is on) and the clips manifest (which clips are kept,
their shard, the scores of `keep_by`), then runs `curation.dedup`: spherical k-means with faiss (on a GPU
when faiss sees one) and, in Ray tasks of whole clusters, the greedy pass that marks each clip whose
cosine similarity to an already kept, better-ranked clip exceeds `threshold`.

Outputs (the shards stay as they are):

    OUT/manifest/dedup/dedup.parquet   one row per kept clip of the run (DEDUP_SCHEMA)
    OUT/dedup/keep.txt                 the clips to train on, one clip_id (= webdataset key) a line
    OUT/dedup/run.json                 this job's record: config, counts, similarity summary, timings
    DIR/shards/shard-TTTTTT-PPP.tar    with `--materialize DIR`: each shard again without its duplicates

Nothing is dropped without evidence: a clip with no embedding (its scorer failed), an unusable one (NaN,
zero) or one on which our code raised (`internal_error`) has its row with a status and a reason and stays
in keep.txt. A rerun computes everything again and replaces the manifest file in one atomic write; the
job holds OUT's lock (`jobs.output_lock`) meanwhile, so it never runs beside a `curate` writing there.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import config as config_lib
from curation import dedup as method
from curation import storage
from curation.inputs import InputError
from curation.layout import OutputLayout
from curation.quarantine import INTERNAL_ERROR, describe, short_traceback
from curation.safe_tar import TOO_LARGE
from curation.shards import TaskShardWriter, iter_samples, raise_if_transient, shard_failure
from jobs.job_configs import NOT_IN_FINGERPRINT, DedupConfig
from jobs.outcomes import error_summary, failure_note, io_report
from jobs.output_lock import hold_output, job_output
from jobs.progress import TaskProgress, tally
from jobs.ray_runtime import quiet_ray_data, ray_session, task_retry_args
from jobs.run_info import versions

DEDUP_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),  # the webdataset key
        ("shard", pa.string()),  # the shard file (in OUT/shards/) holding the clip
        ("status", pa.string()),  # ok | no_embedding | invalid_embedding | internal_error | unchecked
        ("reason", pa.string()),  # why a clip is not ok (null when it is)
        ("traceback", pa.string()),  # internal_error rows: where the bug is
        ("cluster", pa.int64()),  # its k-means cluster; -1 when it was not clustered
        ("duplicate_of", pa.string()),  # the kept clip it duplicates; null: the clip is kept
        ("similarity", pa.float32()),  # cosine to `duplicate_of`; null for a kept clip
        ("nearest_kept", pa.float32()),  # kept clips: highest cosine to another kept clip of its cluster
        ("keep_rank", pa.int64()),  # its place in keep order (0: the first kept); null when not ok
    ]
)
MANIFEST_FILE = "dedup.parquet"
NO_EMBEDDING, INVALID_EMBEDDING, UNCHECKED = "no_embedding", "invalid_embedding", "unchecked"
MAX_RETRIES = 3
SHARD_NAME = re.compile(r"^shard-(\d{6})-(\d{3})\.tar$")
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


def dedup_dir(layout: OutputLayout) -> str:
    """OUT/dedup/: the keep list and this job's run.json."""
    return layout.path("dedup")


def dedup_manifest(layout: OutputLayout) -> str:
    return layout.path("manifest", "dedup")


# -- reading the run ---------------------------------------------------------------------------------


def _run_config(layout: OutputLayout) -> dict:
    try:
        run = json.loads(storage.read_bytes(layout.run_json))
    except (FileNotFoundError, ValueError):
        return {}
    return run.get("config") or {} if isinstance(run, dict) else {}


def check_run(layout: OutputLayout) -> None:
    """Raise InputError unless OUT holds a run's clips manifest (before OUT is locked or touched)."""
    if not storage.exists(layout.root):
        raise InputError(f"{layout.root} does not exist; give the OUT of a `reelmill curate` run")
    if not layout.manifest_parts(layout.clips_manifest):
        raise InputError(
            f"{layout.root} is not a reelmill run: it has no manifest/clips/*.parquet; give the OUT of a "
            "`reelmill curate` run"
        )


def read_clips(layout: OutputLayout, keep_by: list[str]) -> dict[str, np.ndarray]:
    """The run's kept clips (those in shards): clip_id, shard and the `keep_by` columns (NaN where null).
    A `keep_by` column the manifest lacks is a ConfigError naming it."""
    names = layout.manifest_columns(layout.clips_manifest)
    missing = [c for c in keep_by if c not in names]
    if missing:
        numeric = sorted(n for n in names if n.startswith("scores.") or n.endswith("_s"))
        raise config_lib.ConfigError(
            f"keep_by: manifest/clips has no column {missing[0]!r} (try: {', '.join(numeric[:12])})"
        )
    ids, shards, values = [], [], {c: [] for c in keep_by}
    seen = set()
    for row in layout.iter_manifest(layout.clips_manifest, ["clip_id", "kept", "shard", *keep_by], 65536):
        clip = row.get("clip_id")
        if not row.get("kept") or not row.get("shard") or clip is None or clip in seen:
            continue
        seen.add(clip)
        ids.append(clip)
        shards.append(row["shard"])
        for c in keep_by:
            values[c].append(_number(row.get(c)))
    return {
        "clip_id": np.asarray(ids, dtype=object),
        "shard": np.asarray(shards, dtype=object),
        **{c: np.asarray(v, dtype=np.float64) for c, v in values.items()},
    }


def _number(value) -> float:
    try:
        return float(value) if value is not None else np.nan
    except (TypeError, ValueError):
        return np.nan


def read_embeddings(layout: OutputLayout, wanted: dict[str, int]) -> tuple[np.ndarray, np.ndarray, dict]:
    """(float16 [len(wanted), D] in `wanted`'s row order, whether each row was found, facts for run.json).
    Only the mean embedding column is read, one record batch at a time. No parts at all, or parts of
    different widths, are an InputError that says why."""
    parts = layout.manifest_parts(layout.embeddings_manifest)
    if not parts:
        aesthetic = (_run_config(layout).get("scoring") or {}).get("aesthetic") or {}
        why = (
            "the run had scoring.aesthetic.enabled=false, so curate computed no CLIP embeddings"
            if aesthetic.get("enabled") is False
            else "curate wrote none (scoring.aesthetic must be on; a recaption OUT has none of its own)"
        )
        raise InputError(
            f"{layout.root} has no manifest/embeddings/*.parquet: {why}. Run curate with "
            "scoring.aesthetic.enabled=true (a new OUT, or --overwrite), then dedup it"
        )
    dims = {}
    for uri in parts:
        field = pq.ParquetFile(storage.open_input_file(uri)).schema_arrow.field("embedding")
        dims[uri] = field.type.list_size if pa.types.is_fixed_size_list(field.type) else None
    widths = sorted({d for d in dims.values() if d is not None})
    if len(widths) != 1 or None in dims.values():
        shown = ", ".join(
            f"{layout.relative(u)}: {d if d is not None else 'not fixed-width'}" for u, d in dims.items()
        )
        raise InputError(
            f"{layout.root}: manifest/embeddings mixes embedding widths ({shown}); the run's parts come from "
            "different CLIP models. Rerun curate with one scoring.aesthetic.clip_model (--overwrite)"
        )
    dim = widths[0]
    out = np.zeros((len(wanted), dim), dtype=np.float16)
    found = np.zeros(len(wanted), dtype=bool)
    facts = Counter()
    for uri in parts:
        part = pq.ParquetFile(storage.open_input_file(uri))
        for batch in part.iter_batches(batch_size=65536, columns=["clip_id", "embedding"]):
            ids = batch.column(0).to_pylist()
            column = batch.column(1)
            rows = np.fromiter((wanted.get(c, -1) for c in ids), dtype=np.int64, count=len(ids))
            facts["rows"] += len(ids)
            if column.null_count:
                vectors = np.array(
                    [v if v is not None else [np.nan] * dim for v in column.to_pylist()], dtype=np.float16
                )
            else:
                vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), dim)
            facts["not_kept"] += int((rows < 0).sum())  # clips dropped by the filters, transitions
            take = np.flatnonzero(rows >= 0)
            take = take[np.unique(rows[take], return_index=True)[1]]  # a clip's first row in the batch
            take = take[~found[rows[take]]]  # and not in an earlier batch
            facts["repeated"] += int((rows >= 0).sum()) - len(take)
            out[rows[take]], found[rows[take]] = vectors[take], True
    return (
        out,
        found,
        {"dim": dim, "parts": len(parts), **{k: facts[k] for k in ("rows", "not_kept", "repeated")}},
    )


# -- the per-cluster pass on Ray ---------------------------------------------------------------------


def _cluster_batch(x: np.ndarray, plans: list[method.ClusterPlan], threshold: float) -> list[tuple]:
    """Ray task: the greedy pass over a batch of whole clusters; a cluster our code fails on is that
    cluster's `(plan, None, error fields)`, never the end of the job. `x` comes from the object store,
    read in place (every task shares the one copy)."""
    out = []
    for plan in plans:
        try:
            result = method.dedup_cluster(x[plan.members], threshold, x[plan.visitors])
            out.append((plan, result, None))
        except Exception as exc:  # noqa: BLE001 (one cluster's bug is that cluster's rows)
            raise_if_transient(exc)
            error = {"reason": f"{INTERNAL_ERROR}: dedup.cluster: {describe(exc)}"}
            out.append((plan, None, error | {"traceback": short_traceback(exc)}))
    return out


def pack(plans: list[method.ClusterPlan], task_clips: int) -> list[list[method.ClusterPlan]]:
    """Whole clusters into batches of about `task_clips` clips (members and visitors), in order."""
    batches, current, size = [], [], 0
    for plan in plans:
        n = len(plan.members) + len(plan.visitors)
        if current and size + n > task_clips:
            batches.append(current)
            current, size = [], 0
        current.append(plan)
        size += n
    if current:
        batches.append(current)
    return batches


def run_clusters(ref, plans, cfg: DedupConfig, out: dict, progress: TaskProgress) -> tuple[list, dict]:
    """Every cluster's pass as Ray tasks over the vectors in the object store (`ref`), merged into `out`
    as they finish. Returns the pairs found across clusters, and per row the error fields of clusters
    that failed (a bug of ours: internal_error; a task whose retries ran out: unchecked)."""
    import ray

    remote = ray.remote(_cluster_batch).options(num_cpus=cfg.cpus, **task_retry_args(MAX_RETRIES))
    pending = {remote.remote(ref, batch, cfg.threshold): batch for batch in pack(plans, cfg.task_clips)}
    pairs, failed = [], {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        batch = pending.pop(done[0])
        summary = {"clusters": len(batch), "clips": sum(len(p.members) for p in batch), "duplicates": 0}
        try:
            results = ray.get(done[0])
        except (ray.exceptions.RayError, OSError) as exc:
            results = [(p, None, _task_failure(exc)) for p in batch]
            summary["failed"] = True
        for plan, result, error in results:
            if result is None:
                for row in plan.members:
                    failed[int(row)] = error
                continue
            method.apply_cluster(out, plan, result, pairs)
            summary["duplicates"] += int((result.duplicate_of >= 0).sum())
        progress.task_done(summary)
    return pairs, failed


def _task_failure(exc: Exception) -> dict:
    """The error fields of the rows of a Ray task that failed for good: transient (its retries spent, its
    worker lost: `unchecked`, a rerun tries again) or a bug of ours outside the per-cluster guard."""
    import ray

    from curation.quarantine import TransientError

    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    if cause is None or isinstance(cause, TransientError):
        return {"reason": f"{UNCHECKED}: {describe(exc)}"}
    return {"reason": f"{INTERNAL_ERROR}: dedup.task: {describe(cause)}", "traceback": short_traceback(cause)}


# -- the job -----------------------------------------------------------------------------------------


def run_dedup(
    output: str,
    cfg: DedupConfig,
    materialize: str | None = None,
    num_cpus: int | None = None,
    log=print,
) -> dict:
    """Run the dedup job over the run in `output`; returns what it writes to OUT/dedup/run.json.

    With `materialize`, also write the run's shards without their duplicates to `materialize`/shards/.
    OUT (and the materialize directory) are held (`jobs.output_lock`) until the record is written."""
    layout = OutputLayout(output)
    check_run(layout)
    if materialize is not None and _same_place(materialize, output):
        raise InputError(f"--materialize {materialize}: choose a directory other than OUT")
    with job_output(output, "dedup", cfg, log):
        if materialize is None:
            return _run_dedup(layout, cfg, None, num_cpus, log)
        with hold_output(materialize, "dedup", cfg.lock, log):
            return _run_dedup(layout, cfg, materialize, num_cpus, log)


def _same_place(a: str, b: str) -> bool:
    if storage.is_local(a) and storage.is_local(b):
        import os

        return os.path.abspath(storage.local_path(a)) == os.path.abspath(storage.local_path(b))
    return a.rstrip("/") == b.rstrip("/")


def _run_dedup(layout: OutputLayout, cfg: DedupConfig, materialize, num_cpus, log) -> dict:
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    io_before = storage.io_retries()
    timings: dict[str, float] = {}
    clock = method.Clock(timings)
    run_json = storage.join(dedup_dir(layout), "run.json")
    if materialize is not None:
        _check_materialize_dir(OutputLayout(materialize))
    log(f"reelmill dedup: reading {layout.root}/manifest/clips and manifest/embeddings")
    clips = read_clips(layout, cfg.keep_by)
    n = len(clips["clip_id"])
    wanted = {c: i for i, c in enumerate(clips["clip_id"])}
    embeddings, found, facts = read_embeddings(layout, wanted)
    x, reasons = method.normalize(embeddings, np.float16, inplace=True)
    del embeddings
    reasons[~found] = NO_EMBEDDING
    usable = np.flatnonzero(reasons == None)  # noqa: E711 (elementwise on an object array)
    rank = method.keep_order([clips[c] for c in cfg.keep_by], clips["clip_id"])
    out = method.empty_result(n, reasons)
    clock.lap("load_s")
    log(
        f"reelmill dedup: {n} kept clips in {layout.root}, {len(usable)} with a usable {facts['dim']}-d "
        f"embedding; threshold {cfg.threshold:g}"
    )
    gpu = method.use_gpu(cfg.device)
    k = method.num_clusters(len(usable), cfg.target_cluster_size)
    header = {"job": "dedup", "command": sys.argv, "output": layout.root, "started_at": started_at}
    pairs, failed, across = [], {}, 0
    quiet_ray_data()  # Ray's start-up notices; this job shows its own progress
    with ray_session(num_cpus) as ray_info:
        if len(usable):
            import ray

            # one copy of the vectors, in the object store: the driver reads it in place like the tasks
            ref = ray.put(x)
            x = ray.get(ref)
            _faiss_threads(ray_info)
            clock.lap("ray_s")
            log(
                f"reelmill dedup: k-means, {k} cluster{'s' if k > 1 else ''}{' on the GPU' if gpu else ''}, "
                f"{cfg.kmeans_iterations} iterations"
            )
            centroids = method.kmeans(
                x, usable, k, cfg.seed, cfg.kmeans_iterations, cfg.kmeans_max_points_per_centroid, gpu,
                verbose=len(usable) >= 100_000,  # faiss prints each iteration: minutes at a million clips
            )  # fmt: skip
            clock.lap("kmeans_s")
            log(f"reelmill dedup: assigning {len(usable)} clips to their {cfg.probe} nearest clusters")
            probes = method.assign(x, usable, centroids, cfg.probe, gpu=gpu)
            out["cluster"][usable] = probes[:, 0]
            clock.lap("assign_s")
            plans = method.plan_clusters(usable, probes, rank)
            batches = len(pack(plans, cfg.task_clips))
            progress = TaskProgress(
                "dedup", run_json, batches, (tally("clips"), tally("clusters"), tally("duplicates")),
                header=header,
            )  # fmt: skip
            with progress:
                pairs, failed = run_clusters(ref, plans, cfg, out, progress)
            clock.lap("clusters_s")
            across = method.resolve_cross(out["duplicate_of"], out["similarity"], rank, pairs)
            clock.lap("cross_s")
            del ref
        del x
        table = result_table(clips, out, rank, failed)
        write_manifest(layout, table)
        keep = write_keep_list(layout, table)
        clock.lap("write_s")
        shards = None
        if materialize is not None:
            shards = materialize_shards(layout, materialize, table, cfg, log)
            clock.lap("materialize_s")
    run = {
        **header,
        "state": "finished",
        "finished_at": None,
        "config": config_lib.to_dict(cfg),
        "config_fingerprint": config_lib.fingerprint(cfg, ignore=NOT_IN_FINGERPRINT),
        "versions": versions(("faiss-cpu",)),
        "ray": ray_info,
        "inputs": {
            "embeddings_fingerprint": _parts_fingerprint(layout),
            "embedding_dim": facts["dim"],
            "embedding_parts": facts["parts"],
            "embedding_rows": facts["rows"],
            "embeddings_of_clips_not_kept": facts["not_kept"],
        },
        "faiss": {"gpu": gpu, "clusters": k if len(usable) else 0, "probe": cfg.probe},
        "counts": counts(table, across),
        "similarity": similarity_summary(table, cfg.threshold),
        "outputs": {
            "manifest": layout.relative(storage.join(dedup_manifest(layout), MANIFEST_FILE)),
            "keep_list": layout.relative(storage.join(dedup_dir(layout), "keep.txt")),
            "materialized": materialize,
        },
    }
    if shards is not None:
        run["materialize"] = shards
    c = run["counts"]
    in_error = c["no_embedding"] + c["invalid_embedding"] + c["internal_errors"] + c["transient_exhausted"]
    bugs = c["internal_errors"]
    if shards is not None:
        in_error += shards["shard_errors"]
        bugs += shards["internal_errors"]
    run["errors"] = error_summary(c["clips"], in_error, {**c, "internal_errors": bugs})
    run["io"] = io_report(cfg.io, storage.io_retries() - io_before)
    wall = time.perf_counter() - started
    run["timings"] = {**{k: round(v, 3) for k, v in timings.items()}, "wall_s": round(wall, 3)}
    run["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    storage.write_bytes(run_json, json.dumps(run, indent=1).encode())
    log(
        f"reelmill dedup: {c['duplicates']} of {c['clips']} kept clips are near-duplicates "
        f"({c['duplicates_across_clusters']} found across clusters), {len(keep)} to keep; "
        f"{c['no_embedding']} without an embedding, {c['invalid_embedding']} unusable, {wall:.1f}s -> "
        f"{run['outputs']['manifest']}, {run['outputs']['keep_list']}"
        + (f", {run['materialize']['shards']} shards in {materialize}" if materialize else "")
        + failure_note(c)
    )
    return run


def _faiss_threads(ray_info: dict) -> None:
    """faiss uses this process's share of the machine: the CPUs the local Ray was given."""
    import faiss

    cpus = int(ray_info["cluster_resources"].get("CPU", 0)) if ray_info["address"] == "local" else 0
    if cpus > 0:
        faiss.omp_set_num_threads(cpus)


def _parts_fingerprint(layout: OutputLayout) -> str:
    """Names and sizes of the embedding parts: a later dedup (or report) can tell if the run changed."""
    sizes = storage.file_sizes(layout.embeddings_manifest)
    return hashlib.sha256(json.dumps(sorted(sizes.items())).encode()).hexdigest()[:16]


def result_table(clips: dict, out: dict, rank: np.ndarray, failed: dict[int, dict]) -> pa.Table:
    """The manifest's rows (DEDUP_SCHEMA), in the clips manifest's order."""
    ids = clips["clip_id"]
    dup = out["duplicate_of"]
    status = np.full(len(ids), "ok", dtype=object)
    reason = np.asarray(out["reason"], dtype=object).copy()
    status[reason == NO_EMBEDDING] = NO_EMBEDDING
    invalid = (reason != None) & (reason != NO_EMBEDDING)  # noqa: E711
    status[invalid] = INVALID_EMBEDDING
    reason[reason == NO_EMBEDDING] = "no row in manifest/embeddings (its aesthetic scoring failed)"
    traceback = np.full(len(ids), None, dtype=object)
    for row, error in failed.items():
        status[row] = UNCHECKED if error["reason"].startswith(UNCHECKED) else INTERNAL_ERROR
        reason[row], traceback[row] = error["reason"], error.get("traceback")
    ok = status == "ok"
    return pa.table(
        {
            "clip_id": pa.array(ids, pa.string()),
            "shard": pa.array(clips["shard"], pa.string()),
            "status": pa.array(status, pa.string()),
            "reason": pa.array(reason, pa.string()),
            "traceback": pa.array(traceback, pa.string()),
            "cluster": pa.array(out["cluster"], pa.int64()),
            "duplicate_of": pa.array(np.where(dup >= 0, ids[np.maximum(dup, 0)], None), pa.string()),
            "similarity": pa.array(out["similarity"], pa.float32(), mask=np.isnan(out["similarity"])),
            "nearest_kept": pa.array(out["nearest_kept"], pa.float32(), mask=np.isnan(out["nearest_kept"])),
            "keep_rank": pa.array(rank, pa.int64(), mask=~ok),
        },
        schema=DEDUP_SCHEMA,
    )


def write_manifest(layout: OutputLayout, table: pa.Table) -> None:
    """manifest/dedup/dedup.parquet in one atomic write, then any other part there is removed (an older
    layout's): a reader sees the old result or the new one, never a mix."""
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=262144)
    target = storage.join(dedup_manifest(layout), MANIFEST_FILE)
    storage.write_bytes(target, sink.getvalue())
    for uri in layout.manifest_parts(dedup_manifest(layout)):
        if uri != target:
            storage.delete(uri)


def write_keep_list(layout: OutputLayout, table: pa.Table) -> list[str]:
    """OUT/dedup/keep.txt: every clip that is not a duplicate (clips in error included: nothing is left
    out without evidence), by shard then clip_id; returns the keys."""
    rows = table.select(["shard", "clip_id", "duplicate_of"]).to_pylist()
    keep = [
        r["clip_id"] for r in sorted(rows, key=lambda r: (r["shard"], r["clip_id"])) if not r["duplicate_of"]
    ]
    storage.write_bytes(storage.join(dedup_dir(layout), "keep.txt"), "".join(k + "\n" for k in keep).encode())
    return keep


def counts(table: pa.Table, across: int) -> dict:
    status = Counter(table.column("status").to_pylist())
    duplicates = table.column("duplicate_of").null_count
    return {
        "clips": table.num_rows,
        "kept": duplicates,
        "duplicates": table.num_rows - duplicates,
        "duplicates_across_clusters": across,
        "duplicate_fraction": (table.num_rows - duplicates) / table.num_rows if table.num_rows else 0.0,
        "no_embedding": status[NO_EMBEDDING],
        "invalid_embedding": status[INVALID_EMBEDDING],
        "internal_errors": status[INTERNAL_ERROR],
        "transient_exhausted": status[UNCHECKED],
    }


def similarity_summary(table: pa.Table, threshold: float) -> dict:
    """Quantiles of the duplicates' similarity and of the kept clips' nearest_kept (their closest call):
    how far the threshold sits from the data, for the report."""

    def quantiles(name: str) -> dict | None:
        values = table.column(name).drop_null().to_numpy(zero_copy_only=False)
        if not len(values):
            return None
        return {f"p{round(q * 100)}": round(float(np.quantile(values, q)), 4) for q in QUANTILES}

    return {
        "threshold": threshold,
        "duplicates": quantiles("similarity"),
        "kept_nearest": quantiles("nearest_kept"),
    }


# -- --materialize -----------------------------------------------------------------------------------


def _check_materialize_dir(target: OutputLayout) -> None:
    """A --materialize directory is new, empty, or an earlier --materialize output."""
    previous = _run_config_job(target)
    if previous not in (None, "dedup"):
        raise InputError(
            f"--materialize {target.root} holds a reelmill {previous} run; give a new or empty directory, "
            "or an earlier --materialize output"
        )
    if previous is None:
        held = target.entries("_state") == ["lock.json"]  # this job's lock
        found = [e for e in target.entries() if not (e == "_state/" and held)]
        if found:
            raise InputError(
                f"--materialize {target.root} is not empty and holds no earlier --materialize output "
                f"(found: {', '.join(found[:5])}); give a new or empty directory"
            )


def _run_config_job(layout: OutputLayout) -> str | None:
    try:
        run = json.loads(storage.read_bytes(layout.run_json))
    except (FileNotFoundError, ValueError):
        return None
    return run.get("job") if isinstance(run, dict) else None


def _materialize_shard(uri: str, target: str, duplicates: frozenset, cfg: DedupConfig) -> dict:
    """Ray task: one shard again, without its duplicates, under the same name in `target`. A shard that
    breaks off keeps what was before the damage; a sample with a member over the `io` limits is not
    written (it would be missing that member) and is counted."""
    name = uri.rsplit("/", 1)[-1]
    summary = Counter()
    summary_info = {"shard": name, "error": None, "error_code": None}
    match = SHARD_NAME.match(name)
    if match is None:  # OUT's own shards are all named so
        return summary_info | {"error": f"unexpected shard name {name!r}", "error_code": "unreadable"}
    task_id, part = int(match[1]), int(match[2])
    io_cfg = cfg.io
    with TaskShardWriter(target, task_id, 2**62, 2**62, first_part=part) as writer:
        try:
            for sample in iter_samples(
                uri, io_cfg.max_member_bytes, io_cfg.max_sample_bytes, io_cfg.allow_compressed
            ):
                key = sample["__key__"]
                if key in duplicates:
                    summary["duplicates"] += 1
                elif TOO_LARGE in sample:
                    summary["member_too_large"] += 1
                else:
                    writer.write(key, {k: v for k, v in sample.items() if not k.startswith("__")})
                    summary["written"] += 1
        except Exception as exc:  # noqa: BLE001 (shard_failure sorts it: transient, input, or ours)
            fields = shard_failure(exc, "dedup.materialize")
            summary_info |= {"error": fields["error"], "error_code": fields["error_code"]}
    return summary_info | dict(summary) | {"files": list(writer.written)}


def materialize_shards(
    layout: OutputLayout, materialize: str, table: pa.Table, cfg: DedupConfig, log
) -> dict:
    """`--materialize DIR`: DIR/shards/ holds each of OUT's shards without its duplicates (same names,
    members byte for byte; a shard left with no clip is not written), then DIR/run.json. Shards an
    earlier --materialize wrote that are not written now are removed."""
    import ray

    target = OutputLayout(materialize)
    duplicates = frozenset(
        table.filter(pc.is_valid(table.column("duplicate_of"))).column("clip_id").to_pylist()
    )
    shards = sorted(layout.shard_files())
    log(
        f"reelmill dedup: writing {len(shards)} shards without their {len(duplicates)} duplicates "
        f"to {materialize}"
    )
    ref = ray.put(duplicates)
    remote = ray.remote(_materialize_shard).options(num_cpus=1, **task_retry_args(MAX_RETRIES))
    pending = [remote.remote(uri, target.shards, ref, cfg) for uri in shards]
    results = []
    for uri, task in zip(shards, pending, strict=True):
        try:
            results.append(ray.get(task))
        except (ray.exceptions.RayError, OSError) as exc:  # retries spent: a rerun writes it
            name = uri.rsplit("/", 1)[-1]
            results.append({"shard": name, "error": f"{UNCHECKED}: {describe(exc)}", "error_code": UNCHECKED})
    written = {f for r in results for f in r.get("files", [])}
    for uri in target.shard_files():
        if uri.rsplit("/", 1)[-1] not in written:
            storage.delete(uri)
    summary = {
        "output": materialize,
        "shards": len(written),
        "shards_in": len(shards),
        "written": sum(r.get("written", 0) for r in results),
        "duplicates_left_out": sum(r.get("duplicates", 0) for r in results),
        "member_too_large": sum(r.get("member_too_large", 0) for r in results),
        "shard_errors": sum(r["error"] is not None for r in results),
        "internal_errors": sum(r["error_code"] == INTERNAL_ERROR for r in results),
        "errors": {r["shard"]: r["error"] for r in results if r["error"]},
    }
    record = {
        "job": "dedup",
        "materialized_from": layout.root,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config_lib.to_dict(cfg),
        "counts": summary,
        "errors": error_summary(len(shards), summary["shard_errors"], summary),
    }
    storage.write_bytes(target.run_json, json.dumps(record, indent=1).encode())
    return summary
