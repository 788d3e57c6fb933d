"""`reelmill encode`: clip shards in, latent shards out, so training loads no VAE or text encoder.

Each written sample holds `KEY.latent.npy` (float16 [C, T', H', W']: the normalized VAE latent of the
clip's `frames.*` window, decoded exactly as the data module decodes clips), `KEY.text.npy` (float16
[V, L, D]: the text encoder's token embeddings of each caption variant, dense then summary, zero
padded to the longest), `KEY.text_mask.npy` (bool [V, L]), `KEY.json` (the record, with an `encoding`
section) and `KEY.txt` (the dense caption). A sample that cannot be encoded (no video, no caption,
too short for `frames.num_frames` at `frames.fps`, undecodable, a member over the `io` limits) is not
written: it is a row in `manifest/samples` with its reason, like every sample.

Input shards are untrusted, and one bad item never ends the job: a shard that cannot be read (missing,
not a tar, compressed when `io.allow_compressed` is false) is a `shard_error` row, after the samples
before the damage; an exception on one sample (a bug of ours) is an `internal_error` row with a
traceback, counted in run.json; a `KEY.json` with wrongly typed fields is used with those fields
removed, one reason each in the record's `errors` and the row's `invalid_record`. Keys are written
made safe (`curation.shards.safe_key`); a row keeps the original as `input_key`. Transient failures
(timeouts, a full disk) end the Ray task, which is retried, and leave the task without its marker.

The Ray Data pipeline: tasks of input shards are read and their clips decoded in CPU tasks, which
hand on chunks of `shards.clips_per_shard` clips (memory stays bounded however large a shard); an
actor pool holds the VAE and the text encoder (on a GPU each when the cluster has GPUs) and encodes
chunk after chunk; CPU tasks write each chunk as one shard part `shard-TTTTTT-CCC.tar` with its
manifest part. A task's completion marker is written once all its chunks are, so a rerun after a
crash redoes exactly the unfinished tasks, as `curate` does.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import pickle
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import ray

from curation import config as config_lib
from curation import ffmpeg_tools, storage
from curation.inputs import Task, expand_input_shards, make_tasks
from curation.layout import OutputLayout
from curation.quarantine import INTERNAL_ERROR, internal_error_row
from curation.record_check import check_record_json
from curation.resume import log_redone, trusted_markers
from curation.safe_tar import TOO_LARGE
from curation.shard_index import write_shard_index
from curation.shards import (
    TaskShardWriter,
    iter_samples,
    member,
    raise_if_transient,
    safe_key,
    shard_failure,
    video_member,
)
from curation.writer import clear_task, parquet_bytes, shard_index_entries, shard_outputs, write_output
from jobs.curate import prepare_output
from jobs.job_configs import NOT_IN_FINGERPRINT, EncodeConfig
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
from jobs.run_info import encoder_models_label, models_note, versions

NOT_ERRORS = ("too_short", "no_caption", "no_video")
"""Skip reasons that are a selection (the clip does not fit the encoding), not an error in the input."""

SAMPLE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # as written (see curation.shards.safe_key)
        ("input_key", pa.string()),  # the key in the input shard, when it had to be changed
        ("input_shard", pa.string()),
        ("task_id", pa.int64()),
        ("status", pa.string()),  # ok | skipped | shard_error
        # no_video | no_caption | too_short | undecodable | member_too_large: ... | internal_error: ...
        # | unreadable: ... | compressed_shard: ...
        ("reason", pa.string()),
        ("traceback", pa.string()),  # internal_error rows: where the bug is
        ("invalid_record", pa.list_(pa.string())),  # KEY.json fields removed, one reason each
        ("shard", pa.string()),
        ("latent_shape", pa.list_(pa.int64())),
        ("text_tokens", pa.list_(pa.int64())),  # real tokens per caption variant
    ]
)

MAX_RETRIES = 3
"""Ray retries of a task that failed transiently (the row functions raise those as `TransientError`;
anything else about one item is a row) or whose worker died."""


def _ids(key: str, uri: str) -> dict:
    """The manifest's key columns: the key as written, and the input's key when it had to change."""
    written = safe_key(key)
    return {"key": written, "input_key": key if written != key else None, "input_shard": uri}


def _internal_row(ids: dict, exc: BaseException, stage: str) -> dict:
    """The skipped row of a sample on which our code raised."""
    fields = internal_error_row(exc, stage)
    reason = f"{INTERNAL_ERROR}: {fields['error']}"
    return ids | {"status": "skipped", "reason": reason, "traceback": fields["traceback"]}


def _decode_sample(sample: dict, cfg: EncodeConfig) -> tuple[dict | None, str | None, list[str]]:
    """(the clip ready for the encoders, None, problems) or (None, why it is skipped, problems);
    `problems`: the KEY.json fields removed as wrongly typed, one reason each."""
    from training.data import ClipTooShort, CorruptClip, caption_variants, decode_clip

    json_name = member(sample, "json")
    checked = check_record_json(sample[json_name] if json_name else None)
    if TOO_LARGE in sample:
        return None, f"member_too_large: {sample[TOO_LARGE]}", checked.problems
    video = video_member(sample)
    if video is None:
        return None, "no_video", checked.problems
    # the caption is read from the checked record: a segment with `"start_s": "abc"` is gone from it
    variants = caption_variants({**sample, json_name: checked.record} if json_name else sample)
    if not variants:
        return None, "no_caption", checked.problems
    f = cfg.frames
    try:
        frames = decode_clip(sample[video], f.num_frames, f.fps, f.height, f.width, crop=f.crop)
    except ClipTooShort:
        return None, "too_short", checked.problems
    except CorruptClip:
        return None, "undecodable", checked.problems
    record = checked.record
    if checked.problems:
        record["errors"] = list(record.get("errors") or []) + checked.error_entries()
    clip = {"key": sample["__key__"], "frames": frames.numpy(), "variants": variants, "record": record}
    return clip, None, checked.problems


def _read_sample(sample: dict, uri: str, cfg: EncodeConfig) -> tuple[dict | None, dict | None]:
    """(the decoded clip, None) or (None, its skipped row); our own exception on it is that row too."""
    ids = _ids(sample["__key__"], uri)
    try:
        clip, reason, invalid = _decode_sample(sample, cfg)
    except Exception as exc:  # noqa: BLE001 (one sample's bug is that sample's row)
        raise_if_transient(exc)
        return None, _internal_row(ids, exc, "encode.decode")
    if clip is None:
        return None, ids | {"status": "skipped", "reason": reason, "invalid_record": invalid or None}
    return clip | {"input_shard": uri, "invalid": invalid}, None


def _read_task(row: dict, cfg: EncodeConfig):
    """Yield a task's clips in chunks of `clips_per_shard`, decoded; skipped samples and unreadable
    shards ride on the first chunk. A task always yields at least one (perhaps empty) chunk."""
    try:
        yield from _read_chunks(row, cfg)
    except Exception as exc:
        raise_if_transient(exc)  # so that Ray retries the task (see task_retry_args)
        raise


def _read_chunks(row: dict, cfg: EncodeConfig):
    task: Task = pickle.loads(row["task"])
    size, io = cfg.shards.clips_per_shard, cfg.io
    skipped, chunk, index, io_before = [], [], 0, storage.io_retries()

    def emit(last: bool):
        nonlocal skipped, chunk, index, io_before
        out = {
            "task_id": task.task_id,
            "chunk": index,
            "last": last,
            "clips": pickle.dumps(chunk),
            "skipped": pickle.dumps(skipped),
            "io_retries": storage.io_retries() - io_before,  # since the chunk before
        }
        skipped, chunk, index, io_before = [], [], index + 1, storage.io_retries()
        return out

    for uri in task.uris:
        try:
            for sample in iter_samples(uri, io.max_member_bytes, io.max_sample_bytes, io.allow_compressed):
                clip, skip = _read_sample(sample, uri, cfg)
                if clip is None:
                    skipped.append(skip)
                    continue
                chunk.append(clip)
                if len(chunk) == size:
                    yield emit(last=False)
        except Exception as exc:  # noqa: BLE001 (shard_failure sorts it: transient, input, or ours)
            fields = shard_failure(exc, "encode.read")
            reason, where = fields["error"], fields.get("traceback")
            if fields["error_code"] == INTERNAL_ERROR:
                reason = f"{INTERNAL_ERROR}: {reason}"
            skipped.append(
                {
                    "key": None,
                    "input_shard": uri,
                    "status": "shard_error",
                    "reason": reason,
                    "traceback": where,
                }
            )
    yield emit(last=True)


class EncodeActor:
    """Ray Data actor: the VAE and the text encoder are loaded once, then encode chunk after chunk."""

    def __init__(self, cfg: EncodeConfig):
        import torch

        from training.encoders import TextEncoder, VideoVAE

        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cfg = cfg
        self.vae = VideoVAE.from_config(cfg.vae, device)
        self.text = TextEncoder.from_config(cfg.text_encoder, device)

    def encode(self, clips: list[dict]) -> tuple[list[dict], list[dict]]:
        """(encoded clips, skipped rows): a batch that raises is encoded again clip by clip, so that
        only a clip our code fails on becomes an internal_error row."""
        out, failed = [], []
        for start in range(0, len(clips), self.cfg.batch_size):
            batch = clips[start : start + self.cfg.batch_size]
            try:
                out += self.encode_batch(batch)
            except Exception as exc:  # noqa: BLE001 (one clip's bug is that clip's row)
                raise_if_transient(exc)
                for clip in batch:
                    try:
                        out += self.encode_batch([clip])
                    except Exception as alone:  # noqa: BLE001
                        raise_if_transient(alone)
                        failed.append(_internal_row(_ids(clip["key"], clip["input_shard"]), alone, "encode"))
        return out, failed

    def encode_batch(self, batch: list[dict]) -> list[dict]:
        """Encode clips of the same shape in one VAE and one text-encoder call."""
        import torch

        from training.data import to_model_range

        out = []
        if batch:
            video = torch.stack([to_model_range(torch.from_numpy(c["frames"])) for c in batch])
            latents = self.vae.encode(video).cpu().numpy().astype(np.float16)  # [B, C, T', H', W']
            prompts = [v for c in batch for v in c["variants"]]
            embeddings, mask = self.text.encode(prompts)  # [sum V, L, D], [sum V, L]
            embeddings, mask = embeddings.float().cpu().numpy(), mask.cpu().numpy()
            row = 0
            for clip, latent in zip(batch, latents, strict=True):
                v = len(clip["variants"])
                m = mask[row : row + v]
                length = max(1, int(m.sum(axis=1).max()))
                text = (embeddings[row : row + v, :length] * m[:, :length, None]).astype(np.float16)
                out.append(
                    {
                        **{k: clip[k] for k in ("key", "input_shard", "record", "variants", "invalid")},
                        "latent": latent,
                        "text": text,
                        "text_mask": m[:, :length].astype(bool),
                    }
                )
                row += v
        return out

    def __call__(self, batch: dict) -> dict:
        out = {k: list(v) for k, v in batch.items() if k not in ("clips", "skipped")}
        out["encoded"], out["skipped"] = [], []
        for clips, skipped in zip(batch["clips"], batch["skipped"], strict=True):
            encoded, failed = self.encode(pickle.loads(clips))
            out["encoded"].append(pickle.dumps(encoded))
            out["skipped"].append(pickle.dumps(pickle.loads(skipped) + failed))
        return out


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _sample_members(sample: dict, cfg: EncodeConfig) -> dict[str, bytes]:
    """The members of one latent sample, the record gaining its `encoding` section."""
    f = cfg.frames
    record = dict(sample["record"])
    record["encoding"] = {
        "num_frames": f.num_frames,
        "fps": f.fps,
        "height": f.height,
        "width": f.width,
        "crop": f.crop,
        "latent_shape": list(sample["latent"].shape),
        "variants": ["dense", "summary"][: len(sample["variants"])],
    }
    return {
        "latent.npy": _npy(sample["latent"]),
        "text.npy": _npy(sample["text"]),
        "text_mask.npy": _npy(sample["text_mask"]),
        "json": json.dumps(record, sort_keys=True).encode(),
        "txt": sample["variants"][0].encode(),
    }


def _write_chunk(row: dict, out: str, cfg: EncodeConfig) -> dict:
    """One chunk -> one shard part and one manifest part; returns the chunk's counts for the driver."""
    try:
        return _write_chunk_files(row, out, cfg)
    except Exception as exc:
        raise_if_transient(exc)  # so that Ray retries the task (see task_retry_args); no marker follows
        raise


