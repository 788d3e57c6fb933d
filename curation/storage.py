"""Paths and URIs through one interface: local files, and anything pyarrow.fs or fsspec opens.

ffmpeg needs a local file (or a URL it speaks itself), so remote inputs are copied to a temporary
file first. Outputs are written under a temporary name and renamed into place, so a reader (or a
resumed run) never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

REMOTE_PREFIXES_FFMPEG_READS = ("http://", "https://")


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path for a local path or URI."""
    if is_local(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError):
        import fsspec  # noqa: PLC0415  (only for schemes pyarrow lacks)

        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as exc:  # a scheme nothing here can open
            raise OSError(f"no filesystem opens {uri}: {exc}") from exc
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    if is_local(base):
        return str(Path(local_path(base), *parts))
    return "/".join([base.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).size or 0


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Files under a directory, as URIs of the same form as `uri`, sorted."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    rel = sorted(info.path[len(path) :].lstrip("/") for info in infos if info.type == pafs.FileType.File)
    return [join(uri, r) for r in rel]


def open_input_file(uri: str) -> pa.NativeFile:
    """A random-access file for pyarrow readers (parquet, CSV).

    Prefer this to `pa.BufferReader(read_bytes(uri))`: a buffer over Python bytes is released by
    whichever Arrow thread drops it last, and one released from a background scan thread during
    interpreter shutdown must take the GIL, which aborts the process (exit status 134) after a run
    that succeeded.
    """
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so that it appears complete or not at all."""
    with atomic_output(uri) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_output(uri: str) -> Iterator:
    """A writable stream whose content appears at `uri` only when the block exits cleanly."""
    fs, path = filesystem(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    else:  # object stores publish an object only when its upload completes
        with fs.open_output_stream(path) as f:
            yield f


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


@contextlib.contextmanager
def local_copy(uri: str, scratch: str | None = None) -> Iterator[str]:
    """A path ffmpeg can open: the file itself when local or http(s), else a temporary download."""
    if is_local(uri):
        yield local_path(uri)
        return
    if uri.startswith(REMOTE_PREFIXES_FFMPEG_READS):
        yield uri
        return
    fs, path = filesystem(uri)
    suffix = Path(path).suffix
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=scratch) as tmp:
        with fs.open_input_stream(path) as src:
            shutil.copyfileobj(src, tmp, length=8 << 20)
        tmp.flush()
        yield tmp.name
