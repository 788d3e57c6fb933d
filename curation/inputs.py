"""Turn the user's inputs (directories, globs, manifests, single files) into deterministic tasks.

A task is a fixed group of input videos; its id names the output shards (`shard-TTTTTT-PPP.tar`)
and its completion marker, so the same inputs always give the same tasks and a rerun rewrites
the same names.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curation import storage

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet", ".jsonl")
GLOB_CHARS = set("*?[")


class InputError(ValueError):
    """An input argument names nothing usable (the job cannot start)."""


@dataclass(frozen=True)
class Task:
    """A deterministic group of input videos."""

    task_id: int
    uris: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.task_id:06d}"


def _suffix(uri: str) -> str:
    return PurePosixPath(uri.split("?")[0]).suffix.lower()


def _resolve_relative(entry: str, manifest_uri: str) -> str:
    """Manifest entries may be relative to the manifest's own folder."""
    if "://" in entry or os.path.isabs(entry):
        return entry
    base = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    return storage.join(base, entry) if not storage.is_local(base) else os.path.join(base, entry)


def read_manifest(uri: str) -> list[str]:
    """URIs listed in a manifest: `.txt` one per line, `.csv`/`.parquet`/`.jsonl` with a `uri` column."""
    suffix = _suffix(uri)
    data = storage.read_bytes(uri)
    if suffix == ".txt":
        entries = [ln.strip() for ln in data.decode().splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    elif suffix == ".jsonl":
        entries = []
        for n, line in enumerate(data.decode().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if "uri" not in row:
                    raise InputError(f"{uri}: line {n} has no 'uri' field")
                entries.append(str(row["uri"]))
    else:
        import pyarrow as pa

        table = (
            pacsv.read_csv(pa.BufferReader(data))
            if suffix == ".csv"
            else pq.read_table(pa.BufferReader(data))
        )
        if "uri" not in table.column_names:
            raise InputError(
                f"{uri}: manifest has no 'uri' column (columns: {', '.join(table.column_names)})"
            )
        entries = [str(v) for v in table.column("uri").to_pylist() if v]
    return [_resolve_relative(e, uri) for e in entries]


def _expand_glob(pattern: str) -> list[str]:
    if storage.is_local(pattern):
        return [p for p in glob.glob(storage.local_path(pattern), recursive=True) if os.path.isfile(p)]
    import fsspec

    fs, _ = fsspec.core.url_to_fs(pattern)
    protocol = pattern.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in fs.glob(pattern)]


def expand_inputs(inputs: list[str], extensions: list[str]) -> list[str]:
    """All input video URIs, sorted and de-duplicated; raises InputError for an argument matching nothing."""
    exts = {e.lower() for e in extensions}
    found: list[str] = []
    for item in inputs:
        if GLOB_CHARS & set(item):
            matches = _expand_glob(item)
        elif not storage.exists(item):
            raise InputError(f"input {item!r} does not exist")
        elif storage.is_file(item):
            matches = read_manifest(item) if _suffix(item) in MANIFEST_SUFFIXES else [item]
        else:
            matches = [u for u in storage.list_files(item) if _suffix(u) in exts]
        if not matches:
            raise InputError(f"input {item!r} matches no video files")
        found.extend(matches)
    normalized = {os.path.abspath(u) if storage.is_local(u) else u for u in found}
    return sorted(normalized)


def make_tasks(uris: list[str], videos_per_task: int) -> list[Task]:
    """Group sorted URIs into consecutive tasks of `videos_per_task`."""
    return [
        Task(i, tuple(uris[start : start + videos_per_task]))
        for i, start in enumerate(range(0, len(uris), videos_per_task))
    ]


def expand_shards(inputs: list[str]) -> list[str]:
    """Webdataset shard URLs from directories (their `*.tar`, or a run's `shards/`), globs, brace
    patterns (`shard-{000..009}.tar`), single files, remote URIs and `pipe:` commands, in order."""
    from braceexpand import braceexpand

    found: list[str] = []
    for item in inputs:
        for spec in braceexpand(item) if not item.startswith("pipe:") else [item]:
            if spec.startswith("pipe:"):
                matches = [spec]
            elif GLOB_CHARS & set(spec):
                matches = sorted(_expand_glob(spec))
            elif not storage.exists(spec):
                raise InputError(f"input {spec!r} does not exist")
            elif storage.is_file(spec):
                matches = [spec]
            else:
                matches = [u for u in storage.list_files(spec, recursive=False) if _suffix(u) == ".tar"]
                if not matches:  # a curate or recaption OUT: its shards
                    inner = storage.join(spec, "shards")
                    matches = [u for u in storage.list_files(inner, recursive=False) if _suffix(u) == ".tar"]
            if not matches:
                raise InputError(f"input {spec!r} matches no .tar shards")
            found.extend(
                os.path.abspath(u) if storage.is_local(u) and not u.startswith("pipe:") else u
                for u in matches
            )
    return list(dict.fromkeys(found))  # in the order given, each once


def expand_input_shards(inputs: list[str], output: str) -> list[str]:
    """`expand_shards` for a job that writes shards to `output`: an input inside it is refused (a rerun
    would read its own output)."""
    uris = expand_shards(inputs)
    root = output.rstrip("/") + "/"
    inside = [u for u in uris if u.startswith(root) or os.path.abspath(u).startswith(os.path.abspath(root))]
    if inside:
        raise InputError(f"input shard {inside[0]} lies inside --output {output}; write to another directory")
    return uris


def in_sample(key: str, fraction: float, seed: int = 0) -> bool:
    """Whether `key` falls in a deterministic `fraction` of all keys (the same on every rerun)."""
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def check_subset(sample: float | None, limit: int | None) -> None:
    """Validate `--sample` and `--limit`."""
    if sample is not None and not 0 < sample <= 1:
        raise InputError(f"--sample must be in (0, 1], got {sample}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
