"""Burned-in text (`curation/scoring/text.py`) with the real PP-OCR models that rapidocr-onnxruntime ships, on
clips drawn with ffmpeg's `drawtext` over lavfi sources. How much of the picture the text covers is found
independently of the detector: the same frame rendered with and without the text, differenced."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curation import config
from curation.config import ConfigError
from curation.filters import decide
from curation.frames import sample_frames
from curation.record import CLIP_SCHEMA, ClipRecord, table
from curation.record_check import check_record
from curation.scoring.text import RAPIDOCR_LOGGERS, TextScorer, frame_indices, union_area
from curation.scoring_config import FilterConfig, FilterRule, FrameSamplerConfig, TextConfig
from curation.scoring_stage import TextStage
from curation.splitter import TaskResult
from curation.synthetic import Shot, VideoSpec, make_video
from jobs.job_configs import CurateJobConfig

W, H, FPS, FRAMES = 640, 360, 25, 75
FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf",
    "/Library/Fonts/Arial Bold.ttf",
)


def font_option() -> str:
    """`fontfile=...:` for a bold TTF on this machine; without one, drawtext asks fontconfig for a default."""
    found = next((f for f in FONTS if Path(f).is_file()), None)
    if found is None and shutil.which("fc-match"):
        match = subprocess.run(["fc-match", "-f", "%{file}", "sans:bold"], capture_output=True, text=True)
        found = match.stdout.strip() if match.returncode == 0 and match.stdout.strip() else None
    return f"fontfile={found}:" if found else ""


def drawtext(text: str, size: int, y: str) -> str:
    return (
        f"drawtext={font_option()}text='{text}':fontsize={size}:fontcolor=white:borderw=2:bordercolor=black:"
        f"x=(w-text_w)/2:y={y}"
    )


BASE = "smptebars=size={s}:rate={r}"
CLIPS = {
    "bars": BASE,
    "mandelbrot": "mandelbrot=size={s}:rate={r}",
    "subtitle": BASE + "," + drawtext("The quick brown fox jumps over the lazy dog", 22, "h-th-24"),
    "title": BASE + "," + drawtext("SUBSCRIBE", 80, "(h-th)/2"),
}
RULES = FilterConfig(rules=[FilterRule("text_area", max=0.02)])


def text_box_fraction(graph: str) -> float:
    """Share of the frame in the bounding box of the pixels `drawtext` changed (glyphs and their border)."""

    def first_frame(g: str) -> np.ndarray:
        cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", g.format(s=f"{W}x{H}", r=FPS)]
        cmd += ["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        raw = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
        return np.frombuffer(raw, np.uint8).reshape(H, W, 3).astype(np.int16)

    changed = np.abs(first_frame(graph) - first_frame(BASE)).max(axis=2) > 24
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    return (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) / (W * H)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    out = {}
    for name, graph in CLIPS.items():
        path = make_video(d / f"{name}.mp4", VideoSpec([Shot(graph, FRAMES)], W, H, str(FPS)))
        out[name] = sample_frames(path, FrameSamplerConfig())  # as the scorers get them: 256 px short side
    return out


@pytest.fixture(scope="module")
def scorer():
    return TextScorer(TextConfig(recognize=True), threads=2)


@pytest.fixture(scope="module")
def readings(frames, scorer):
    return {name: scorer.measure(f) for name, f in frames.items()}


def test_frames_without_text_have_no_text(readings):
    for name in ("bars", "mandelbrot"):
        assert readings[name].scores["text_area"] < 0.002, name
        assert readings[name].scores["text_boxes"] == 0, name
        assert readings[name].texts == [], name  # read, nothing found


def test_text_area_matches_the_drawn_text(readings):
    for name in ("subtitle", "title"):
        truth = text_box_fraction(CLIPS[name])
        scores = readings[name].scores
        assert scores["text_boxes"] >= 1, name
        # the detector's boxes are its own, grown around the glyphs (measured: 1.11x the subtitle's
        # inked box, 0.95x the title's, whose letters stand apart at the top)
        assert 0.7 * truth < scores["text_area"] < 1.5 * truth, (name, scores, truth)
    assert readings["title"].scores["text_area"] > 1.5 * readings["subtitle"].scores["text_area"]


def test_recognition_reads_the_drawn_word(readings):
    assert any("SUBSCRIBE" in text.upper().replace(" ", "") for text in readings["title"].texts)
    assert any("fox" in text.lower() for text in readings["subtitle"].texts)


def test_a_text_rule_drops_the_overlay_and_keeps_the_clean_clip(readings):
    assert decide(readings["bars"].scores, RULES) == (True, None)
    assert decide(readings["mandelbrot"].scores, RULES) == (True, None)
    assert decide(readings["subtitle"].scores, RULES) == (False, "text_area>0.02")
    assert decide(readings["title"].scores, RULES) == (False, "text_area>0.02")


def test_union_area_counts_overlaps_once():
    square = np.float32([[0, 0], [50, 0], [50, 50], [0, 50]])
    assert union_area(np.stack([square, square]), (100, 100)) == pytest.approx(0.26, abs=0.01)
    shifted = square + np.float32([25, 0])  # half over the first: 1.5 squares, not 2
    assert union_area(np.stack([square, shifted]), (100, 100)) == pytest.approx(0.39, abs=0.01)
    whole = np.float32([[0, 0], [99, 0], [99, 99], [0, 99]])
    assert union_area(np.stack([whole, square, whole]), (100, 100)) == 1.0
    assert union_area(np.zeros((0, 4, 2), np.float32), (100, 100)) == 0.0


def test_frames_are_spread_over_the_clip(frames):
    f = frames["bars"]  # 3 s at 2 samples/s: 6 samples
    assert frame_indices(f, 3) == [1, 3, 5]  # nearest to 1/6, 1/2 and 5/6 of the clip
    assert frame_indices(f, 1) == [f.nearest([0.5])[0]]
    assert frame_indices(f.rgb, 2) == [1, 4]
    assert len(frame_indices(f, 64)) == f.num_frames  # never more than there are


def test_bare_arrays_score_like_sampled_frames(frames, scorer, readings):
    rgb = frames["title"].rgb
    assert scorer.score(rgb)["text_area"] == pytest.approx(readings["title"].scores["text_area"], rel=0.3)
    with pytest.raises(ValueError, match="frames"):
        scorer.score(rgb[0])


def test_loading_logs_nothing_and_uses_the_actor_threads(capfd, caplog):
    before = [logging.getLogger(n).disabled for n in RAPIDOCR_LOGGERS]
    with caplog.at_level(logging.DEBUG):
        detector = TextScorer(TextConfig(device="cpu"), threads=1)
    assert caplog.records == []
    assert capfd.readouterr() == ("", "")
    assert [logging.getLogger(n).disabled for n in RAPIDOCR_LOGGERS] == before  # nothing left switched off
    assert detector.provider == "CPUExecutionProvider"
    assert detector.detector.infer.session.get_session_options().intra_op_num_threads == 1
    assert detector.recognizer is None  # recognition's model only when asked for


def test_a_fresh_process_imports_and_loads_both_models_silently():
    code = (
        "from curation.scoring.text import TextScorer; from curation.scoring_config import TextConfig; "
        "TextScorer(TextConfig(recognize=True))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def record(clip_id: str) -> ClipRecord:
    return ClipRecord(clip_id, "src.mp4", 0.0, 3.0, 0, 75, 0, 0, 25.0, 75, 3.0, kept=True, width=W, height=H)


def test_stage_fills_scores_and_text_and_quarantines_one_bad_clip(frames, scorer, monkeypatch):
    cfg = CurateJobConfig()
    stage = TextStage.__new__(TextStage)  # the module's scorer, with recognition, not a second load
    stage.scorer = scorer
    records = [record("title"), record("bars"), record("broken")]
    result = TaskResult(0, clips=records, media={r.clip_id: {"mp4": b""} for r in records})
    result.samples = {"title": frames["title"], "bars": frames["bars"], "broken": frames["bars"].rgb[0]}
    stage.run(result)
    title, bars, broken = records
    assert title.scores["text_area"] > 0.02 and title.scores["text_boxes"] >= 1
    assert any("SUBSCRIBE" in t.replace(" ", "") for t in title.text) and bars.text == []
    assert (broken.kept, broken.drop_reason, broken.errors[0]["stage"]) == (False, "internal_error", "text")
    assert cfg.scoring.text.recognize is False  # recognition is asked for, not on by default

    # the manifest row holds the strings; a foreign record's text of the wrong type is removed
    rows = table([r.to_row() for r in records], CLIP_SCHEMA).to_pylist()
    assert rows[0]["text"] == title.text and rows[0]["scores"]["text_boxes"] == title.scores["text_boxes"]
    checked = check_record({"text": ["ok", 5], "scores": {"text_area": 0.1}})
    assert checked.record["text"] == ["ok"] and checked.problems == [
        "text[1]: expected a string, got int 5 (item removed)"
    ]

    def out_of_memory(_frames):
        raise MemoryError("onnxruntime: failed to allocate")

    monkeypatch.setattr(scorer, "measure", out_of_memory)
    again = TaskResult(
        0, clips=[record("title")], media={"title": {"mp4": b""}}, samples={"title": frames["title"]}
    )
    with pytest.raises(MemoryError):  # about the moment: the task is retried, not the clip dropped
        stage.run(again)


def test_config_and_rules():
    cfg = config.load(CurateJobConfig, "curate", "default", ["filters.rules=[{score: text_area, max: 0.02}]"])
    assert cfg.filters.rules == [FilterRule("text_area", max=0.02)]
    with pytest.raises(ConfigError, match="scoring.text.frames"):
        TextConfig(frames=0)
    with pytest.raises(ConfigError, match="did you mean 'text_area'"):
        FilterConfig(rules=[FilterRule("text_are", max=0.1)])
    for preset in ("default", "fast", "gpu"):  # on everywhere: cheap enough on CPU (benchmarks/text_cost.py)
        text = config.load(CurateJobConfig, "curate", preset, []).scoring.text
        assert text.enabled and (text.frames, text.max_side, text.recognize) == (3, 640, False), preset
