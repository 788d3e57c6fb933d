"""Measured hints in the captioning prompt: camera windows and on-screen text reach the model's input."""

from __future__ import annotations

import pytest
from vlm_archs import record_generate

from captioning.caption_config import CaptionConfig, CaptionFramesConfig, VLMConfig
from captioning.captioner import Captioner
from captioning.prompt_hints import CAMERA_PHRASES, NOT_MEASURED, ClipHints
from captioning.prompts import available_prompts, load_prompt
from captioning.stage import CaptionPrep
from captioning.vlm import VLMBackend
from curation import synthetic
from curation.synthetic import Shot, VideoSpec

PANS_THEN_HOLDS = {
    "camera": {
        "label": "pan_left",
        "windows": [
            {"start_s": 0.0, "end_s": 2.0, "label": "pan_left"},
            {"start_s": 2.0, "end_s": 4.0, "label": "pan_left"},
            {"start_s": 4.0, "end_s": 6.0, "label": "static"},
        ],
    },
    "text": ["SALE", "SALE", "  ", "50% OFF"],
}


def test_camera_windows_are_quoted_on_the_window_clock_with_runs_merged():
    hints = ClipHints.from_record(PANS_THEN_HOLDS)
    whole = hints.placeholders(0.0, 6.0)
    assert whole["camera"] == (
        f"0.0-4.0s: {CAMERA_PHRASES['pan_left']}; 4.0-6.0s: {CAMERA_PHRASES['static']}"
    )
    # a caption window from 3 s to 6 s sees the last second of the pan, then the hold, from its own 0.0
    assert hints.camera_phrase(3.0, 6.0) == (
        f"0.0-1.0s: {CAMERA_PHRASES['pan_left']}; 1.0-3.0s: {CAMERA_PHRASES['static']}"
    )
    assert hints.camera_phrase(4.5, 6.0) == CAMERA_PHRASES["static"]
    assert whole["screen_text"] == '"SALE", "50% OFF"'  # once each, blanks left out


@pytest.mark.parametrize(
    ("record", "camera", "text"),
    [
        (None, NOT_MEASURED, NOT_MEASURED),
        ({"camera": None, "text": []}, NOT_MEASURED, "none found"),
        ({"camera": {"label": "zoom_in", "windows": []}}, CAMERA_PHRASES["zoom_in"], NOT_MEASURED),
        # a hostile KEY.json: wrong types and unknown labels are not measurements
        ({"camera": "pan_left", "text": "SALE"}, NOT_MEASURED, NOT_MEASURED),
        (
            {"camera": {"label": "warp", "windows": [{"start_s": "0", "end_s": 1, "label": "static"}, 3]},
             "text": [1, None]},
            NOT_MEASURED, "none found",
        ),
    ],
)  # fmt: skip
def test_missing_or_malformed_measurements_read_as_not_measured(record, camera, text):
    assert ClipHints.from_record(record).placeholders(0.0, 5.0) == {"camera": camera, "screen_text": text}


def test_dense_v2_quotes_the_hints_and_dense_v1_is_unchanged_by_them():
    assert {"dense_v1", "dense_v2"} <= set(available_prompts())
    hints = ClipHints.from_record(PANS_THEN_HOLDS).placeholders(4.0, 6.0)
    v2 = load_prompt("dense_v2").render(2.0, 1, hints)
    assert f"Camera motion: {CAMERA_PHRASES['static']}." in v2
    assert 'Text on screen: "SALE", "50% OFF".' in v2
    assert "{" not in v2
    assert f"Camera motion: {NOT_MEASURED}." in load_prompt("dense_v2").render(2.0, 1)
    v1 = load_prompt("dense_v1")
    assert v1.render(2.0, 1, hints) == v1.render(2.0, 1)


@pytest.fixture(scope="module")
def six_second_clip(tmp_path_factory) -> bytes:
    path = synthetic.make_video(
        tmp_path_factory.mktemp("clip") / "clip.mp4", VideoSpec([Shot("testsrc2", 150)], 160, 120, "25")
    )
    return path.read_bytes()


def test_each_caption_window_sends_its_own_camera_hint_to_the_model(tiny_vlm, six_second_clip):
    """Through the real prep and the real processor: the token ids the model is given, decoded."""
    cfg = CaptionConfig(
        vlm=VLMConfig(model=tiny_vlm, device="cpu", max_new_tokens=16),
        frames=CaptionFramesConfig(max_pixels=112 * 112, window_s=3.0),
        prompt_id="dense_v2",
        attempts=1,
    )
    (clip,), failed = CaptionPrep(cfg).run(
        [("k", six_second_clip)], {"k": ClipHints.from_record(PANS_THEN_HOLDS)}
    )
    assert not failed and [(w.start_s, w.end_s) for w in clip.windows] == [(0.0, 3.0), (3.0, 6.0)]
    backend = VLMBackend(cfg.vlm)
    calls = record_generate(backend)
    Captioner(backend.generate, cfg, tiny_vlm).run([clip])
    received = [
        backend.processor.tokenizer.decode(ids, skip_special_tokens=True)
        for call in calls
        for ids in call["input_ids"]
    ]
    assert len(received) == 2
    assert f"Camera motion: {CAMERA_PHRASES['pan_left']}." in received[0]
    assert (
        f"Camera motion: 0.0-1.0s: {CAMERA_PHRASES['pan_left']}; 1.0-3.0s: {CAMERA_PHRASES['static']}."
        in received[1]
    )
    assert all('Text on screen: "SALE", "50% OFF".' in text for text in received)
