"""The quality report on real runs: a curate run over generated videos (a broken upload, a still shot, a
too-short shot) captioned by the tiny fine-tuned VLM, its numbers recomputed here from the manifests,
the page checked in headless Chromium, and `--compare` against a recaption by a second tiny VLM; a
score-only run of the same videos, deduplicated, for the would-be-dropped clips and the duplicates.
The plots are checked through what their functions read back from the axes they drew."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from browser import render_page

from captioning.alignment import CaptionAligner
from captioning.report.clip_frames import clip_frames
from captioning.report.collect import bin_edges
from captioning.report.config import ReportConfig
from captioning.report.plots import THRESHOLD_COLOR, format_hours, funnel_chart, histogram_grid
from captioning.tiny_vlm import build_tiny_qwen2_vl, fit_answer
from conftest import caption_overrides, model_overrides
from curation import config, synthetic
from curation.synthetic import Shot, VideoSpec, shot_list
from jobs.curate import run_curate
from jobs.job_configs import CurateJobConfig, RecaptionConfig
from jobs.recaption import run_recaption

REELMILL = str(Path(sys.executable).with_name("reelmill"))
STILL = "testsrc2=size={s}:rate={r},trim=end_frame=1,loop=loop=-1:size=1,setpts=N/({r})/TB"
RULES = (
    "filters.rules=[{score: brightness, min: 0.08}, {score: motion, min: 0.0012}, "
    "{score: motion, max: 0.1}, {score: sharpness, min: 20}]"
)
OTHER_ANSWER = (
    "Summary: Another tiny model gives this different caption.\n"
    "0.0-1.5s: A different opening line from the second model.\n"
    "1.5-2.0s: And a closing line that the first model never writes."
)
SECTIONS = [
    "funnel", "scores", "captions", "alignment", "camera",
    "examples-worst_aligned", "examples-random", "examples-longest_captions",
]  # fmt: skip


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


@pytest.fixture(scope="module")
def videos(tmp_path_factory, multi_shot_video):
    d = tmp_path_factory.mktemp("report-videos")
    (d / multi_shot_video.name).symlink_to(multi_shot_video)
    synthetic.make_video(d / "still.mp4", VideoSpec([Shot(STILL, 75)], 320, 240))
    synthetic.make_video(d / "second.mp4", VideoSpec(shot_list([70, 80]), 256, 144))
    (d / "broken.mp4").write_bytes(multi_shot_video.read_bytes()[:3000])
    return d


def curate_config(tiny_vlm: str, tiny_aesthetic: dict, *extra: str) -> CurateJobConfig:
    """The config of the module's curate run, with `extra` assignments after its own."""
    overrides = [
        *model_overrides(tiny_aesthetic),
        *caption_overrides(tiny_vlm),
        RULES,
        "input.videos_per_task=2",
        *extra,
    ]
    return config.load(CurateJobConfig, "curate", "default", overrides)


@pytest.fixture(scope="module")
def curated(ray_local, videos, tiny_vlm, tiny_aesthetic, tmp_path_factory):
    """The module's curate run: (OUT, run.json, report.json). No test rewrites this OUT (those that
    rebuild a report or rerun the job take `curated_copy`), so every test reads it as the run left it,
    whatever the order the tests run in."""
    out = tmp_path_factory.mktemp("report-run") / "out"
    run = run_curate([str(videos)], str(out), curate_config(tiny_vlm, tiny_aesthetic))
    return out, run, json.loads((out / "report" / "report.json").read_text())


@pytest.fixture
def curated_copy(curated, tmp_path) -> Path:
    """The module's curate OUT, copied for a test that rewrites it (a report rebuilt, a rerun)."""
    out = tmp_path / "out"
    shutil.copytree(curated[0], out)
    return out


def manifest(out: Path, name: str) -> pd.DataFrame:
    return pq.read_table(out / "manifest" / name).flatten().to_pandas()  # struct fields as dotted columns


def clip_rows(out: Path) -> pd.DataFrame:
    """The clips manifest without its transition rows (cuts between shots, which are not clips)."""
    clips = manifest(out, "clips")
    return clips[clips.drop_reason != "transition"]


def plotted_values(clips: pd.DataFrame, name: str) -> pd.Series:
    """A plotted number per clip, as the report defines it: a score column, the duration, or the short side."""
    if name == "short_side_px":
        sized = clips[(clips.width > 0) & (clips.height > 0)]
        return np.minimum(sized.width, sized.height).astype(float)
    column = clips[name if name == "duration_s" else f"scores.{name}"].astype(float)
    return column[np.isfinite(column)]