def _write_chunk_files(row: dict, out: str, cfg: EncodeConfig) -> dict:
    io_before = storage.io_retries()
    layout = OutputLayout(out)
    task_id, chunk = int(row["task_id"]), int(row["chunk"])
    encoded, skipped = pickle.loads(row["encoded"]), pickle.loads(row["skipped"])
    rows = []
    with TaskShardWriter(layout.shards, task_id, len(encoded) or 1, 2**62, first_part=chunk) as writer:
        for sample in encoded:
            ids = _ids(sample["key"], sample["input_shard"])
            try:
                shard = writer.write(ids["key"], _sample_members(sample, cfg))
            except Exception as exc:  # noqa: BLE001 (one sample's bug is that sample's row)
                raise_if_transient(exc)
                rows.append(_internal_row(ids, exc, "encode.write") | {"task_id": task_id})
                continue
            rows.append(
                ids
                | {
                    "task_id": task_id,
                    "status": "ok",
                    "reason": None,
                    "invalid_record": sample["invalid"] or None,
                    "shard": shard,
                    "latent_shape": list(sample["latent"].shape),
                    "text_tokens": [int(n) for n in sample["text_mask"].sum(axis=1)],
                }
            )
    rows += [s | {"task_id": task_id, "shard": None} for s in skipped]
    outputs = shard_outputs(layout, writer)
    part = storage.join(layout.samples_manifest, f"task-{task_id:06d}-{chunk:03d}.parquet")
    write_output(layout, outputs, part, parquet_bytes(rows, SAMPLE_SCHEMA))
    reasons = Counter(r["reason"].split(":")[0] for r in rows if r["status"] != "ok")
    summary = {
        "written": sum(r["status"] == "ok" for r in rows),
        "skipped": dict(reasons),
        "shards": writer.written,
        "shard_index": shard_index_entries(layout, writer),
        "internal_errors": reasons[INTERNAL_ERROR],
        "invalid_records": sum(bool(r.get("invalid_record")) for r in rows),
        "outputs": outputs,
    }
    return {
        "task_id": task_id, "chunk": chunk, "last": bool(row["last"]), "summary": json.dumps(summary),
        "io_retries": int(row["io_retries"]) + storage.io_retries() - io_before,  # for run.json
    }  # fmt: skip


