"""The captioning stage without Ray: caption frames and windows, the tiny VLM's real generation through
the real parser, retries and failures, window merging."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captioning.caption_config import CaptionConfig, CaptionFramesConfig, VLMConfig
from captioning.captioner import Captioner, merge_windows
from captioning.parsing import REJECTION_REASONS, ParsedCaption, Segment, parse_caption
from captioning.stage import CaptionPrep, apply_to_clip
from captioning.tiny_vlm import STAND_IN_ANSWER
from captioning.video_frames import fit_pixels, prepare_clip, window_bounds
from captioning.vlm import VLMBackend
from curation import synthetic
from curation.errors import InputRejected
from curation.record import ClipRecord
from curation.synthetic import Shot, VideoSpec

SMALL_FRAMES = CaptionFramesConfig(max_pixels=112 * 112)


@pytest.fixture(scope="module")
def five_second_clip(tmp_path_factory) -> bytes:
    path = synthetic.make_video(
        tmp_path_factory.mktemp("clip") / "clip.mp4", VideoSpec([Shot("testsrc2", 125)], 320, 240, "25")
    )
    return path.read_bytes()


def caption_cfg(model: str, **overrides) -> CaptionConfig:
    vlm = VLMConfig(model=model, device="cpu", max_new_tokens=96)
    return CaptionConfig(vlm=vlm, frames=overrides.pop("frames", SMALL_FRAMES), **overrides)


def captioner(model: str, cfg: CaptionConfig) -> Captioner:
    return Captioner(VLMBackend(cfg.vlm).generate, cfg, model)


@given(st.floats(0.2, 300.0), st.floats(1.0, 60.0))
def test_windows_tile_the_clip_in_equal_parts_no_longer_than_the_window(duration, window):
    bounds = window_bounds(duration, window)
    assert bounds[0][0] == 0 and bounds[-1][1] == duration
    assert all(math.isclose(a[1], b[0]) for a, b in zip(bounds, bounds[1:], strict=False))
    lengths = [end - start for start, end in bounds]
    assert max(lengths) <= window + 1e-9
    assert max(lengths) - min(lengths) < 1e-6
    assert len(bounds) == max(1, math.ceil(duration / window - 1e-9))


def test_caption_frames_carry_their_real_times(five_second_clip):
    clip = prepare_clip(
        "k", five_second_clip, CaptionFramesConfig(fps=2.0, max_pixels=112 * 112, window_s=2.0)
    )
    assert clip.duration_s == pytest.approx(5.0, abs=0.05)
    assert [round(w.start_s, 3) for w in clip.windows] == [0.0, round(5 / 3, 3), round(10 / 3, 3)]
    times = np.concatenate([w.timestamps + w.start_s for w in clip.windows])
    np.testing.assert_allclose(times, np.arange(10) / 2.0)  # every 0.5 s sample, each in its window
    for window in clip.windows:
        assert window.frames.shape[1] * window.frames.shape[2] <= 112 * 112
        assert (window.timestamps >= 0).all() and (window.timestamps < window.duration_s).all()
        meta = window.metadata()
        assert meta["fps"] == 25.0
        # indices count source frames: exact to half a frame
        assert [i / 25.0 for i in meta["frames_indices"]] == pytest.approx(
            list(window.timestamps), abs=0.0201
        )


def test_long_windows_are_sampled_evenly_down_to_max_frames(five_second_clip):
    clip = prepare_clip("k", five_second_clip, CaptionFramesConfig(fps=4.0, max_frames=5, max_pixels=4096))
    (window,) = clip.windows
    assert len(window.frames) == 5
    assert window.timestamps[0] == 0.0 and window.timestamps[-1] == pytest.approx(4.75)


def test_fit_pixels_keeps_aspect_and_even_sides():
    assert fit_pixels(1920, 1080, 360 * 640) == (640, 360)
    assert fit_pixels(320, 240, 10**7) == (320, 240)  # never upscaled
    w, h = fit_pixels(1081, 1917, 5000)
    assert w * h <= 5000 and w % 2 == 0 and h % 2 == 0


def test_undecodable_clip_is_a_failed_outcome_not_a_crash(five_second_clip):
    prepared, failed = CaptionPrep(CaptionConfig()).run([("good", five_second_clip), ("bad", b"not a video")])
    assert [p.key for p in prepared] == ["good"]
    assert [(f.key, f.failure) for f in failed] == [("bad", "undecodable")]
    with pytest.raises(InputRejected):
        prepare_clip("bad", five_second_clip[: len(five_second_clip) // 3], CaptionFramesConfig())


def test_untrained_model_fails_every_attempt_with_a_reason(tiny_vlm_untrained, five_second_clip):
    cfg = caption_cfg(tiny_vlm_untrained, attempts=3)
    cfg.vlm.max_new_tokens = 24
    clip = prepare_clip("k", five_second_clip, cfg.frames)
    (outcome,), stats = captioner(tiny_vlm_untrained, cfg).run([clip])
    assert outcome.caption is None and outcome.text is None
    assert outcome.failure in REJECTION_REASONS
    assert outcome.attempts == 3 and stats.generations == 3  # greedy once, then two sampled retries
    assert 3 <= outcome.new_tokens <= 3 * 24
    assert stats.failed == {outcome.failure: 1} and stats.captioned == 0
    assert "after 3 attempts" in outcome.error()["message"]


def test_fitted_model_writes_a_valid_caption_through_the_real_parser(tiny_vlm, five_second_clip):
    cfg = caption_cfg(tiny_vlm)
    clip = prepare_clip("k", five_second_clip, cfg.frames)
    (outcome,), stats = captioner(tiny_vlm, cfg).run([clip])
    assert outcome.failure is None, outcome.detail
    expected = parse_caption(STAND_IN_ANSWER, clip.duration_s)
    assert outcome.caption == expected.to_record(tiny_vlm, "dense_v2")
    assert (
        outcome.text.splitlines()[1]
        == "[0.0-1.0s] The tiny test model writes this first segment for every clip."
    )
    assert outcome.metrics["num_segments"] == 2 and outcome.metrics["coverage"] == pytest.approx(
        2 / clip.duration_s, abs=0.01
    )
    assert (
        outcome.attempts == 1 and stats.attempts == {"1": 1} and stats.new_tokens == outcome.new_tokens > 10
    )


def test_long_clip_is_captioned_in_windows_merged_on_the_clip_clock(tiny_vlm, five_second_clip):
    frames = CaptionFramesConfig(max_pixels=112 * 112, window_s=2.5)
    cfg = caption_cfg(tiny_vlm, frames=frames)
    clip = prepare_clip("k", five_second_clip, frames)
    assert len(clip.windows) == 2
    (outcome,), stats = captioner(tiny_vlm, cfg).run([clip])
    assert outcome.failure is None, outcome.detail
    edges = [t for s in outcome.caption["segments"] for t in (s["start_s"], s["end_s"])]
    start2 = clip.windows[1].start_s
    assert edges == pytest.approx([0, 1, 1, 2, start2, start2 + 1, start2 + 1, start2 + 2], abs=1e-3)
    assert (
        outcome.caption["summary"] == "A stand-in caption written by a tiny test model."
    )  # distinct summaries joined
    assert outcome.metrics["windows"] == 2 and stats.generations == 2


@st.composite
def windowed_captions(draw):
    """Per-window captions that each cover their window: (window bounds, captions, duration)."""
    duration = draw(st.floats(2.0, 120.0))
    bounds = window_bounds(duration, draw(st.floats(1.0, 30.0)))
    parts = []
    for i, (start, end) in enumerate(bounds):
        length = end - start
        tenths = math.ceil(length * 10) - 1  # models write times to a tenth of a second
        cuts = sorted(draw(st.lists(st.integers(1, tenths), max_size=4, unique=True))) if tenths >= 1 else []
        edges = [0.0, *[c / 10 for c in cuts], length]
        segments = [
            Segment(a, b, f"w{i} s{j}") for j, (a, b) in enumerate(zip(edges, edges[1:], strict=False))
        ]
        parts.append((start, ParsedCaption(f"summary {i % 2}", segments)))
    return parts, duration


@settings(max_examples=200)
@given(windowed_captions())
def test_merged_windows_are_ordered_inside_the_clip_and_cover_it(case):
    parts, duration = case
    merged = merge_windows(parts, duration)
    assert merged.segments[0].start_s == 0.0
    assert merged.segments[-1].end_s == pytest.approx(duration, abs=1e-3)
    for a, b in zip(merged.segments, merged.segments[1:], strict=False):
        assert a.start_s < a.end_s <= b.start_s + 1e-3
        assert b.start_s - a.end_s < 1e-3  # no gap: windows that cover themselves cover the clip
    assert all(0 <= s.start_s < s.end_s <= duration for s in merged.segments)
    assert [s.text for s in merged.segments] == [s.text for _, p in parts for s in p.segments]
    assert merged.summary == " ".join(dict.fromkeys(p.summary for _, p in parts))


def _record() -> ClipRecord:
    return ClipRecord("c", "s.mp4", 0, 2, 0, 50, 0, 0, 25.0, 50, 2.0, kept=True)


@pytest.mark.parametrize(
    ("on_failure", "kept", "reason"), [("drop", False, "caption_failed"), ("keep", True, None)]
)
def test_a_failed_caption_is_recorded_and_drops_or_keeps_the_clip(on_failure, kept, reason):
    from captioning.captioner import CaptionOutcome

    record, media = _record(), {"mp4": b"x"}
    apply_to_clip(
        record, media, CaptionOutcome("c", failure="repetition", detail="loop", attempts=3), on_failure
    )
    assert (record.kept, record.drop_reason, record.caption) == (kept, reason, None)
    assert record.errors == [{"stage": "caption", "message": "repetition: loop (after 3 attempts)"}]
    assert "txt" not in media