def is_integer(values) -> bool:
    return all(float(v).is_integer() for v in values)


def test_curate_writes_the_report_and_its_funnel_matches_the_manifests(curated):
    out, _, report = curated
    assert (out / "report" / "index.html").is_file()
    videos, rows = manifest(out, "videos"), manifest(out, "clips")
    clips = clip_rows(out)
    f = report["funnel"]
    ok = videos[videos.status == "ok"]
    assert f["videos"] == len(videos) == 4 and f["videos_ok"] == len(ok) == 3
    assert f["probe_errors"] == videos[videos.status == "error"].error_code.value_counts().to_dict()
    assert f["shots"] == ok.num_shots.sum()
    assert f["candidate_clips"] == len(clips) and f["kept_clips"] == clips.kept.sum()
    assert f["drops"] == clips[~clips.kept].drop_reason.value_counts().to_dict()
    assert {"duration<2", "motion<0.0012"} <= set(f["drops"]) and "transition" not in f["drops"]
    transitions = rows[rows.drop_reason == "transition"]
    assert f["transitions"] == transitions.transition.value_counts().to_dict() and len(transitions) >= 1
    assert f["hours_in"] == pytest.approx(ok.duration_s.sum() / 3600)
    assert f["hours_kept"] == pytest.approx(clips[clips.kept].duration_s.sum() / 3600)
    assert [n for _, n in f["stages"]] == [4, 3, f["shots"], len(clips), clips.kept.sum()]


def test_the_funnel_draws_one_chart_per_unit_with_the_manifests_numbers(curated):
    out, _, report = curated
    videos, clips = manifest(out, "videos"), clip_rows(out)
    ok = videos[videos.status == "ok"]
    drawn = report["funnel"]["plot"]
    assert [p["unit"] for p in drawn] == ["videos", "clips", "hours"]
    assert drawn[0]["values"] == [len(videos), len(ok)]
    assert drawn[1]["values"] == [len(clips), clips.kept.sum()]
    assert drawn[1]["texts"] == [
        f"{len(clips)}",
        f"{clips.kept.sum()}  ({clips.kept.sum() / len(clips):.0%})",
    ]
    seconds = [ok.duration_s.sum(), clips.duration_s.sum(), clips[clips.kept].duration_s.sum()]
    # a run of seconds is drawn in seconds, and every bar says its amount in words a reader takes in
    assert drawn[2]["axis_unit"] == "seconds" and drawn[2]["values"] == pytest.approx(seconds)
    assert drawn[2]["texts"] == [f"{s:.0f} s" for s in seconds]
    for panel in drawn[:2]:
        assert panel["ticks"] and is_integer(panel["ticks"]), panel
    html = (out / "report" / "index.html").read_text()
    assert f'<td class="n">{round(seconds[2])} s</td>' in html  # the table rounds hours as the chart does


def test_score_histograms_split_kept_and_dropped_clips_exactly(curated):
    out, _, report = curated
    clips = clip_rows(out)
    assert set(report["scores"]) >= {"motion", "sharpness", "brightness", "aesthetic", "duration_s"}
    for name, entry in report["scores"].items():
        hist, plot = entry["histogram"], entry["plot"]
        edges = np.asarray(hist["edges"])
        values = plotted_values(clips, name)
        kept = clips.loc[values.index, "kept"].to_numpy(bool)
        expected = {
            "kept": np.histogram(values[kept], bins=edges)[0].tolist(),
            "dropped": np.histogram(values[~kept], bins=edges)[0].tolist(),
        }
        assert hist["series"] == expected, name
        assert plot["series"] == expected and plot["edges"] == hist["edges"], name  # what the picture shows
        assert sum(hist["counts"]) == len(values) == entry["count"]
        assert plot["count_ticks"] and is_integer(plot["count_ticks"]), (name, plot["count_ticks"])
        assert plot["xscale"] == hist["scale"]
        for t in entry["thresholds"]:  # the bins reach every threshold, so both sides of it are shown
            assert edges[0] <= t["value"] <= edges[-1]
    assert sum(report["scores"]["motion"]["histogram"]["series"]["dropped"]) >= 1


