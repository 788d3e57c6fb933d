"""Webdataset tar shards named `shard-TTTTTT-PPP.tar`, rolled over at a clip-count or byte limit.

Each part is written under a temporary name and renamed when complete, so a crash never leaves a
half-written shard under a real name. The tar layout is webdataset's (`KEY.EXT` members, a sample's
members adjacent); it is written with the standard library's tarfile, which keeps torch (imported
by the webdataset package) out of the CPU workers. Keys come from anywhere (a foreign shard's member
names), so they are made safe as they are written (`safe_key`). Shards from anywhere are read with
the bounded reader of `curation.safe_tar`, which groups members by key the way webdataset does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
import time
import unicodedata
from collections.abc import Iterator

from curation import storage
from curation.quarantine import TransientError, describe, internal_error_row, is_transient
from curation.safe_tar import (
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_SAMPLE_BYTES,
    CompressedShard,
    iter_member_names,
    iter_tar_samples,
    split_name,
)

MAX_KEY_CHARS = 160
"""Longest key written; a longer one is cut and given a hash suffix."""
MAX_KEY_BYTES = 200
"""Longest key in UTF-8 bytes, so that `KEY.EXT` stays within the 255 bytes a file name may have
when someone unpacks a shard."""
MAX_EXT_CHARS = 64

_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
"""Control and format characters (terminal escapes, bidi overrides), unpaired surrogates (a name
that was not UTF-8), line and paragraph separators."""


def _clean(text: str, unsafe: str) -> str:
    """`text` with each character of `unsafe` or of `_UNSAFE_CATEGORIES` replaced by `_`."""
    return "".join("_" if c in unsafe or unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _fit(text: str, chars: int, utf8_bytes: int) -> str:
    """`text` cut to at most `chars` characters and `utf8_bytes` bytes, never inside a character."""
    return text[:chars].encode("utf-8")[:utf8_bytes].decode("utf-8", "ignore")


def safe_key(key: str) -> str:
    """The key a sample is written under: `key` itself when it is already safe, else a cleaned and
    shortened form with a hash of the original appended, so two different keys never meet.

    Safe means no path separator or `..` (a traversal when unpacked), no dot at all (see
    below), no control characters, no leading `_` (webdataset reserves `__` names, and the
    cleaning itself produces underscores), at most `MAX_KEY_CHARS` characters and `MAX_KEY_BYTES`
    bytes. Idempotent: a safe key maps to itself.
    """
    # a dot too: webdataset splits a member name at its first dot, so a dot in a key would move
    # part of it into the extension when the shard is read back
    cleaned = _clean(key, "/\\.").lstrip("_")
    if cleaned == key and len(key) <= MAX_KEY_CHARS and len(key.encode("utf-8")) <= MAX_KEY_BYTES:
        return key
    digest = _digest(key)
    room = MAX_KEY_CHARS - len(digest) - 1
    head = _fit(cleaned, room, MAX_KEY_BYTES - len(digest) - 1).rstrip("_")
    return f"{head}-{digest}" if head else digest


def safe_ext(ext: str) -> str:
    """A member extension fit to write (`mp4`, `latent.npy`): no separators or control characters,
    not empty, at most `MAX_EXT_CHARS` characters; a changed one gets a short hash of the original."""
    cleaned = _clean(ext, "/\\")
    if cleaned == ext and ext and len(ext) <= MAX_EXT_CHARS:
        return ext
    digest = _digest(ext)[:8]
    return f"{_fit(cleaned, MAX_EXT_CHARS - 9, 4 * MAX_EXT_CHARS)}-{digest}".lstrip("-")


def shard_name(task_id: int, part: int, prefix: str = "shard") -> str:
    return f"{prefix}-{task_id:06d}-{part:03d}.tar"


def task_prefix(task_id: int, prefix: str = "shard") -> str:
    """Every file of a task's shards (and their temporaries) starts with this."""
    return f"{prefix}-{task_id:06d}-"


