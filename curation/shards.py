"""Webdataset tar shards named `shard-TTTTTT-PPP.tar`, rolled over at a clip-count or byte limit.

Each part is written under a temporary name and renamed when complete, so a crash never leaves a
half-written shard under a real name. The tar layout is webdataset's (`KEY.EXT` members, a sample's
members adjacent); it is written with the standard library's tarfile, which keeps torch (imported
by the webdataset package) out of the CPU workers. Shards from anywhere are read back with
webdataset's own tar iterator and key grouping (`read_samples`).
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import time

from curation import storage


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
        self._part = first_part - 1
        self._stack: contextlib.ExitStack | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._bytes = 0

    def _roll(self) -> None:
        self.close()
        self._part += 1
        name = shard_name(self.task_id, self._part, self.prefix)
        self._stack = contextlib.ExitStack()
        stream = self._stack.enter_context(storage.atomic_output(storage.join(self.directory, name)))
        self._tar = tarfile.open(fileobj=stream, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed in close())
        self.written.append(name)
        self._count = self._bytes = 0

    def place(self, size: int) -> str:
        """The shard file the next sample of `size` bytes goes to, rolling over to a new part if needed."""
        full = self._count >= self.max_clips or (self._count > 0 and self._bytes + size > self.max_bytes)
        if self._tar is None or full:
            self._roll()
        return self.written[-1]

    def write(self, key: str, members: dict[str, bytes]) -> str:
        """Add one sample (`{"mp4": bytes, "json": bytes}`) to the part `place` chose; returns its file name."""
        size = sum(len(v) for v in members.values())
        if self._tar is None:
            self.place(size)
        mtime = time.time()
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size
        return self.written[-1]

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()  # writes the end-of-archive blocks; the stream stays open
            self._stack.close()
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
    """A readable byte stream of a shard: `pipe:CMD` through webdataset's gopen, else pyarrow/fsspec."""
    if uri.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(uri, "rb")
    fs, path = storage.filesystem(uri)
    return fs.open_input_stream(path)


def iter_samples(uri: str):
    """The samples of a webdataset shard one at a time, grouped by key the way webdataset groups them.

    A sample is `{"__key__": key, EXT: bytes, ...}` with its members in file order and their names
    as written (not lower-cased), so a shard can be rewritten member for member. Raises
    `tarfile.TarError`, `OSError` or `ValueError` (a duplicate member) when the shard is unreadable.
    """
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open_shard(uri) as stream:
        files = tar_file_expander([{"url": uri, "stream": stream}])
        for grouped in group_by_keys(files, lcase=False):
            sample = dict(grouped)
            sample.pop("__url__", None)
            sample.pop("__local_path__", None)
            yield sample


def read_samples(uri: str) -> list[dict]:
    """Every sample of a shard (see `iter_samples`), read to the end before any is returned, so an
    unreadable shard raises before its first sample is used."""
    return list(iter_samples(uri))


def member(sample: dict, *extensions: str) -> str | None:
    """The sample's member name (extension, as written: `MP4`, `Json`) for the first of `extensions`
    it has, compared without case, the way webdataset's default lower-cased keys would match it."""
    by_lower = {k.lower(): k for k in sample if not k.startswith("__")}
    return next((by_lower[ext] for ext in extensions if ext in by_lower), None)


def video_member(sample: dict) -> str | None:
    """The name (extension) of the sample's video member, if it has one."""
    return member(sample, *VIDEO_MEMBERS)


def list_keys(uri: str) -> list[str]:
    """The sample keys of a shard in order, from the tar headers (a local file is not read through)."""
    import tarfile

    from webdataset.tariterators import base_plus_ext

    keys: list[str] = []
    if storage.is_local(uri) and not uri.startswith("pipe:"):
        with tarfile.open(storage.local_path(uri), "r:*") as tar:
            names = [m.name for m in tar.getmembers() if m.isreg()]
    else:
        with open_shard(uri) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            names = [m.name for m in tar if m.isreg()]
    for name in names:
        key, _ = base_plus_ext(name)
        if key is not None and (not keys or keys[-1] != key):
            keys.append(key)
    return keys
