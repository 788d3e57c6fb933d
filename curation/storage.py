"""Paths and URIs through one interface: local files, and anything pyarrow.fs or fsspec opens.

ffmpeg needs a local file (or a URL it speaks itself), so remote inputs are copied to a temporary
file first.

Outputs appear complete or not at all, so a reader (or a resumed run) never sees a half-written file:

- locally, a file is written under a unique temporary name next to its target, flushed and fsynced,
  renamed into place (`os.replace` is atomic on one file system) and its directory fsynced, so neither
  a crash nor a power loss leaves the final name with partial or empty content;
- on an object store, an upload written straight to its final name would be published there even
  when the writer fails: pyarrow completes a multipart upload when its stream closes, with an exception
  in flight or not, and offers no abort. So the data goes to a unique temporary key, its size is
  checked, and only a block that exits cleanly moves it to the final key (on S3 a server-side copy:
  that key appears complete or not at all); the temporary key is deleted in any case. A process killed
  mid-upload (or an upload whose connection broke) can still leave an incomplete multipart upload,
  never a visible object: a bucket lifecycle rule `AbortIncompleteMultipartUpload` clears those. One
  killed between the upload's end and the move leaves a `NAME.tmp-HEX` object, which no reader takes
  for an output. S3 copies at most 5 GiB in one request, so a larger output cannot be published there.

Remote requests have timeouts (a stalled connection fails instead of hanging a task forever), and a
whole remote operation that fails transiently (timeout, lost connection, throttling, a 5xx) is tried
again, `attempts` times in all with exponential backoff; each retry is logged and counted
(`io_retries`, `io_stats`). Within each of those attempts pyarrow retries every S3 request up to
`attempts` times itself (that is what retries the parts of an upload, which is not retried whole), so
an endpoint that stalls every request fails after about attempts² request timeouts. The settings come from `configure` and travel to other processes (Ray
workers) as `REELMILL_IO_*` environment variables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from curation.quarantine import is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

REMOTE_PREFIXES_FFMPEG_READS = ("http://", "https://")

CHUNK_BYTES = 8 << 20
MAX_BACKOFF_S = 30.0

ENV_VARS = {
    "request_timeout_s": "REELMILL_IO_REQUEST_TIMEOUT_S",
    "connect_timeout_s": "REELMILL_IO_CONNECT_TIMEOUT_S",
    "attempts": "REELMILL_IO_ATTEMPTS",
    "backoff_s": "REELMILL_IO_BACKOFF_S",
}
"""Each setting's environment variable: how processes started later (Ray workers) get this one's."""

S3_ENDPOINT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)
"""Environment variables that change which S3 endpoint a filesystem talks to: part of its cache key."""


@dataclasses.dataclass(frozen=True)
class IOSettings:
    request_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    attempts: int = 4
    backoff_s: float = 0.5

    def __post_init__(self):
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("storage timeouts must be > 0")
        if self.attempts < 1:
            raise ValueError("storage attempts must be >= 1")
        if self.backoff_s < 0:
            raise ValueError("storage backoff_s must be >= 0")


def _settings_from_env() -> IOSettings:
    """The settings a parent process exported; a malformed variable is ignored (with a warning), since
    failing every import in a worker over it would be worse than running with the default."""
    values = {}
    for name, var in ENV_VARS.items():
        raw = os.environ.get(var)
        if raw is None:
            continue
        try:
            values[name] = int(raw) if name == "attempts" else float(raw)
        except ValueError:
            log.warning("ignoring %s=%r: not a number", var, raw)
    try:
        return IOSettings(**values)
    except ValueError as exc:
        log.warning("ignoring %s: %s", ", ".join(ENV_VARS.values()), exc)
        return IOSettings()


_settings = _settings_from_env()
_stats_lock = threading.Lock()
_retries_by_op: dict[str, int] = {}
_gave_up = 0
_fs_cache: dict[tuple, pafs.FileSystem] = {}
_fs_cache_lock = threading.Lock()


def configure(
    request_timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
    attempts: int | None = None,
    backoff_s: float | None = None,
) -> None:
    """Set the remote I/O settings for this process (those left None keep their value) and export them
    as `REELMILL_IO_*`, so processes started afterwards (Ray's workers) use the same."""
    global _settings
    given = {
        "request_timeout_s": request_timeout_s,
        "connect_timeout_s": connect_timeout_s,
        "attempts": attempts,
        "backoff_s": backoff_s,
    }
    given = {k: int(v) if k == "attempts" else float(v) for k, v in given.items() if v is not None}
    _settings = dataclasses.replace(_settings, **given)
    for name, var in ENV_VARS.items():
        os.environ[var] = str(getattr(_settings, name))
    with _fs_cache_lock:  # filesystems built with the old timeouts are not used again
        _fs_cache.clear()


def configure_from(io_cfg) -> None:
    """`configure` from a job config's `io` section (`IOConfig`: request_timeout_s, connect_timeout_s,
    attempts, backoff_s)."""
    configure(
        request_timeout_s=io_cfg.request_timeout_s,
        connect_timeout_s=io_cfg.connect_timeout_s,
        attempts=io_cfg.attempts,
        backoff_s=io_cfg.backoff_s,
    )


def io_settings() -> dict:
    """The remote I/O settings this process uses."""
    return dataclasses.asdict(_settings)


def io_retries() -> int:
    """Retries of remote operations in this process so far (never decreases)."""
    with _stats_lock:
        return sum(_retries_by_op.values())


def io_stats() -> dict:
    """`{"retries": n, "gave_up": m, "by_op": {op: retries}}` for this process so far; `gave_up` counts
    operations whose last attempt failed transiently too."""
    with _stats_lock:
        return {"retries": sum(_retries_by_op.values()), "gave_up": _gave_up, "by_op": dict(_retries_by_op)}


# -- which failures are worth another attempt ------------------------------------------------------------

_S3_TRY_AGAIN = re.compile(
    r"slow[ _]?down|throttl|internal[ _]?error|internal_failure|request[ _]?timeout|service[ _]?unavailable"
    r"|network_connection|\b(?:500|502|503|504)\b|timed out|timeout|connection|connect to|couldn't connect"
    r"|recv failure|send failure|empty reply|curlcode: (?:6|7|18|28|35|52|55|56)\b",
    re.IGNORECASE,
)
"""What pyarrow's S3 errors (an AWS error name, HTTP status or curl failure in the message) say when
another attempt may succeed."""


def is_transient_io(exc: BaseException) -> bool:
    """Whether a failed remote operation is worth another attempt: `quarantine.is_transient`, and the S3
    errors it does not know (throttling, 5xx). Only the part from "AWS Error" on is read, so a key
    that happens to contain "503" is not taken for a status."""
    if is_transient(exc):
        return True
    if not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError | PermissionError):
        return False
    message = str(exc)
    aws = message.find("AWS Error")
    return bool(_S3_TRY_AGAIN.search(message[aws:] if aws >= 0 else message))