class TaskShardWriter:
    """Write a task's samples into consecutive parts; `write` returns the part's file name."""

    def __init__(
        self,
        directory: str,
        task_id: int,
        max_clips: int,
        max_bytes: int,
        prefix: str = "shard",
        first_part: int = 0,
    ):
        """`first_part`: the number of the first part (a job that writes a task's parts from several
        workers gives each its own range)."""
        self.directory = directory
        self.task_id = task_id
        self.max_clips = max_clips
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.written: list[str] = []
        self.files: dict[str, dict] = {}
        """Each finished part's `{"bytes", "sha256"}`, by file name: what the task's marker records."""
        self.stats: dict[str, dict] = {}
        """Each part's samples, members, first and last key (as written), by file name."""
        self._part = first_part - 1
        self._stream = None
        self._stack: contextlib.ExitStack | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._bytes = 0

    def _roll(self) -> None:
        self.close()
        self._part += 1
        name = shard_name(self.task_id, self._part, self.prefix)
        self._stack = contextlib.ExitStack()
        self._stream = self._stack.enter_context(storage.atomic_output(storage.join(self.directory, name)))
        # pax: USTAR refuses names over 100 bytes, and foreign keys can be that long
        self._tar = tarfile.open(fileobj=self._stream, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed in close())
        self.written.append(name)
        self._count = self._bytes = 0

    def place(self, size: int) -> str:
        """The shard file the next sample of `size` bytes goes to, rolling over to a new part if needed."""
        full = self._count >= self.max_clips or (self._count > 0 and self._bytes + size > self.max_bytes)
        if self._tar is None or full:
            self._roll()
        return self.written[-1]

    def write(self, key: str, members: dict[str, bytes]) -> str:
        """Add one sample (`{"mp4": bytes, "json": bytes}`) to the part `place` chose; returns its file name.

        The sample is written under `safe_key(key)` (callers that record keys use the same function),
        its members under `safe_ext` of their extensions. A header that cannot be written raises
        before any member is, so a failed sample never leaves half of itself in the shard."""
        size = sum(len(v) for v in members.values())
        if self._tar is None:
            self.place(size)
        key = safe_key(key)
        mtime = int(time.time())  # a float mtime costs every member a pax header of its own
        infos = []
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{safe_ext(ext)}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o444
            info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors)
            infos.append(info)
        for info, data in zip(infos, members.values(), strict=True):
            self._tar.addfile(info, io.BytesIO(data))
        stats = self.stats.setdefault(
            self.written[-1], {"samples": 0, "members": 0, "first_key": key, "last_key": key}
        )
        stats["samples"] += 1
        stats["members"] += len(infos)
        stats["last_key"] = key
        self._count += 1
        self._bytes += size
        return self.written[-1]

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()  # writes the end-of-archive blocks; the stream stays open
            self._stack.close()  # publishes the part under its name
            self.files[self.written[-1]] = {"bytes": self._stream.size, "sha256": self._stream.sha256}
            self._tar = None

    def __enter__(self) -> TaskShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._stack is not None:  # discard the unfinished part
            self._stack.__exit__(exc_type, exc, tb)


VIDEO_MEMBERS = ("mp4", "webm", "mkv", "mov", "avi")
"""Member extensions taken as a sample's video, in order of preference."""


def open_shard(uri: str):
    """A readable byte stream of a shard: `pipe:CMD` through webdataset's gopen, else pyarrow/fsspec.

    Only a URL that is literally `pipe:...` runs a command; any other path, even a local file whose
    name starts with `pipe:` (`/data/pipe:rm -rf x.tar`), is opened as a file."""
    if uri.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(uri, "rb")
    return storage.open_input_stream(uri)  # opening is retried; reads run under the request timeout


