"""Reading webdataset tars that someone else wrote, with bounded memory and no surprises.

A shard from another team is untrusted input: its members can be any size (a 400 KB gzip "shard" can
hold a 400 MB member), it can be compressed when nobody asked for that, and its member names can be
anything. Every reader of foreign shards (recaption, encode, the training loader) goes through
`iter_tar_samples`, which

- refuses a compressed stream unless the caller allows it (`io.allow_compressed`), so a gzip bomb is
  named for what it is instead of being inflated;
- checks each member's size in its tar header *before* reading it: a member over `max_member_bytes`
  is skipped without being held in memory (the stream reads past it block by block), and its sample
  is flagged, not dropped in silence;
- groups members into samples by key the way webdataset does (`KEY.EXT`, adjacent members).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

DEFAULT_MAX_MEMBER_BYTES = 256 << 20
"""A 10 s 1080p clip at a generous 50 Mb/s is about 63 MB; four times that leaves room for 4K masters."""
DEFAULT_MAX_SAMPLE_BYTES = 512 << 20
"""All members of one sample together."""

TOO_LARGE = "__too_large__"
"""Set on a sample one of whose members (or whose whole) exceeded a cap: why, in words."""

_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


class CompressedShard(ValueError):
    """A compressed tar where only plain tars are accepted (`io.allow_compressed: false`)."""


class _Prefixed:
    """A read-only stream with its first bytes already read (to sniff them) put back in front."""

    def __init__(self, head: bytes, stream):
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size is None or size < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        if len(data) < size:
            data += self.stream.read(size - len(data))
        return data


def compression_of(head: bytes) -> str | None:
    """The compression a stream's first bytes announce, or None for a plain tar."""
    return next((name for magic, name in _COMPRESSED_MAGIC.items() if head.startswith(magic)), None)


def open_tar(stream, url: str, allow_compressed: bool = False) -> tarfile.TarFile:
    """A streaming TarFile over `stream`; raises CompressedShard for a compressed one unless allowed."""
    head = stream.read(6)
    kind = compression_of(head)
    if kind and not allow_compressed:
        raise CompressedShard(
            f"{url} is {kind}-compressed; only plain tars are read unless io.allow_compressed is true"
        )
    mode = "r|*" if kind else "r|"
    return tarfile.open(fileobj=_Prefixed(head, stream), mode=mode)  # noqa: SIM115 (caller closes)


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, split at the first dot of the last path component, as
    webdataset's `base_plus_ext` does; None for names without an extension."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash or dot == len(name) - 1:
        return None
    return name[:dot], name[dot + 1 :]


def iter_tar_samples(
    stream,
    url: str,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    allow_compressed: bool = False,
) -> Iterator[dict]:
    """The samples of a tar stream: `{"__key__": key, "__url__": url, EXT: bytes, ...}` with member
    names as written (not lower-cased) and in file order.

    A member over `max_member_bytes`, or one that would take the sample over `max_sample_bytes`, is
    not read; the sample then carries `TOO_LARGE` (a reason) and lacks that member. Raises
    `tarfile.TarError`, `OSError`, `EOFError` or `CompressedShard` for a damaged or refused stream (samples
    before the damage have been yielded), `ValueError` for a sample with the same member twice.
    """
    current: dict | None = None
    size = 0
    with open_tar(stream, url, allow_compressed) as tar:
        for info in tar:
            if not info.isreg():
                continue
            parts = split_name(info.name)
            if parts is None or parts[0].rsplit("/", 1)[-1].startswith("__"):
                continue  # webdataset skips these too (no extension, or its own `__` meta files)
            key, ext = parts
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current, size = {"__key__": key, "__url__": url}, 0
            if ext in current:
                raise ValueError(f"{url}: sample {key!r} has member {ext!r} twice")
            if info.size > max_member_bytes:
                current[TOO_LARGE] = (
                    f"member {info.name} is {info.size} bytes, over io.max_member_bytes ({max_member_bytes})"
                )
                continue
            if size + info.size > max_sample_bytes:
                current[TOO_LARGE] = (
                    f"sample {key} is over io.max_sample_bytes ({max_sample_bytes}) at member {info.name}"
                )
                continue
            handle = tar.extractfile(info)
            current[ext] = handle.read()
            if len(current[ext]) != info.size:
                raise EOFError(f"{url}: member {info.name} is cut off")
            size += info.size
        if current is not None:
            yield current
