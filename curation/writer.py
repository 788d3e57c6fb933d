"""The write stage: a task's clips into webdataset shards, its rows into the manifests, then its marker.

Writes are idempotent: the task's leftovers from an interrupted attempt are removed first, every
file appears under its final name only when complete, and the completion marker comes last, naming
each file with its size and checksum, so a task either counts as done with all its outputs in place
(`curation.resume` checks them on a rerun) or is redone from scratch.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from curation import storage
from curation.curate_config import CurateConfig
from curation.filters import ClipFilter
from curation.layout import OutputLayout
from curation.quarantine import INTERNAL_ERROR, TRANSIENT_EXHAUSTED
from curation.record import CLIP_SCHEMA, VIDEO_SCHEMA, embedding_schema, manifest_schema, table
from curation.shards import TaskShardWriter, task_prefix
from curation.splitter import TaskResult


def parquet_bytes(rows: list[dict], schema, run_fingerprint: str | None = None) -> bytes:
    """A manifest part: `rows` with exactly `schema`'s columns and the manifests' key-value metadata."""
    sink = io.BytesIO()
    pq.write_table(table(rows, manifest_schema(schema, run_fingerprint)), sink)
    return sink.getvalue()


def write_output(layout: OutputLayout, outputs: dict[str, dict], uri: str, data: bytes) -> None:
    """Write one file of a task and record its size and checksum in `outputs` (for the marker)."""
    outputs[layout.relative(uri)] = storage.write_bytes(uri, data)


def shard_outputs(layout: OutputLayout, writer: TaskShardWriter) -> dict[str, dict]:
    """The parts a shard writer published, as a marker records them (paths relative to OUT)."""
    return {
        layout.relative(storage.join(writer.directory, name)): info for name, info in writer.files.items()
    }


def shard_index_entries(layout: OutputLayout, writer: TaskShardWriter) -> dict[str, dict]:
    """Each part a shard writer published, for `shards/index.json` (`curation.shard_index`): samples,
    members, bytes, first and last key, by path relative to OUT."""
    return {
        layout.relative(storage.join(writer.directory, name)): {**stats, "bytes": writer.files[name]["bytes"]}
        for name, stats in writer.stats.items()
        if name in writer.files
    }


def clear_task(layout: OutputLayout, task_id: int) -> None:
    """Remove whatever an earlier, unfinished attempt at this task left behind."""
    storage.delete(layout.marker(task_id))
    for directory in (layout.shards, layout.dropped):
        for uri in storage.list_files(directory, recursive=False):
            if uri.rsplit("/", 1)[-1].startswith(task_prefix(task_id)):
                storage.delete(uri)
    for directory in (
        layout.videos_manifest,
        layout.clips_manifest,
        layout.embeddings_manifest,
        layout.shards_manifest,
    ):
        storage.delete(layout.manifest_part(directory, task_id))


def task_summary(result: TaskResult, shards: list[str]) -> dict:
    """Counts for the marker, the driver's progress line and run.json."""
    clips = [c for c in result.clips if not c.is_transition]
    kept = [c for c in clips if c.kept]
    return {
        "task_id": result.task_id,
        "videos": len(result.videos),
        "videos_ok": sum(v["status"] == "ok" for v in result.videos),
        "video_errors": dict(Counter(v["error_code"] for v in result.videos if v["status"] != "ok")),
        "seconds_in": sum(v.get("duration_s") or 0.0 for v in result.videos if v["status"] == "ok"),
        "shots": sum(v.get("num_shots") or 0 for v in result.videos),
        "clips": len(clips),
        "clips_kept": len(kept),
        "seconds_kept": sum(c.duration_s for c in kept),
        "drop_reasons": dict(Counter(c.drop_reason for c in clips if not c.kept)),
        "transitions": dict(Counter(c.transition for c in result.clips if c.is_transition)),
        "internal_errors": _failures(result, INTERNAL_ERROR),
        "transient_exhausted": _failures(result, TRANSIENT_EXHAUSTED),
        "shards": shards,
        "processing_s": sum(v.get("processing_s") or 0.0 for v in result.videos),
    }