def iter_samples(
    uri: str,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    allow_compressed: bool = False,
) -> Iterator[dict]:
    """The samples of a webdataset shard one at a time, grouped by key the way webdataset groups them.

    A sample is `{"__key__": key, EXT: bytes, ...}` with its members in file order and their names
    as written (not lower-cased), so a shard can be rewritten member for member. Read through
    `safe_tar.iter_tar_samples` with its limits: a sample with a member over them carries
    `safe_tar.TOO_LARGE` and lacks that member. Raises `tarfile.TarError`, `OSError`, `EOFError`,
    `CompressedShard` or `ValueError` (a duplicate member) when the shard is unreadable, after the
    samples before the damage.
    """
    with open_shard(uri) as stream:
        for sample in iter_tar_samples(stream, uri, max_member_bytes, max_sample_bytes, allow_compressed):
            sample.pop("__url__", None)
            yield sample


def read_samples(
    uri: str,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    allow_compressed: bool = False,
) -> list[dict]:
    """Every sample of a shard (see `iter_samples`), read to the end before any is returned, so an
    unreadable shard raises before its first sample is used."""
    return list(iter_samples(uri, max_member_bytes, max_sample_bytes, allow_compressed))


def member(sample: dict, *extensions: str) -> str | None:
    """The sample's member name (extension, as written: `MP4`, `Json`) for the first of `extensions`
    it has, compared without case, the way webdataset's default lower-cased keys would match it."""
    by_lower = {k.lower(): k for k in sample if not k.startswith("__")}
    return next((by_lower[ext] for ext in extensions if ext in by_lower), None)


def video_member(sample: dict) -> str | None:
    """The name (extension) of the sample's video member, if it has one."""
    return member(sample, *VIDEO_MEMBERS)


def iter_member_keys(uri: str, allow_compressed: bool = False) -> Iterator[str | None]:
    """For each regular member of a shard, in order, the key of the sample it belongs to (None for a
    member webdataset skips), from the tar headers (no member is held in memory); raises as
    `iter_samples` does, after the members before the damage."""
    with open_shard(uri) as stream:
        for name in iter_member_names(stream, uri, allow_compressed):
            parts = split_name(name)
            if parts is None or parts[0].rsplit("/", 1)[-1].startswith("__") or parts[1].startswith("__"):
                yield None  # as iter_tar_samples skips them
            else:
                yield parts[0]


def iter_keys(uri: str, allow_compressed: bool = False) -> Iterator[str]:
    """The sample keys of a shard in order (see `iter_member_keys`)."""
    last = None
    for key in iter_member_keys(uri, allow_compressed):
        if key is not None and key != last:
            last = key
            yield last


def list_keys(uri: str, allow_compressed: bool = False) -> list[str]:
    """The sample keys of a shard in order (see `iter_keys`)."""
    return list(iter_keys(uri, allow_compressed))


READ_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError)
"""What a shard that cannot be read (to its end) raises: missing, not a tar, truncated, refused."""


def raise_if_transient(exc: BaseException) -> None:
    """Raise a transient failure (a timeout, a full disk, a remote read error) as a `TransientError`:
    it is no fact about the item, so it must end the task (which Ray retries, `retry_exceptions`) and
    never become a permanent row. Anything else returns, for the caller to record."""
    if isinstance(exc, TransientError):
        raise exc
    if is_transient(exc):
        raise TransientError(describe(exc)) from exc


def shard_failure(exc: BaseException, stage: str) -> dict:
    """The manifest fields for a shard that could not be read to its end: `error_code` (unreadable,
    compressed_shard, or internal_error for a bug of ours) and `error` (plus `traceback` for a bug).
    A transient failure is raised instead (see `raise_if_transient`)."""
    raise_if_transient(exc)
    if isinstance(exc, CompressedShard):
        return {"error_code": "compressed_shard", "error": f"compressed_shard: {exc}"}
    if isinstance(exc, READ_ERRORS):
        return {"error_code": "unreadable", "error": f"unreadable: {exc}"}
    return internal_error_row(exc, stage)
