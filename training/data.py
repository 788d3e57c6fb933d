"""The streaming data module that feeds the DiT from webdataset shards: clip shards or latent shards.

`ShardDataModule` reads the shards `reelmill curate` writes (`KEY.mp4`, `KEY.json`, `KEY.txt`; decoded here,
`kind="video"`) or the ones `reelmill encode` writes (`KEY.latent.npy`, `KEY.text.npy`, `KEY.text_mask.npy`;
`kind="latent"`, nothing decoded, no model loaded) and yields batches ready for `VideoDiTModule`:

    video:  {"video": uint8 [B, 3, T, H, W], "caption": [str] * B, "__key__": [str] * B}
    latent: {"latents": float32 [B, C, T', H', W'], "text": float32 [B, L, D], "text_mask": bool [B, L],
             "caption": [str] * B, "__key__": [str] * B}

How the stream is cut up (webdataset hangs or starves a rank when it is left to split by itself):

- Shards are split explicitly, first by rank (the trainer's global rank and world size, or
  `torch.distributed`), then by data-loader worker (torch's worker info). With `resampled=True` every
  rank and worker draws shards with replacement from all of them, seeded by (seed, epoch, rank, worker),
  so no stream ever runs dry and the shard count does not matter; each rank yields exactly
  `epoch_samples // batch_size` batches per epoch, so DDP never waits on a rank that ran out. With
  `resampled=False` each rank and worker reads a disjoint share of the shards (reshuffled every pass):
  one pass, or with `epoch_samples` as many passes as that needs, again the same count on every rank.
- Batches are formed inside the workers, so a batch is always one shape: one aspect/duration bucket
  (`buckets`), or one latent shape. The loader gets `batch_size=None`.
- Skipped samples never stop training: clips too short for the window (told by the record, before any
  decode, or by the decoder), corrupt samples (undecodable mp4, malformed npy, missing members), npy
  arrays refused by their header (`bad_array`: an object or structured dtype, a shape over the member
  cap), members over the byte caps (`member_too_large`, never read) and unreadable shards are counted
  and warned about, webdataset handler style; near-duplicate clips that a `reelmill dedup` result marks
  (`dedup`) are skipped before they are decoded and counted as `duplicate`; any other exception while
  making one item is our bug, counted as `internal_error`, never a dead worker. Workers are separate
  processes; they count into a small shared-memory table, so `ShardDataModule.counts()` is live and
  `LoaderStatsCallback` logs it.
- Shards are foreign input: they are read with `curation.safe_tar` (no compressed tars unless
  `allow_compressed`, each member's size checked against `max_member_bytes` before it is read), and a
  stream that has nothing usable ends with a `NothingUsable` error rather than spinning (an endless
  stream after `MAX_CONSECUTIVE_SKIPS` skips in a row, shard failures included) or ending an epoch
  empty and silent (a single pass that delivered nothing). A worker that stops delivering for
  `worker_timeout_s` is an error, not a hang.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curation import safe_tar
from curation.config import ConfigError
from curation.inputs import expand_shards
from curation.shards import member, open_shard, video_member
from training.clip_decode import (
    ClipTooShort,
    CorruptClip,
    CorruptSample,
    decode_clip,
    frames_at_fps,
    probe_clip,
    to_channels_first,
    to_model_range,
    uint8_to_model_range,
)

__all__ = [
    "BadArray",
    "Bucket",
    "ClipTooShort",
    "CorruptClip",
    "CorruptSample",
    "LoaderStatsCallback",
    "NothingUsable",
    "ShardDataModule",
    "ShardLoader",
    "ShardStream",
    "caption_variants",
    "choose_bucket",
    "decode_clip",
    "dedup_duplicates",
    "to_model_range",
    "uint8_to_model_range",
]

log = logging.getLogger(__name__)

COUNTERS = (
    "samples",
    "too_short",
    "corrupt",
    "bad_array",
    "member_too_large",
    "shard_errors",
    "internal_error",
    "duplicate",
)
"""What every worker counts: samples delivered in batches, and what was skipped, by why (`duplicate`: a
near-duplicate clip that `data.dedup` leaves out, before it is decoded)."""
MAX_WORKERS = 256  # rows of the shared counter table
MAX_CONSECUTIVE_SKIPS = 1000
"""An endless stream (resampled, or cycled to `epoch_samples`) that skips this many samples or shards in a
row has nothing usable: it stops with an error instead of spinning forever."""
WARN_FIRST, WARN_EVERY = 20, 1000  # per worker: the first skips are each told, then every 1000th
DEFAULT_WORKER_TIMEOUT_S = 600.0
"""How long the training process waits for a worker's next batch: far above what filling a shuffle
buffer from remote shards takes, far below a silently stuck run going unnoticed overnight."""
NUMERIC_KINDS = "biuf"
"""npy dtypes a latent shard may hold (bool, int, uint, float): anything else (object, structured,
strings, complex) is not what `reelmill encode` writes, and object arrays would need pickle."""
LATENT_MEMBERS = ("latent.npy", "text.npy", "text_mask.npy")


class BadArray(CorruptSample):
    """An npy member whose header declares what we refuse to allocate or read: a dtype that is not plain
    numeric, or more bytes than a member may hold."""


class MemberTooLarge(CorruptSample):
    """A sample with a member (or a total) over the byte caps: the member was never read."""


class NothingUsable(RuntimeError):
    """The shards gave this stream nothing it can train on: more skips in a row than
    `MAX_CONSECUTIVE_SKIPS` (an endless stream), or not one sample in a whole pass."""


# ---------------------------------------------------------------------------------------------
# Samples: record, captions, buckets


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def read_record(sample: dict) -> dict:
    """The clip record (`KEY.json`) of a sample, or {} when it has none or it is not valid JSON."""
    name = member(sample, "json")
    if name is None:
        return {}
    value = sample[name]
    if isinstance(value, dict):
        return value
    try:
        record = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: [[[[...]]]]
        return {}
    return record if isinstance(record, dict) else {}


def _segments(caption: dict) -> list:
    """The well-formed segments of a record's caption: others' records can hold anything there."""
    from captioning.parsing import Segment

    found = caption.get("segments")
    out = []
    for s in found if isinstance(found, list) else []:
        try:
            out.append(Segment(float(s["start_s"]), float(s["end_s"]), str(s["text"])))
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
    return out


def caption_variants(sample: dict) -> list[str]:
    """[dense, summary]: the captions a clip can be trained with, in the order latent shards store them.

    The dense caption is `KEY.txt` (or, without it, built from the record's caption the way curate writes
    `KEY.txt`); the summary is the record's `caption.summary`. Only the dense one when there is no summary,
    and [] when the sample has no caption at all.
    """
    from captioning.parsing import ParsedCaption, format_training_caption

    caption = read_record(sample).get("caption")
    caption = caption if isinstance(caption, dict) else {}
    summary = caption.get("summary")
    summary = summary.strip() if isinstance(summary, str) else ""
    txt = member(sample, "txt")
    dense = ""
    if txt is not None:
        try:
            dense = _text(sample[txt]).strip()
        except UnicodeDecodeError:
            dense = ""
    if not dense and caption:
        dense = format_training_caption(ParsedCaption(summary, _segments(caption))).strip()
    if not dense:
        return []
    return [dense, summary] if summary else [dense]


def choose_caption(variants: list[str], dense_prob: float, rng: random.Random) -> int:
    """Which variant to train on: the dense one (0) with probability `dense_prob`, else the summary (1)."""
    if len(variants) < 2 or rng.random() < dense_prob:
        return 0
    return 1


@dataclass(frozen=True)
class Bucket:
    """One batch shape: clips of this bucket are decoded to `num_frames` x `height` x `width`."""

    num_frames: int
    height: int
    width: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


def parse_buckets(buckets: list[dict] | None, default: Bucket) -> list[Bucket]:
    if not buckets:
        return [default]
    out = []
    for i, b in enumerate(buckets):
        try:
            bucket = Bucket(int(b["num_frames"]), int(b["height"]), int(b["width"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"data.buckets[{i}]: expected {{num_frames, height, width}}, got {b!r}"
            ) from None
        if min(bucket.num_frames, bucket.height, bucket.width) < 1:
            raise ConfigError(f"data.buckets[{i}]: sizes must be >= 1, got {b!r}")
        out.append(bucket)
    return out


def choose_bucket(width: int, height: int, available: int, buckets: list[Bucket]) -> Bucket | None:
    """The bucket for a clip of `width` x `height` with `available` frames at the training fps: among the
    buckets with the largest `num_frames` the clip can fill, the one closest to its aspect ratio (in log
    ratio, the first listed on a tie); None when the clip is too short for every bucket."""
    fits = [b for b in buckets if b.num_frames <= available]
    if not fits:
        return None
    longest = max(b.num_frames for b in fits)
    aspect = math.log(width / height) if width > 0 and height > 0 else 0.0
    return min((b for b in fits if b.num_frames == longest), key=lambda b: abs(math.log(b.aspect) - aspect))


def record_geometry(record: dict, fps: float) -> tuple[int, int, int] | None:
    """(width, height, frames available at `fps`) from a clip record, or None when it does not say."""
    try:
        width, height = int(record["width"]), int(record["height"])
        if record.get("num_frames") and record.get("fps"):
            duration = float(record["num_frames"]) / float(record["fps"])
        else:
            duration = float(record["duration_s"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):  # OverflowError: 1e999
        return None
    if width <= 0 or height <= 0 or not 0 < duration < math.inf:  # also refuses NaN
        return None
    return width, height, frames_at_fps(duration, fps)


def read_npy(data: bytes, name: str, max_bytes: int) -> np.ndarray:
    """The array of an `.npy` member, checked from its header before anything is allocated: a plain
    numeric or bool dtype, a shape whose bytes stay under `max_bytes` (raises BadArray otherwise), and
    exactly those bytes present (raises CorruptSample otherwise). np.load alone would try to allocate
    whatever shape the header claims, and an object dtype is a pickle."""
    from numpy.lib import format as npy_format

    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
        elif version == (3, 0):  # exists only for structured dtypes with non-ASCII field names
            raise BadArray(f"{name}: npy format 3.0 is not read (only 1.0 and 2.0)")
        else:
            raise CorruptSample(f"{name}: no npy format has version {version}")
    except (ValueError, SyntaxError, TypeError) as err:  # numpy's words for a malformed header
        raise CorruptSample(f"{name}: unreadable npy header ({err})") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise BadArray(f"{name}: dtype {dtype.descr!r} is not a plain numeric or bool dtype")
    if any(n < 0 for n in shape):
        raise CorruptSample(f"{name}: negative size in shape {shape}")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize  # Python ints: an absurd shape cannot overflow into a small one
    if nbytes > max_bytes:
        raise BadArray(
            f"{name}: shape {shape} of {dtype} is {nbytes} bytes, over max_member_bytes ({max_bytes})"
        )
    offset = stream.tell()
    if len(data) - offset != nbytes:
        raise CorruptSample(
            f"{name}: header says {nbytes} bytes of data, the member has {len(data) - offset}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Counting what is skipped, across worker processes


class _Skips:
    """Counts and tells what a worker skips, and how many skips in a row it has seen."""

    def __init__(self, table: torch.Tensor, slot: int):
        self.row = table[slot]  # a view into shared memory; only this worker writes this row
        self.told = 0
        self.consecutive = 0
        self.shard_failed = False  # a shard that fails once is counted once, whatever else it raises

    def add(self, counter: str, n: int = 1) -> None:
        self.row[COUNTERS.index(counter)] += n

    def skip(self, counter: str, what: str, why: object, exc_info: bool = False) -> None:
        """Count one skip; tell the first ones (with the traceback for `exc_info`: a bug of ours)."""
        self.add(counter)
        self.consecutive += 1
        self.told += 1
        if self.told <= WARN_FIRST or self.told % WARN_EVERY == 0:
            more = (
                f"; further skips are counted, told every {WARN_EVERY}th" if self.told == WARN_FIRST else ""
            )
            log.warning("skipped %s (%s): %s%s", what, counter, why, more, exc_info=exc_info)

    def shard_error(self, url: str, why: object) -> None:
        if not self.shard_failed:
            self.shard_failed = True
            self.skip("shard_errors", f"the rest of shard {url}", why)


def _zero_table() -> torch.Tensor:
    return torch.zeros(MAX_WORKERS, len(COUNTERS), dtype=torch.int64).share_memory_()


# ---------------------------------------------------------------------------------------------
# The stream


class ShardStream(IterableDataset):
    """Batches from shards, split by rank and worker, shuffled, decoded and bucketed inside the workers.

    Use it with `DataLoader(stream, batch_size=None, num_workers=N)`; `ShardDataModule` builds it. `rank`
    and `world_size` are this process's place among the training processes. `epoch_batches`: how many
    batches this rank yields per iteration (the workers share them out); None: a single pass
    (`resampled=False`) or endless (`resampled=True`). `split="samples"` (not resampled) has every rank and
    worker read all shards and keep every (world_size x workers)-th sample: for validation sets with
    fewer shards than ranks. `partial`: at the end of a single pass, also yield each bucket's last,
    incomplete batch (an endless stream never has one). `max_member_bytes`, `max_sample_bytes`,
    `allow_compressed`: how shards are read (see `curation.safe_tar.iter_tar_samples`). A URL starting
    with `pipe:` runs its command: only pass the ones the user wrote (`shard_urls` makes every other
    URL safe to open as a file). `exclude`: keys to skip (counted as `duplicate`), e.g. `dedup_duplicates`.
    """

    def __init__(
        self,
        urls: list[str],
        kind: Literal["video", "latent"] = "video",
        batch_size: int = 4,
        buckets: list[Bucket] | None = None,
        fps: float = 16.0,
        crop: Literal["start", "center", "random"] = "random",
        dense_caption_prob: float = 0.8,
        shuffle_buffer: int = 256,
        shuffle_shards: bool = True,
        resampled: bool = True,
        epoch_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        split: Literal["shards", "samples"] = "shards",
        partial: bool = True,
        seed: int | str = 0,
        decode_threads: int = 1,
        max_member_bytes: int = safe_tar.DEFAULT_MAX_MEMBER_BYTES,
        max_sample_bytes: int = safe_tar.DEFAULT_MAX_SAMPLE_BYTES,
        allow_compressed: bool = False,
        exclude: frozenset[str] | None = None,
    ):
        super().__init__()
        if not urls:
            raise ValueError("ShardStream: no shards")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        if split == "shards" and not resampled and len(urls) < world_size:
            raise ConfigError(
                f"{len(urls)} shards for {world_size} ranks: with resampled=False every rank needs a shard "
                "of its own. Write smaller shards (curate --set shards.max_clips=N), train on fewer devices, "
                "or use resampled=True."
            )
        self.urls = list(urls)
        self.kind = kind
        self.batch_size = batch_size
        self.buckets = buckets or [Bucket(17, 256, 256)]
        self.fps = fps
        self.crop = crop
        self.dense_caption_prob = dense_caption_prob
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = shuffle_shards
        self.resampled = resampled
        self.epoch_batches = epoch_batches
        self.rank, self.world_size = rank, world_size
        self.split = split
        self.partial = partial
        self.seed = seed
        self.decode_threads = decode_threads
        self.max_member_bytes = max_member_bytes
        self.max_sample_bytes = max_sample_bytes
        self.allow_compressed = allow_compressed
        self.exclude = exclude or frozenset()
        self.table = _zero_table()
        self._epoch = 0  # counts this copy's iterations: in a persistent worker, its epochs

    # -- size and counts ---------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per iteration on this rank, when fixed (`epoch_batches`); a single pass has no length."""
        if self.epoch_batches is None:
            raise TypeError("a single pass over shards has no length known in advance")
        return self.epoch_batches

    def counts(self) -> dict[str, int]:
        """What all workers of this stream delivered and skipped so far, summed."""
        return dict(zip(COUNTERS, self.table.sum(dim=0).tolist(), strict=True))

    def worker_batches(self, worker: int, workers: int) -> int | None:
        """This worker's share of `epoch_batches` (the shares add up to it exactly)."""
        if self.epoch_batches is None:
            return None
        return self.epoch_batches // workers + (worker < self.epoch_batches % workers)

    @property
    def endless(self) -> bool:
        return self.resampled or self.epoch_batches is not None

    # -- shards ------------------------------------------------------------------------------

    def shard_order(self, epoch: int, worker: int, workers: int) -> Iterator[str]:
        """The shards this rank and worker read, in order: drawn with replacement (resampled), else its
        disjoint share of each pass, passes repeated while the stream is endless."""
        if self.resampled:
            rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{worker}:shards")
            while True:
                yield rng.choice(self.urls)
        for n in itertools.count():
            order = list(self.urls)
            if self.shuffle_shards:  # the same order on every rank and worker, so the shares are disjoint
                random.Random(f"{self.seed}:{epoch}:{n}:order").shuffle(order)
            if self.split == "shards":
                mine = order[self.rank :: self.world_size][worker::workers]
                if not mine:
                    raise ConfigError(
                        f"rank {self.rank} worker {worker}: no shard of its own ({len(self.urls)} shards, "
                        f"{self.world_size} ranks x {workers} workers); use fewer workers or resampled=True"
                    )
            else:
                mine = order
            yield from mine
            if not self.endless:
                return

    def read_shards(self, urls: Iterator[str], skips: _Skips) -> Iterator[dict]:
        """Raw samples (`{"__key__", "__url__", EXT: bytes}`) of each shard, read with bounded memory
        (`safe_tar`: members over the cap are not read, their sample is flagged); an unreadable,
        refused (compressed) or empty shard, or its unreadable tail, is counted and skipped, and counts
        toward the skips in a row, so a stream whose every shard fails ends instead of spinning."""
        for url in urls:
            skips.shard_failed, found, excluded = False, 0, 0
            try:
                with open_shard(url) as stream:
                    for sample in safe_tar.iter_tar_samples(
                        stream, url, self.max_member_bytes, self.max_sample_bytes, self.allow_compressed
                    ):
                        found += 1
                        if sample["__key__"] in self.exclude:
                            skips.add("duplicate")
                            excluded += 1
                            continue
                        yield sample
            except Exception as exn:  # noqa: BLE001 (any failure to read a shard is the shard's)
                skips.shard_error(url, repr(exn)[:300])
            if found == 0:
                skips.shard_error(url, "no samples")
            elif excluded == found:  # a shard of duplicates only gave nothing: a skip in a row, no error
                skips.consecutive += 1
            self.check_progress(skips)

    def check_progress(self, skips: _Skips) -> None:
        """Raise NothingUsable once an endless stream has skipped `MAX_CONSECUTIVE_SKIPS` in a row."""
        if self.endless and skips.consecutive >= MAX_CONSECUTIVE_SKIPS:
            raise NothingUsable(
                f"{skips.consecutive} samples or shards in a row skipped (rank {self.rank}; counts so far "
                f"{self.counts()}): the shards have nothing this stream can use. Check the clips' "
                f"lengths against num_frames/fps/buckets, kind={self.kind!r} against the shards' members "
                "(clip shards: KEY.mp4; latent shards: KEY.latent.npy), and the warnings above."
            )

    # -- samples -> items ----------------------------------------------------------------------

    def video_item(self, sample: dict, rng: random.Random) -> tuple[Bucket, dict]:
        """(bucket, {"video": [3, T, H, W], "caption", "__key__"}); raises ClipTooShort or CorruptSample."""
        video = video_member(sample)
        if video is None:
            raise CorruptSample("no video member")
        variants = caption_variants(sample)
        if not variants:
            raise CorruptSample("no caption (KEY.txt, or caption in KEY.json)")
        data = sample[video]
        geometry = record_geometry(read_record(sample), self.fps)
        from_record = geometry is not None
        if geometry is None:  # no usable record: ask the container (packets only, nothing decoded)
            info = probe_clip(data)
            geometry = (info.width, info.height, frames_at_fps(info.duration_s, self.fps))
        width, height, available = geometry
        bucket = choose_bucket(width, height, available, self.buckets)
        if bucket is None:
            raise ClipTooShort(available, min(b.num_frames for b in self.buckets), self.fps)
        try:
            frames = decode_clip(
                data,
                bucket.num_frames,
                self.fps,
                bucket.height,
                bucket.width,
                self.crop,
                rng,
                threads=self.decode_threads,
            )
        except ClipTooShort as err:
            if from_record:  # the record promised the frames: the file lost them (a truncated upload)
                raise CorruptClip(
                    f"truncated: the record says {available} frames, the file has {err}"
                ) from None
            raise
        caption = variants[choose_caption(variants, self.dense_caption_prob, rng)]
        # uint8 crosses from the worker process (a quarter of float32's bytes); the module maps it to
        # [-1, 1] on the device
        return bucket, {"video": to_channels_first(frames), "caption": caption, "__key__": sample["__key__"]}

    def latent_item(self, sample: dict, rng: random.Random) -> tuple[tuple, dict]:
        """(latent shape and text width, {"latents": [C, T', H', W'], "text": [L, D], "text_mask": [L],
        "caption", "__key__"}), the text trimmed to its own tokens; raises CorruptSample (BadArray)."""
        arrays = {}
        for name in LATENT_MEMBERS:
            found = member(sample, name)
            if found is None:
                raise CorruptSample(f"no KEY.{name}")
            arrays[name] = read_npy(sample[found], f"KEY.{name}", self.max_member_bytes)
        latent, text, mask = arrays["latent.npy"], arrays["text.npy"], arrays["text_mask.npy"]
        if (
            latent.ndim != 4
            or text.ndim != 3
            or mask.shape != text.shape[:2]
            or 0 in latent.shape + text.shape
        ):
            raise CorruptSample(
                f"shapes latent {latent.shape}, text {text.shape}, text_mask {mask.shape}: "
                "expected [C, T, H, W], [V, L, D], [V, L], none of them empty"
            )
        variants = caption_variants(sample)
        choice = choose_caption(variants[: len(text)] or [""], self.dense_caption_prob, rng)
        row_mask = mask[choice].astype(bool)
        length = int(np.flatnonzero(row_mask)[-1]) + 1 if row_mask.any() else 1
        with np.errstate(all="ignore"):  # float64 beyond float32's range turns inf: refused just below
            latents, row_text = latent.astype(np.float32), text[choice, :length].astype(np.float32)
        if not (np.isfinite(latents).all() and np.isfinite(row_text).all()):
            raise CorruptSample("latents or text embeddings hold NaN or inf (they would poison the loss)")
        item = {
            "latents": torch.from_numpy(latents),
            "text": torch.from_numpy(row_text),
            "text_mask": torch.from_numpy(row_mask[:length].copy()),
            "caption": variants[choice] if choice < len(variants) else "",
            "__key__": sample["__key__"],
        }
        return (*latent.shape, text.shape[-1]), item  # batches share a latent shape and a text width

    def items(self, samples: Iterator[dict], rng: random.Random, skips: _Skips) -> Iterator[tuple]:
        """(batch key, item) for each usable sample; every other one is a counted skip, whatever it
        raised: a worker that dies takes training with it."""
        make = self.video_item if self.kind == "video" else self.latent_item
        for sample in samples:
            what = f"{sample.get('__key__')} in {sample.get('__url__')}"
            try:
                if safe_tar.TOO_LARGE in sample:
                    raise MemberTooLarge(sample[safe_tar.TOO_LARGE])
                item = make(sample, rng)
            except MemberTooLarge as err:
                skips.skip("member_too_large", what, err)
            except ClipTooShort as err:
                skips.skip("too_short", what, err)
            except BadArray as err:
                skips.skip("bad_array", what, err)
            except CorruptSample as err:
                skips.skip("corrupt", what, err)
            except Exception as err:  # noqa: BLE001 (a bug of ours on one sample must not end training)
                skips.skip("internal_error", what, f"{type(err).__name__}: {err}"[:500], exc_info=True)
            else:
                skips.consecutive = 0
                yield item
            self.check_progress(skips)

    # -- items -> batches ----------------------------------------------------------------------

    def collate(self, items: list[dict]) -> dict:
        batch: dict[str, Any] = {
            "caption": [i["caption"] for i in items],
            "__key__": [i["__key__"] for i in items],
        }
        if self.kind == "video":
            batch["video"] = torch.stack([i["video"] for i in items])  # uint8 [B, 3, T, H, W]
            return batch
        length = max(len(i["text_mask"]) for i in items)
        dim = items[0]["text"].shape[-1]
        text = torch.zeros(len(items), length, dim)  # [B, L, D], zero past each sample's tokens
        mask = torch.zeros(len(items), length, dtype=torch.bool)  # [B, L]
        for row, i in enumerate(items):
            n = len(i["text_mask"])
            text[row, :n], mask[row, :n] = i["text"], i["text_mask"]
        batch["latents"] = torch.stack([i["latents"] for i in items])  # [B, C, T', H', W']
        batch["text"], batch["text_mask"] = text, mask
        return batch

    def batches(self, items: Iterator[tuple], skips: _Skips) -> Iterator[dict]:
        """Homogeneous batches: items wait in their bucket until it holds `batch_size`."""
        pending: dict[Any, list[dict]] = {}
        for key, item in items:
            group = pending.setdefault(key, [])
            group.append(item)
            if len(group) == self.batch_size:
                del pending[key]
                skips.add("samples", len(group))
                yield self.collate(group)
        if self.partial:
            for group in pending.values():
                skips.add("samples", len(group))
                yield self.collate(group)

    def __iter__(self) -> Iterator[dict]:
        from webdataset.filters import shuffle

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if worker >= MAX_WORKERS:
            raise ValueError(f"ShardStream counts at most {MAX_WORKERS} workers per rank")
        epoch, self._epoch = self._epoch, self._epoch + 1
        rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{worker}")
        skips = _Skips(self.table, worker)
        samples = self.read_shards(self.shard_order(epoch, worker, workers), skips)
        if self.split == "samples":
            slot, slots = self.rank * workers + worker, self.world_size * workers
            samples = itertools.islice(samples, slot, None, slots)
        if self.shuffle_buffer > 1:
            samples = shuffle(self.shuffle_buffer, max(1, self.shuffle_buffer // 4), rng=rng)(samples)
        batches = self.batches(self.items(samples, rng, skips), skips)
        limit = self.worker_batches(worker, workers)
        yield from batches if limit is None else itertools.islice(batches, limit)


# ---------------------------------------------------------------------------------------------
# The Lightning data module


def _as_list(value: str | list[str] | None) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def shard_urls(inputs: list[str]) -> list[str]:
    """Shard URLs from the user's inputs (`expand_shards`), where only a `pipe:` command the user wrote
    stays one: a file whose name starts with `pipe:`, found by listing a directory or a glob relative to
    the working directory, comes back as an absolute path, so it is opened, never run."""
    found: list[str] = []
    for item in inputs:
        if item.startswith("pipe:"):
            found.append(item)
            continue
        found += [os.path.abspath(u) if u.startswith("pipe:") else u for u in expand_shards([item])]
    return list(dict.fromkeys(found))


def dedup_duplicates(path: str) -> frozenset[str]:
    """The keys a `reelmill dedup` result marks as near-duplicates (rows with `duplicate_of` set); `path`
    is a run's OUT, its `manifest/dedup` directory or one parquet file of it."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from curation import storage

    parts = [path] if path.endswith(".parquet") and storage.is_file(path) else []
    for directory in [] if parts else [storage.join(path, "manifest", "dedup"), path]:
        if storage.exists(directory) and not storage.is_file(directory):
            parts = sorted(
                u for u in storage.list_files(directory, recursive=False) if u.endswith(".parquet")
            )
            if parts:
                break
    if not parts:
        raise ConfigError(
            f"data.dedup: {path} holds no `reelmill dedup` result (manifest/dedup/*.parquet); run "
            "`reelmill dedup OUT` first, and pass OUT"
        )
    keys: set[str] = set()
    for uri in parts:
        table = pq.read_table(storage.open_input_file(uri), columns=["clip_id", "duplicate_of"])
        if "duplicate_of" not in table.column_names:
            raise ConfigError(f"data.dedup: {uri} is not a `reelmill dedup` manifest (no duplicate_of)")
        keys.update(table.filter(pc.is_valid(table.column("duplicate_of"))).column("clip_id").to_pylist())
    return frozenset(keys)


class ShardLoader(DataLoader):
    """The data module's DataLoader: a single pass over this rank's shards that delivered no sample at all
    ends with NothingUsable instead of an empty, silent epoch. Only the training process knows: each
    worker sees its own shards, and one worker's bad shards are no reason to stop while the others
    deliver. (A pass split by sample across ranks is not checked: a rank may rightly get nothing.)"""

    def __iter__(self) -> Iterator[dict]:
        stream = self.dataset
        before = stream.counts()
        yield from super().__iter__()
        if stream.endless or (stream.split == "samples" and stream.world_size > 1):
            return  # split by sample, a rank's share of a small set may rightly be empty
        after = stream.counts()
        if after["samples"] == before["samples"]:
            skipped = {k: after[k] - before[k] for k in COUNTERS if k != "samples" and after[k] > before[k]}
            raise NothingUsable(
                f"a pass over {len(stream.urls)} shard(s) gave no usable sample (skipped: "
                f"{skipped or 'nothing; the shards hold no samples'}). Check kind={stream.kind!r} against "
                "the shards' members (clip shards: KEY.mp4; latent shards: KEY.latent.npy), the clips' "
                "lengths against num_frames/fps/buckets, and the warnings above."
            )


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ShardDataModule(L.LightningDataModule):
    """Training (and validation) batches from webdataset shards, for `reelmill train`'s `--data.*`."""

    def __init__(
        self,
        shards: str | list[str] = "",
        val_shards: str | list[str] | None = None,
        kind: Literal["video", "latent"] = "video",
        batch_size: int = 4,
        num_workers: int = 4,
        num_frames: int = 17,
        fps: float = 16.0,
        height: int = 256,
        width: int = 256,
        crop: Literal["start", "center", "random"] = "random",
        dense_caption_prob: float = 0.8,
        shuffle_buffer: int = 256,
        resampled: bool = True,
        epoch_samples: int | None = None,
        buckets: list[dict] | None = None,
        prefetch_factor: int = 2,
        pin_memory: bool = True,
        seed: int = 0,
        val_batch_size: int | None = None,
        decode_threads: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
        max_member_bytes: int = safe_tar.DEFAULT_MAX_MEMBER_BYTES,
        max_sample_bytes: int = safe_tar.DEFAULT_MAX_SAMPLE_BYTES,
        allow_compressed: bool = False,
        worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
        dedup: str | None = None,
    ):
        """Batches for `VideoDiTModule` from webdataset shards.

        Args:
            shards: training shards: files, directories (their `*.tar`, or a curate run's OUT and its
                `shards/`), globs, brace patterns (`shard-{000000..000009}-000.tar`), `pipe:` commands,
                or URIs pyarrow/fsspec open (s3://, gs://); a string or a list of them.
            val_shards: validation shards, in the same forms; None: no validation. Validation is
                deterministic: shards in order, no shuffling, the center window, dense captions, a single
                pass split across ranks (by sample when there are fewer shards than ranks).
            kind: "video" for clip shards (curate, recaption: decoded here, encoded by the module's VAE on
                the device) or "latent" for the shards `reelmill encode` writes (nothing decoded).
            batch_size: samples per batch, per rank.
            num_workers: data-loader worker processes per rank, each decoding whole batches; capped at the
                CPUs per rank on this node, and (with resampled=False) at the shards per rank. 0 reads in
                the training process.
            num_frames: frames per clip (video kind, without `buckets`); Wan's VAE takes 4k+1.
            fps: clips are resampled to this frame rate before the window is taken (frames are picked by
                timestamp, whatever the clip's own rate).
            height: frame height; clips are scaled to cover height x width (aspect kept), then center-cropped.
            width: frame width.
            crop: where the window of `num_frames` is taken in a longer clip: "start", "center" or "random"
                (seeded).
            dense_caption_prob: probability of training on the dense, timestamped caption (`KEY.txt`); the
                summary (`caption.summary`) otherwise. Seeded, so a run is reproducible.
            shuffle_buffer: samples (undecoded) each worker shuffles among; 0 or 1 keeps shard order.
            resampled: draw shards with replacement, independently per rank and worker: the stream never
                runs dry, whatever the shard count (training default). False: each rank and worker reads a
                disjoint share of the shards.
            epoch_samples: samples per rank in an epoch (its batches: epoch_samples // batch_size, exactly
                the same on every rank). None: endless when resampled (set `trainer.max_steps`, and an
                integer `val_check_interval`), a single pass when not (one rank only: several ranks would
                run out at different steps, so they need epoch_samples). With resampled=False and
                epoch_samples, each rank reads its share of one pass over the shards, then its share of
                the next pass (reshuffled), and so on, until the epoch is full.
            buckets: batch shapes, `[{num_frames, height, width}, ...]`, replacing num_frames/height/width:
                a clip goes to the bucket closest to its aspect ratio among those with the most frames it
                can fill (from its record: width, height, fps, num_frames; no decode), and every batch is
                one bucket. Latent batches are always grouped by latent shape.
            prefetch_factor: batches each worker prepares ahead.
            pin_memory: pin batches in page-locked memory (only when training on CUDA).
            seed: seeds shard order, sample shuffling, random crops and caption choice, with the rank,
                worker, epoch and the step training (re)starts from.
            val_batch_size: batch size for validation; None: batch_size.
            decode_threads: decoder threads per clip; workers are the parallelism, raise it only when
                workers are fewer than cores.
            rank: this process's rank among the training processes; None: the trainer's global rank
                (or torch.distributed's). With world_size, for reading a rank's share outside a trainer.
            world_size: the number of training processes; None: the trainer's (or torch.distributed's).
            max_member_bytes: the largest shard member read (checked in its tar header before it is
                read); a sample with a larger one is skipped and counted (`member_too_large`). Also caps
                what an npy header may declare.
            max_sample_bytes: the most bytes all members of one sample may hold together.
            allow_compressed: read gzip/bzip2/xz/zstd-compressed tars; False (the default) counts them
                as shard errors, since a small compressed shard can inflate to any size.
            worker_timeout_s: seconds the training process waits for a worker's next batch before it
                fails (a stuck worker, a hung remote read) instead of hanging; 0: wait forever. Only for
                num_workers > 0.
            dedup: a `reelmill dedup` result: a run's OUT, its `manifest/dedup` directory or a parquet file
                of it. The clips it marks as near-duplicates (`duplicate_of` set) are skipped before they
                are decoded, in training and validation, and counted as `duplicate`; every other clip (kept
                ones, and any clip the result does not list) is read as usual. Works for latent shards
                too: `reelmill encode` keeps the keys.
        """
        super().__init__()
        self.save_hyperparameters()
        checks = {
            "kind": kind in ("video", "latent"),
            "crop": crop in ("start", "center", "random"),
            "batch_size": batch_size >= 1,
            "val_batch_size": val_batch_size is None or val_batch_size >= 1,
            "num_workers": num_workers >= 0,
            "num_frames": num_frames >= 1,
            "fps": fps > 0,
            "height": height >= 1 and width >= 1,
            "dense_caption_prob": 0.0 <= dense_caption_prob <= 1.0,
            "shuffle_buffer": shuffle_buffer >= 0,
            "epoch_samples": epoch_samples is None or epoch_samples >= 1,
            "prefetch_factor": prefetch_factor >= 1,
            "decode_threads": decode_threads >= 1,
            "max_member_bytes": max_member_bytes >= 1,
            "max_sample_bytes": max_sample_bytes >= 1,
            "worker_timeout_s": worker_timeout_s >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"data.{bad[0]}: invalid value (see the ShardDataModule docstring)")
        self.buckets = parse_buckets(buckets, Bucket(num_frames, height, width))
        # The clip shape and rate other parts of a run read (the sampling callback): with buckets, the first's.
        self.kind, self.batch_size, self.fps = kind, batch_size, fps
        self.num_frames, self.height, self.width = (
            self.buckets[0].num_frames,
            self.buckets[0].height,
            self.buckets[0].width,
        )
        self.shards, self.val_shards = shards, val_shards
        self.train_urls: list[str] = []
        self.val_urls: list[str] = []
        self._streams: dict[str, ShardStream] = {}
        self._retired = {split: dict.fromkeys(COUNTERS, 0) for split in ("train", "val")}
        self.exclude: frozenset[str] | None = None

    # -- where this process is -----------------------------------------------------------------

    def rank_and_world(self) -> tuple[int, int]:
        """(global rank, world size): explicit arguments, else the trainer's, else torch.distributed's."""
        hp = self.hparams
        if hp.rank is not None or hp.world_size is not None:
            return int(hp.rank or 0), int(hp.world_size or 1)
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _local_ranks(self) -> int:
        if self.hparams.rank is not None or self.hparams.world_size is not None:
            return 1
        if self.trainer is not None:
            return max(1, self.trainer.num_devices)
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))

    def _start_step(self) -> int:
        """The step training starts from (0, or the restored one): a resumed run does not replay its data."""
        return int(self.trainer.global_step) if self.trainer is not None else 0

    # -- hooks ---------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Expand the shard inputs (every rank does, the same way: the lists are sorted or as given)."""
        if stage in (None, "fit") and not self.train_urls:
            if not _as_list(self.shards):
                raise ConfigError(
                    "data.shards: no training shards given (e.g. --data.shards 'OUT/shards/*.tar')"
                )
            self.train_urls = shard_urls(_as_list(self.shards))
        if self.hparams.dedup and self.exclude is None:
            self.exclude = dedup_duplicates(self.hparams.dedup)
            log.info("data.dedup: %d near-duplicate clips are skipped", len(self.exclude))
        if stage in (None, "fit", "validate") and self.val_shards and not self.val_urls:
            self.val_urls = shard_urls(_as_list(self.val_shards))

    def _workers(self, split: str, shards: int, world: int, by_shard: bool) -> int:
        """`num_workers`, capped at this rank's share of the node's CPUs (decoding is CPU-bound: more
        workers than cores only add memory), and when workers own shards, at the shards per rank (a
        worker without a shard of its own would have nothing to read)."""
        wanted = self.hparams.num_workers
        cpu_cap = max(1, _usable_cpus() // self._local_ranks())
        shard_cap = max(1, shards // world) if by_shard else wanted
        workers = min(wanted, cpu_cap, shard_cap)
        if workers < wanted:
            why = (
                f"{shards} shards for {world} rank(s): each worker reads shards of its own "
                "(write smaller shards, or train with resampled=True)"
                if workers == shard_cap
                else f"{cpu_cap} CPUs per rank"
            )
            log.warning("%s loader: %d workers per rank instead of %d: %s", split, workers, wanted, why)
        return workers

    def _loader(self, split: str, stream: ShardStream, workers: int) -> DataLoader:
        old = self._streams.get(split)
        if old is not None:  # a reloaded loader: keep counting from where the old one was
            for k, v in old.counts().items():
                self._retired[split][k] += v
        self._streams[split] = stream
        on_cuda = torch.cuda.is_available() and (
            self.trainer is None or self.trainer.strategy.root_device.type == "cuda"
        )
        return ShardLoader(
            stream,
            batch_size=None,  # the stream batches (one bucket per batch)
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=self.hparams.prefetch_factor if workers > 0 else None,
            pin_memory=self.hparams.pin_memory and on_cuda,
            timeout=self.hparams.worker_timeout_s if workers > 0 else 0,
        )

    def _reading(self) -> dict:
        """How streams read shards: the data module's byte caps and compression setting."""
        hp = self.hparams
        return {
            "max_member_bytes": hp.max_member_bytes,
            "max_sample_bytes": hp.max_sample_bytes,
            "allow_compressed": hp.allow_compressed,
            "exclude": self.exclude,
        }

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        self.setup("fit")
        rank, world = self.rank_and_world()
        if not hp.resampled and world > 1 and hp.epoch_samples is None:
            raise ConfigError(
                f"data.epoch_samples: with resampled=False and {world} ranks each rank would run out at a "
                "different step and DDP would wait forever; set epoch_samples (per rank, at most its share "
                "of the clips to see each once), or use resampled=True"
            )
        epoch_batches = None if hp.epoch_samples is None else max(1, hp.epoch_samples // hp.batch_size)
        workers = self._workers("train", len(self.train_urls), world, by_shard=not hp.resampled)
        stream = ShardStream(
            self.train_urls,
            kind=hp.kind,
            batch_size=hp.batch_size,
            buckets=self.buckets,
            fps=hp.fps,
            crop=hp.crop,
            dense_caption_prob=hp.dense_caption_prob,
            shuffle_buffer=hp.shuffle_buffer,
            shuffle_shards=True,
            resampled=hp.resampled,
            epoch_batches=epoch_batches,
            rank=rank,
            world_size=world,
            seed=f"{hp.seed}:{self._start_step()}",
            decode_threads=hp.decode_threads,
            **self._reading(),
        )
        if epoch_batches is not None:
            # The length is exact by construction (each worker yields its share), which is what the
            # warning Lightning gives for every sized IterableDataset cannot know.
            warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        return self._loader("train", stream, workers)

    def val_dataloader(self) -> DataLoader | list:
        hp = self.hparams
        self.setup("validate")
        if not self.val_urls:
            # Lightning skips validation for an empty list, and says so in a warning meant for mistakes
            warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
            return []
        rank, world = self.rank_and_world()
        by_shard = len(self.val_urls) >= world
        if by_shard:
            workers = self._workers("val", len(self.val_urls), world, by_shard=True)
        else:  # every rank reads every shard and keeps its share of the samples: small sets only
            workers = 0
            log.warning(
                "val loader: %d shards for %d ranks: every rank reads all of them and keeps every %d-th "
                "sample, in the training process",
                len(self.val_urls),
                world,
                world,
            )
        stream = ShardStream(
            self.val_urls,
            kind=hp.kind,
            batch_size=hp.val_batch_size or hp.batch_size,
            buckets=self.buckets,
            fps=hp.fps,
            crop="center",
            dense_caption_prob=1.0,
            shuffle_buffer=0,
            shuffle_shards=False,
            resampled=False,
            epoch_batches=None,
            rank=rank,
            world_size=world,
            split="shards" if by_shard else "samples",
            seed=hp.seed,
            decode_threads=hp.decode_threads,
            **self._reading(),
        )
        return self._loader("val", stream, workers)

    def counts(self, split: Literal["train", "val"] = "train") -> dict[str, int]:
        """Samples delivered and skipped (every counter of `COUNTERS`: `too_short`, `corrupt`,
        `bad_array`, `member_too_large`, `shard_errors`, `internal_error`, `duplicate`) by this rank's
        loader for `split`, summed over its workers, live (workers count into shared memory). `samples`
        counts what went into batches, including the few batches prefetched but not yet trained on."""
        stream = self._streams.get(split)
        current = stream.counts() if stream is not None else dict.fromkeys(COUNTERS, 0)
        return {k: self._retired[split][k] + current[k] for k in COUNTERS}


# ---------------------------------------------------------------------------------------------
# Visible counts


class LoaderStatsCallback(L.Callback):
    """Logs the loader's counts and speed every `every_n_batches` training batches, summed over ranks:

    `data/samples` and one `data/REASON` per skip reason (`too_short`, `corrupt`, `bad_array`,
    `member_too_large`, `shard_errors`, `internal_error`: totals so far, from `ShardDataModule.counts`;
    they include batches the workers prefetched), `data/samples_per_s` (samples training took from the
    loader per second since the last log, over all ranks) and `data/wait_s`: the mean time from the end
    of one training batch to the start of the next, validation left out. That is the wait for data, near 0 when the loader keeps up (the point of the
    workers), plus whatever other callbacks do between batches (a checkpoint save).
    """

    def __init__(self, every_n_batches: int = 50):
        self.every_n_batches = every_n_batches
        self._batches = 0
        self._taken = 0  # samples this rank's training took since the last log
        self._wait = 0.0
        self._last_end: float | None = None
        self._last_log: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_log = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last_end is not None:
            self._wait += time.perf_counter() - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        keys = batch.get("__key__") if isinstance(batch, dict) else None
        self._taken += len(keys) if keys is not None else 0
        if self._batches % self.every_n_batches == 0:
            datamodule = trainer.datamodule
            counts = datamodule.counts("train") if hasattr(datamodule, "counts") else {}
            local = [float(counts.get(k, 0)) for k in COUNTERS] + [float(self._taken), self._wait]
            totals = trainer.strategy.reduce(
                torch.tensor(local, dtype=torch.float64, device=pl_module.device), reduce_op="sum"
            ).tolist()  # the same call on every rank, at the same batch
            metrics = {"data/wait_s": totals[-1] / trainer.world_size / self.every_n_batches}
            now = time.perf_counter()
            if counts:
                metrics |= {f"data/{k}": v for k, v in zip(COUNTERS, totals, strict=False)}
            if self._last_log is not None:
                metrics["data/samples_per_s"] = totals[-2] / max(now - self._last_log, 1e-9)
            self._last_log = now
            self._taken = 0
            self._wait = 0.0
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._last_end = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._last_end is not None:
            self._wait += time.perf_counter() - self._last_end

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._last_end is not None:  # validation inside training is not waiting for training data
            self._last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._last_end = None  # the gap to the next epoch's first batch is start-up, not waiting
