"""Where a run's outputs live under OUT (DESIGN.md's output layout), in one place."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation import storage
from curation.record import STRUCTS


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

    @property
    def lock(self) -> str:
        """The lock of the job that holds OUT now (`jobs.output_lock`): the job's, not the run's."""
        return self.path("_state", "lock.json")

    OWNED = (
        "run.json",
        "shards/shard-*.tar",
        "shards/index.json",
        "dropped/shard-*.tar",
        *(
            f"manifest/{name}/*.parquet"
            for name in ("videos", "clips", "embeddings", "shards", "samples", "dedup")
        ),
        "dedup/keep.txt",
        "dedup/run.json",
        "_markers/task-*.json",
        "_state/**",
        "report/index.html",
        "report/report.json",
        "report/plots/*.png",
        "report/sheets/*.jpg",
        "report/clips.html",
        "report/browser/**",
    )
    """The files a run writes, as patterns relative to OUT (`**`: everything below), each also with its
    temporaries (`NAME.tmp-*`, left by a write that was cut off). `--overwrite` deletes these and nothing
    else: OUT may be a directory the user also keeps files in (or, by mistake, their home directory, with a
    `report/` of its own), and a directory deleted wholesale would take their files with it."""

    TEMPORARY = ".tmp-*"

    def holds_run(self) -> bool:
        """Whether OUT holds a reelmill run (of any job): its spec, a run.json a job wrote, or a marker.
        Only then may `--overwrite` delete anything there."""
        if storage.exists(self.spec):
            return True
        if storage.exists(self.run_json):
            try:
                run = json.loads(storage.read_bytes(self.run_json))
            except ValueError:
                run = None
            if isinstance(run, dict) and "job" in run:
                return True
        return any(fnmatch.fnmatchcase(name, "task-*.json") for name in self.entries("_markers"))

    def entries(self, *parts: str) -> list[str]:
        """The names directly under OUT (or OUT/parts), a directory's with a trailing `/`, sorted; one
        listing, however much lies below."""
        fs, path = storage.filesystem(self.path(*parts) if parts else self.root)
        if fs.get_file_info(path).type != pafs.FileType.Directory:  # not there, or a file of that name
            return []
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(
            info.base_name + ("/" if info.type == pafs.FileType.Directory else "")
            for info in infos
            if info.type in (pafs.FileType.File, pafs.FileType.Directory)
        )

    def owned_files(self, under: str = "") -> list[str]:
        """Every file under OUT that `OWNED` names (only its patterns below `under`, e.g. "report", when
        given), except the lock: one listing per directory it names."""
        by_dir: dict[str, list[str]] = {}
        for pattern in self.OWNED:
            if under and not pattern.startswith(under.rstrip("/") + "/"):
                continue
            directory, _, name = pattern.rpartition("/")
            by_dir.setdefault(directory, []).append(name)
        found = []
        for directory, names in by_dir.items():
            parts = directory.split("/") if directory else []
            if names == ["**"]:
                found += storage.list_files(self.path(*parts), recursive=True)
                continue
            found += [
                self.path(*parts, entry)
                for entry in self.entries(*parts)
                if any(
                    fnmatch.fnmatchcase(entry, n) or fnmatch.fnmatchcase(entry, n + self.TEMPORARY)
                    for n in names
                )
            ]
        # the lock and its temporaries (a heartbeat being written) are the job's: it holds OUT meanwhile
        return [uri for uri in found if uri != self.lock and not uri.startswith(self.lock + ".tmp-")]

    def owned_dirs(self) -> list[str]:
        """The directories `OWNED` names, and every directory below a `DIR/**` pattern (`_state/`, the
        clip browser's `report/browser/`), deepest first: those an
        `--overwrite` removes once it has left them empty."""
        named = set()
        for pattern in self.OWNED:
            parts = pattern.split("/")[:-1]
            named |= {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
        for pattern in self.OWNED:  # a `DIR/**` pattern owns every directory below DIR
            if pattern.endswith("/**"):
                base = pattern[: -len("/**")]
                named |= {f"{base}/{rel}" for rel in self._dirs_below(self.path(*base.split("/"))) if rel}
        deepest_first = sorted(named, key=lambda rel: (-rel.count("/"), rel))
        return [self.path(*rel.split("/")) for rel in deepest_first]

    @staticmethod
    def _dirs_below(uri: str) -> list[str]:
        """Every directory below `uri`, relative to it."""
        fs, path = storage.filesystem(uri)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        return [i.path[len(path) :].strip("/") for i in infos if i.type == pafs.FileType.Directory]

    @staticmethod
    def remove_dir_if_empty(uri: str) -> None:
        """Remove the directory `uri` if nothing is in it; one that holds anything, or is not there, stays."""
        if storage.is_local(uri):
            with contextlib.suppress(OSError):  # rmdir refuses a directory that is not empty
                os.rmdir(storage.local_path(uri))
            return
        fs, path = storage.filesystem(uri)
        if fs.get_file_info(path).type == pafs.FileType.Directory and not fs.get_file_info(
            pafs.FileSelector(path, recursive=True, allow_not_found=True)
        ):
            fs.delete_dir(path)

    def relative(self, uri: str) -> str:
        """`uri` (a file under OUT) as a path relative to OUT, as markers record their files."""
        return uri[len(storage.join(self.root, "")) :].lstrip("/")  # the root as `path` spells it

    def shard_files(self) -> list[str]:
        return [u for u in storage.list_files(self.shards, recursive=False) if u.endswith(".tar")]

    def manifest_parts(self, manifest_dir: str) -> list[str]:
        return sorted(u for u in storage.list_files(manifest_dir, recursive=False) if u.endswith(".parquet"))

    def iter_manifest(self, manifest_dir: str, columns: list[str] | None = None, batch_rows: int = 4096):
        """A manifest's rows as flat dicts, one record batch of one part file at a time, so memory stays
        bounded however large the run; `columns` limits what is read (absent ones are skipped).

        Rows read the same from every layout of the clip manifest (`curation.record.SCHEMA_VERSION`):
        struct columns come out as dotted keys (`scores.motion`, `caption.summary`, `camera.label`), as
        the columns of layout 1 were named, and `caption_metrics` as a dict (layout 1 held JSON text)."""

        for uri in self.manifest_parts(manifest_dir):
            part = pq.ParquetFile(storage.open_input_file(uri))
            names = set(part.schema_arrow.names)
            wanted = None if columns is None else _physical_columns(columns, names)
            for batch in part.iter_batches(batch_size=batch_rows, columns=wanted):
                for row in batch.to_pylist():
                    row = flat_row(row)
                    yield row if columns is None else {c: row.get(c) for c in columns if c in row}

    def manifest_columns(self, manifest_dir: str) -> set[str]:
        """The column names `iter_manifest` gives for a manifest (struct fields as dotted names)."""
        names: set[str] = set()
        for uri in self.manifest_parts(manifest_dir):
            for f in pq.ParquetFile(storage.open_input_file(uri)).schema_arrow:
                if f.name in FLATTENED and pa.types.is_struct(f.type):
                    names |= {f"{f.name}.{sub.name}" for sub in f.type}
                else:
                    names.add(f.name)
        return names

    def read_manifest(self, manifest_dir: str):
        """A manifest directory as one pyarrow Table (every part file)."""
        import pyarrow as pa

        tables = [pq.read_table(storage.open_input_file(u)) for u in self.manifest_parts(manifest_dir)]
        return pa.concat_tables(tables) if tables else None


FLATTENED = ("scores", "camera", "caption")
"""Struct columns of the clip manifest that `iter_manifest` gives as dotted keys."""


def _physical_columns(columns: list[str], names: set[str]) -> list[str]:
    """The columns (or struct fields, as `struct.field` paths) of a part file that hold `columns`."""
    out = []
    for c in columns:
        head = c.split(".", 1)[0]
        if c in names or (head in FLATTENED and head in names and head != c):
            out.append(c)
    return out


def flat_row(row: dict) -> dict:
    """A manifest row of any layout as layout 1 named it (see `OutputLayout.iter_manifest`); a null
    struct gives nulls for all its fields, as layout 1's columns did."""
    for name in FLATTENED:
        if name in row:
            value = row.pop(name) or dict.fromkeys(f.name for f in STRUCTS[name])
            row.update({f"{name}.{k}": v for k, v in value.items()})
    metrics = row.get("caption_metrics")
    if isinstance(metrics, str):
        row["caption_metrics"] = json.loads(metrics)
    return row
