"""What a rerun trusts: a task's completion marker, and only when the files it names are intact.

A marker is written last, after every file of its task, and records each file's size and sha256
(`outputs`, paths relative to OUT). A rerun skips a task only when its marker parses, was made under
the run's config with nothing left to retry, and every file it names is there with the recorded size
(`resume.verify: size`, one listing per directory) or also the recorded checksum (`resume.verify:
checksum`, every file read again). Anything else (a marker that does not parse, a shard deleted or
truncated by hand, a file the object store lost) makes the task unfinished: its leftovers are cleared
and it is redone from its inputs, so a damaged output costs one task, never the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from curation import storage
from curation.layout import OutputLayout

MAX_REASONS_LOGGED = 10
"""Redone tasks named one per line in the log; run.json `tasks.redone` has them all."""

CHECKSUM_READERS = 8
"""Files read at once to verify checksums (I/O bound: object stores answer many reads in parallel)."""


@dataclass
class Resume:
    """The markers a rerun trusts, and why the others' tasks are redone."""

    done: dict[int, dict] = field(default_factory=dict)
    """Task id -> marker, for tasks skipped now."""
    redo: dict[int, str] = field(default_factory=dict)
    """Task id -> why its marker is not trusted (unreadable, files missing or damaged)."""


def finished(marker: dict, fingerprint: str) -> bool:
    """Whether a marker can let a rerun skip its task: made under this config, nothing left to retry."""
    return marker.get("run_fingerprint") == fingerprint and not marker.get("transient_exhausted")


def read_markers(layout: OutputLayout) -> tuple[dict[int, dict], dict[int, str]]:
    """Every task marker in OUT that parses, and for each one that does not, why (a marker cut short by
    a crash of an older writer, or edited by hand, makes its task unfinished, not the run stuck)."""
    markers, unreadable = {}, {}
    for uri in storage.list_files(layout.markers, recursive=False):
        name = uri.rsplit("/", 1)[-1]
        if not (name.startswith("task-") and name.endswith(".json") and name[5:-5].isdigit()):
            continue
        task_id = int(name[5:-5])
        try:
            marker = json.loads(storage.read_bytes(uri))
        except (ValueError, UnicodeDecodeError) as exc:
            unreadable[task_id] = f"its marker does not parse ({type(exc).__name__})"
            continue
        if not isinstance(marker, dict):
            unreadable[task_id] = "its marker does not parse (not an object)"
            continue
        markers[task_id] = marker
    return markers, unreadable


def damage(marker: dict, sizes: dict[str, dict[str, int]], sums: dict[str, str] | None = None) -> str | None:
    """Why the files `marker` names cannot be trusted, or None when they are intact. `sizes` maps each
    directory (relative to OUT) to its listing (file name -> bytes); `sums` maps paths to the sha256
    read now (checksum verification), else None."""
    outputs = marker.get("outputs")
    if not isinstance(outputs, dict):
        return "its marker records no outputs to check"
    for rel, expected in sorted(outputs.items()):
        directory, _, name = rel.rpartition("/")
        found = sizes.get(directory, {}).get(name)
        if found is None:
            return f"{rel} is missing"
        if found != expected.get("bytes"):
            return f"{rel} is {found} bytes, its marker says {expected.get('bytes')}"
        if sums is not None and sums.get(rel) != expected.get("sha256"):
            return f"{rel} does not match the checksum its marker records"
    return None


def _listings(layout: OutputLayout, markers: dict[int, dict]) -> dict[str, dict[str, int]]:
    """One listing per directory that any marker names a file in."""
    directories = {
        rel.rpartition("/")[0]
        for marker in markers.values()
        if isinstance(marker.get("outputs"), dict)
        for rel in marker["outputs"]
    }
    return {
        d: storage.file_sizes(layout.path(*d.split("/")) if d else layout.root) for d in sorted(directories)
    }


def _checksums(
    layout: OutputLayout, markers: dict[int, dict], sizes: dict[str, dict[str, int]]
) -> dict[str, str]:
    """sha256 of every file the markers name that is there with its recorded size (the others are
    damaged already)."""
    wanted = sorted(
        rel
        for marker in markers.values()
        if isinstance(marker.get("outputs"), dict)
        for rel, info in marker["outputs"].items()
        if sizes.get(rel.rpartition("/")[0], {}).get(rel.rpartition("/")[2]) == info.get("bytes")
    )
    with ThreadPoolExecutor(CHECKSUM_READERS) as pool:
        digests = pool.map(lambda rel: storage.file_sha256(layout.path(*rel.split("/"))), wanted)
        return dict(zip(wanted, digests, strict=True))


def trusted_markers(out: str, fingerprint: str, verify: str = "size") -> Resume:
    """Which tasks a rerun of the run in `out` (config `fingerprint`) may skip, checked as `verify`
    (`size` or `checksum`) says; the rest are redone, each with its reason."""
    layout = OutputLayout(out)
    markers, unreadable = read_markers(layout)
    candidates = {tid: m for tid, m in markers.items() if finished(m, fingerprint)}
    sizes = _listings(layout, candidates)
    sums = _checksums(layout, candidates, sizes) if verify == "checksum" else None
    resume = Resume(redo=dict(unreadable))
    for task_id, marker in sorted(candidates.items()):
        why = damage(marker, sizes, sums)
        if why is None:
            resume.done[task_id] = marker
        else:
            resume.redo[task_id] = why
    return resume


def log_redone(job: str, redo: dict[int, str], tasks: set[int], log: Callable[[str], None]) -> dict[int, str]:
    """Say which of this run's `tasks` are redone because their markers were not trusted (a line each,
    up to `MAX_REASONS_LOGGED`); returns them for run.json."""
    mine = {tid: why for tid, why in sorted(redo.items()) if tid in tasks}
    for task_id, why in list(mine.items())[:MAX_REASONS_LOGGED]:
        log(f"reelmill {job}: task {task_id} is redone: {why}")
    if len(mine) > MAX_REASONS_LOGGED:
        log(
            f"reelmill {job}: ... and {len(mine) - MAX_REASONS_LOGGED} more tasks redone (run.json tasks.redone)"
        )
    return mine