def _merge(into: dict, summary: dict) -> dict:
    into["written"] = into.get("written", 0) + summary["written"]
    into["skipped"] = dict(Counter(into.get("skipped", {})) + Counter(summary["skipped"]))
    into["shards"] = into.get("shards", []) + summary["shards"]
    into["outputs"] = into.get("outputs", {}) | summary.get("outputs", {})
    if "shard_index" in summary:  # markers written before the shard index have none
        into["shard_index"] = into.get("shard_index", {}) | summary["shard_index"]
    for key in ("internal_errors", "invalid_records"):  # markers written before these counts have none
        into[key] = into.get(key, 0) + summary.get(key, 0)
    return into


def encoder_dims(cfg: EncodeConfig) -> tuple[int, int]:
    """The VAE's latent channels and the text encoder's width, read from their configs: a missing model
    is a ConfigError naming the key to set."""
    from training.encoders import text_encoder_dim, vae_latent_channels

    return vae_latent_channels(cfg.vae), text_encoder_dim(cfg.text_encoder)


def run_encode(
    inputs: list[str],
    output: str,
    cfg: EncodeConfig,
    overwrite: bool = False,
    num_cpus: int | None = None,
    log=print,
    models: str | None = None,
) -> dict:
    """Run the whole encode job; returns what it writes to run.json.

    run.json's `models` is random-weights when the VAE or the text encoder is a tiny stand-in
    (`curation.model_labels`), or when `models` says so (e.g. the label of the run that made the input).

    The job holds OUT (`jobs.output_lock`) from before it changes anything there until run.json is
    written, so a second job on the same OUT stops before it starts Ray.
    """
    with job_output(output, "encode", cfg, log):
        return _run_encode(inputs, output, cfg, overwrite, num_cpus, log, models)