def _backoff(retry: int) -> float:
    """Seconds before retry number `retry` (0 first): doubling, capped, jittered so that many workers
    failing together do not come back together."""
    return min(_settings.backoff_s * 2**retry, MAX_BACKOFF_S) * random.uniform(0.75, 1.25)


def _shown(uri: str) -> str:
    # a URI's query can carry credentials (`?access_key=...&secret_key=...`)
    return uri.split("?", 1)[0]


def _with_retries(op: str, uri: str, fn: Callable[[pafs.FileSystem, str], T]) -> T:
    """`fn(fs, path)` for `uri`, tried again while it fails transiently if `uri` is remote; the filesystem
    is looked up in each attempt, so a failed region lookup is retried too."""
    global _gave_up
    if is_local(uri):
        return fn(*filesystem(uri))
    attempts = _settings.attempts
    for attempt in range(1, attempts + 1):
        try:
            return fn(*filesystem(uri))
        except Exception as exc:
            if not is_transient_io(exc):
                raise
            if attempt == attempts:
                with _stats_lock:
                    _gave_up += 1
                raise
            delay = _backoff(attempt - 1)
            with _stats_lock:
                _retries_by_op[op] = _retries_by_op.get(op, 0) + 1
            log.warning(
                "%s %s failed (attempt %d of %d), retrying in %.1f s: %s",
                op, _shown(uri), attempt, attempts, delay, f"{type(exc).__name__}: {exc}"[:300],
            )  # fmt: skip
            time.sleep(delay)
    raise AssertionError("unreachable")