def test_a_score_over_more_than_two_decades_gets_a_log_axis(curated):
    out, _, report = curated
    clips = clip_rows(out)
    scales = {name: entry["plot"]["xscale"] for name, entry in report["scores"].items()}
    for name, scale in scales.items():
        values = plotted_values(clips, name)
        spread = values.min() > 0 and values.max() / values.min() > 100
        assert scale == ("log" if spread else "linear"), (name, values.min(), values.max())
    sharp = plotted_values(clips, "sharpness")
    assert sharp.max() / sharp.min() > 100 and scales["sharpness"] == "log"  # blurred, flat and sharp shots
    assert scales["aesthetic"] == "linear"
    boxes = report["scores"]["text_boxes"]
    assert boxes["histogram"]["integer_bins"] and is_integer(boxes["plot"]["value_ticks"])


def test_bins_follow_the_data(tmp_path):
    log = bin_edges(0.5, 5000.0, 100)
    assert log["scale"] == "log" and log["edges"][0] == 0.5 and log["edges"][-1] == 5000.0
    assert np.allclose(np.diff(np.log(log["edges"])), np.log(10000) / (len(log["edges"]) - 1))
    assert bin_edges(1.0, 99.0, 100)["scale"] == "linear"  # under two decades
    assert bin_edges(0.0, 5000.0, 100)["scale"] == "linear"  # a zero has no place on a log axis
    ints = bin_edges(2.0, 2.0, 5, integers=True)
    assert ints["integer_bins"] and 2 in [e + 0.5 for e in ints["edges"]] and len(ints["edges"]) - 1 == 7
    assert bin_edges(0.0, 1.0, 5, integers=True)["edges"][0] == -0.5  # no bins of negative counts
    marked = bin_edges(0.4, 0.6, 50, marks=(0.08, 0.95))
    assert marked["edges"][0] == 0.08 and marked["edges"][-1] == 0.95


def test_legends_and_threshold_labels_cover_no_bars(tmp_path):
    panels = [
        {"title": "a", "xlabel": "px", "histogram": bin_edges(0.0, 10.0, 40) | {
            "series": {"kept": [3] * 10, "dropped": [1] * 10}},
         "thresholds": [{"side": "min", "value": 2.0}, {"side": "max", "value": 2.5}, {"side": "max", "value": 9.0}]},
        {"title": "b", "histogram": bin_edges(1.0, 1e5, 40) | {"series": {"kept": [4] * 10, "dropped": [0] * 10}},
         "thresholds": [{"side": "min", "value": 20.0}]},
    ]  # fmt: skip
    drawn = histogram_grid(str(tmp_path / "grid.png"), panels)

    def overlap(a, b) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    boxes = [p["axes_box"] for p in drawn["panels"].values()]
    labels = [box for p in drawn["panels"].values() for box in p["label_boxes"]]
    assert drawn["legend_box"] is not None and len(labels) == 4
    for box in [drawn["legend_box"], *labels]:
        assert not any(overlap(box, axes) for axes in boxes), box
    assert not any(overlap(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :])
    assert drawn["panels"]["a"]["thresholds"] == [2.0, 2.5, 9.0] and drawn["panels"]["b"]["xscale"] == "log"
    assert drawn["panels"]["a"]["series"] == {"kept": [3.0] * 10, "dropped": [1.0] * 10}


@pytest.mark.parametrize(
    ("hours", "text"),
    [(0.0, "0 h"), (2 / 3600, "2.0 s"), (0.0055, "20 s"), (0.04, "2.4 min"), (0.5, "30 min"), (2.345, "2.3 h"),
     (1234.4, "1,234 h")],
)  # fmt: skip
def test_hours_read_as_a_person_would_say_them(hours, text):
    assert format_hours(hours) == text


def test_funnel_chart_draws_hours_in_the_unit_they_read_best_in(tmp_path):
    panels = [{"title": "Clips", "unit": "clips", "stages": [["candidate clips", 12000], ["kept clips", 9001]]},
              {"title": "Duration", "unit": "hours", "stages": [["in", 1500.0], ["kept", 1234.4]]}]  # fmt: skip
    clips, hours = funnel_chart(str(tmp_path / "funnel.png"), panels)
    assert clips["values"] == [12000, 9001] and clips["texts"] == ["12,000", "9,001  (75%)"]
    assert is_integer(clips["ticks"])
    assert hours["axis_unit"] == "hours" and hours["texts"] == ["1,500 h", "1,234 h"]


