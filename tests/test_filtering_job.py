"""Scoring and filtering inside `curate`: still, dark and text-overlay clips dropped by their rules,
score-only keeps everything, dropped clips kept for inspection, embeddings written, run.json summaries."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from conftest import model_overrides
from curation import config, synthetic
from curation.layout import OutputLayout
from curation.synthetic import Shot, VideoSpec
from jobs.curate import run_curate
from jobs.job_configs import CurateJobConfig

STILL = "testsrc2=size={s}:rate={r},trim=end_frame=1,loop=loop=-1:size=1,setpts=N/({r})/TB"
DARK = "color=c=0x060606:size={s}:rate={r},noise=alls=6:allf=t"
# a "subscribe" overlay; drawtext takes fontconfig's default font (testsrc2's own timecode is text too:
# about 0.06 of a 320x240 frame, this about 0.15)
OVERLAY = (
    "mandelbrot=size={s}:rate={r},"
    "drawtext=text=SUBSCRIBE:fontsize=48:fontcolor=white:borderw=2:x=(w-tw)/2:y=(h-th)/2"
)


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scored")
    for name, source in {"moving": "testsrc2", "still": STILL, "dark": DARK, "overlay": OVERLAY}.items():
        synthetic.make_video(d / f"{name}.mp4", VideoSpec([Shot(source, 100)], 320, 240))
    return d


def curate(clips_dir, out, models, *overrides):
    # random-weight aesthetic scores mean nothing: that rule is left out, as the demo does
    rules = (
        "filters.rules=[{score: brightness, min: 0.08}, {score: motion, min: 0.0012}, "
        "{score: sharpness, min: 20}, {score: text_area, max: 0.1}]"
    )
    cfg = config.load(
        CurateJobConfig,
        "curate",
        "default",
        [*model_overrides(models), "captioning.enabled=false", rules, *overrides],
    )
    return run_curate([str(clips_dir)], str(out), cfg)


def by_source(layout: OutputLayout) -> dict[str, dict]:
    rows = layout.read_manifest(layout.clips_manifest).to_pylist()
    return {r["source"].rsplit("/", 1)[-1].removesuffix(".mp4"): r for r in rows}


def test_rules_drop_still_and_dark_clips_and_keep_them_for_inspection(
    ray_local, clips_dir, tmp_path, tiny_aesthetic
):
    out = tmp_path / "out"
    run = curate(clips_dir, out, tiny_aesthetic, "shards.keep_dropped=true")
    assert json.loads((out / "run.json").read_text())["models"] == "random-weights"  # the tiny CLIP and head
    layout = OutputLayout(str(out))
    rows = by_source(layout)
    assert rows["moving"]["kept"] and rows["moving"]["drop_reason"] is None
    assert (rows["still"]["kept"], rows["still"]["drop_reason"]) == (False, "motion<0.0012")
    assert (rows["dark"]["kept"], rows["dark"]["drop_reason"]) == (False, "brightness<0.08")
    assert (rows["overlay"]["kept"], rows["overlay"]["drop_reason"]) == (False, "text_area>0.1")
    assert rows["moving"]["scores"]["text_area"] < 0.1 < rows["overlay"]["scores"]["text_area"]
    assert rows["overlay"]["scores"]["text_boxes"] >= 1 and rows["overlay"]["text"] is None  # not read
    assert rows["still"]["scores"]["motion"] < 0.0012 < rows["moving"]["scores"]["motion"]
    for row in rows.values():  # dropped clips keep every score
        assert all(row["scores"][n] is not None for n in ("motion", "sharpness", "brightness", "aesthetic"))

    kept = {s["__key__"] for url in layout.shard_files() for s in wds.WebDataset(url, shardshuffle=False)}
    assert kept == {rows["moving"]["clip_id"]}
    dropped_shards = sorted(str(p) for p in (out / "dropped").glob("*.tar"))
    dropped = {
        s["__key__"]: json.loads(s["json"])
        for url in dropped_shards
        for s in wds.WebDataset(url, shardshuffle=False)
    }
    assert {r["drop_reason"] for r in dropped.values()} == {
        "motion<0.0012",
        "brightness<0.08",
        "text_area>0.1",
    }
    # a held frame: the camera does not move, over the clip and in each of its 2 s windows
    still = rows["still"]
    assert still["camera"]["label"] == "static" and dropped[still["clip_id"]]["camera"]["label"] == "static"
    assert [w["label"] for w in still["camera"]["windows"]] == ["static"] * math.ceil(still["duration_s"] / 2)

    assert run["filters"]["drops_by_rule"] == {
        "brightness<0.08": 1, "motion<0.0012": 1, "sharpness<20": 0, "text_area>0.1": 1,
    }  # fmt: skip
    assert run["scores"]["motion"]["count"] == 4 and run["scores"]["text_area"]["count"] == 4
    assert run["scores"]["motion"]["min"] == pytest.approx(min(r["scores"]["motion"] for r in rows.values()))
    assert run["scores"]["motion"]["max"] == pytest.approx(rows["moving"]["scores"]["motion"])

    embeddings = pq.read_table(out / "manifest" / "embeddings").to_pylist()
    assert {e["clip_id"] for e in embeddings} == {r["clip_id"] for r in rows.values()}
    vector = np.asarray(embeddings[0]["embedding"], dtype=np.float32)
    assert vector.shape == (768,) and abs(np.linalg.norm(vector) - 1) < 1e-2
    assert len(embeddings[0]["frame_embeddings"]) == 3


def test_score_only_records_everything_and_drops_nothing(ray_local, clips_dir, tmp_path, tiny_aesthetic):
    out = tmp_path / "out"
    # text detection in an actor pool of its own (the GPU's way) here, in the CPU scoring task above
    run = curate(clips_dir, out, tiny_aesthetic, "filters.mode=score-only", "resources.text_actors=1")
    rows = by_source(OutputLayout(str(out)))
    assert all(r["kept"] for r in rows.values())
    assert run["counts"]["clips_kept"] == 4 and sum(run["filters"]["drops_by_rule"].values()) == 0
    assert rows["dark"]["scores"]["brightness"] < 0.08
    assert rows["overlay"]["scores"]["text_area"] > 0.1 > rows["dark"]["scores"]["text_area"]
    assert run["timings"]["stage_task_s"]["text"] > 0