def _failures(result: TaskResult, code: str) -> int:
    """Videos and clips of the task recorded with `code` (internal_error, transient_exhausted)."""
    return sum(v.get("error_code") == code for v in result.videos) + sum(
        c.drop_reason == code for c in result.clips
    )


def apply_filters(result: TaskResult, clip_filter: ClipFilter) -> None:
    """Apply the filter rules to every written clip that no earlier stage dropped (idempotent)."""
    for record in result.clips:
        if record.kept and record.clip_id in result.media:
            camera = (record.camera or {}).get("label")
            record.kept, record.drop_reason = clip_filter({**record.scores, "camera": camera})


def _embedding_rows(result: TaskResult) -> list[dict]:
    rows = []
    for clip_id, frames in sorted(result.embeddings.items()):
        mean = frames.astype(np.float32).mean(axis=0)
        mean /= max(float(np.linalg.norm(mean)), 1e-8)
        rows.append(
            {"clip_id": clip_id, "embedding": mean.astype(np.float16), "frame_embeddings": list(frames)}
        )
    return rows


class TaskWriter:
    """Decide what is kept, write one task's outputs under OUT and mark the task complete."""

    def __init__(self, out: str, cfg: CurateConfig, run_fingerprint: str):
        self.layout = OutputLayout(out)
        self.cfg = cfg
        self.clip_filter = ClipFilter(cfg.filters)
        self.run_fingerprint = run_fingerprint

    def run(self, result: TaskResult, extra: dict | None = None) -> dict:
        """Write the task; `extra` (e.g. the captioning stats) joins its summary and marker."""
        layout, limits = self.layout, self.cfg.shards
        apply_filters(result, self.clip_filter)
        clear_task(layout, result.task_id)
        with contextlib.ExitStack() as stack:
            shards = stack.enter_context(
                TaskShardWriter(layout.shards, result.task_id, limits.max_clips, limits.max_bytes)
            )
            dropped = None
            if limits.keep_dropped:
                dropped = stack.enter_context(
                    TaskShardWriter(layout.dropped, result.task_id, limits.max_clips, limits.max_bytes)
                )
            for record in result.clips:
                media = result.media.get(record.clip_id)
                target = shards if record.kept else dropped
                if media is not None and target is not None:
                    # the record names its own shard, so the part is chosen before the json is made
                    record.shard = target.place(len(media["mp4"]) + len(media["jpg"]))
                    record.location = "shards" if record.kept else "dropped"
                    target.write(record.clip_id, {**media, "json": record.to_json()})
        outputs = shard_outputs(layout, shards) | (shard_outputs(layout, dropped) if dropped else {})
        if result.embeddings:
            write_output(
                layout, outputs,
                layout.manifest_part(layout.embeddings_manifest, result.task_id),
                parquet_bytes(_embedding_rows(result), embedding_schema(self._embedding_dim(result))),
            )  # fmt: skip
        for directory, rows, schema in (
            (layout.videos_manifest, result.videos, VIDEO_SCHEMA),
            (layout.clips_manifest, [c.to_row() for c in result.clips], CLIP_SCHEMA),
        ):
            write_output(
                layout, outputs, layout.manifest_part(directory, result.task_id),
                parquet_bytes(rows, schema, self.run_fingerprint),
            )  # fmt: skip
        summary = task_summary(result, shards.written) | (extra or {})
        summary["shard_index"] = shard_index_entries(layout, shards) | (
            shard_index_entries(layout, dropped) if dropped else {}
        )
        # the marker comes last, naming every file above with its size and checksum (`curation.resume`)
        marker = {**summary, "outputs": outputs, "run_fingerprint": self.run_fingerprint}
        storage.write_bytes(layout.marker(result.task_id), json.dumps(marker, indent=1).encode())
        return summary | {"outputs": outputs}

    @staticmethod
    def _embedding_dim(result: TaskResult) -> int:
        return int(next(iter(result.embeddings.values())).shape[-1])