def _run_encode(inputs, output, cfg, overwrite, num_cpus, log, models) -> dict:
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    ffmpeg_tools.require_binaries()
    io_before = storage.io_retries()
    uris = expand_input_shards(inputs, output)
    layout = OutputLayout(output)
    tasks = make_tasks(uris, cfg.input.shards_per_task)
    fingerprint = config_lib.fingerprint(cfg, ignore=NOT_IN_FINGERPRINT)
    spec = {
        "config": config_lib.to_dict(cfg),
        "config_fingerprint": fingerprint,
        "inputs_fingerprint": hashlib.sha256(json.dumps(uris).encode()).hexdigest()[:16],
        "num_inputs": len(uris),
    }
    prepare_output(layout, spec, overwrite)
    resume = trusted_markers(output, fingerprint, cfg.resume.verify)
    done = set(resume.done)
    pending = [t for t in tasks if t.task_id not in done]
    redone = log_redone("encode", resume.redo, {t.task_id for t in pending}, log)
    log(
        f"reelmill encode: {len(uris)} shards in {len(tasks)} tasks; {len(done)} done already, "
        f"{len(pending)} to run"
    )
    keep_going_on_failed_tasks()
    quiet_ray_data()
    for task in pending:
        clear_task(layout, task.task_id)
    # an unfinished task's manifest parts (one per chunk), found with one listing for all of them
    redo = {f"task-{t.task_id:06d}-" for t in pending}
    for uri in storage.list_files(layout.samples_manifest, recursive=False):
        if uri.rsplit("/", 1)[-1][:12] in redo:
            storage.delete(uri)
    fresh: dict[int, dict] = {}
    io_retried = 0  # by the tasks: the driver's own are counted at the end
    with ray_session(num_cpus) as ray_info:
        # fail before any work when a model is missing (their configs name the key to set)
        latent_channels, text_dim = run_where_files_are_read(encoder_dims, cfg, session=ray_info)
        models = run_where_files_are_read(
            encoder_models_label, cfg.vae, cfg.text_encoder, models, session=ray_info
        )
        if pending:
            gpus = cfg.num_gpus
            if gpus is None:
                gpus = 1.0 if ray_info["cluster_resources"].get("GPU", 0) > 0 else 0.0
            fitted = fit_actor_cpus({"encode": (cfg.cpus, cfg.actors)}, cfg.read_cpus, ray_info, log)
            ds = ray.data.from_items(
                [{"task": pickle.dumps(t)} for t in pending], override_num_blocks=len(pending)
            )
            with retry_args_accepted():  # every stage retried on a TransientError or a dead worker
                ds = ds.flat_map(
                    functools.partial(_read_task, cfg=cfg),
                    num_cpus=cfg.read_cpus,
                    **task_retry_args(MAX_RETRIES),
                )
                ds = ds.map_batches(
                    EncodeActor,
                    fn_constructor_kwargs={"cfg": cfg},
                    batch_size=1,  # a row is a chunk of clips: batched inside the actor
                    compute=ray.data.ActorPoolStrategy(size=cfg.actors),
                    num_cpus=fitted["encode"],
                    num_gpus=gpus,
                    memory=int(cfg.memory_gb * 2**30),
                    **actor_retry_args(MAX_RETRIES),
                )
                ds = ds.map(
                    functools.partial(_write_chunk, out=output, cfg=cfg),
                    num_cpus=cfg.write_cpus,
                    **task_retry_args(MAX_RETRIES),
                )
            progress = TaskProgress(
                "encode", layout.run_json, len(tasks),
                (tally("samples", "written", "skipped"), tally("written"), tally("skipped")),
                done_before=len(done),
                header={"job": "encode", "command": sys.argv, "inputs": inputs, "output": output,
                        "started_at": started_at},
            )  # fmt: skip
            chunks: dict[int, list] = {}
            with progress, native_notices_hidden():
                for row in ds.iter_rows():  # a row per written chunk; a task is done with its last
                    task_id = int(row["task_id"])
                    io_retried += int(row["io_retries"])
                    chunks.setdefault(task_id, []).append(row)
                    rows = chunks[task_id]
                    last = next((r for r in rows if r["last"]), None)
                    if last is not None and len(rows) == int(last["chunk"]) + 1:  # every chunk of the task
                        summary = {"task_id": task_id}
                        for r in rows:
                            _merge(summary, json.loads(r["summary"]))
                        storage.write_bytes(
                            layout.marker(task_id),
                            json.dumps({**summary, "run_fingerprint": fingerprint}).encode(),
                        )
                        fresh[task_id] = summary
                        progress.task_done(summary)
    wall = time.perf_counter() - started
    lost = lost_tasks(pending, set(fresh))
    markers = resume.done | fresh
    total: dict = {}
    for t in tasks:
        if t.task_id in markers:
            _merge(total, markers[t.task_id])
    counts = {
        "written": total.get("written", 0),
        "skipped": total.get("skipped", {}),
        "shards": len(total.get("shards", [])),
        "internal_errors": total.get("internal_errors", 0),
        "invalid_records": total.get("invalid_records", 0),
        "transient_exhausted": sum(len(t.uris) for t in lost),
    }
    skipped_for_errors = sum(n for reason, n in counts["skipped"].items() if reason not in NOT_ERRORS)
    run = {
        "job": "encode",
        "state": "finished",
        "command": sys.argv,
        "inputs": inputs,
        "output": output,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": spec["config"],
        "config_fingerprint": fingerprint,
        "versions": versions(("torch", "diffusers", "transformers")),
        "ray": ray_info,
        "tasks": tasks_section(len(tasks), len(fresh), len(done), len(lost), redone),
        "counts": counts,
        "errors": error_summary(
            counts["written"] + sum(counts["skipped"].values()) + counts["transient_exhausted"],
            skipped_for_errors + counts["transient_exhausted"],
            counts,
        ),
        "io": io_report(cfg.io, io_retried + storage.io_retries() - io_before),
        "latent": {"channels": latent_channels, "text_dim": text_dim},
        "timings": {"wall_s": wall, "clips_per_s": sum(s["written"] for s in fresh.values()) / wall},
        "models": models,
    }
    write_shard_index(layout, [markers[t.task_id] for t in tasks if t.task_id in markers], log)
    storage.write_bytes(layout.run_json, json.dumps(run, indent=1).encode())
    log(
        f"reelmill encode: {counts['written']} samples written in {counts['shards']} shards, skipped "
        f"{counts['skipped'] or 'none'}, {counts['invalid_records']} with invalid records, "
        f"{wall:.1f}s -> {output}" + failure_note(counts) + models_note(models)
    )
    return run
