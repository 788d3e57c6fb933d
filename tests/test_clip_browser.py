"""The clip browser (OUT/report/clips.html) driven in headless Chromium over CDP: a real curate run with
`--keep-dropped` and a motion rule that drops its still shots, every number the page shows checked
against pandas on the manifests, clips played from previews and through `reelmill report --serve`, and
synthetic manifests for a score-only run and for 100k rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cdp import Chromium

from captioning.report.browser import write_browser
from captioning.report.collect import open_run
from captioning.report.config import ReportConfig
from conftest import caption_overrides
from curation import config, storage, synthetic
from curation.layout import OutputLayout
from curation.record import CLIP_SCHEMA, ClipRecord
from curation.synthetic import Shot, VideoSpec, shot_list
from curation.writer import parquet_bytes
from jobs.curate import run_curate
from jobs.job_configs import CurateJobConfig

STILL = "testsrc2=size={s}:rate={r},trim=end_frame=1,loop=loop=-1:size=1,setpts=N/({r})/TB"
MOTION_MIN = 0.0012
RULES = f"filters.rules=[{{score: motion, min: {MOTION_MIN}}}, {{score: sharpness, min: 20}}]"
READY = "document.documentElement.dataset.ready === '1'"
PART_ROWS = 20_000


@pytest.fixture(scope="module")
def run_out(ray_local, tiny_vlm, tmp_path_factory) -> Path:
    """Two still shots (dropped by the motion rule, kept in OUT/dropped/), two moving videos, a broken one."""
    videos = tmp_path_factory.mktemp("browser-videos")
    synthetic.make_video(videos / "still.mp4", VideoSpec([Shot(STILL, 75)], 320, 240))
    synthetic.make_video(videos / "still_two.mp4", VideoSpec([Shot(STILL, 60)], 240, 180))
    synthetic.make_video(videos / "moving.mp4", VideoSpec(shot_list([70, 80]), 256, 144))
    synthetic.make_video(
        videos / "more.mp4", VideoSpec(shot_list([60, 75], cycle=("mandelbrot", "testsrc2")), 240, 160)
    )
    (videos / "broken.mp4").write_bytes((videos / "moving.mp4").read_bytes()[:2500])
    out = tmp_path_factory.mktemp("browser-run") / "out"
    overrides = [
        *caption_overrides(tiny_vlm),
        RULES,
        "scoring.aesthetic.enabled=false",
        "scoring.text.enabled=false",
        "shards.keep_dropped=true",
        "report.alignment=false",
        "input.videos_per_task=2",
    ]
    run_curate([str(videos)], str(out), config.load(CurateJobConfig, "curate", "default", overrides))
    return out


@pytest.fixture(scope="module")
def clips(run_out) -> pd.DataFrame:
    return manifest(run_out, "clips")


@pytest.fixture(scope="module")
def chromium():
    with Chromium(1400, 900) as browser:
        yield browser


def manifest(out: Path, name: str) -> pd.DataFrame:
    """A manifest read with pyarrow alone, struct columns flattened to dotted names (`scores.motion`)."""
    return pq.read_table(out / "manifest" / name).flatten().to_pandas()


def open_page(browser: Chromium, out: Path, hash_: str = "") -> None:
    browser.errors.clear()
    browser.open((out / "report" / "clips.html").as_uri() + hash_, READY)


def read_index(out: Path) -> dict:
    text = (out / "report" / "browser" / "clips-data.js").read_text()
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


def test_the_index_holds_every_candidate_clip_and_where_its_media_is(run_out, clips):
    index = read_index(run_out)
    assert (run_out / "report" / "clips.html").is_file()
    assert index["rows"] == len(clips) and len(index["cols"]["key"]) == len(clips)
    assert sorted(index["cols"]["key"]) == sorted(clips.clip_id)
    by_key = clips.set_index("clip_id")
    locations = index["dicts"]["location"]
    dropped_with_media = 0
    for key, kept, location in zip(
        index["cols"]["key"], index["cols"]["kept"], index["cols"]["location"], strict=True
    ):
        row = by_key.loc[key]
        assert bool(kept) == bool(row.kept)
        where = locations[location] if location >= 0 else None
        if row.kept:
            assert where == "shards"
        elif isinstance(row["shard"], str):
            assert where == "dropped" and (run_out / "dropped" / row["shard"]).is_file()
            dropped_with_media += 1
        else:
            assert where is None  # cut before any media was written: transitions, too short
    assert dropped_with_media == (clips.drop_reason == f"motion<{MOTION_MIN:g}").sum() >= 2
    assert "motion" in index["score_names"] and index["rules"][0]["reasons"] == [f"motion<{MOTION_MIN:g}"]


def test_filtering_by_a_drop_reason_counts_what_the_manifest_counts_and_the_url_keeps_it(
    run_out, clips, chromium
):
    open_page(chromium, run_out)
    assert int(chromium.eval("document.querySelector('#match-count').dataset.count")) == len(clips)
    reason = f"motion<{MOTION_MIN:g}"
    chromium.choose("#f-reason", reason)
    expected = clips[clips.drop_reason == reason]
    count = chromium.eval("({...document.querySelector('#match-count').dataset})")
    assert int(count["count"]) == len(expected) >= 2
    assert float(count["hours"]) == pytest.approx(expected.duration_s.sum() / 3600, rel=1e-4)
    shown = chromium.eval(
        "[...document.querySelectorAll('#clips-table .vt-row')].map(r => r.children[0].textContent)"
    )
    assert sorted(shown) == sorted(expected.clip_id)
    # only the visible rows are in the DOM, and the filter is in the URL: a reload shows the same view
    assert "reason=" in chromium.eval("location.hash")
    chromium.reload(READY)
    assert chromium.eval("document.querySelector('#f-reason').value") == reason
    assert int(chromium.eval("document.querySelector('#match-count').dataset.count")) == len(expected)
    chromium.choose("#f-status", "kept")  # kept and a drop reason: nothing
    assert int(chromium.eval("document.querySelector('#match-count').dataset.count")) == 0
    chromium.click("#f-clear")
    chromium.click("#clips-table .vt-head [data-col='dur']")
    chromium.click("#clips-table .vt-head [data-col='dur']")  # twice: longest first
    first = chromium.eval("document.querySelector('#clips-table .vt-row').children[0].textContent")
    assert clips.set_index("clip_id").loc[first, "duration_s"] == clips.duration_s.max()
    assert "sort=-dur" in chromium.eval("location.hash")
    assert chromium.errors == []


def test_a_caption_search_and_a_score_range_filter_like_pandas(run_out, clips, chromium):
    motion = clips["scores.motion"]
    values = sorted(motion.dropna().unique())
    # between two clips' values, so the page's rounding of scores cannot move a clip across a bound
    low, high = (values[0] + values[1]) / 2, (values[-2] + values[-1]) / 2
    open_page(chromium, run_out, f"#s.motion={low}~{high}")
    expected = ((motion >= low) & (motion <= high)).sum()
    assert int(chromium.eval("document.querySelector('#match-count').dataset.count")) == expected >= 1
    chromium.click("#f-clear")
    chromium.type_text("#f-q", "STAND-IN caption")
    chromium.wait_for(f"document.querySelector('#match-count').dataset.count !== '{len(clips)}'")
    summaries = clips["caption.summary"].fillna("")
    segments = clips["caption.segments"]
    assert summaries.str.len().sum() > 0 and segments.notna().any()
    matching = summaries.str.lower().str.contains("stand-in caption", regex=False).sum()
    assert int(chromium.eval("document.querySelector('#match-count').dataset.count")) == matching
    assert chromium.errors == []


def eligible_and_pass(
    clips: pd.DataFrame, configured: list[dict], rules: list[dict] | None = None
) -> pd.Series:
    """decide() over the manifest, independently: the clips the `configured` rules saw (kept, or dropped
    by one of them), and which of them pass `rules` (the configured ones with a threshold moved)."""
    reasons = set()
    for r in configured:
        if r.get("min") is not None:
            reasons.add(f"{r['score']}<{r['min']:g}")
        if r.get("max") is not None:
            reasons.add(f"{r['score']}>{r['max']:g}")
    seen = clips.kept | clips.drop_reason.isin(reasons)
    passing = pd.Series(True, index=clips.index)
    for r in rules or configured:
        values = clips[f"scores.{r['score']}"]
        if r.get("min") is not None:
            passing &= ~(values < r["min"])  # a null score passes
        if r.get("max") is not None:
            passing &= ~(values > r["max"])
    return seen & passing


def slider_reading(browser: Chromium, card: str, position: int) -> dict:
    browser.choose(f"#{card}-slider", str(position))
    return browser.eval(f"({{...document.querySelector('#{card}-count').dataset}})")


def test_the_threshold_slider_keeps_what_pandas_keeps(run_out, clips, chromium):
    rules = [{"score": "motion", "min": MOTION_MIN}, {"score": "sharpness", "min": 20.0}]
    open_page(chromium, run_out, "#tab=tuning")
    card = "tune-0-min"
    top = int(chromium.eval(f"document.querySelector('#{card}-slider').max"))
    configured = chromium.eval(f"({{...document.querySelector('#{card}-count').dataset}})")
    assert int(configured["kept"]) == clips.kept.sum()
    readings = [slider_reading(chromium, card, p) for p in sorted({0, 1, top // 2, top - 1, top})]
    assert len({r["kept"] for r in readings}) >= 3  # the slider really moves the count
    for reading in readings:
        threshold = float(reading["threshold"])
        kept = eligible_and_pass(clips, rules, [{**rules[0], "min": threshold}, rules[1]])
        assert int(reading["kept"]) == kept.sum(), threshold
        assert float(reading["hours"]) == pytest.approx(clips.duration_s[kept].sum() / 3600, rel=1e-4)
    # the clips around a threshold: just dropped below it, just kept above it
    reading = slider_reading(chromium, card, top // 2)
    values = chromium.eval(
        f"[...document.querySelectorAll('#{card}-dropped li[data-row]')].map(li => li.querySelector('.k').textContent)"
    )
    by_key = clips.set_index("clip_id")
    assert all(by_key.loc[k, "scores.motion"] < float(reading["threshold"]) for k in values)
    assert chromium.errors == []


def test_a_row_plays_its_preview_and_a_segment_seeks(run_out, clips, chromium):
    kept = clips[clips.kept].clip_id.iloc[0]
    open_page(chromium, run_out, f"#clip={kept}")
    chromium.wait_for("!!document.querySelector('#detail-segments li')")
    chromium.wait_for("document.querySelector('#detail-video').readyState >= 2")
    chromium.click("#detail-segments li:nth-child(2)")
    start = float(chromium.eval("document.querySelector('#detail-segments li:nth-child(2)').dataset.start"))
    assert start > 0
    chromium.wait_for("document.querySelector('#detail-video').currentTime > 0")
    assert chromium.eval("document.querySelector('#detail-video').currentTime") >= start - 0.1
    assert chromium.eval("document.querySelector('#detail-sheet').naturalWidth") > 0
    transition = clips[clips.drop_reason == "transition"].clip_id.iloc[0]
    open_page(chromium, run_out, f"#clip={transition}")
    chromium.wait_for("!!document.querySelector('#no-media')")
    assert chromium.eval("document.querySelector('#detail-video')") is None
    assert chromium.errors == []


def test_a_clip_plays_through_serve_and_seeks_to_a_segment(run_out, clips, chromium):
    serve = pytest.importorskip("captioning.report.serve")
    dropped = clips[clips.drop_reason == f"motion<{MOTION_MIN:g}"].clip_id.iloc[0]
    kept = clips[clips.kept].clip_id.iloc[-1]
    server = serve.start_server(str(run_out))
    try:
        chromium.errors.clear()
        chromium.open(f"{server.url}clips.html#clip={kept}", READY)
        chromium.wait_for("document.documentElement.dataset.served === '1'")
        chromium.wait_for("!!document.querySelector('#detail-video source')")
        assert "media/shards/" in chromium.eval("document.querySelector('#detail-video source').src")
        chromium.wait_for("document.querySelector('#detail-video').readyState >= 2")
        chromium.click("#detail-segments li:nth-child(2)")
        start = float(
            chromium.eval("document.querySelector('#detail-segments li:nth-child(2)').dataset.start")
        )
        chromium.wait_for("document.querySelector('#detail-video').currentTime > 0")
        assert chromium.eval("document.querySelector('#detail-video').currentTime") >= start - 0.1
        # a dropped clip plays from OUT/dropped/, clicked in the table
        chromium.choose("#f-reason", f"motion<{MOTION_MIN:g}")
        chromium.click(
            f"#clips-table .vt-row[data-row='{read_index(run_out)['cols']['key'].index(dropped)}'] > div"
        )
        chromium.wait_for(f"document.querySelector('#detail h2').textContent === '{dropped}'")
        chromium.wait_for("document.querySelector('#detail-video').readyState >= 2")
        assert "media/dropped/" in chromium.eval("document.querySelector('#detail-video').currentSrc")
        assert chromium.errors == []
    finally:
        server.close()


def test_rejected_inputs_and_run_facts(run_out, chromium):
    videos = manifest(run_out, "videos")
    errors = videos[videos.status == "error"]
    open_page(chromium, run_out, "#tab=rejected")
    assert int(chromium.eval("document.querySelector('#rejected-count').dataset.count")) == len(errors) == 1
    text = chromium.eval("document.querySelector('#rejected-table').textContent")
    assert errors.uri.iloc[0] in text and errors.error_code.iloc[0] in text
    chromium.choose("#r-code", errors.error_code.iloc[0])
    assert int(chromium.eval("document.querySelector('#rejected-count').dataset.count")) == 1
    chromium.click("#tab-facts")
    run = json.loads((run_out / "run.json").read_text())
    facts = chromium.eval("document.querySelector('#view-facts').textContent")
    assert run["versions"]["ray"] in facts and run["config_fingerprint"] in facts
    tokens = run["captioning"]["new_tokens"] / run["captioning"]["generate_s"]
    assert float(chromium.eval("document.querySelector('#tokens-per-s').dataset.value")) == pytest.approx(
        tokens
    )
    assert run["models"] == "random-weights"  # captioned by the tiny VLM
    banner = chromium.eval("document.querySelector('#random-weights').textContent")
    assert banner.startswith("models: random-weights")
    assert chromium.errors == []


# ---- synthetic manifests: a score-only run, and 100k rows ----


def write_synthetic_run(out: Path, rows: int, mode: str, rules: list[dict], seed: int = 0) -> None:
    """A run's manifests and run.json as curate writes them (ClipRecord rows), without the video work.

    The first part (up to PART_ROWS clips) is made record by record; further parts repeat it under new
    clip ids, which keeps a 100k-clip manifest quick to write."""
    rng = random.Random(seed)
    layout = OutputLayout(str(out))
    records = []
    for i in range(min(rows, PART_ROWS)):
        duration = round(rng.uniform(2, 10), 3)
        start = rng.uniform(0, 600)
        record = ClipRecord(
            clip_id=f"clip-{i:08d}", source=f"s3://raw/video-{i // 25:05d}.mp4", source_start_s=start,
            source_end_s=start + duration, source_start_frame=0, source_end_frame=int(duration * 25),
            shot_index=i % 25, task_id=0, fps=25.0, num_frames=int(duration * 25), duration_s=duration,
            kept=True, width=1280, height=720, shard=f"shard-{i // 1000:06d}-000.tar", location="shards",
            caption={"summary": f"clip {i} shows {rng.choice(['a dog', 'a cat', 'the sea'])}",
                     "segments": [{"start_s": 0.0, "end_s": duration, "text": "all of it"}]},
        )  # fmt: skip
        record.scores.update(motion=rng.lognormvariate(-5, 1.2), sharpness=rng.uniform(0, 300))
        if i % 97 == 0:
            record.scores["motion"] = None  # not measured: passes every rule
        records.append(record.to_row())
    first = parquet_bytes(records, CLIP_SCHEMA)
    storage.write_bytes(layout.manifest_part(layout.clips_manifest, 0), first)
    table = pq.read_table(pa.BufferReader(first))
    for part, begin in enumerate(range(PART_ROWS, rows, PART_ROWS), 1):
        copy = table.slice(0, min(PART_ROWS, rows - begin))
        ids = pa.array([f"clip-{i:08d}" for i in range(begin, begin + len(copy))])
        copy = copy.set_column(copy.schema.get_field_index("clip_id"), "clip_id", ids)
        sink = pa.BufferOutputStream()
        pq.write_table(copy, sink)  # the schema's key-value metadata travels with it
        storage.write_bytes(layout.manifest_part(layout.clips_manifest, part), sink.getvalue().to_pybytes())
    run = {"job": "curate", "models": "random-weights", "config": {"filters": {"mode": mode, "rules": rules}}}
    storage.write_bytes(layout.run_json, json.dumps(run).encode())


def test_a_score_only_run_tunes_thresholds_it_never_applied(tmp_path, chromium):
    rules = [{"score": "motion", "min": 0.004}, {"score": "sharpness", "min": 40.0}]
    out = tmp_path / "score-only"
    write_synthetic_run(out, 3000, "score-only", rules)
    report = tmp_path / "score-only" / "report"
    write_browser(open_run(str(out)), ReportConfig(), str(report), log=lambda _: None)
    clips = manifest(out, "clips")
    assert clips.kept.all()
    open_page(chromium, out, "#tab=tuning")
    assert chromium.eval("document.querySelector('#random-weights').textContent").startswith(
        "models: random-weights"
    )
    baseline = chromium.eval("({...document.querySelector('#tune-baseline').dataset})")
    as_configured = eligible_and_pass(clips, rules)
    assert int(baseline["kept"]) == as_configured.sum() < len(clips)
    for card, rule in (("tune-0-min", 0), ("tune-1-min", 1)):
        top = int(chromium.eval(f"document.querySelector('#{card}-slider').max"))
        for position in (top // 5, top // 2):
            reading = slider_reading(chromium, card, position)
            changed = [dict(r) for r in rules]
            changed[rule]["min"] = float(reading["threshold"])
            kept = eligible_and_pass(clips, rules, changed)
            assert int(reading["kept"]) == kept.sum()
            assert float(reading["hours"]) == pytest.approx(clips.duration_s[kept].sum() / 3600, rel=1e-4)
    # no media in a synthetic run: a row says how to play it
    open_page(chromium, out, "#clip=clip-00000005")
    assert "--serve" in chromium.wait_for("document.querySelector('#no-media')?.textContent")
    assert chromium.errors == []


def test_a_hundred_thousand_rows_render_a_bounded_table(tmp_path, chromium):
    rules = [{"score": "motion", "min": 0.004}]
    out = tmp_path / "large"
    rows = 100_000
    write_synthetic_run(out, rows, "filter", rules)
    counts = write_browser(open_run(str(out)), ReportConfig(), str(out / "report"), log=lambda _: None)
    assert counts["rows"] == rows
    assert counts["bytes"] < 120 * rows  # about a hundred bytes a clip, captions included
    open_page(chromium, out)
    assert int(chromium.eval("document.querySelector('#match-count').dataset.count")) == rows
    in_dom = chromium.eval("document.querySelectorAll('#clips-table .vt-row').length")
    assert 0 < in_dom < 100
    chromium.eval("document.querySelector('#clips-table').scrollTop = 30 * 60000")
    chromium.wait_for(
        "[...document.querySelectorAll('#clips-table .vt-row')].some(r => r.dataset.row === '60000')"
    )
    assert chromium.eval("document.querySelectorAll('#clips-table .vt-row').length") < 100
    chromium.choose("#f-q", "a dog")
    matching = manifest(out, "clips")["caption.summary"]
    assert (
        int(chromium.eval("document.querySelector('#match-count').dataset.count"))
        == matching.str.contains("a dog").sum()
    )
    assert chromium.errors == []
