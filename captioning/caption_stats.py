"""Caption statistics for a run's quality report, computed in one pass over the clip manifest.

A captioner that passes the parser's checks can still write captions that are poor training data:
too short or too long, a timeline that leaves most of the clip undescribed, a small vocabulary,
stock openings ("The video shows ..."), mild repetition, or the same caption for many clips. The
report shows these as numbers; `CaptionStatsAccumulator` computes them from manifest rows (dicts as
`pyarrow.Table.to_pylist()` gives them, with the flattened `caption.*` columns of
`curation.record.CLIP_SCHEMA`; nested clip records with a `caption` dict are read too), one row at a
time, so a run of any size can be summarised while its manifest parts are streamed.

Words are those of `captioning.parsing` (lower-cased runs of letters and digits), so the report and
the parser's own checks count the same things. Everything is deterministic: reservoir samples and
MinHash permutations are seeded, and hashes are keyed digests rather than Python's salted `hash`.

Memory. Fixed-size state: five reservoir samples (`sample_size` values each), two k-minimum-values
sketches (`distinct_sketch_size` 64-bit hashes each), a Misra-Gries summary of summary openings
(`openings_capacity` keys), a bounded cache of word hashes, and counters over fixed vocabularies.
The one part that grows with the run is duplicate detection, which cannot find every duplicate pair
in sublinear memory: per captioned clip it keeps a 64-bit digest of the normalized text, a MinHash
signature of `num_perm` 16-bit values, and the clip id as UTF-8 bytes plus an 8-byte offset, about
`2 * num_perm + 16 + len(clip_id)` bytes (some 300 bytes at the defaults). `result()` additionally
holds the candidate pairs of the LSH buckets while it verifies them.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from array import array
from collections import Counter
from collections.abc import Iterable

import numpy as np

from captioning.parsing import REJECTION_REASONS, _words
from captioning.streaming import Distribution, FrequentItems

FAILURE_REASONS: tuple[str, ...] = (*REJECTION_REASONS, "undecodable")
"""What a caption failure can be (`CaptionOutcome.failure`); other text in an error is `other`."""

STOCK_OPENINGS: tuple[str, ...] = (
    "the video shows",
    "the video depicts",
    "the video features",
    "the video captures",
    "the video showcases",
    "the video presents",
    "the video begins",
    "the video opens",
    "the video starts",
    "the video is",
    "in this video",
    "in the video",
    "this video",
    "the clip shows",
    "the clip depicts",
    "the clip features",
    "in this clip",
    "this clip",
    "the footage shows",
    "in this footage",
    "the image shows",
    "the image depicts",
    "in this image",
    "this image",
    "the scene shows",
    "the scene depicts",
    "a video of",
    "a clip of",
    "video of",
    "footage of",
)
"""Openings that say nothing about the content: a caption model falls back on them, and a text-to-video
model trained on them learns to expect them. Matched on whole words at the start of a text."""

DISTRIBUTIONS: tuple[str, ...] = (
    "words_per_caption",
    "words_per_segment",
    "segments_per_clip",
    "segments_per_second",
    "coverage",
)

_LOW32 = np.uint64(0xFFFFFFFF)
_SIGNATURE_SHIFT = np.uint64(32)  # multiply-add-shift hashing: bits 32.. of (a*x + b) mod 2**64
_SIGNATURE_MASK = np.uint64(0xFFFF)  # b-bit MinHash: 16 bits of each minimum are kept
_SIGNATURE_COLLISION = 2.0**-16  # chance that two different minima agree in those bits
_MINHASH_BATCH = 2048  # shingles hashed per numpy step: bounds the (shingles x num_perm) temporaries
_KMV_BATCH = 1 << 15


@functools.lru_cache(maxsize=1 << 16)
def _hash64(text: str) -> int:
    """A stable 64-bit hash (Python's `hash` of a str is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _caption_parts(row: dict) -> tuple[str, list[dict]] | None:
    """Summary and segments of a manifest row or a nested clip record; None when it has no caption."""
    nested = row.get("caption")
    if isinstance(nested, dict):
        summary, segments = nested.get("summary"), nested.get("segments")
    else:
        summary, segments = row.get("caption.summary"), row.get("caption.segments")
    if summary is None and segments is None:
        return None
    return summary or "", [s for s in segments or [] if s is not None]


def caption_text(row: dict) -> str | None:
    """The full text of a row's caption: the summary, then each segment's text, one per line, without
    times (they are not words of the description); None when the row has no caption."""
    parts = _caption_parts(row)
    if parts is None:
        return None
    summary, segments = parts
    return "\n".join(t for t in [summary, *(s.get("text") or "" for s in segments)] if t)


def _covered(segments: list[dict], duration_s: float) -> float:
    """Seconds of [0, duration_s] inside at least one segment (overlaps counted once)."""
    spans = sorted(
        (max(0.0, s["start_s"]), min(duration_s, s["end_s"]))
        for s in segments
        if s.get("start_s") is not None and s.get("end_s") is not None
    )
    spans = [(start, end) for start, end in spans if end > start]
    total, reach = 0.0, 0.0
    for start, end in spans:
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _failure_reasons(errors: Iterable[dict] | None) -> set[str]:
    """Caption failure reasons of a row's `errors` ("REASON: detail (after N attempts)")."""
    reasons = set()
    for error in errors or ():
        if error and error.get("stage") == "caption":
            reason = str(error.get("message") or "").partition(":")[0].strip()
            reasons.add(reason if reason in FAILURE_REASONS else "other")
    return reasons


_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_STEP = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, a bijection of uint64 that spreads every input bit over the output."""
    x = (x ^ (x >> np.uint64(30))) * _MIX_1
    x = (x ^ (x >> np.uint64(27))) * _MIX_2
    return x ^ (x >> np.uint64(31))


def _then(prefix: np.ndarray, word: np.ndarray) -> np.ndarray:
    """Hashes of word sequences extended by one word: uniform, and (up to 2**-64 chance) as distinct
    as the sequences, so n-grams are hashed from word hashes without building their strings."""
    return _mix(prefix * _STEP + word)


_OPENING_WORDS = sorted(
    ((p, tuple(p.split())) for p in STOCK_OPENINGS), key=lambda item: -len(item[1])
)  # longest first, so "in this video" is not counted as a shorter phrase it contains


def _stock_opening(words: list[str]) -> str | None:
    """The (longest) stock phrase the text opens with, if any."""
    for phrase, phrase_words in _OPENING_WORDS:
        if tuple(words[: len(phrase_words)]) == phrase_words:
            return phrase
    return None


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band) for LSH over `num_perm` MinHash values: the most rows per band (fewest
    false candidates) for which a pair at Jaccard `threshold` still shares a band with probability
    at least `recall`; pairs above the threshold are then found almost surely."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


class _DistinctCounter:
    """Distinct strings via a k-minimum-values sketch of their 64-bit hashes: exact while there are at
    most `k` distinct ones, then an estimate with relative error about 1/sqrt(k)."""

    def __init__(self, k: int):
        self.k = k
        self.kept = np.empty(0, dtype=np.uint64)
        self.pending: list[np.ndarray] = []
        self.pending_size = 0
        self.bound = np.uint64(0)  # once saturated, a hash at or above it cannot be among the k smallest
        self.saturated = False

    def add(self, hashes: np.ndarray) -> None:
        """Count 64-bit hashes (uniformly distributed ones, as `_hash64` and `_then` give)."""
        if self.saturated:
            hashes = hashes[hashes < self.bound]
        self.pending.append(hashes)
        self.pending_size += len(hashes)
        if self.pending_size >= _KMV_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        merged = np.unique(np.concatenate([self.kept, *self.pending]))
        self.pending, self.pending_size = [], 0
        if len(merged) > self.k:
            merged = merged[: self.k]
            self.saturated = True
            self.bound = merged[-1]
        self.kept = merged

    def count(self) -> tuple[int, bool]:
        """(distinct count, whether it is exact)."""
        self._flush()
        if not self.saturated:
            return len(self.kept), True
        return round((self.k - 1) / ((int(self.kept[-1]) + 1) / 2.0**64)), False


class _StringColumn:
    """Strings appended one by one, stored as one UTF-8 buffer and end offsets (no object per string)."""

    def __init__(self):
        self.data = bytearray()
        self.ends = array("Q")

    def append(self, text: str) -> None:
        self.data += text.encode()
        self.ends.append(len(self.data))

    def __getitem__(self, i: int) -> str:
        start = self.ends[i - 1] if i else 0
        return self.data[start : self.ends[i]].decode()


class _DuplicateIndex:
    """Exact and near-duplicate captions across clips.

    Exact duplicates share the normalized full text (the caption's words, lower-cased, in order;
    punctuation, spacing and times ignored). Near duplicates are pairs of different normalized texts
    whose word 3-gram shingle sets have an estimated Jaccard similarity >= `threshold`: MinHash with
    `num_perm` seeded universal hashes (`_minima`) estimates it, LSH banding (`lsh_bands`) picks
    the candidate pairs, and each candidate is checked on its whole signature. Each distinct text is
    compared once, through its first clip, so an exact-duplicate group does not multiply the pairs.
    Captions without words take no part (nothing to compare; the parser does not accept them).
    """

    def __init__(self, num_perm: int, threshold: float, seed: int, max_bucket: int):
        self.num_perm, self.threshold, self.max_bucket = num_perm, threshold, max_bucket
        self.bands, self.rows = lsh_bands(num_perm, threshold)
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64)
        self.digests = array("Q")
        self.clip_ids = _StringColumn()
        self.signatures: list[np.ndarray] = []
        self.pending: list[np.ndarray] = []
        self.pending_shingles = 0

    def add(self, clip_id: str, text: str, shingles: np.ndarray) -> None:
        """One captioned clip: its normalized text (not empty) and the hashes of its shingles."""
        self.digests.append(_hash64(text))
        self.clip_ids.append(clip_id)
        self.pending.append(shingles)
        self.pending_shingles += len(shingles)
        if self.pending_shingles >= _MINHASH_BATCH:
            self._flush()

    def _minima(self, hashes: np.ndarray) -> np.ndarray:
        """(a*x + b) mod 2**64 for every shingle x (its low 32 bits) and every permutation (a, b).

        Its bits from 32 up are a strongly universal hash of x (Dietzfelbinger's multiply-add-shift),
        and taking them is monotone, so the shift can wait until after the minimum."""
        return (hashes & _LOW32)[:, None] * self.a + self.b

    def _signature(self, minima: np.ndarray) -> np.ndarray:
        return ((minima >> _SIGNATURE_SHIFT) & _SIGNATURE_MASK).astype(np.uint16)

    def _flush(self) -> None:
        if not self.pending:
            return
        lengths = np.array([len(h) for h in self.pending])
        if lengths.sum() <= 2 * _MINHASH_BATCH:
            values = self._minima(np.concatenate(self.pending))
            minima = np.minimum.reduceat(values, np.cumsum(lengths) - lengths, axis=0)
        else:  # a very long caption among them: one clip at a time, in slices
            minima = np.stack(
                [
                    np.minimum.reduce(
                        [
                            self._minima(h[s : s + _MINHASH_BATCH]).min(axis=0)
                            for s in range(0, len(h), _MINHASH_BATCH)
                        ]
                    )
                    for h in self.pending
                ]
            )
        self.signatures.append(self._signature(minima))
        self.pending, self.pending_shingles = [], 0

    def _signature_matrix(self) -> np.ndarray:
        self._flush()
        if len(self.signatures) != 1:
            empty = np.zeros((0, self.num_perm), dtype=np.uint16)
            self.signatures = [np.concatenate(self.signatures) if self.signatures else empty]
        return self.signatures[0]

    def result(self, top_n: int, max_group_ids: int) -> dict:
        signatures = self._signature_matrix()
        digests = np.frombuffer(self.digests, dtype=np.uint64).copy()
        _, first, inverse, counts = np.unique(
            digests, return_index=True, return_inverse=True, return_counts=True
        )
        return {
            "exact": self._exact(first, inverse, counts, top_n, max_group_ids),
            "near": self._near(signatures, first, counts, top_n),
        }

    def _exact(
        self, first: np.ndarray, inverse: np.ndarray, counts: np.ndarray, top_n: int, max_group_ids: int
    ) -> dict:
        groups = np.flatnonzero(counts > 1)
        ranked = sorted(groups.tolist(), key=lambda g: (-int(counts[g]), int(first[g])))[:top_n]
        top = []
        for g in ranked:
            members = np.flatnonzero(inverse == g)[:max_group_ids]
            top.append({"count": int(counts[g]), "clip_ids": [self.clip_ids[int(i)] for i in members]})
        clips = int(counts[groups].sum())
        return {
            "groups": len(groups),
            "clips": clips,
            "redundant_clips": clips - len(groups),
            "share": _ratio(clips, len(self.digests)),
            "top_groups": top,
        }

    def _candidates(self, sig: np.ndarray) -> tuple[np.ndarray, int]:
        """Pairs (as i * m + j, i < j) of rows sharing a band, and how many buckets were truncated."""
        m = len(sig)
        codes, truncated = [np.empty(0, dtype=np.int64)], 0
        for band in range(self.bands):
            cols = sig[:, band * self.rows : (band + 1) * self.rows]
            order = np.lexsort(cols.T[::-1])
            ordered = cols[order]
            new = np.ones(m, dtype=bool)
            new[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
            starts = np.flatnonzero(new)
            sizes = np.diff(np.append(starts, m))
            pair_starts = starts[sizes == 2]
            i, j = order[pair_starts], order[pair_starts + 1]
            codes.append(np.minimum(i, j).astype(np.int64) * m + np.maximum(i, j))
            for start, size in zip(starts[sizes > 2].tolist(), sizes[sizes > 2].tolist(), strict=True):
                members = np.sort(order[start : start + size]).astype(np.int64)
                if size > self.max_bucket:
                    members = members[: self.max_bucket]
                    truncated += 1
                i, j = np.triu_indices(len(members), 1)
                codes.append(members[i] * m + members[j])
        return np.unique(np.concatenate(codes)), truncated

    def _near(self, signatures: np.ndarray, first: np.ndarray, counts: np.ndarray, top_n: int) -> dict:
        texts = np.argsort(first, kind="stable")  # distinct texts in the order of their first clips
        reps = first[texts]
        sig = signatures[reps]
        m = len(reps)
        codes, truncated = self._candidates(sig) if m > 1 else (np.empty(0, dtype=np.int64), 0)
        pair_i, pair_j, jaccard = [], [], []
        for s in range(0, len(codes), 1 << 16):
            i, j = np.divmod(codes[s : s + (1 << 16)], m)
            agree = (sig[i] == sig[j]).mean(axis=1)
            estimate = np.clip((agree - _SIGNATURE_COLLISION) / (1 - _SIGNATURE_COLLISION), 0.0, 1.0)
            hit = estimate >= self.threshold
            pair_i.append(i[hit])
            pair_j.append(j[hit])
            jaccard.append(estimate[hit])
        i = np.concatenate(pair_i) if pair_i else np.empty(0, dtype=np.int64)
        j = np.concatenate(pair_j) if pair_j else np.empty(0, dtype=np.int64)
        est = np.concatenate(jaccard) if jaccard else np.empty(0)
        involved = np.unique(np.concatenate([i, j]))
        examples = [
            {
                "jaccard": round(float(est[k]), 4),
                "clip_ids": [self.clip_ids[int(reps[i[k]])], self.clip_ids[int(reps[j[k]])]],
            }
            for k in np.lexsort((j, i, -est))[:top_n].tolist()
        ]
        return {
            "threshold": self.threshold,
            "num_perm": self.num_perm,
            "bands": self.bands,
            "rows_per_band": self.rows,
            "distinct_texts": m,
            "candidate_pairs": len(codes),
            "truncated_buckets": truncated,
            "pairs": len(est),
            "texts": len(involved),
            "clips": int(counts[texts[involved]].sum()),
            "examples": examples,
        }


class CaptionStatsAccumulator:
    """The caption statistics of a run, fed one manifest row at a time (`add`), read with `result`.

    Text statistics cover every row with a caption (only kept clips are captioned). Definitions:

    - words per caption: words of the summary and all segment texts; words per segment: of each
      segment's text; segments per second: segments / `duration_s`; coverage: the length of the
      union of the segment spans within [0, duration_s], divided by `duration_s`. Rows without a
      positive duration are left out of the two per-second measures.
    - vocabulary: distinct words over all caption text; distinct-1 = vocabulary / words; distinct-2 =
      distinct word bigrams / bigrams, bigrams taken within one text (the summary or one segment).
    - repetition rate: the share of captions in which some word 3-gram occurs at least twice within
      a single text (the summary or one segment). A subject recurring across segments does not
      count; the parser already rejects heavier loops (`repetition`), so this measures the milder
      repetition that got through.
    - boilerplate: the share of captions whose summary or first segment opens with a phrase of
      `STOCK_OPENINGS` (counted under the longest matching phrase, the summary's first); openings:
      the first three words of each non-empty summary.
    - duplicates: see `_DuplicateIndex`.

    Clips are named by `clip_id` (`key` for recaption rows, else `#<row number>`).
    """

    def __init__(
        self,
        *,
        sample_size: int = 10_000,
        seed: int = 0,
        near_threshold: float = 0.8,
        num_perm: int = 128,
        top_n: int = 20,
        max_group_ids: int = 10,
        distinct_sketch_size: int = 1 << 16,
        openings_capacity: int = 10_000,
        max_bucket: int = 1000,
        max_duplicate_clips: int | None = None,
    ):
        """`top_n` bounds every ranked list (openings, duplicate groups, near-duplicate examples);
        `max_bucket`: an LSH bucket with more distinct texts than this pairs only its first ones
        (reported as `truncated_buckets`, the near-duplicate counts then being lower bounds);
        `max_duplicate_clips`: duplicates are looked for among the first this many captioned clips
        only (None: all), which bounds the one part of the state that grows with the run."""
        if sample_size < 1 or num_perm < 1 or top_n < 0 or max_group_ids < 1 or max_bucket < 2:
            raise ValueError("sample_size, num_perm, max_group_ids >= 1, top_n >= 0, max_bucket >= 2")
        if not 0.0 < near_threshold <= 1.0:
            raise ValueError(f"near_threshold must be in (0, 1], got {near_threshold!r}")
        if distinct_sketch_size < 2 or openings_capacity < 1:
            raise ValueError("distinct_sketch_size must be >= 2 and openings_capacity >= 1")
        self.settings = {
            "sample_size": sample_size,
            "seed": seed,
            "near_threshold": near_threshold,
            "num_perm": num_perm,
            "top_n": top_n,
            "max_group_ids": max_group_ids,
            "distinct_sketch_size": distinct_sketch_size,
            "openings_capacity": openings_capacity,
            "max_bucket": max_bucket,
            "max_duplicate_clips": max_duplicate_clips,
        }
        self.top_n, self.max_group_ids = top_n, max_group_ids
        self.clips = self.kept = self.captioned = self.captioned_kept = self.failed = 0
        self.failures: Counter[str] = Counter()
        self.dists = {
            name: Distribution(sample_size, random.Random(f"{seed}:{name}")) for name in DISTRIBUTIONS
        }
        self.words = self.bigrams = 0
        self.vocabulary = _DistinctCounter(distinct_sketch_size)
        self.distinct_bigrams = _DistinctCounter(distinct_sketch_size)
        self.repetitive = 0
        self.boilerplate = 0
        self.by_phrase: Counter[str] = Counter()
        self.openings = FrequentItems(openings_capacity)
        self.duplicates = _DuplicateIndex(num_perm, near_threshold, seed, max_bucket)
        self.max_duplicate_clips = max_duplicate_clips
        self.duplicate_checked = self.duplicate_unchecked = 0

    def add(self, row: dict) -> None:
        """Count one clip row (kept or dropped, with or without a caption)."""
        self.clips += 1
        kept = bool(row.get("kept"))
        self.kept += kept
        reasons = _failure_reasons(row.get("errors"))
        self.failed += bool(reasons)
        self.failures.update(reasons)
        parts = _caption_parts(row)
        if parts is None:
            return
        self.captioned += 1
        self.captioned_kept += kept
        summary, segments = parts
        summary_words = _words(summary)
        segment_words = [_words(s.get("text") or "") for s in segments]
        texts = [summary_words, *segment_words]
        all_words = [w for words in texts for w in words]

        d = self.dists
        d["words_per_caption"].add(len(all_words))
        for words in segment_words:
            d["words_per_segment"].add(len(words))
        d["segments_per_clip"].add(len(segments))
        duration = row.get("duration_s")
        if duration is not None and math.isfinite(duration) and duration > 0:
            d["segments_per_second"].add(len(segments) / duration)
            d["coverage"].add(_covered(segments, duration) / duration)

        self.words += len(all_words)
        hashes = np.fromiter(map(_hash64, all_words), dtype=np.uint64, count=len(all_words))
        self.vocabulary.add(hashes)
        text_of = np.repeat(np.arange(len(texts)), [len(words) for words in texts])
        bigrams = _then(hashes[:-1], hashes[1:])
        within2 = text_of[1:] == text_of[:-1]
        self.bigrams += int(within2.sum())
        self.distinct_bigrams.add(bigrams[within2])
        trigrams = _then(bigrams[:-1], hashes[2:])
        within3 = within2[:-1] & within2[1:]
        keyed = np.sort(_then(text_of[:-2][within3].astype(np.uint64), trigrams[within3]))
        self.repetitive += bool(np.any(keyed[1:] == keyed[:-1]))

        phrase = _stock_opening(summary_words) or (_stock_opening(segment_words[0]) if segments else None)
        if phrase is not None:
            self.boilerplate += 1
            self.by_phrase[phrase] += 1
        if summary_words:
            self.openings.add(" ".join(summary_words[:3]))

        if (
            all_words
            and self.max_duplicate_clips is not None
            and self.duplicate_checked >= self.max_duplicate_clips
        ):
            self.duplicate_unchecked += 1
        elif all_words:
            self.duplicate_checked += 1
            clip_id = row.get("clip_id") or row.get("key") or f"#{self.clips - 1}"
            # shingles: the word 3-grams of the whole caption, or its one- or two-word sequence
            shingles = trigrams if len(all_words) >= 3 else (bigrams if len(all_words) == 2 else hashes)
            self.duplicates.add(str(clip_id), " ".join(all_words), shingles)

    def result(self) -> dict:
        """Every number of the report's caption section, JSON-serialisable (None where undefined).

        Keys: `counts`, `distributions` (per `DISTRIBUTIONS`: count, mean, min, p5..p95, max, the
        reservoir `values` and `exact_percentiles`), `text`, `repetition`, `boilerplate`,
        `duplicates` (`exact`, `near`) and `settings`. `add` may go on after it.
        """
        vocabulary, vocabulary_exact = self.vocabulary.count()
        distinct_bigrams, bigrams_exact = self.distinct_bigrams.count()
        failures = {reason: self.failures.get(reason, 0) for reason in FAILURE_REASONS}
        if self.failures.get("other"):
            failures["other"] = self.failures["other"]
        return {
            "counts": {
                "clips": self.clips,
                "kept": self.kept,
                "captioned": self.captioned,
                "captioned_kept": self.captioned_kept,
                "captioned_share_of_kept": _ratio(self.captioned_kept, self.kept),
                "caption_failed": self.failed,
                "failures": failures,
            },
            "distributions": {name: dist.result() for name, dist in self.dists.items()},
            "text": {
                "words": self.words,
                "vocabulary_size": vocabulary,
                "distinct_1": _ratio(vocabulary, self.words),
                "bigrams": self.bigrams,
                "distinct_bigrams": distinct_bigrams,
                "distinct_2": _ratio(distinct_bigrams, self.bigrams),
                "exact": vocabulary_exact and bigrams_exact,
            },
            "repetition": {"captions": self.repetitive, "rate": _ratio(self.repetitive, self.captioned)},
            "boilerplate": {
                "captions": self.boilerplate,
                "share": _ratio(self.boilerplate, self.captioned),
                "by_phrase": dict(sorted(self.by_phrase.items(), key=lambda kv: (-kv[1], kv[0]))),
                "top_openings": [{"opening": k, "count": c} for k, c in self.openings.top(self.top_n)],
                "openings_exact": self.openings.exact,
            },
            "duplicates": {
                **self.duplicates.result(self.top_n, self.max_group_ids),
                "checked_clips": self.duplicate_checked,
                "unchecked_clips": self.duplicate_unchecked,
            },
            "settings": dict(self.settings),
        }
