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


def test_alignment_report_runs_the_real_clip_towers_with_a_shuffled_baseline(tiny_aesthetic):
    cfg = AestheticConfig(**{k: v for k, v in tiny_aesthetic.items() if k != "head_weights"}, device="cpu")
    aligner = CaptionAligner(cfg)
    rng = np.random.default_rng(0)
    clips = [
        ClipFrames(f"c{i}", rng.integers(0, 256, (6, 48, 64, 3), dtype=np.uint8), np.arange(6) / 2.0, 3.0)
        for i in range(3)
    ]
    captions = [
        {
            "summary": f"clip number {i}",
            "segments": [
                {"start_s": 0.0, "end_s": 1.5, "text": f"a{i}"},
                {"start_s": 1.5, "end_s": 3.0, "text": f"b{i}"},
            ],
        }
        for i in range(3)
    ]
    report = alignment_report(clips, captions, aligner)
    assert report["clips"] == 3 and len(report["per_clip"]) == 3
    for row in report["per_clip"]:
        assert -1 <= row["summary"] <= 1 and len(row["segments"]) == 2
    assert report["summary"]["margin"] == pytest.approx(
        report["summary"]["mean"] - report["summary"]["shuffled_mean"]
    )
    assert report["temporal"]["segments_checked"] == 6
    assert 0 <= report["temporal"]["own_span_best_share"] <= 1