def test_score_distributions_and_thresholds_match_the_manifest(curated):
    out, _, report = curated
    clips = clip_rows(out)
    motion = clips["scores.motion"].dropna().to_numpy()
    entry = report["scores"]["motion"]
    assert entry["count"] == len(motion) and entry["mean"] == pytest.approx(motion.mean())
    assert entry["min"] == pytest.approx(motion.min()) and entry["max"] == pytest.approx(motion.max())
    assert entry["p50"] == pytest.approx(np.percentile(motion, 50))
    assert sum(entry["histogram"]["counts"]) == len(motion)
    low, high = entry["thresholds"]
    assert (low["side"], low["value"], high["side"], high["value"]) == ("min", 0.0012, "max", 0.1)
    assert low["beyond"] == (motion < 0.0012).sum() >= 1
    assert low["share_beyond"] == pytest.approx((motion < 0.0012).mean())
    assert low["dropped_by_rule"] == (clips.drop_reason == "motion<0.0012").sum()
    durations = clips.duration_s.to_numpy()
    (short,) = report["scores"]["duration_s"]["thresholds"]
    assert short["beyond"] == (durations < 2).sum() >= 1
    for name in ("motion", "sharpness", "brightness", "aesthetic", "duration_s", "short_side_px"):
        assert name in report["scores"]
    assert "content_x" not in report["scores"]  # a position, not a quality, unless a rule filters on it


def test_thresholds_are_drawn_on_the_score_plots(curated):
    out, _, report = curated
    assert (out / "report" / report["plots"]["scores"]).is_file()
    for name, entry in report["scores"].items():
        assert sorted(entry["plot_lines"]) == sorted(t["value"] for t in entry["thresholds"]), name
    assert report["scores"]["motion"]["plot_lines"] == [0.0012, 0.1]