# -- filesystems -----------------------------------------------------------------------------------------


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path for a local path or URI (S3 ones with this process's
    timeouts and retry settings, built once per bucket and endpoint)."""
    if is_local(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    if uri.split("://", 1)[0].lower() == "s3":
        try:
            return _s3_filesystem(uri)
        except pa.ArrowNotImplementedError:  # a pyarrow built without S3: fsspec's s3fs may have it
            pass
    return _other_filesystem(uri)


def _other_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError):
        import fsspec  # noqa: PLC0415  (only for schemes pyarrow lacks)

        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as exc:  # a scheme nothing here can open
            raise OSError(f"no filesystem opens {uri}: {exc}") from exc
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _s3_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's S3 filesystem for `uri`'s bucket, rebuilt with timeouts and a bounded retry strategy.

    `FileSystem.from_uri` finds the endpoint (AWS_ENDPOINT_URL, `?endpoint_override=...&scheme=...`)
    and the bucket's region (a request), which the plain constructor does not; it is called once per
    bucket, query and environment, and only with the bucket, so a key with characters a URI may not
    hold (a space) still opens. The path is what from_uri makes of the key: percent-decoded, without a
    trailing slash. (pyarrow pickles the timeouts with the filesystem but not the retry strategy: a
    filesystem sent to another process gets pyarrow's default there.)
    """
    parts = urlsplit(uri)
    s = _settings
    key = (
        parts.scheme.lower(), parts.netloc, parts.query, tuple(os.environ.get(v) for v in S3_ENDPOINT_ENV),
        s.request_timeout_s, s.connect_timeout_s, s.attempts,
    )  # fmt: skip
    path = unquote(parts.netloc + parts.path).rstrip("/")
    fs = _fs_cache.get(key)
    if fs is None:
        try:
            base, _ = pafs.FileSystem.from_uri(urlunsplit((parts.scheme, parts.netloc, "", parts.query, "")))
        except pa.ArrowInvalid as exc:  # a query pyarrow does not take
            raise OSError(f"no filesystem opens {_shown(uri)}: {exc}") from exc
        rebuild, (kwargs,) = base.__reduce__()
        kwargs = {
            **kwargs,
            "request_timeout": s.request_timeout_s,
            "connect_timeout": s.connect_timeout_s,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s.attempts),
        }
        fs = rebuild(kwargs)
        with _fs_cache_lock:
            fs = _fs_cache.setdefault(key, fs)
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI (a URI's `?query` stays at its end)."""
    if is_local(base):
        return str(Path(local_path(base), *parts))
    head, sep, query = base.partition("?")
    return "/".join([head.rstrip("/"), *parts]) + sep + query


# -- reading ---------------------------------------------------------------------------------------------


def exists(uri: str) -> bool:
    return _with_retries(
        "exists", uri, lambda fs, path: fs.get_file_info(path).type != pafs.FileType.NotFound
    )


def is_file(uri: str) -> bool:
    return _with_retries("is_file", uri, lambda fs, path: fs.get_file_info(path).type == pafs.FileType.File)


def size(uri: str) -> int:
    return _with_retries("size", uri, lambda fs, path: fs.get_file_info(path).size or 0)


def makedirs(uri: str) -> None:
    _with_retries("makedirs", uri, lambda fs, path: fs.create_dir(path, recursive=True))


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Files under a directory, as URIs of the same form as `uri`, sorted."""

    def listing(fs: pafs.FileSystem, path: str) -> list[str]:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
        return sorted(info.path[len(path) :].lstrip("/") for info in infos if info.type == pafs.FileType.File)

    return [join(uri, r) for r in _with_retries("list_files", uri, listing)]


def file_sizes(dir_uri: str) -> dict[str, int]:
    """The files directly in a directory, name -> size, from one listing (one request on an object
    store, where asking each file's size is one request per file); {} when there is no directory."""

    def listing(fs: pafs.FileSystem, path: str) -> dict[str, int]:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        return {info.base_name: info.size or 0 for info in infos if info.type == pafs.FileType.File}

    return _with_retries("file_sizes", dir_uri, listing)


def open_input_file(uri: str) -> pa.NativeFile:
    """A random-access file for pyarrow readers (parquet, CSV).

    Prefer this to `pa.BufferReader(read_bytes(uri))`: a buffer over Python bytes is released by
    whichever Arrow thread drops it last, and one released from a background scan thread during
    interpreter shutdown must take the GIL, which aborts the process (exit status 134) after a run
    that succeeded. Opening is retried; reads are not (pyarrow retries each request of a read).
    """
    return _with_retries("open_input_file", uri, lambda fs, path: fs.open_input_file(path))


def open_input_stream(uri: str) -> pa.NativeFile:
    """A sequential stream over a file; opening is retried, reads are not (as `open_input_file`)."""
    return _with_retries("open_input_stream", uri, lambda fs, path: fs.open_input_stream(path))


def read_bytes(uri: str) -> bytes:
    def read(fs: pafs.FileSystem, path: str) -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return _with_retries("read_bytes", uri, read)


def file_sha256(uri: str) -> str:
    """The sha256 (hex) of a file's content, read as a stream (a shard need not fit in memory)."""

    def digest(fs: pafs.FileSystem, path: str) -> str:
        h = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            while chunk := f.read(CHUNK_BYTES):
                h.update(chunk)
        return h.hexdigest()

    return _with_retries("file_sha256", uri, digest)


# -- writing ---------------------------------------------------------------------------------------------


class CountingWriter:
    """A binary stream that counts and hashes what passes through it: the size and sha256 of a file are
    known when it is written, without reading it back.

    It offers what `tarfile.open(fileobj=..., mode="w|")` and pyarrow/io writers use: `write`, `flush`,
    `tell` (bytes written so far: the stream starts empty and only appends), `closed`.
    """

    def __init__(self, stream):
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:  # typed arrays: count bytes, not items
            view = view.cast("B")
        self._stream.write(view)
        self._hash.update(view)
        self.size += view.nbytes
        return view.nbytes

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far."""
        return self._hash.hexdigest()

    def flush(self) -> None:
        self._stream.flush()

    def tell(self) -> int:
        return self.size

    @property
    def closed(self) -> bool:
        return self._stream.closed

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False


def write_bytes(uri: str, data: bytes) -> dict:
    """Write a whole file so that it appears complete or not at all; returns `{"bytes", "sha256"}`."""
    with atomic_output(uri) as f:
        f.write(data)
    return {"bytes": f.size, "sha256": f.sha256}


@contextlib.contextmanager
def atomic_output(uri: str) -> Iterator[CountingWriter]:
    """A writable stream whose content appears at `uri` only when the block exits cleanly (see the module
    docstring for how, locally and on object stores). After the block, the writer's `size` and `sha256`
    describe what was written. The stream's own writes are not retried: a failed write propagates."""
    fs, path = _with_retries("atomic_output", uri, lambda fs, path: (fs, path))  # an S3 region lookup
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"  # unique across processes and nodes sharing a file system
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(tmp, "xb") as f:
                writer = CountingWriter(f)
                yield writer
                f.flush()
                os.fsync(f.fileno())  # data on disk before the name points at it
            os.replace(tmp, path)
            _fsync_dir(os.path.dirname(path))  # and the rename itself
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return

    makedirs(_parent_uri(uri))
    published = False
    try:
        stream = fs.open_output_stream(tmp)
        writer = CountingWriter(stream)
        try:
            yield writer
        except BaseException:
            # closing completes the temporary upload (pyarrow has no abort); the finally deletes it
            with contextlib.suppress(Exception):
                stream.close()
            raise
        stream.close()
        _publish(uri, tmp, path, writer.size)
        published = True
    finally:
        if not published:
            _discard(uri, tmp)


def _parent_uri(uri: str) -> str:
    head, sep, query = uri.partition("?")
    return head.rstrip("/").rsplit("/", 1)[0] + sep + query


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename is all they offer
        pass
    finally:
        os.close(fd)


def _publish(uri: str, tmp: str, path: str, expected: int) -> None:
    """Check the temporary object holds everything written, then move it to its final name."""
    found = _with_retries("publish", uri, lambda fs, _: fs.get_file_info(tmp).size)
    if found != expected:  # EIO: transient, so the task is tried again
        raise OSError(errno.EIO, f"upload of {_shown(uri)} holds {found} bytes, {expected} were written")
    tries = 0

    def move(fs: pafs.FileSystem, _: str) -> None:
        nonlocal tries
        tries += 1
        try:
            fs.move(tmp, path)
        except FileNotFoundError:
            # a retry after an attempt that moved it but whose answer was lost
            if tries == 1 or fs.get_file_info(path).size != expected:
                raise
        except pa.ArrowNotImplementedError:  # a store without move: copy, then delete
            fs.copy_file(tmp, path)
            fs.delete_file(tmp)

    _with_retries("publish", uri, move)


def _discard(uri: str, tmp: str) -> None:
    """Delete a temporary object on the way out of a failed block, without hiding why it failed."""

    def delete_tmp(fs: pafs.FileSystem, _: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(tmp)

    try:
        _with_retries("delete", uri, delete_tmp)
    except Exception as exc:
        log.warning("could not delete the temporary object %s: %s", tmp, exc)


def delete(uri: str) -> None:
    def delete_file(fs: pafs.FileSystem, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)

    _with_retries("delete", uri, delete_file)


def delete_dir(uri: str) -> None:
    def delete_tree(fs: pafs.FileSystem, path: str) -> None:
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)

    _with_retries("delete_dir", uri, delete_tree)


@contextlib.contextmanager
def local_copy(uri: str, scratch: str | None = None) -> Iterator[str]:
    """A path ffmpeg can open: the file itself when local or http(s), else a temporary download."""
    if is_local(uri):
        yield local_path(uri)
        return
    if uri.startswith(REMOTE_PREFIXES_FFMPEG_READS):
        yield uri
        return
    suffix = Path(urlsplit(uri).path).suffix
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=scratch) as tmp:

        def download(fs: pafs.FileSystem, path: str) -> None:
            tmp.seek(0)
            tmp.truncate()  # what a failed attempt left
            with fs.open_input_stream(path) as src:
                shutil.copyfileobj(src, tmp, length=CHUNK_BYTES)
            tmp.flush()

        _with_retries("local_copy", uri, download)
        yield tmp.name
