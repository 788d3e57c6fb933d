"""Captions end to end on a local Ray: `curate` with the captioning stage, and `recaption` over shards
(ours and foreign ones), with the tiny Qwen2-VL generating for real and the real parser reading it."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from captioning.parsing import format_training_caption, parse_caption
from captioning.tiny_vlm import STAND_IN_ANSWER
from conftest import caption_overrides, shard_samples
from curation import config, synthetic
from curation.layout import OutputLayout
from curation.synthetic import VideoSpec, shot_list
from jobs.curate import run_curate
from jobs.job_configs import CurateJobConfig, RecaptionConfig
from jobs.recaption import run_recaption

REELMILL = str(Path(sys.executable).with_name("reelmill"))
CURATE = ["scoring.aesthetic.enabled=false", "filters.mode=score-only", "input.videos_per_task=1"]


def curate_cfg(model: str, *overrides: str) -> CurateJobConfig:
    return config.load(CurateJobConfig, "curate", "default", [*CURATE, *caption_overrides(model), *overrides])


def recaption_cfg(model: str, *overrides: str) -> RecaptionConfig:
    return config.load(RecaptionConfig, "recaption", "default", [*caption_overrides(model), *overrides])


@pytest.fixture(scope="module")
def videos(tmp_path_factory, multi_shot_video):
    d = tmp_path_factory.mktemp("videos")
    (d / multi_shot_video.name).symlink_to(multi_shot_video)
    synthetic.make_video(d / "second.mp4", VideoSpec(shot_list([70, 80]), 256, 144))
    return d


@pytest.fixture(scope="module")
def curated(ray_local, videos, tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated") / "out"
    return out, run_curate([str(videos)], str(out), curate_cfg(tiny_vlm))


def test_curate_captions_every_kept_clip(curated, tiny_vlm):
    out, run = curated
    layout = OutputLayout(str(out))
    samples = shard_samples(layout)
    clips = {r["clip_id"]: r for r in layout.read_manifest(layout.clips_manifest).to_pylist()}
    kept = [c for c in clips.values() if c["kept"]]
    assert len(samples) == len(kept) == run["counts"]["clips_kept"] >= 5
    for key, sample in samples.items():
        record = json.loads(sample["json"])
        caption = record["caption"]
        assert caption["model"] == tiny_vlm and caption["prompt_id"] == "dense_v2"
        parsed = parse_caption(STAND_IN_ANSWER, record["duration_s"])
        assert caption["summary"] == parsed.summary
        assert sample["txt"].decode() == format_training_caption(parsed)
        assert record["caption_metrics"]["num_segments"] == 2
        assert clips[key]["caption"]["summary"] == parsed.summary
        assert [s["text"] for s in clips[key]["caption"]["segments"]] == [s.text for s in parsed.segments]
    captioning = run["captioning"]
    assert captioning["captioned"] == captioning["clips"] == len(kept) and captioning["failed"] == {}
    assert captioning["new_tokens"] > 20 * len(kept)
    (actor,) = captioning["actors"]
    assert actor["device"] == "cpu" and actor["clips"] == len(kept) and actor["tokens_per_s"] > 0


def test_curate_drops_or_keeps_clips_whose_captions_fail(ray_local, videos, tiny_vlm_untrained, tmp_path):
    short = ["captioning.vlm.max_new_tokens=16", "captioning.attempts=2"]
    dropped = run_curate(
        [str(videos / "second.mp4")], str(tmp_path / "drop"), curate_cfg(tiny_vlm_untrained, *short)
    )
    assert dropped["counts"]["clips_kept"] == 0 and dropped["counts"]["drop_reasons"]["caption_failed"] >= 2
    layout = OutputLayout(str(tmp_path / "drop"))
    failed = [
        r
        for r in layout.read_manifest(layout.clips_manifest).to_pylist()
        if r["drop_reason"] == "caption_failed"
    ]
    assert all("after 2 attempts" in r["errors"][0]["message"] for r in failed)
    assert sum(dropped["captioning"]["failed"].values()) == len(failed)

    kept = run_curate(
        [str(videos / "second.mp4")],
        str(tmp_path / "keep"),
        curate_cfg(tiny_vlm_untrained, *short, "captioning.on_failure=keep"),
    )
    samples = shard_samples(OutputLayout(str(tmp_path / "keep")))
    assert len(samples) == kept["counts"]["clips_kept"] == len(failed)
    for sample in samples.values():
        record = json.loads(sample["json"])
        assert record["caption"] is None and record["errors"][0]["stage"] == "caption"
        assert "txt" not in sample


def _foreign_shard(path: Path, clip: bytes) -> Path:
    """A shard from elsewhere: upper-case video member, a KEY.txt caption, a class label, no json."""
    with tarfile.open(path, "w") as tar:
        for key, members in (
            ("ext-000", {"MP4": clip, "txt": b"a man walks", "cls": b"3"}),
            ("ext-001", {"cls": b"1"}),  # no video: passed through, recorded
        ):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def recaptioned(curated, tiny_vlm, tmp_path_factory):
    out, _ = curated
    foreign = tmp_path_factory.mktemp("foreign")
    first = next(iter(shard_samples(OutputLayout(str(out))).values()))
    _foreign_shard(foreign / "other.tar", first["mp4"])
    broken = foreign / "broken.tar"
    broken.write_bytes(b"\x00" * 100 + b"not a tar")
    target = tmp_path_factory.mktemp("recaptioned") / "out"
    run = run_recaption([str(out), str(foreign / "{other,broken}.tar")], str(target), recaption_cfg(tiny_vlm))
    return out, target, run


def test_recaption_keeps_every_member_and_field_and_adds_the_new_caption(recaptioned, tiny_vlm):
    source, target, run = recaptioned
    assert json.loads((target / "run.json").read_text())["models"] == "random-weights"  # the tiny VLM
    before, after = shard_samples(OutputLayout(str(source))), shard_samples(OutputLayout(str(target)))
    assert set(before) | {"ext-000", "ext-001"} == set(after)
    for key, old in before.items():
        new = after[key]
        assert new["mp4"] == old["mp4"] and new["jpg"] == old["jpg"]
        old_record, new_record = json.loads(old["json"]), json.loads(new["json"])
        assert new_record["caption_prev"] == old_record["caption"]
        assert new_record["caption"]["model"] == tiny_vlm
        unchanged = set(old_record) - {"caption", "caption_metrics", "shard"}
        assert {k: new_record[k] for k in unchanged} == {k: old_record[k] for k in unchanged}
        assert new["txt"].decode() == format_training_caption(
            parse_caption(STAND_IN_ANSWER, old_record["duration_s"])
        )
    foreign = after["ext-000"]
    names = set()
    for shard in (target / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            names.update(tar.getnames())
    assert {"ext-000.MP4", "ext-000.txt", "ext-000.cls", "ext-000.json"} <= names  # member names as they were
    assert foreign["cls"] == b"3" and foreign["mp4"] == before[next(iter(before))]["mp4"]
    record = json.loads(foreign["json"])
    assert record["caption_prev"] == {"text": "a man walks"} and record["caption"]["summary"]
    assert foreign["txt"].decode().startswith("A stand-in caption")
    passthrough = after["ext-001"]
    assert (
        passthrough["cls"] == b"1"
        and "no video member" in json.loads(passthrough["json"])["errors"][0]["message"]
    )

    layout = OutputLayout(str(target))
    shards = {Path(r["uri"]).name: r for r in layout.read_manifest(layout.shards_manifest).to_pylist()}
    assert shards["broken.tar"]["status"] == "error" and "unreadable" in shards["broken.tar"]["error"]
    assert shards["other.tar"]["captioned"] == 1 and shards["other.tar"]["samples"] == 2
    rows = layout.read_manifest(layout.clips_manifest).to_pylist()
    assert len(rows) == len(after) and {r["key"] for r in rows} == set(after)
    counts = run["counts"]
    assert (
        counts["captioned"] == len(before) + 1
        and counts["shard_errors"] == 1
        and counts["caption_failed"] == 0
    )


def test_recaption_resumes_and_refuses_another_config(recaptioned, tiny_vlm):
    source, target, first = recaptioned
    again = run_recaption(
        [str(source), str(Path(first["inputs"][1]))], str(target), recaption_cfg(tiny_vlm), log=lambda _: None
    )
    assert again["tasks"]["run_now"] == 0 and again["counts"] == first["counts"]
    from jobs.curate import ResumeRefused

    with pytest.raises(ResumeRefused, match="captioning.prompt_id|captioning.attempts"):
        run_recaption(
            [str(source), first["inputs"][1]], str(target), recaption_cfg(tiny_vlm, "captioning.attempts=1")
        )


def test_recaption_limit_and_sample_caption_a_deterministic_subset(curated, tiny_vlm, tmp_path):
    source, _ = curated
    total = len(shard_samples(OutputLayout(str(source))))
    limited = run_recaption([str(source)], str(tmp_path / "limit"), recaption_cfg(tiny_vlm), limit=2)
    assert limited["counts"]["selected"] == limited["counts"]["captioned"] == 2
    assert len(shard_samples(OutputLayout(str(tmp_path / "limit")))) == 2
    sampled = run_recaption([str(source)], str(tmp_path / "sample"), recaption_cfg(tiny_vlm), sample=0.5)
    keys = set(shard_samples(OutputLayout(str(tmp_path / "sample"))))
    assert 0 < len(keys) < total and sampled["counts"]["selected"] == len(keys)
    again = run_recaption([str(source)], str(tmp_path / "sample2"), recaption_cfg(tiny_vlm), sample=0.5)
    assert set(shard_samples(OutputLayout(str(tmp_path / "sample2")))) == keys
    assert again["selection"] == {"sample": 0.5, "limit": None}


def test_recaption_cli_names_the_missing_model(curated, tmp_path):
    source, _ = curated
    cmd = [REELMILL, "recaption", "--input", str(source), "--output", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "captioning.vlm.model" in proc.stderr
    cmd = [REELMILL, "recaption", "--input", str(tmp_path / "none"), "--output", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_webdataset_reads_recaptioned_shards_as_a_training_pipeline(recaptioned):
    _, target, _ = recaptioned
    urls = [str(p) for p in sorted((target / "shards").glob("*.tar"))]
    pipeline = (
        wds.WebDataset(urls, shardshuffle=False).select(lambda s: "mp4" in s).to_tuple("mp4", "txt", "json")
    )
    texts = [txt.decode() for _, txt, _ in pipeline]
    assert len(texts) == recaptioned[2]["counts"]["captioned"]
    assert all(t.startswith("A stand-in caption") for t in texts)