def test_histogram_grid_reads_its_threshold_lines_back_from_the_axes(tmp_path):
    panels = [
        {"title": "a", "histogram": {"edges": [0, 1, 2], "counts": [3, 4]},
         "thresholds": [{"side": "min", "value": 0.5, "share_beyond": 0.25}]},
        {"title": "b", "histogram": {"edges": [], "counts": []}},
    ]  # fmt: skip
    drawn = histogram_grid(str(tmp_path / "grid.png"), panels)["panels"]
    assert {title: p["thresholds"] for title, p in drawn.items()} == {"a": [0.5], "b": []}
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")).astype(int)
    red = np.array([int(THRESHOLD_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels - red).sum(axis=2) < 30).sum() > 50  # the dashed line is in the picture


def test_caption_statistics_match_the_manifest(curated):
    out, _, report = curated
    clips = manifest(out, "clips")
    captioned = clips[clips["caption.summary"].notna()]
    c = report["captions"]
    assert c["counts"]["captioned"] == len(captioned) == clips.kept.sum() >= 4
    per_caption = [
        len(words(row["caption.summary"])) + sum(len(words(s["text"])) for s in row["caption.segments"])
        for _, row in captioned.iterrows()
    ]
    assert c["distributions"]["words_per_caption"]["mean"] == pytest.approx(np.mean(per_caption))
    segments = [len(s) for s in captioned["caption.segments"]]
    assert c["distributions"]["segments_per_clip"]["mean"] == pytest.approx(np.mean(segments))
    coverage = [
        sum(min(s["end_s"], d) - s["start_s"] for s in segs) / d
        for segs, d in zip(captioned["caption.segments"], captioned.duration_s, strict=True)
    ]
    assert c["distributions"]["coverage"]["mean"] == pytest.approx(np.mean(coverage))
    # every clip has the one stand-in caption: one group of exact duplicates holding all of them
    assert c["duplicates"]["exact"]["groups"] == 1 and c["duplicates"]["exact"]["clips"] == len(captioned)
    assert c["boilerplate"]["top_openings"][0] == {"opening": "a stand in", "count": len(captioned)}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _span(times: np.ndarray, start: float, end: float) -> np.ndarray:
    """The frames in [start, end), or else the one nearest the span's middle (the report's rule)."""
    inside = np.flatnonzero((times >= start) & (times < end))
    return inside if len(inside) else np.array([np.argmin(np.abs(times - (start + end) / 2))])


def test_alignment_matches_similarities_recomputed_from_the_clips_in_the_shards(curated):
    """Every sampled clip's frames decoded from its shard and embedded with the run's CLIP, its caption
    read from its record, and the report's similarities, shuffled baseline, margins and temporal check
    recomputed from those embeddings with numpy. (Every clip here has the one stand-in caption, so a
    moved caption differs from the clip's own only in its times; `test_alignment` proves the baseline
    with captions that differ.)"""
    out, run, report = curated
    a = report["alignment"]
    kept = int(manifest(out, "clips").kept.sum())
    assert a["status"] == "ok" and a["model"] == "reelmill-tiny-vit"
    assert a["sample"]["aligned"] == a["sample"]["captioned_clips"] == kept
    # fewer clips than a gallery holds: the worst-aligned gallery lists every aligned clip's numbers
    rows = {c["key"]: c["alignment"] for c in report["examples"]["worst_aligned"]}
    assert len(rows) == kept <= report["settings"]["examples"]
    settings = ReportConfig(**report["settings"])
    aligner = CaptionAligner(settings.clip_config(run["config"]))
    samples = {
        s["__key__"]: s
        for shard in sorted((out / "shards").glob("*.tar"))
        for s in wds.WebDataset(str(shard), shardshuffle=False)
    }
    frames = {key: clip_frames(key, samples[key]["mp4"], settings) for key in rows}
    captions = {key: json.loads(samples[key]["json"])["caption"] for key in rows}
    images = {key: aligner.embed_frames(f.frames) for key, f in frames.items()}
    text = {t: aligner.embed_texts([t])[0] for c in captions.values() for t in [c["summary"]]}
    text |= {s["text"]: aligner.embed_texts([s["text"]])[0] for c in captions.values() for s in c["segments"]}

    def similarities(key: str, caption: dict, scale: float = 1.0) -> tuple[float, list[float]]:
        """(summary, per segment) of `caption` on clip `key`'s frames, its times multiplied by `scale`."""
        im, times = images[key], frames[key].timestamps
        segments = [
            float(
                _unit(im[_span(times, s["start_s"] * scale, s["end_s"] * scale)].mean(axis=0))
                @ text[s["text"]]
            )
            for s in caption["segments"]
        ]
        return float(_unit(im.mean(axis=0)) @ text[caption["summary"]]), segments

    baseline_of = {key: row["baseline_clip"] for key, row in rows.items()}
    assert sorted(baseline_of.values()) == sorted(rows) and all(b != k for k, b in baseline_of.items())
    own, shuffled, best = {}, {}, []
    for key, row in rows.items():
        own[key] = similarities(key, captions[key])
        other = baseline_of[key]  # its caption moved onto this clip, stretched to this clip's length
        shuffled[key] = similarities(key, captions[other], frames[key].duration_s / frames[other].duration_s)
        assert row["summary"] == pytest.approx(own[key][0], abs=1e-5)
        assert row["segments"] == pytest.approx(own[key][1], abs=1e-5)
        assert row["baseline"] == pytest.approx(shuffled[key][0], abs=1e-5)
        assert row["margin"] == pytest.approx(own[key][0] - shuffled[key][0], abs=1e-5)
        times = frames[key].timestamps
        spans = [
            _unit(images[key][_span(times, s["start_s"], s["end_s"])].mean(axis=0))
            for s in captions[key]["segments"]
        ]
        matrix = np.stack([text[s["text"]] for s in captions[key]["segments"]]) @ np.stack(spans).T
        best += [int(np.argmax(r)) == i for i, r in enumerate(matrix)]
    expected = {
        "summary": ([v[0] for v in own.values()], [v[0] for v in shuffled.values()]),
        "segments": ([x for v in own.values() for x in v[1]], [x for v in shuffled.values() for x in v[1]]),
    }
    for part, (mine, moved) in expected.items():
        assert a[part]["mean"] == pytest.approx(np.mean(mine), abs=1e-5), part
        assert a[part]["shuffled_mean"] == pytest.approx(np.mean(moved), abs=1e-5), part
        assert a[part]["margin"] == pytest.approx(np.mean(mine) - np.mean(moved), abs=1e-5), part
        assert sorted(a["distributions"][part]["own"]) == pytest.approx(sorted(mine), abs=1e-5), part
        assert sorted(a["distributions"][part]["shuffled"]) == pytest.approx(sorted(moved), abs=1e-5), part
    assert a["temporal"]["segments_checked"] == len(best) == 2 * kept  # two segments per clip
    assert a["temporal"]["own_span_best_share"] == pytest.approx(np.mean(best))


def test_galleries_show_sheets_and_point_into_the_shards(curated):
    out, _, report = curated
    examples = report["examples"]
    worst = [c["alignment"]["segment_mean"] for c in examples["worst_aligned"]]
    assert worst == sorted(worst) and len(worst) == min(6, len(report["examples"]["random"]) or 6)
    assert len(examples["longest_captions"]) >= 4
    for gallery in examples.values():
        for clip in gallery:
            sheet = out / "report" / clip["sheet"]
            assert sheet.stat().st_size > 1000 and clip["sheet_times"] == sorted(clip["sheet_times"])
            assert clip["sheet_times"][-1] < clip["duration_s"]
            keys = [
                s["__key__"] for s in wds.WebDataset(str(out / "shards" / clip["shard"]), shardshuffle=False)
            ]
            assert clip["key"] in keys


def test_camera_table_counts_each_label_as_the_manifest_does_and_shows_kept_examples(curated):
    out, _, report = curated
    clips = manifest(out, "clips")
    labelled = clips.dropna(subset=["camera.label"])
    cam = report["camera"]
    assert {r["label"]: r["clips"] for r in cam["labels"]} == labelled[
        "camera.label"
    ].value_counts().to_dict()
    kept = labelled[labelled.kept]
    assert {r["label"]: r["kept"] for r in cam["labels"]} == {
        label: int((kept["camera.label"] == label).sum()) for label in labelled["camera.label"].unique()
    }
    for row in cam["labels"]:
        mine = labelled[labelled["camera.label"] == row["label"]]
        assert row["hours"] == pytest.approx(mine.duration_s.sum() / 3600)
        assert row["mean_pan_px"] == pytest.approx(mine["camera.pan_px"].mean())
    assert cam["labelled"] == len(labelled) >= 3
    assert cam["examples"], "a kept clip with a label has an example"
    by_id = clips.set_index("clip_id")
    for label, examples in cam["examples"].items():
        assert 1 <= len(examples) <= 2 == report["settings"]["camera_examples"]
        for clip in examples:
            assert by_id.loc[clip["clip_id"], "camera.label"] == label and by_id.loc[clip["clip_id"], "kept"]
            assert (out / "report" / clip["sheet"]).stat().st_size > 1000


def test_the_page_renders_in_chromium_with_every_section_and_image(curated, tmp_path):
    out, _, report = curated
    page = render_page(out / "report" / "index.html", tmp_path / "page.png", 1366, 4000)
    assert page.ok, (page.broken_images, page.empty_sections)
    assert page.sections == SECTIONS
    assert page.screenshot_size == (1366, 4000)
    html = (out / "report" / "index.html").read_text()
    header = html.split("<nav>")[0]  # the link sits in the header, before the contents
    assert '<a class="browse" href="clips.html">Browse every clip (kept and dropped)' in header
    assert f"{report['alignment']['sample']['aligned']} clips aligned" in html
    for clip in report["examples"]["random"]:
        assert f'href="../shards/{clip["shard"]}"' in html and clip["key"] in html


def test_report_command_rebuilds_with_a_smaller_sample(curated_copy):
    out = curated_copy
    done = subprocess.run(
        [REELMILL, "report", str(out), "--max-clips", "3", "--set", "report.examples=2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["settings"]["max_clips"] == 3 and report["alignment"]["sample"]["aligned"] == 3
    assert len(report["examples"]["random"]) == 2 and len(report["examples"]["worst_aligned"]) == 2
    assert "3 clips aligned" in (out / "report" / "index.html").read_text()


def _report_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "report").rglob("*")}


def test_report_command_refuses_what_is_not_a_run_and_a_setting_outside_report(curated, tmp_path):
    done = subprocess.run([REELMILL, "report", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and f"{tmp_path} holds no run" in done.stderr
    out = curated[0]  # a run: the override is what is refused, before the report is touched
    before = _report_files(out)
    done = subprocess.run(
        [REELMILL, "report", str(out), "--set", "max_clips=3"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert "--set 'max_clips=3': report takes report.KEY=VALUE only" in done.stderr
    assert _report_files(out) == before


def test_a_run_with_nothing_kept_still_gets_a_full_page(ray_local, videos, tmp_path):
    out = tmp_path / "out"
    cfg = config.load(
        CurateJobConfig, "curate", "default", ["scoring.aesthetic.enabled=false", "captioning.enabled=false"]
    )
    run_curate([str(videos / "broken.mp4")], str(out), cfg)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["funnel"]["probe_errors"] == {"truncated": 1} and report["funnel"]["kept_clips"] == 0
    assert report["alignment"]["status"] == "skipped"
    clips = report["funnel"]["plot"][1]
    assert clips["values"] == [0, 0] and clips["ticks"] == [0, 1]  # empty stages still get a readable axis
    page = render_page(out / "report" / "index.html", tmp_path / "page.png", 1280, 2000)
    assert page.ok and page.sections == SECTIONS


def test_report_settings_do_not_block_a_resume(curated, curated_copy, videos, tiny_vlm, tiny_aesthetic):
    """curate run again over the module's run (a copy of it) with other report settings: every task is
    done already, nothing in the shards, manifests or markers is rewritten (the shard index is merged
    again from the markers, naming the copy), and the report is rebuilt with the new settings."""
    out, (_, first, _) = curated_copy, curated
    index = out / "shards" / "index.json"

    def written() -> dict[str, bytes]:
        return {
            str(p.relative_to(out)): p.read_bytes()
            for part in ("shards", "manifest", "_markers")
            for p in (out / part).rglob("*")
            if p.is_file() and p != index
        }

    before, index_before = written(), json.loads(index.read_text())
    cfg = curate_config(tiny_vlm, tiny_aesthetic, "report.max_clips=3", "report.examples=2")
    rerun = run_curate([str(videos)], str(out), cfg)
    assert rerun["tasks"] == {"total": 2, "run_now": 0, "skipped_done": 2, "failed": 0, "redone": {}}
    assert written() == before and rerun["counts"] == first["counts"]
    assert json.loads(index.read_text()) == index_before | {"name": str(out)}
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["settings"]["max_clips"] == 3 and report["alignment"]["sample"]["aligned"] == 3


@pytest.fixture(scope="module")
def other_vlm(tmp_path_factory) -> str:
    path = build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-vlm-other"), answers=(OTHER_ANSWER,))
    fit_answer(path, answer=OTHER_ANSWER)
    return path


def test_compare_lists_both_runs_and_the_most_different_captions(curated_copy, other_vlm, tmp_path):
    out = curated_copy
    other = tmp_path / "recaptioned"
    cfg = config.load(RecaptionConfig, "recaption", "default", caption_overrides(other_vlm))
    run_recaption([str(out)], str(other), cfg)
    kept = int(manifest(out, "clips").kept.sum())
    recaptioned = json.loads((other / "report" / "report.json").read_text())  # built at the end of the job
    f = recaptioned["funnel"]
    assert (
        f["job"] == "recaption" and f["samples"] == f["selected"] == f["captioned"] == f["kept_clips"] == kept
    )
    assert recaptioned["alignment"]["status"] == "skipped"  # no CLIP model named for a recaption here
    shards = manifest(other, "shards")
    assert [(p["unit"], p["values"]) for p in f["plot"][:2]] == [
        ("shards", [len(shards), (shards.status == "ok").sum()]),
        ("clips", [kept] * 4),
    ]
    done = subprocess.run(
        [REELMILL, "report", str(out), "--compare", str(other)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report" / "report.json").read_text())
    cmp = report["compare"]
    assert cmp["other"]["output"] == str(other) and cmp["other"]["caption_model"] == other_vlm
    d = cmp["captions"]
    assert d["compared"] == kept and d["identical_share"] == 0
    assert len(d["most_different"]) == min(6, kept)
    for pair in d["most_different"]:
        assert pair["this"]["summary"] == "A stand-in caption written by a tiny test model."
        assert pair["other"]["summary"] == "Another tiny model gives this different caption."
        assert 0 < pair["difference"] <= 1
    metrics = {m["metric"]: m for m in cmp["metrics"]}
    words_mean = metrics["captions.distributions.words_per_caption.mean"]
    assert words_mean["this"] == report["captions"]["distributions"]["words_per_caption"]["mean"]
    other_words = len(
        words(OTHER_ANSWER.replace("Summary:", "").replace("0.0-1.5s:", "").replace("1.5-2.0s:", ""))
    )
    assert words_mean["other"] == pytest.approx(other_words)
    margin = metrics["alignment.segments.margin"]  # both runs scored with this run's CLIP model
    assert margin["this"] is not None and margin["other"] is not None
    page = render_page(out / "report" / "index.html", tmp_path / "page.png", 1366, 3000)
    assert page.ok and page.sections == [*SECTIONS, "compare"]


def test_the_cards_tar_line_is_shell_quoted_for_any_key():
    import html
    import shlex

    from captioning.report.page import _clip_card

    key = "k'; touch pwned; echo '"
    clip = {
        "key": key, "shard": "shard $(id).tar", "duration_s": 2.0, "words": 3, "scores": {},
        "caption": {"summary": "s", "segments": []}, "sheet": None,
    }  # fmt: skip
    line = html.unescape(_clip_card(clip).split("pull it: <code>")[1].split("</code>")[0])
    assert shlex.split(line) == [
        "tar",
        "-xf",
        "shards/shard $(id).tar",
        f"{key}.mp4",
        f"{key}.json",
        f"{key}.txt",
    ]


@pytest.fixture(scope="module")
def score_only(ray_local, videos, tiny_aesthetic, tmp_path_factory):
    """A score-only run of the same videos (nothing captioned), then `reelmill dedup` on it and its report
    rebuilt: a separate OUT, so the shared one stays as its tests expect."""
    from jobs.cli import main

    out = tmp_path_factory.mktemp("report-score-only") / "out"
    overrides = [
        *model_overrides(tiny_aesthetic),
        RULES,
        "filters.mode=score-only",
        "captioning.enabled=false",
    ]
    run_curate([str(videos)], str(out), config.load(CurateJobConfig, "curate", "default", overrides))
    assert main(["dedup", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    return out, json.loads((out / "report" / "report.json").read_text())


def would_drop(clips: pd.DataFrame) -> pd.Series:
    """The first of RULES each kept clip fails (None: passes), spelled as the filter spells reasons."""
    checks = [
        ("brightness<0.08", clips["scores.brightness"] < 0.08),
        ("motion<0.0012", clips["scores.motion"] < 0.0012),
        ("motion>0.1", clips["scores.motion"] > 0.1),
        ("sharpness<20", clips["scores.sharpness"] < 20),
    ]  # comparisons with a null are False: a missing score passes, as in the filter
    reason = pd.Series([None] * len(clips), index=clips.index, dtype=object)
    for name, failed in reversed(checks):
        reason[failed.fillna(False).to_numpy(bool)] = name
    reason[~clips.kept.to_numpy(bool)] = None
    return reason


def test_a_score_only_run_shows_what_its_rules_would_drop(score_only):
    out, report = score_only
    clips = clip_rows(out)
    reason = would_drop(clips)
    f = report["funnel"]
    assert f["would_drop"] == reason.dropna().value_counts().to_dict() and len(reason.dropna()) >= 1
    assert f["drops"] == clips[~clips.kept].drop_reason.value_counts().to_dict()  # durations still drop
    passing = clips.kept & reason.isna()
    drawn = dict(zip(f["plot"][1]["labels"], f["plot"][1]["values"], strict=True))
    assert drawn["pass filters.rules (score-only)"] == passing.sum() < clips.kept.sum()
    motion = report["scores"]["motion"]
    edges = np.asarray(motion["histogram"]["edges"])
    values = plotted_values(clips, "motion")
    state = np.where(~clips.kept, "dropped", np.where(reason.isna(), "kept", "would_drop"))
    state = pd.Series(state, index=clips.index).loc[values.index]
    for series in ("kept", "would_drop", "dropped"):
        expected = np.histogram(values[state == series], bins=edges)[0].tolist()
        assert motion["histogram"]["series"][series] == expected == motion["plot"]["series"][series], series
    low = next(t for t in motion["thresholds"] if t["side"] == "min")
    assert low["would_drop_by_rule"] == (reason == "motion<0.0012").sum() and low["dropped_by_rule"] == 0


def test_the_duplicates_section_counts_what_dedup_marked(score_only, tmp_path):
    out, report = score_only
    dedup, clips = manifest(out, "dedup"), clip_rows(out)
    d = report["dedup"]
    duplicates = dedup[dedup.duplicate_of.notna()]
    assert d["checked_clips"] == len(dedup) == clips.kept.sum()
    assert d["duplicates"] == len(duplicates) and d["kept_after_dedup"] == len(dedup) - len(duplicates)
    seconds = clips[clips.clip_id.isin(duplicates.clip_id)].duration_s.sum()
    assert d["hours_duplicates"] == pytest.approx(seconds / 3600)
    assert d["hours_after_dedup"] == pytest.approx((clips[clips.kept].duration_s.sum() - seconds) / 3600)
    lowest = duplicates.sort_values("similarity").similarity.head(10).tolist()
    assert [p["similarity"] for p in d["borderline_pairs"]] == pytest.approx(lowest)
    assert report["funnel"]["panels"][1]["stages"][-1] == ["kept after dedup", d["kept_after_dedup"]]
    page = render_page(out / "report" / "index.html", tmp_path / "page.png", 1366, 3000)
    assert page.ok, (page.broken_images, page.empty_sections)
    assert page.sections == [*SECTIONS[:5], "dedup", *SECTIONS[5:]]
    html = (out / "report" / "index.html").read_text()
    assert "What filters.rules would drop (score-only run)" in html
    assert f'<td class="n">{format_hours(d["hours_after_dedup"])}</td>' in html
