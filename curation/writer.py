"""The write stage: a task's clips into webdataset shards, its rows into the manifests, then its marker.

Writes are idempotent: the task's leftovers from an interrupted attempt are removed first, every
file appears under its final name only when complete, and the completion marker comes last, so
a task either counts as done with all its outputs in place or is redone from scratch.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import pyarrow.parquet as pq

from curation import storage
from curation.layout import OutputLayout
from curation.record import CLIP_SCHEMA, VIDEO_SCHEMA, table
from curation.shards import TaskShardWriter, task_prefix
from curation.splitter import TaskResult


def _parquet_bytes(rows: list[dict], schema) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table(rows, schema), sink)
    return sink.getvalue()


def clear_task(layout: OutputLayout, task_id: int) -> None:
    """Remove whatever an earlier, unfinished attempt at this task left behind."""
    storage.delete(layout.marker(task_id))
    for directory in (layout.shards, layout.dropped):
        for uri in storage.list_files(directory, recursive=False):
            if uri.rsplit("/", 1)[-1].startswith(task_prefix(task_id)):
                storage.delete(uri)
    for directory in (layout.videos_manifest, layout.clips_manifest):
        storage.delete(layout.manifest_part(directory, task_id))


def task_summary(result: TaskResult, shards: list[str]) -> dict:
    """Counts for the marker, the driver's progress line and run.json."""
    kept = [c for c in result.clips if c.kept]
    return {
        "task_id": result.task_id,
        "videos": len(result.videos),
        "videos_ok": sum(v["status"] == "ok" for v in result.videos),
        "video_errors": dict(Counter(v["error_code"] for v in result.videos if v["status"] != "ok")),
        "seconds_in": sum(v.get("duration_s") or 0.0 for v in result.videos if v["status"] == "ok"),
        "shots": sum(v.get("num_shots") or 0 for v in result.videos),
        "clips": len(result.clips),
        "clips_kept": len(kept),
        "seconds_kept": sum(c.duration_s for c in kept),
        "drop_reasons": dict(Counter(c.drop_reason for c in result.clips if not c.kept)),
        "shards": shards,
        "processing_s": sum(v.get("processing_s") or 0.0 for v in result.videos),
    }


class TaskWriter:
    """Write one task's outputs under OUT and mark the task complete."""

    def __init__(self, out: str, max_clips: int, max_bytes: int, run_fingerprint: str):
        self.layout = OutputLayout(out)
        self.max_clips = max_clips
        self.max_bytes = max_bytes
        self.run_fingerprint = run_fingerprint

    def run(self, result: TaskResult) -> dict:
        layout = self.layout
        clear_task(layout, result.task_id)
        with TaskShardWriter(layout.shards, result.task_id, self.max_clips, self.max_bytes) as shards:
            for record in result.clips:
                media = result.media.get(record.clip_id)
                if record.kept and media is not None:
                    # the record names its own shard, so the part is chosen before the json is made
                    record.shard = shards.place(len(media["mp4"]) + len(media["jpg"]))
                    shards.write(record.clip_id, {**media, "json": record.to_json()})
        for directory, rows, schema in (
            (layout.videos_manifest, result.videos, VIDEO_SCHEMA),
            (layout.clips_manifest, [c.to_row() for c in result.clips], CLIP_SCHEMA),
        ):
            storage.write_bytes(layout.manifest_part(directory, result.task_id), _parquet_bytes(rows, schema))
        summary = task_summary(result, shards.written)
        marker = {**summary, "run_fingerprint": self.run_fingerprint}
        storage.write_bytes(layout.marker(result.task_id), json.dumps(marker, indent=1).encode())
        return summary
