"""Where each member of a tar shard lies: name -> (data offset, size), so one clip can be read out of a
1 GB shard with one seek instead of a pass over everything before it.

An index is built from the tar headers alone, in one sequential pass over a random-access file (the
data between headers is seeked over, not read), with `safe_tar`'s rules for hostile tars (bounded
extended headers, no sparse members, no compressed shards: a member of a compressed tar has no offset
to seek to). It is kept in memory and on disk under `OUT/_state/members/<location>/<shard>.json`, next
to the shard's size and modification time: a shard rewritten since (a rerun, a recaption) no longer
matches and is indexed again, and a server started later reuses the file without opening the tar.
"""

from __future__ import annotations

import json
import logging
import tarfile
import threading
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from curation import storage
from curation.layout import OutputLayout
from curation.safe_tar import _BoundedTarInfo, compression_of

log = logging.getLogger(__name__)

LOCATIONS = ("shards", "dropped")
"""The directories of OUT whose tars are served: kept clips, and dropped ones (`--keep-dropped`)."""
FORMAT_VERSION = 1


class ShardNotFound(LookupError):
    """No such shard (or location) in the run."""


@dataclass(frozen=True)
class ShardStat:
    """What identifies one version of a shard: a rewrite changes its size or its modification time."""

    size: int
    mtime_ns: int | None


@dataclass
class MemberIndex:
    """The regular members of one shard version, by name: (offset of the data in the tar, size)."""

    shard: str
    stat: ShardStat
    members: dict[str, tuple[int, int]]
    error: str | None = None
    """Why indexing stopped early (a damaged tar): the members before the damage are still served."""

    def to_json(self) -> dict:
        return {
            "version": FORMAT_VERSION,
            "shard": self.shard,
            "size": self.stat.size,
            "mtime_ns": self.stat.mtime_ns,
            "error": self.error,
            "members": [[name, offset, size] for name, (offset, size) in self.members.items()],
        }

    @classmethod
    def from_json(cls, data: dict) -> MemberIndex:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"member index version {data.get('version')!r}, not {FORMAT_VERSION}")
        members = {str(name): (int(offset), int(size)) for name, offset, size in data["members"]}
        return cls(data["shard"], ShardStat(int(data["size"]), data["mtime_ns"]), members, data.get("error"))


def shard_stat(uri: str) -> ShardStat | None:
    """The shard's size and modification time; None when there is no such file."""
    fs, path = storage.filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return ShardStat(info.size or 0, info.mtime_ns)


def build_index(uri: str, name: str, stat: ShardStat) -> MemberIndex:
    """Read the headers of the tar at `uri` (one pass, the members' data seeked over)."""
    members: dict[str, tuple[int, int]] = {}
    error = None
    with storage.open_input_file(uri) as f:
        kind = compression_of(f.read(6))
        if kind:
            raise tarfile.ReadError(f"{name} is {kind}-compressed: its members cannot be read by offset")
        f.seek(0)
        try:
            with tarfile.open(fileobj=f, mode="r:", tarinfo=_BoundedTarInfo) as tar:
                while (info := tar.next()) is not None:
                    tar.members.clear()  # a tar of millions of tiny members would otherwise fill memory
                    if not info.isreg():
                        continue
                    if info.offset_data + info.size > stat.size:
                        error = f"member {info.name} is cut off at the end of the shard"
                        break
                    members[info.name] = (info.offset_data, info.size)
        except (tarfile.TarError, EOFError) as exc:
            error = f"unreadable after {len(members)} members: {exc}"
    return MemberIndex(name, stat, members, error)


@dataclass
class MemberIndexes:
    """The member indexes of one run's shards, built on first use and cached in memory and on disk.

    `builds` counts the tars read (indexes built rather than found), for whoever wants to know."""

    root: str
    builds: int = 0
    _memory: dict[tuple[str, str], MemberIndex] = field(default_factory=dict)
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def shard_uri(self, location: str, shard: str) -> str:
        """The shard's URI; ShardNotFound for a location other than LOCATIONS or a name that is not a
        plain `*.tar` file name (no path, so nothing outside OUT/<location>/ is reachable)."""
        if location not in LOCATIONS or not _plain_tar_name(shard):
            raise ShardNotFound(f"no shard {location}/{shard}")
        return OutputLayout(self.root).path(location, shard)

    def cache_uri(self, location: str, shard: str) -> str:
        return OutputLayout(self.root).path("_state", "members", location, shard + ".json")

    def get(self, location: str, shard: str) -> tuple[str, MemberIndex]:
        """(shard URI, its current index). Raises ShardNotFound, or tarfile.ReadError for a shard that
        cannot be indexed at all (compressed)."""
        uri = self.shard_uri(location, shard)
        stat = shard_stat(uri)
        if stat is None:
            raise ShardNotFound(f"no shard {location}/{shard}")
        key = (location, shard)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one pass per shard, however many requests ask for it at once
            index = self._memory.get(key)
            if index is None or index.stat != stat:
                index = self._load(location, shard, stat)
                if index is None:
                    index = build_index(uri, shard, stat)
                    with self._guard:
                        self.builds += 1
                    self._save(location, shard, index)
                self._memory[key] = index
        return uri, index

    def _load(self, location: str, shard: str, stat: ShardStat) -> MemberIndex | None:
        cache = self.cache_uri(location, shard)
        try:
            if not storage.exists(cache):
                return None
            index = MemberIndex.from_json(json.loads(storage.read_bytes(cache)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("member index %s unreadable, indexing %s/%s again: %s", cache, location, shard, exc)
            return None
        return index if index.stat == stat and index.shard == shard else None

    def _save(self, location: str, shard: str, index: MemberIndex) -> None:
        cache = self.cache_uri(location, shard)
        try:
            storage.write_bytes(cache, json.dumps(index.to_json(), separators=(",", ":")).encode())
        except OSError as exc:  # a read-only OUT still serves, from the index in memory
            log.warning("member index not saved to %s: %s", cache, exc)


def _plain_tar_name(name: str) -> bool:
    """A file name of a tar directly in its directory: no path, no hidden or temporary file."""
    return name.endswith(".tar") and not name.startswith(".") and all(c not in name for c in "/\\\0")
