"""Caption-video alignment: the similarity arithmetic on known embeddings, and the real open_clip path."""

import numpy as np
import pytest

from captioning.alignment import (
    CaptionAligner,
    ClipFrames,
    alignment_report,
    derangement,
    score_clip,
    span_frames,
)
from curation.scoring_config import AestheticConfig


def test_span_frames_takes_the_frames_inside_or_the_nearest():
    t = np.arange(10) / 2.0  # 0.0 ... 4.5 s
    assert list(span_frames(t, 1.0, 2.0)) == [2, 3]
    assert list(span_frames(t, 1.1, 1.2)) == [2]  # nothing inside: the frame nearest the middle


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_derangement_moves_every_caption_to_another_clip(n):
    p = derangement(n, seed=n)
    assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
    assert p == derangement(n, seed=n)


def test_a_caption_matching_its_spans_scores_high_and_finds_its_own_span():
    basis = np.eye(4, dtype=np.float32)
    frames = np.stack([basis[0], basis[0], basis[1], basis[1]])  # two spans: frames 0-1, then 2-3
    times = np.array([0.0, 0.5, 1.0, 1.5])
    texts = {"first": basis[0], "second": basis[1], "all": (basis[0] + basis[1]) / np.sqrt(2)}
    caption = {
        "summary": "all",
        "segments": [
            {"start_s": 0, "end_s": 1, "text": "first"},
            {"start_s": 1, "end_s": 2, "text": "second"},
        ],
    }
    result = score_clip("k", caption, frames, times, texts)
    assert result.segments == pytest.approx([1.0, 1.0]) and result.summary == pytest.approx(1.0)
    assert result.own_span_best == [True, True]
    swapped = {
        **caption,
        "segments": [
            {**caption["segments"][0], "text": "second"},
            {**caption["segments"][1], "text": "first"},
        ],
    }
    assert score_clip("k", swapped, frames, times, texts).own_span_best == [False, False]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _span_similarity(
    images: np.ndarray, times: np.ndarray, start: float, end: float, text: np.ndarray
) -> float:
    """Cosine similarity of a text with the mean picture of the frames in [start, end) (every span here
    holds frames, so the nearest-frame fallback never comes in)."""
    inside = (times >= start) & (times < end)
    assert inside.any(), (start, end)
    return float(_unit(images[inside].mean(axis=0)) @ text)


def test_alignment_report_matches_similarities_recomputed_from_the_clip_embeddings(tiny_aesthetic):
    """Three clips of different lengths (so a moved caption's times must be rescaled), each of two
    differently coloured spans, with captions of their own; every number of the report is recomputed
    here with numpy from the real towers' embeddings: own pairs, shuffled pairs, margins, the temporal
    check."""
    cfg = AestheticConfig(**{k: v for k, v in tiny_aesthetic.items() if k != "head_weights"}, device="cpu")
    aligner = CaptionAligner(cfg)
    rng = np.random.default_rng(0)
    durations = [3.0, 2.0, 4.0]
    clips, captions = [], []
    for i, duration in enumerate(durations):
        times = np.arange(int(duration * 2)) / 2.0
        colours = rng.integers(0, 256, (2, 1, 1, 3))
        noise = rng.integers(-20, 21, (len(times), 48, 64, 3))
        first = (times < 0.4 * duration)[:, None, None, None]
        frames = np.clip(np.where(first, colours[0], colours[1]) + noise, 0, 255).astype(np.uint8)
        clips.append(ClipFrames(f"c{i}", frames, times, duration))
        captions.append(
            {
                "summary": f"clip number {i}",
                "segments": [
                    {"start_s": 0.0, "end_s": 0.4 * duration, "text": f"the opening of clip {i}"},
                    {"start_s": 0.4 * duration, "end_s": duration, "text": f"the rest of clip {i}"},
                ],
            }
        )
    report = alignment_report(clips, captions, aligner)

    images = [aligner.embed_frames(c.frames) for c in clips]
    texts = {
        t: aligner.embed_texts([t])[0]
        for cap in captions
        for t in [cap["summary"], *(s["text"] for s in cap["segments"])]
    }
    own_summary = [
        float(_unit(im.mean(axis=0)) @ texts[cap["summary"]])
        for im, cap in zip(images, captions, strict=True)
    ]
    own_segments = [
        [
            _span_similarity(im, c.timestamps, s["start_s"], s["end_s"], texts[s["text"]])
            for s in cap["segments"]
        ]
        for im, c, cap in zip(images, clips, captions, strict=True)
    ]
    # the baseline: caption i on clip p[i], its segment times stretched to clip p[i]'s length
    p = derangement(len(clips), seed=0)
    source = {j: i for i, j in enumerate(p)}  # clip j -> the clip whose caption it is scored with
    shuffled_summary, shuffled_segments = [], []
    for j, (im, clip) in enumerate(zip(images, clips, strict=True)):
        i = source[j]
        scale = clip.duration_s / clips[i].duration_s
        shuffled_summary.append(float(_unit(im.mean(axis=0)) @ texts[captions[i]["summary"]]))
        shuffled_segments.append(
            [
                _span_similarity(
                    im, clip.timestamps, s["start_s"] * scale, s["end_s"] * scale, texts[s["text"]]
                )
                for s in captions[i]["segments"]
            ]
        )
    best = []
    for im, clip, cap in zip(images, clips, captions, strict=True):
        spans = [
            _unit(im[(clip.timestamps >= s["start_s"]) & (clip.timestamps < s["end_s"])].mean(axis=0))
            for s in cap["segments"]
        ]
        matrix = np.stack([texts[s["text"]] for s in cap["segments"]]) @ np.stack(spans).T
        best += [int(np.argmax(row)) == a for a, row in enumerate(matrix)]

    own_flat = [v for row in own_segments for v in row]
    shuffled_flat = [v for row in shuffled_segments for v in row]
    # the pairings give different numbers here, so a baseline taken from the wrong pairs shows
    assert np.abs(np.subtract(own_flat, shuffled_flat)).max() > 1e-3
    assert np.abs(np.subtract(own_summary, shuffled_summary)).max() > 1e-3

    assert report["model"] == aligner.model_name and report["clips"] == 3
    for j, row in enumerate(report["per_clip"]):
        assert row["key"] == clips[j].key and row["baseline_clip"] == clips[source[j]].key != clips[j].key
        assert row["summary"] == pytest.approx(own_summary[j], abs=1e-5)
        assert row["segments"] == pytest.approx(own_segments[j], abs=1e-5)
        assert row["baseline"] == pytest.approx(shuffled_summary[j], abs=1e-5)
        assert row["margin"] == pytest.approx(own_summary[j] - shuffled_summary[j], abs=1e-5)
        assert row["segment_mean"] == pytest.approx(np.mean(own_segments[j]), abs=1e-5)
    expected = {
        "summary": (own_summary, shuffled_summary),
        "segments": (own_flat, shuffled_flat),
    }
    for part, (own, shuffled) in expected.items():
        assert report[part]["mean"] == pytest.approx(np.mean(own), abs=1e-5), part
        assert report[part]["shuffled_mean"] == pytest.approx(np.mean(shuffled), abs=1e-5), part
        assert report[part]["margin"] == pytest.approx(np.mean(own) - np.mean(shuffled), abs=1e-5), part
        assert report["distributions"][part]["own"] == pytest.approx(own, abs=1e-5), part
        assert report["distributions"][part]["shuffled"] == pytest.approx(shuffled, abs=1e-5), part
    assert report["temporal"]["segments_checked"] == len(best) == 6
    assert report["temporal"]["own_span_best_share"] == pytest.approx(np.mean(best))
