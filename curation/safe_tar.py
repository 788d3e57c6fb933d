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
- groups members into samples by key the way webdataset does (`KEY.EXT`, adjacent members);
- bounds what tarfile itself would hold: extended (pax, GNU long name) headers are capped and may not
  chain, sparse members are refused, and the member list a streaming TarFile keeps is not kept, so
  neither one huge header nor millions of tiny members exhaust memory.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

DEFAULT_MAX_MEMBER_BYTES = 256 << 20
"""A 10 s 1080p clip at a generous 50 Mb/s is about 63 MB; four times that leaves room for 4K masters."""
DEFAULT_MAX_SAMPLE_BYTES = 512 << 20
"""All members of one sample together."""

MAX_HEADER_BYTES = 1 << 20
"""An extended header (a pax record set, a GNU long name) larger than this ends the shard: a long
path is a few KB, and tarfile reads these whole before any check of ours could run."""
MAX_CHAINED_HEADERS = 8
"""Extended headers in a row before a member; tarfile recurses once per header."""

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


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses the headers tarfile would read whole into memory without a limit."""

    _EXTENDED = (
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    )

    def _proc_member(self, tar: tarfile.TarFile):
        # tarfile documents _proc_member as the hook for subclasses
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise tarfile.ReadError(f"member {self.name!r} is a GNU sparse file; shards hold none")
        if self.type not in self._EXTENDED:
            return super()._proc_member(tar)
        if self.size > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"extended header of {self.size} bytes (over {MAX_HEADER_BYTES})")
        depth = getattr(tar, "_reelmill_chained", 0)
        if depth >= MAX_CHAINED_HEADERS:
            raise tarfile.ReadError(f"more than {MAX_CHAINED_HEADERS} extended headers in a row")
        tar._reelmill_chained = depth + 1
        try:
            info = super()._proc_member(tar)
        finally:
            tar._reelmill_chained = depth
        if sum(len(k) + len(v) for k, v in tar.pax_headers.items()) > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"global pax headers over {MAX_HEADER_BYTES} bytes")
        return info


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
    head = _read_up_to(stream, 6)
    kind = compression_of(head)
    if kind and not allow_compressed:
        raise CompressedShard(
            f"{url} is {kind}-compressed; only plain tars are read unless io.allow_compressed is true"
        )
    plain = _Prefixed(head, stream)
    if kind:
        plain = _decompressed(plain, kind, url)
    return tarfile.open(fileobj=plain, mode="r|", tarinfo=_BoundedTarInfo)  # noqa: SIM115 (caller closes)


def _decompressed(stream, kind: str, url: str):
    """A plain stream of a compressed one. Not tarfile's own `r|*`: its stream buffer copies the
    whole rest of each decompressed chunk on every 10 KB read, quadratic in a well-compressed member
    (a 400 MB member of zeros took 40 s to skip); these readers decompress a bounded piece at a time."""
    import bz2
    import gzip
    import lzma

    openers = {"gzip": gzip.GzipFile, "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}
    if kind not in openers:
        raise CompressedShard(f"{url} is {kind}-compressed, which is not read here; decompress it first")
    return _DataErrorsAsReadErrors(openers[kind](fileobj=stream, mode="rb"))


class _DataErrorsAsReadErrors:
    """A decompressing reader whose complaints about the data are `tarfile.ReadError`s, as tarfile's
    would be (zlib and lzma raise their own types; I/O errors of the stream stay what they are)."""

    def __init__(self, stream):
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        import lzma
        import zlib

        try:
            return self.stream.read(size)
        except (zlib.error, lzma.LZMAError) as exc:
            raise tarfile.ReadError(f"invalid compressed data: {exc}") from exc

    def close(self) -> None:
        self.stream.close()


def _read_up_to(stream, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the stream (a pipe may return a short read)."""
    data = b""
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The regular-file members of a streaming TarFile, without the list of every member tarfile
    keeps (a tar of millions of empty members, a few MB gzipped, would otherwise fill memory)."""
    while (info := tar.next()) is not None:
        tar.members.clear()
        if info.isreg():
            yield info


def iter_member_names(stream, url: str, allow_compressed: bool = False) -> Iterator[str]:
    """The names of a tar stream's regular members in file order; no member is read into memory."""
    with open_tar(stream, url, allow_compressed) as tar:
        for info in _members(tar):
            yield info.name


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
    `tarfile.TarError`, `OSError`, `EOFError` or `CompressedShard` for a damaged or refused stream, after
    the samples before the damage (a sample is yielded once a member of the next one, or the end, has
    been read, so the one the damage cuts short is not), `ValueError` for a sample with the same member
    twice.
    """
    current: dict | None = None
    size = 0
    with open_tar(stream, url, allow_compressed) as tar:
        for info in _members(tar):
            parts = split_name(info.name)
            if parts is None or parts[0].rsplit("/", 1)[-1].startswith("__") or parts[1].startswith("__"):
                # webdataset skips these too (no extension, or its own `__` meta files); an extension
                # like `__key__` would overwrite the sample's own fields
                continue
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
            # a header block counts too, so a sample of a million empty members is capped as well
            cost = info.size + tarfile.BLOCKSIZE
            if size + cost > max_sample_bytes:
                current[TOO_LARGE] = (
                    f"sample {key} is over io.max_sample_bytes ({max_sample_bytes}) at member {info.name}"
                )
                continue
            handle = tar.extractfile(info)
            current[ext] = handle.read()
            if len(current[ext]) != info.size:
                raise EOFError(f"{url}: member {info.name} is cut off")
            size += cost
        if current is not None:
            yield current
