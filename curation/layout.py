"""Where a run's outputs live under OUT (DESIGN.md's output layout), in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.parquet as pq

from curation import storage


@dataclass(frozen=True)
class OutputLayout:
    root: str

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def shards(self) -> str:
        return self.path("shards")

    @property
    def dropped(self) -> str:
        return self.path("dropped")

    @property
    def videos_manifest(self) -> str:
        return self.path("manifest", "videos")

    @property
    def clips_manifest(self) -> str:
        return self.path("manifest", "clips")

    @property
    def embeddings_manifest(self) -> str:
        return self.path("manifest", "embeddings")

    @property
    def shards_manifest(self) -> str:
        """`recaption`: one row per input shard."""
        return self.path("manifest", "shards")

    @property
    def samples_manifest(self) -> str:
        """`encode`: one row per input sample: written, or skipped and why."""
        return self.path("manifest", "samples")

    @property
    def markers(self) -> str:
        return self.path("_markers")

    @property
    def spec(self) -> str:
        return self.path("_state", "spec.json")

    @property
    def run_json(self) -> str:
        return self.path("run.json")

    @property
    def report(self) -> str:
        return self.path("report")

    def marker(self, task_id: int) -> str:
        return storage.join(self.markers, f"task-{task_id:06d}.json")

    def manifest_part(self, manifest_dir: str, task_id: int) -> str:
        return storage.join(manifest_dir, f"task-{task_id:06d}.parquet")

    def owned_dirs(self) -> list[str]:
        """Everything a run writes; `--overwrite` removes exactly these."""
        return [
            self.shards,
            self.dropped,
            self.path("manifest"),
            self.markers,
            self.path("_state"),
            self.report,
        ]

    def completed_markers(self) -> dict[int, dict]:
        """Task id -> marker content for every completed task."""
        done = {}
        for uri in storage.list_files(self.markers, recursive=False):
            name = uri.rsplit("/", 1)[-1]
            if name.startswith("task-") and name.endswith(".json"):
                done[int(name[5:-5])] = json.loads(storage.read_bytes(uri))
        return done

    def shard_files(self) -> list[str]:
        return [u for u in storage.list_files(self.shards, recursive=False) if u.endswith(".tar")]

    def manifest_parts(self, manifest_dir: str) -> list[str]:
        return sorted(u for u in storage.list_files(manifest_dir, recursive=False) if u.endswith(".parquet"))

    def iter_manifest(self, manifest_dir: str, columns: list[str] | None = None, batch_rows: int = 4096):
        """A manifest's rows as dicts, one record batch of one part file at a time, so memory stays
        bounded however large the run; `columns` limits what is read (absent ones are skipped)."""

        for uri in self.manifest_parts(manifest_dir):
            part = pq.ParquetFile(storage.open_input_file(uri))
            names = part.schema_arrow.names
            wanted = None if columns is None else [c for c in columns if c in names]
            for batch in part.iter_batches(batch_size=batch_rows, columns=wanted):
                yield from batch.to_pylist()

    def read_manifest(self, manifest_dir: str):
        """A manifest directory as one pyarrow Table (every part file)."""
        import pyarrow as pa

        tables = [pq.read_table(storage.open_input_file(u)) for u in self.manifest_parts(manifest_dir)]
        return pa.concat_tables(tables) if tables else None
