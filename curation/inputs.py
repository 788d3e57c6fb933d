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
import sys
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curation import storage
from curation.errors import InputRejected

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
    """URIs listed in a manifest: `.txt` one per line, `.csv`/`.parquet`/`.jsonl` with a `uri` column.

    A `.jsonl` line that is not a JSON object with a `uri` is left out and told (one bad line of a
    million must not stop the job); a manifest with no usable entry at all is an InputError."""
    suffix = _suffix(uri)
    if suffix == ".txt":
        entries = [ln.strip() for ln in storage.read_bytes(uri).decode(errors="replace").splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    elif suffix == ".jsonl":
        entries, bad = [], []
        for n, line in enumerate(storage.read_bytes(uri).decode(errors="replace").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    entries.append(str(row["uri"]))
                except (json.JSONDecodeError, TypeError, KeyError):
                    bad.append(n)
        if bad:
            print(
                f"reelmill: {uri}: {len(bad)} line(s) without a 'uri' left out (first: line {bad[0]})",
                file=sys.stderr,
            )
    else:
        source = storage.open_input_file(uri)
        try:
            table = pacsv.read_csv(source) if suffix == ".csv" else pq.read_table(source)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # not a CSV / Parquet file at all
            raise InputError(f"{uri}: manifest cannot be read: {exc}") from None
        if "uri" not in table.column_names:
            raise InputError(
                f"{uri}: manifest has no 'uri' column (columns: {', '.join(table.column_names)})"
            )
        entries = [str(v) for v in table.column("uri").to_pylist() if v]
    return [_resolve_relative(e, uri) for e in entries]


def _expand_glob(pattern: str) -> list[str]:
    """Files matching a glob, as absolute paths or full URIs: a match named `pipe:CMD.tar` must stay a
    file name, never become a command for webdataset."""
    if storage.is_local(pattern):
        matches = glob.glob(storage.local_path(pattern), recursive=True)
        return [os.path.abspath(p) for p in matches if os.path.isfile(p)]
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


def scheme(uri: str) -> str:
    """`file` for a local path, else the URI's scheme, lower-cased."""
    return "file" if storage.is_local(uri) else uri.split("://", 1)[0].lower()


def check_scheme(uri: str, schemes: list[str]) -> None:
    """Raise InputRejected (`scheme_not_allowed`) for an input whose scheme `input.schemes` leaves out."""
    if scheme(uri) not in schemes:
        raise InputRejected(
            "scheme_not_allowed", f"{scheme(uri)}:// is not in input.schemes ({', '.join(schemes)})"
        )


def make_tasks(uris: list[str], videos_per_task: int) -> list[Task]:
    """Group sorted URIs into consecutive tasks of `videos_per_task`."""
    return [
        Task(i, tuple(uris[start : start + videos_per_task]))
        for i, start in enumerate(range(0, len(uris), videos_per_task))
    ]


def expand_shards(inputs: list[str]) -> list[str]:
    """Webdataset shard URLs from directories (their `*.tar`, or a run's `shards/`), globs, brace
    patterns (`shard-{000..009}.tar`), single files, remote URIs and `pipe:` commands, in order.

    A `pipe:` command is honoured only as an argument given literally; every file found by a glob or a
    directory listing comes back as an absolute path or full URI, whatever its name."""
    from braceexpand import braceexpand

    found: list[str] = []
    for item in inputs:
        for spec in braceexpand(item) if not item.startswith("pipe:") else [item]:
            if spec.startswith("pipe:"):  # typed by the user: the one place a command is taken
                found.append(spec)
                continue
            if GLOB_CHARS & set(spec):
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
            found.extend(_absolute(u) for u in matches)
    return list(dict.fromkeys(found))  # in the order given, each once


def _absolute(uri: str) -> str:
    return os.path.abspath(storage.local_path(uri)) if storage.is_local(uri) else uri


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
