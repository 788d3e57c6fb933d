"""A rerun trusts a task's marker only when the files it names are intact; the others are redone."""

import hashlib
import json
import os
import shutil

import pytest

from conftest import shard_samples
from curation import config, synthetic
from curation.layout import OutputLayout
from curation.resume import trusted_markers
from curation.synthetic import VideoSpec, shot_list
from jobs.curate import run_curate
from jobs.job_configs import NOT_IN_FINGERPRINT, CurateJobConfig

NO_MODEL = ["scoring.aesthetic.enabled=false", "captioning.enabled=false", "filters.mode=score-only"]


def load(*overrides: str) -> CurateJobConfig:
    return config.load(
        CurateJobConfig, "curate", "default", ["input.videos_per_task=1", *NO_MODEL, *overrides]
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume-videos")
    for i in range(4):
        synthetic.make_video(d / f"v{i}.mp4", VideoSpec(shot_list([60 + 5 * i, 55])[i % 2 :], 192, 108))
    return d


@pytest.fixture(scope="module")
def first_run(ray_local, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "out"
    run = run_curate([str(videos)], str(out), load())
    assert run["tasks"]["run_now"] == 4
    return out, run


@pytest.fixture
def copy_of_run(first_run, tmp_path):
    """The first run's OUT, copied, so each test damages its own."""
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    return out


def _markers(out) -> dict[int, dict]:
    return {int(p.name[5:-5]): json.loads(p.read_text()) for p in (out / "_markers").glob("task-*.json")}


def _rows(layout: OutputLayout, which: str, key: str) -> dict[str, dict]:
    """A manifest's rows by `key`, less `processing_s` (the wall time a video took, not a result)."""
    rows = layout.read_manifest(getattr(layout, which)).to_pylist()
    return {row[key]: {k: v for k, v in row.items() if k != "processing_s"} for row in rows}


def _fingerprint() -> str:
    return config.fingerprint(load(), ignore=NOT_IN_FINGERPRINT)


def test_markers_name_every_file_of_their_task_with_its_size_and_checksum(first_run):
    out, _ = first_run
    named = set()
    for task_id, marker in _markers(out).items():
        for rel, info in marker["outputs"].items():
            data = (out / rel).read_bytes()
            assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            named.add(rel)
        assert f"manifest/clips/task-{task_id:06d}.parquet" in marker["outputs"]
    written = {
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and p.parts[len(out.parts)] in ("shards", "manifest")
    }
    assert named == written - {"shards/index.json"}


def test_a_truncated_shard_and_a_corrupt_marker_redo_exactly_their_two_tasks(copy_of_run, videos, first_run):
    out = copy_of_run
    markers = _markers(out)
    with_shards = sorted(tid for tid, m in markers.items() if m["shards"])
    truncated, corrupt = with_shards[0], with_shards[-1]
    shard = out / "shards" / markers[truncated]["shards"][0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (out / "_markers" / f"task-{corrupt:06d}.json").write_text('{"task_id": 3, "shar')
    logged = []

    rerun = run_curate([str(videos)], str(out), load(), log=logged.append)

    assert rerun["tasks"]["run_now"] == 2
    assert set(rerun["tasks"]["redone"]) == {truncated, corrupt}
    assert (
        "is" in rerun["tasks"]["redone"][truncated] and "marker says" in rerun["tasks"]["redone"][truncated]
    )
    assert "does not parse" in rerun["tasks"]["redone"][corrupt]
    assert any(f"task {truncated} is redone" in line for line in logged)
    assert rerun["counts"] == first_run[1]["counts"]
    # the redone tasks wrote what the first run did: manifest rows, shard records and clips
    mine, theirs = OutputLayout(str(out)), OutputLayout(str(first_run[0]))
    for which, key in (("videos_manifest", "uri"), ("clips_manifest", "clip_id")):
        assert _rows(mine, which, key) == _rows(theirs, which, key), which
    samples, first_samples = shard_samples(mine), shard_samples(theirs)
    assert set(samples) == set(first_samples) and samples
    for key, sample in samples.items():
        assert json.loads(sample["json"]) == json.loads(first_samples[key]["json"]), key
        assert sample["mp4"] == first_samples[key]["mp4"], key
    assert trusted_markers(str(out), _fingerprint()).redo == {}


def test_a_missing_manifest_part_makes_its_task_unfinished(copy_of_run):
    os.remove(copy_of_run / "manifest" / "videos" / "task-000001.parquet")
    resume = trusted_markers(str(copy_of_run), _fingerprint())
    assert resume.redo == {1: "manifest/videos/task-000001.parquet is missing"}
    assert sorted(resume.done) == [0, 2, 3]


def test_a_same_size_corruption_is_caught_by_checksum_verification_only(copy_of_run):
    marker = _markers(copy_of_run)[2]
    rel = next(r for r in marker["outputs"] if r.startswith("manifest/clips/"))
    path = copy_of_run / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert trusted_markers(str(copy_of_run), _fingerprint(), verify="size").redo == {}
    by_checksum = trusted_markers(str(copy_of_run), _fingerprint(), verify="checksum")
    assert by_checksum.redo == {2: f"{rel} does not match the checksum its marker records"}


def test_a_marker_from_another_config_or_with_items_to_retry_is_not_trusted(copy_of_run):
    path = copy_of_run / "_markers" / "task-000000.json"
    marker = json.loads(path.read_text())
    path.write_text(json.dumps(marker | {"transient_exhausted": 1}))
    assert 0 not in trusted_markers(str(copy_of_run), _fingerprint()).done
    assert trusted_markers(str(copy_of_run), "another-config").done == {}
