"""Caption statistics of the quality report, checked against numbers recomputed here from scratch.

The rows go through the real manifest schema (`CLIP_SCHEMA`, `to_pylist`), so the accumulator reads
what a run writes. Every expected number is computed directly from the definitions (word lists,
sets of n-grams, brute-force span unions, pairwise Jaccard), never through the module's helpers;
hypothesis checks the MinHash/LSH near-duplicate search against exact Jaccard on random corpora.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captioning.caption_stats import (
    DISTRIBUTIONS,
    FAILURE_REASONS,
    STOCK_OPENINGS,
    CaptionStatsAccumulator,
    caption_text,
)
from curation.layout import flat_row
from curation.record import CLIP_SCHEMA, manifest_row, table


def clip(clip_id, summary=None, segments=None, duration=10.0, kept=True, errors=(), drop_reason=None):
    """A manifest row as a run writes it; a caption when `summary` or `segments` is given."""
    caption = None
    if summary is not None or segments is not None:
        caption = {
            "summary": summary or "",
            "segments": [{"start_s": a, "end_s": b, "text": t} for a, b, t in segments or []],
            "model": "tiny-vlm",
            "prompt_id": "dense_v1",
        }
    record = {
        "clip_id": clip_id,
        "duration_s": duration,
        "kept": kept,
        "drop_reason": drop_reason,
        "caption": caption,
        "errors": [{"stage": stage, "message": message} for stage, message in errors],
    }
    return manifest_row(record)


NEAR_SUMMARY = (
    "A golden retriever carries a red frisbee across a sunny park while two children chase it "
    "past a row of tall oak trees."
)
NEAR_SEGMENTS = [
    (0.0, 4.0, "The dog trots toward the camera with the frisbee held high in its mouth."),
    (4.0, 8.0, "The children laugh and follow the dog around a wooden bench near the pond."),
]

RAW = [
    # an exact-duplicate group of three: case, punctuation and times differ, words do not
    clip(
        "dup-a1",
        "The video shows a man slicing bread on a wooden board.",
        [(0.0, 5.0, "A man slices bread."), (5.0, 10.0, "He puts the knife down.")],
    ),
    clip(
        "dup-a2",
        "the video shows a man slicing bread on a wooden board",
        [(0.0, 4.0, "a man slices bread"), (4.0, 9.5, "He puts the knife down!")],
        duration=9.5,
    ),
    clip(
        "dup-a3",
        "The video shows a man slicing bread on a wooden board.",
        [(0.0, 5.0, "A man slices bread."), (5.0, 10.0, "He puts the knife down.")],
    ),
    # a second group; one of its clips was dropped after captioning
    clip(
        "dup-b1", "Waves break on a rocky shore.", [(0.0, 6.0, "Waves roll in and break on the rocks.")], 6.0
    ),
    clip(
        "dup-b2",
        "Waves break on a rocky shore.",
        [(0.0, 6.0, "Waves roll in and break on the rocks.")],
        6.0,
        kept=False,
        drop_reason="low_aesthetic",
    ),
    # a near-duplicate pair: one word differs
    clip("near-1", NEAR_SUMMARY, NEAR_SEGMENTS, 8.0),
    clip(
        "near-2",
        NEAR_SUMMARY,
        [*NEAR_SEGMENTS[:1], (4.0, 8.0, NEAR_SEGMENTS[1][2].replace("pond", "lake"))],
        8.0,
    ),
    # boilerplate openings, in the summary or (no summary) in the first segment
    clip(
        "boil-1",
        "In this video, a chef flips a pancake in a pan.",
        [(0.0, 3.0, "The chef flips the pancake.")],
        3.0,
    ),
    clip(
        "boil-2",
        "",
        [(0.0, 7.0, "The clip shows a cat sleeping on a sofa."), (7.0, 12.0, "It stretches.")],
        12.0,
    ),
    clip(
        "boil-3",
        "This video features a drone shot of a city at night.",
        [(0.0, 5.0, "Lights flicker below.")],
        5.0,
    ),
    clip(
        "boil-not", "The videographer walks through a busy market.", [(0.0, 4.0, "Stalls sell fruit.")], 4.0
    ),
    # a 3-gram repeated inside one segment (repetitive) and one repeated only across segments (not)
    clip(
        "rep-yes",
        "A man and his dog in a park.",
        [(0.0, 5.0, "A man walks a dog and a man walks a dog again."), (5.0, 10.0, "They stop.")],
    ),
    clip(
        "rep-no",
        "A woman at a door.",
        [(0.0, 2.0, "A woman opens the door slowly."), (3.0, 5.0, "A woman opens the door again.")],
        5.0,
    ),
    # overlapping and out-of-clip spans: coverage counts the union inside the clip
    clip(
        "cover",
        "Traffic passes an intersection.",
        [(0.0, 3.0, "Cars wait."), (2.0, 5.0, "The light turns green."), (7.0, 12.0, "Buses pass.")],
        10.0,
    ),
    # no caption: failures (dropped or kept uncaptioned), a filter drop, a non-caption error
    clip(
        "fail-refusal",
        kept=False,
        drop_reason="caption_failed",
        errors=[("caption", "refusal: the answer says 'I cannot see the video' (after 3 attempts)")],
    ),
    clip(
        "fail-overlap",
        errors=[
            ("caption", "overlap: 0-3s and 2-5s overlap by 1.00 s (more than 0.25 s) (after 3 attempts)")
        ],
    ),
    clip(
        "fail-decode",
        kept=False,
        drop_reason="caption_failed",
        errors=[("caption", "undecodable: ffmpeg could not read the clip (after 0 attempts)")],
    ),
    clip("dark", kept=False, drop_reason="too_dark"),
    clip(
        "fail-other",
        kept=False,
        drop_reason="caption_failed",
        errors=[("split", "refusal: not a caption error"), ("caption", "the model crashed")],
    ),
]
ROWS = [flat_row(r) for r in table(RAW, CLIP_SCHEMA).to_pylist()]  # as OutputLayout.iter_manifest gives them


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def texts(row: dict) -> list[str]:
    """Summary and segment texts of a captioned row."""
    return [row["caption.summary"] or ""] + [s["text"] for s in row["caption.segments"]]


def captioned(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["caption.segments"] is not None or r["caption.summary"] is not None]


def union_length(spans: list[tuple[float, float]], duration: float) -> float:
    """Length of the union by elementary intervals: between consecutive endpoints, covered or not."""
    points = sorted({0.0, duration, *(min(max(p, 0.0), duration) for span in spans for p in span)})
    return sum(b - a for a, b in itertools.pairwise(points) if any(s <= (a + b) / 2 < e for s, e in spans))


def shingles(ws: list[str]) -> set[tuple[str, ...]]:
    if len(ws) < 3:
        return {tuple(ws)} if ws else set()
    return {tuple(ws[i : i + 3]) for i in range(len(ws) - 2)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def check_distribution(got: dict, values: list[float]) -> None:
    assert got["count"] == len(values)
    assert got["mean"] == pytest.approx(sum(values) / len(values))
    assert got["min"] == min(values) and got["max"] == max(values)
    for p in (5, 25, 50, 75, 95):
        assert got[f"p{p}"] == pytest.approx(np.percentile(values, p))
    assert got["values"] == pytest.approx(values)
    assert got["exact_percentiles"]


@pytest.fixture(scope="module")
def stats() -> dict:
    acc = CaptionStatsAccumulator()
    for row in ROWS:
        acc.add(row)
    return acc.result()


def test_result_is_json(stats):
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats
    assert set(stats) == {
        "counts",
        "distributions",
        "text",
        "repetition",
        "boilerplate",
        "duplicates",
        "settings",
    }


def test_caption_text():
    by_id = {r["clip_id"]: r for r in ROWS}
    assert caption_text(by_id["dark"]) is None
    assert caption_text(by_id["boil-2"]) == "The clip shows a cat sleeping on a sofa.\nIt stretches."
    assert (
        caption_text(by_id["rep-no"])
        == "A woman at a door.\nA woman opens the door slowly.\nA woman opens the door again."
    )
    nested = {"caption": {"summary": "S.", "segments": [{"start_s": 0.0, "end_s": 1.0, "text": "T."}]}}
    assert caption_text(nested) == "S.\nT."


def test_counts(stats):
    rows = ROWS
    kept = [r for r in rows if r["kept"]]
    with_caption = captioned(rows)
    counts = stats["counts"]
    assert counts["clips"] == len(rows) == 19
    assert counts["kept"] == len(kept)
    assert counts["captioned"] == len(with_caption) == 14
    assert counts["captioned_kept"] == len(captioned(kept)) == 13
    assert counts["captioned_share_of_kept"] == pytest.approx(13 / len(kept))
    assert counts["caption_failed"] == 4
    expected = dict.fromkeys(FAILURE_REASONS, 0) | {"refusal": 1, "overlap": 1, "undecodable": 1, "other": 1}
    assert counts["failures"] == expected


def test_distributions(stats):
    rows = captioned(ROWS)
    per_caption = [sum(len(words(t)) for t in texts(r)) for r in rows]
    per_segment = [len(words(s["text"])) for r in rows for s in r["caption.segments"]]
    segments = [len(r["caption.segments"]) for r in rows]
    per_second = [len(r["caption.segments"]) / r["duration_s"] for r in rows]
    coverage = [
        union_length([(s["start_s"], s["end_s"]) for s in r["caption.segments"]], r["duration_s"])
        / r["duration_s"]
        for r in rows
    ]
    dists = stats["distributions"]
    assert set(dists) == set(DISTRIBUTIONS)
    check_distribution(dists["words_per_caption"], per_caption)
    check_distribution(dists["words_per_segment"], per_segment)
    check_distribution(dists["segments_per_clip"], segments)
    check_distribution(dists["segments_per_second"], per_second)
    check_distribution(dists["coverage"], coverage)
    by_id = dict(zip([r["clip_id"] for r in rows], coverage, strict=True))
    assert by_id["cover"] == pytest.approx(0.8)  # [0, 5] and [7, 10] of a 10 s clip
    assert by_id["rep-no"] == pytest.approx(0.8)  # a gap from 2 to 3 s


def test_vocabulary_and_distinct_n(stats):
    all_texts = [t for r in captioned(ROWS) for t in texts(r)]
    unigrams = [w for t in all_texts for w in words(t)]
    bigrams = [pair for t in all_texts for pair in itertools.pairwise(words(t))]
    text = stats["text"]
    assert text["words"] == len(unigrams)
    assert text["vocabulary_size"] == len(set(unigrams))
    assert text["distinct_1"] == pytest.approx(len(set(unigrams)) / len(unigrams))
    assert text["bigrams"] == len(bigrams)
    assert text["distinct_bigrams"] == len(set(bigrams))
    assert text["distinct_2"] == pytest.approx(len(set(bigrams)) / len(bigrams))
    assert text["exact"]


def test_repetition(stats):
    rows = captioned(ROWS)

    def repetitive(row):
        for t in texts(row):
            ws = words(t)
            if any(c > 1 for c in Counter(tuple(ws[i : i + 3]) for i in range(len(ws) - 2)).values()):
                return True
        return False

    flagged = [r["clip_id"] for r in rows if repetitive(r)]
    assert flagged == ["rep-yes"]
    assert stats["repetition"] == {"captions": 1, "rate": pytest.approx(1 / len(rows))}


def test_boilerplate(stats):
    rows = captioned(ROWS)

    def opening(text):
        normalized = " ".join(words(text)) + " "
        matches = [p for p in STOCK_OPENINGS if normalized.startswith(p + " ")]
        return max(matches, key=lambda p: len(p.split())) if matches else None

    phrases = {}
    for r in rows:
        phrase = opening(r["caption.summary"]) or opening(r["caption.segments"][0]["text"])
        if phrase:
            phrases[r["clip_id"]] = phrase
    assert phrases == {
        "dup-a1": "the video shows",
        "dup-a2": "the video shows",
        "dup-a3": "the video shows",
        "boil-1": "in this video",
        "boil-2": "the clip shows",
        "boil-3": "this video",
    }
    got = stats["boilerplate"]
    assert got["captions"] == len(phrases)
    assert got["share"] == pytest.approx(len(phrases) / len(rows))
    assert got["by_phrase"] == dict(Counter(phrases.values()))
    openings = Counter(" ".join(words(r["caption.summary"])[:3]) for r in rows if words(r["caption.summary"]))
    ranked = sorted(openings.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    assert got["top_openings"] == [{"opening": k, "count": c} for k, c in ranked]
    assert got["top_openings"][0] == {"opening": "the video shows", "count": 3}
    assert got["openings_exact"]


def test_exact_duplicates(stats):
    groups: dict[str, list[str]] = {}
    for r in captioned(ROWS):
        groups.setdefault(" ".join(w for t in texts(r) for w in words(t)), []).append(r["clip_id"])
    dup = [ids for ids in groups.values() if len(ids) > 1]
    got = stats["duplicates"]["exact"]
    assert got["groups"] == len(dup) == 2
    assert got["clips"] == sum(map(len, dup)) == 5
    assert got["redundant_clips"] == 3
    assert got["share"] == pytest.approx(5 / 14)
    assert got["top_groups"] == [
        {"count": 3, "clip_ids": ["dup-a1", "dup-a2", "dup-a3"]},
        {"count": 2, "clip_ids": ["dup-b1", "dup-b2"]},
    ]


def test_near_duplicates(stats):
    first: dict[str, str] = {}
    clips: Counter[str] = Counter()
    for r in captioned(ROWS):
        text = " ".join(w for t in texts(r) for w in words(t))
        first.setdefault(text, r["clip_id"])
        clips[text] += 1
    true = {}
    for a, b in itertools.combinations(first, 2):
        true[frozenset((first[a], first[b]))] = (jaccard(shingles(a.split()), shingles(b.split())), a, b)
    # no pair sits near the threshold, so the expected set does not hinge on estimation noise
    assert all(j >= 0.9 or j <= 0.5 for j, _, _ in true.values())
    expected = {pair for pair, (j, _, _) in true.items() if j >= 0.8}
    assert expected == {frozenset(("near-1", "near-2"))}

    near = stats["duplicates"]["near"]
    assert {frozenset(e["clip_ids"]) for e in near["examples"]} == expected
    assert near["pairs"] == 1 and near["texts"] == 2 and near["clips"] == 2
    assert near["distinct_texts"] == len(first)
    [example] = near["examples"]
    assert example["clip_ids"] == ["near-1", "near-2"]
    assert example["jaccard"] == pytest.approx(true[frozenset(example["clip_ids"])][0], abs=0.1)
    assert near["truncated_buckets"] == 0


def summary_row(i: int, n_words: int) -> dict:
    return {
        "clip_id": f"c{i}",
        "kept": True,
        "duration_s": 10.0,
        "caption.summary": " ".join(["w"] * n_words),
    }


def test_reservoir_is_bounded_seeded_and_exact_where_it_must_be():
    rows = [summary_row(i, 1 + (i * 37) % 101) for i in range(300)]
    values = [1 + (i * 37) % 101 for i in range(300)]

    def run(seed):
        acc = CaptionStatsAccumulator(sample_size=7, seed=seed)
        for row in rows:
            acc.add(row)
        return acc.result()["distributions"]["words_per_caption"]

    got = run(0)
    assert got["count"] == 300 and got["mean"] == pytest.approx(np.mean(values))
    assert got["min"] == min(values) and got["max"] == max(values)
    assert len(got["values"]) == 7 and set(got["values"]) <= set(values)
    assert not got["exact_percentiles"]
    assert got["p50"] == pytest.approx(np.percentile(got["values"], 50))
    assert run(0) == got
    assert run(1)["values"] != got["values"]


def test_sketches_estimate_beyond_their_size():
    acc = CaptionStatsAccumulator(distinct_sketch_size=256, openings_capacity=4)
    for i in range(600):
        opening = "a dog runs" if i % 3 == 0 else f"x{i} y z"
        acc.add({"clip_id": f"c{i}", "caption.summary": f"{opening} v{i}a v{i}b v{i}c v{i}d"})
    result = acc.result()
    vocabulary = 3 + 400 + 2 + 600 * 4  # "a dog runs", the x{i}, y and z openings, per-clip words
    assert not result["text"]["exact"]
    assert result["text"]["vocabulary_size"] == pytest.approx(vocabulary, rel=0.25)
    top = result["boilerplate"]["top_openings"][0]
    assert top["opening"] == "a dog runs" and 200 - 600 / 5 <= top["count"] <= 200
    assert not result["boilerplate"]["openings_exact"]


def test_large_buckets_are_truncated():
    base = " ".join(f"w{i}" for i in range(60))
    rows = [{"clip_id": f"c{i}", "caption.summary": f"{base} end{i}"} for i in range(6)]

    def near(**kwargs):
        acc = CaptionStatsAccumulator(**kwargs)
        for row in rows:
            acc.add(row)
        return acc.result()["duplicates"]["near"]

    full = near()
    assert full["pairs"] == 15 and full["truncated_buckets"] == 0 and full["clips"] == 6
    capped = near(max_bucket=3)
    assert capped["truncated_buckets"] > 0 and capped["pairs"] < 15


VOCAB = [f"w{i}" for i in range(40)]


@st.composite
def corpora(draw) -> list[list[str]]:
    """Random texts and edited copies (a word appended, replaced or removed; or copied as is)."""
    corpus = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 120))
        corpus.append(draw(st.lists(st.sampled_from(VOCAB), min_size=n, max_size=n)))
    for _ in range(draw(st.integers(0, 10))):
        ws = list(draw(st.sampled_from(corpus)))
        op = draw(st.sampled_from(("append", "replace", "remove", "copy")))
        at = draw(st.integers(0, len(ws) - 1))
        if op == "append":
            ws.append(draw(st.sampled_from(VOCAB)))
        elif op == "replace":
            ws[at] = draw(st.sampled_from(VOCAB))
        elif op == "remove" and len(ws) > 1:
            del ws[at]
        corpus.append(ws)
    return corpus


@settings(max_examples=120, deadline=None)
@given(corpus=corpora(), cut=st.floats(0, 1))
def test_near_duplicates_match_exact_jaccard(corpus, cut):
    acc = CaptionStatsAccumulator(top_n=10_000)
    first: dict[str, str] = {}
    for i, ws in enumerate(corpus):
        k = int(len(ws) * cut)  # some words in the summary, the rest in a segment
        segments = [{"start_s": 0.0, "end_s": 1.0, "text": " ".join(ws[k:])}]
        acc.add({"clip_id": f"c{i}", "caption.summary": " ".join(ws[:k]), "caption.segments": segments})
        first.setdefault(" ".join(ws), f"c{i}")
    near = acc.result()["duplicates"]["near"]
    reported = {frozenset(e["clip_ids"]) for e in near["examples"]}
    assert near["pairs"] == len(reported) == len(near["examples"])
    assert all(pair <= set(first.values()) for pair in reported)
    for a, b in itertools.combinations(first, 2):
        j = jaccard(shingles(a.split()), shingles(b.split()))
        pair = frozenset((first[a], first[b]))
        if j >= 0.95:
            assert pair in reported, (j, a, b)
        if pair in reported:
            assert j >= 0.5, (j, a, b)


def test_long_captions():
    rng = np.random.default_rng(0)
    ws = [f"w{i}" for i in rng.integers(0, 1000, size=6000)]
    other = [*ws[:3000], "changed", *ws[3001:]]
    acc = CaptionStatsAccumulator()
    acc.add({"clip_id": "short", "caption.summary": "A dog barks."})
    acc.add({"clip_id": "long-1", "caption.summary": " ".join(ws)})
    acc.add({"clip_id": "long-2", "caption.summary": " ".join(other)})
    near = acc.result()["duplicates"]["near"]
    [example] = near["examples"]
    assert example["clip_ids"] == ["long-1", "long-2"]
    assert example["jaccard"] == pytest.approx(jaccard(shingles(ws), shingles(other)), abs=0.05)


def test_duplicate_detection_can_be_bounded_to_the_first_clips():
    acc = CaptionStatsAccumulator(max_duplicate_clips=3)
    for i in range(5):
        acc.add(clip(f"c{i}", "the same summary of a clip", [(0.0, 5.0, "one text")]))
    dup = acc.result()["duplicates"]
    assert (dup["checked_clips"], dup["unchecked_clips"]) == (3, 2)
    assert dup["exact"]["groups"] == 1 and dup["exact"]["clips"] == 3
    assert acc.result()["counts"]["captioned"] == 5  # every other statistic still counts every clip
