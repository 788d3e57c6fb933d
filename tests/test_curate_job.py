"""The curate job end to end on a local Ray: shards, manifests, run.json, resume, refusal, CLI errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from conftest import decode_frames, make_bad_inputs, model_overrides, shard_samples
from curation import config, synthetic
from curation.layout import OutputLayout
from curation.synthetic import VideoSpec, shot_list
from jobs.curate import ResumeRefused, check_gpus, run_curate
from jobs.job_configs import CurateJobConfig

REELMILL = str(Path(sys.executable).with_name("reelmill"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, multi_shot_video, two_shot_video):
    d = tmp_path_factory.mktemp("inputs")
    for src in (multi_shot_video, two_shot_video):
        os.symlink(src, d / src.name)
    synthetic.make_video(d / "third.mp4", VideoSpec(shot_list([80, 90]), 256, 144))
    bad = make_bad_inputs(d / "bad", two_shot_video)
    return d, bad


# These tests are about splitting and writing: every clip's scores are recorded, none filters.
SCORE_ONLY = ["filters.mode=score-only"]
NO_MODEL = ["scoring.aesthetic.enabled=false", "captioning.enabled=false", *SCORE_ONLY]


def load(*overrides: str) -> CurateJobConfig:
    return config.load(CurateJobConfig, "curate", "default", ["captioning.enabled=false", *overrides])


@pytest.fixture(scope="module")
def run(ray_local, inputs, tmp_path_factory, tiny_aesthetic):
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = load("input.videos_per_task=3", *SCORE_ONLY, *model_overrides(tiny_aesthetic))
    return out, run_curate([str(inputs[0])], str(out), cfg)


def test_every_input_and_every_candidate_clip_has_a_row(run, inputs):
    out, _ = run
    layout = OutputLayout(str(out))
    videos = layout.read_manifest(layout.videos_manifest).to_pylist()
    input_files = sorted(str(p) for p in inputs[0].rglob("*") if p.is_file() or p.is_symlink())
    assert sorted(v["uri"] for v in videos) == sorted(os.path.abspath(p) for p in input_files)
    errors = {os.path.basename(v["uri"]): v["error_code"] for v in videos if v["status"] == "error"}
    assert errors == {path.name: code for path, code in inputs[1].values()}
    rows = layout.read_manifest(layout.clips_manifest).to_pylist()
    clips = [c for c in rows if c["drop_reason"] != "transition"]
    ok = [v for v in videos if v["status"] == "ok"]
    assert sum(v["num_clips"] for v in ok) == len(clips)
    # the adaptive detector's transitions are its cuts: one where each shot after the first begins
    cuts = [c for c in rows if c["drop_reason"] == "transition"]
    assert sum(v["num_shots"] - 1 for v in ok) == sum(v["num_transitions"] for v in ok) == len(cuts)
    assert all(c["transition"] == "cut" and c["num_frames"] == 0 and not c["kept"] for c in cuts)
    dropped = [c for c in clips if not c["kept"]]
    assert dropped and all(c["drop_reason"] for c in dropped)
    assert len({c["clip_id"] for c in clips}) == len(clips)


def test_shards_match_the_manifest_both_ways(run):
    out, _ = run
    layout = OutputLayout(str(out))
    clips = layout.read_manifest(layout.clips_manifest).to_pylist()
    kept = {c["clip_id"]: c for c in clips if c["kept"]}
    samples = shard_samples(layout)
    assert set(samples) == set(kept)
    for key, sample in samples.items():
        record = json.loads(sample["json"])
        assert record["clip_id"] == key and record["kept"] is True
        assert record["caption"] is None
        assert all(record["scores"][name] is not None for name in ("motion", "sharpness", "aesthetic"))
        assert os.path.basename(sample["__url__"]) == record["shard"] == kept[key]["shard"]
        assert sample["mp4"][4:8] == b"ftyp" and sample["jpg"][:2] == b"\xff\xd8"
    names = sorted(os.path.basename(u) for u in layout.shard_files())
    assert all(
        n.startswith("shard-") and n.endswith(".tar") and len(n) == len("shard-000000-000.tar") for n in names
    )


def test_ray_data_reads_the_shards(run):
    out, _ = run
    layout = OutputLayout(str(out))
    ds = ray.data.read_webdataset(layout.shard_files())
    keys = {row["__key__"] for row in ds.iter_rows()}
    assert keys == set(shard_samples(layout))


def test_run_json(run):
    out, result = run
    written = json.loads((out / "run.json").read_text())
    assert written["counts"] == result["counts"]
    assert written["config"]["input"]["videos_per_task"] == 3
    assert {"ray", "pyarrow", "webdataset", "scenedetect", "ffmpeg"} <= set(written["versions"])
    assert written["counts"]["clips_kept"] == len(shard_samples(OutputLayout(str(out))))
    assert written["throughput"]["video_s_per_wall_s"] > 0
    assert written["counts"]["drop_reasons"]["duration<2"] >= 1
    assert "transcode_failed" not in written["counts"]["drop_reasons"]


def test_rerun_skips_done_tasks_and_changed_config_is_refused(run, inputs, tiny_aesthetic):
    out, first = run
    cfg = load("input.videos_per_task=3", *SCORE_ONLY, *model_overrides(tiny_aesthetic))
    again = run_curate([str(inputs[0])], str(out), cfg)
    assert again["tasks"]["run_now"] == 0 and again["counts"] == first["counts"]
    changed = load(
        "input.videos_per_task=3", *SCORE_ONLY, *model_overrides(tiny_aesthetic), "clips.max_clip_s=4"
    )
    with pytest.raises(ResumeRefused, match=r"clips\.max_clip_s: 10\.0 -> 4\.0"):
        run_curate([str(inputs[0])], str(out), changed)


def test_overwrite_starts_over(ray_local, inputs, tmp_path):
    out = tmp_path / "out"
    cfg = load("input.videos_per_task=8", *NO_MODEL)
    run_curate([str(inputs[0] / "two_shot.mp4")], str(out), cfg)
    changed = load("transcode.crf=30", *NO_MODEL)
    result = run_curate([str(inputs[0] / "two_shot.mp4")], str(out), changed, overwrite=True)
    assert result["tasks"]["run_now"] == 1
    assert result["counts"]["clips_kept"] == len(shard_samples(OutputLayout(str(out)))) == 2


STALE_S = 4.0
"""`lock.stale_s` of the runs killed here: their rerun waits that long for the dead job's lock to go stale."""


def _curate_cmd(inputs_dir, out) -> list[str]:
    cmd = [REELMILL, "curate", "--input", str(inputs_dir), "--output", str(out), "--videos-per-task", "1"]
    sets = [*NO_MODEL, f"lock.stale_s={STALE_S}", "lock.heartbeat_s=1"]
    return [*cmd, "--num-cpus", "2", *[arg for o in sets for arg in ("--set", o)]]


def _finished_tasks(markers: Path) -> set[str]:
    """The markers of finished tasks: a marker is written under a temporary name (`NAME.tmp-HEX`) and
    renamed, so a `task-N.json` is a whole one, and the temporaries are not counted."""
    return {p.name for p in markers.glob("task-*.json")}


VOLATILE_VIDEO_FIELDS = {"processing_s"}
"""Manifest fields that measure the run (wall time), not its result."""


def _manifest(layout: OutputLayout, which: str, key: str) -> dict[str, dict]:
    rows = layout.read_manifest(getattr(layout, which)).to_pylist()
    by_key = {row[key]: {k: v for k, v in row.items() if k not in VOLATILE_VIDEO_FIELDS} for row in rows}
    assert len(by_key) == len(rows)
    return by_key


def test_resume_after_sigkill_matches_a_clean_run(tmp_path):
    videos = tmp_path / "videos"
    n = 4  # one task per video, two at a time on 2 CPUs: the kill lands after the first
    for i in range(n):
        synthetic.make_video(
            videos / f"v{i}.mp4", VideoSpec(shot_list([70 + 5 * i, 60, 65])[i % 2 :], 320, 240)
        )
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    subprocess.run(_curate_cmd(videos, clean), check=True, capture_output=True)

    proc = subprocess.Popen(
        _curate_cmd(videos, crashed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    markers = crashed / "_markers"
    deadline = time.time() + 180
    while time.time() < deadline and not _finished_tasks(markers) and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, like a lost machine
    proc.wait()
    finished_at_kill = _finished_tasks(markers)
    assert 1 <= len(finished_at_kill) < n, f"the kill must land mid-run: {sorted(finished_at_kill)}"

    time.sleep(STALE_S)  # the killed job's lock is taken over once its heartbeat is this old
    resumed = subprocess.run(_curate_cmd(videos, crashed), check=True, capture_output=True, text=True)
    assert "taking over" in resumed.stdout
    # a worker may outlive the kill by a moment and finish the task it was in: that marker is whole and
    # trusted too; every task finished at the kill is skipped, the others are run now
    done = re.search(rf"{n} videos in {n} tasks; (\d+) done already, (\d+) to run", resumed.stdout)
    assert done, resumed.stdout[-3000:]
    skipped, run_now = int(done[1]), int(done[2])
    assert len(finished_at_kill) <= skipped < n and skipped + run_now == n
    tasks = json.loads((crashed / "run.json").read_text())["tasks"]
    assert (tasks["total"], tasks["skipped_done"], tasks["run_now"]) == (n, skipped, run_now)
    assert not tasks["redone"]

    # the result is the clean run's: every manifest row, every shard record and clip, and nothing more
    mine, theirs = OutputLayout(str(crashed)), OutputLayout(str(clean))
    for which, key in (("videos_manifest", "uri"), ("clips_manifest", "clip_id")):
        assert _manifest(mine, which, key) == _manifest(theirs, which, key), which
    samples, clean_samples = shard_samples(mine), shard_samples(theirs)
    assert set(samples) == set(clean_samples) and samples
    for key, sample in samples.items():
        expected = clean_samples[key]
        assert json.loads(sample["json"]) == json.loads(expected["json"]), key
        assert os.path.basename(sample["__url__"]) == os.path.basename(expected["__url__"])
        assert sample["jpg"] == expected["jpg"], key
        assert_same_pictures(sample["mp4"], expected["mp4"], tmp_path / "compare", key)
    assert [p for p in crashed.rglob("*") if ".tmp-" in p.name] == []


def assert_same_pictures(mp4: bytes, expected_mp4: bytes, scratch: Path, key: str) -> None:
    """The same frames, to within x264's run-to-run noise: with several encoder threads (x264 picks 3 on
    2 cores) two encodes of one input under different load can differ in their last bits (PSNR above
    60 dB; seen in 1 of 6 identical ffmpeg runs here), so the bytes are not compared."""
    scratch.mkdir(exist_ok=True)
    (scratch / "mine.mp4").write_bytes(mp4)
    (scratch / "clean.mp4").write_bytes(expected_mp4)
    mine, clean = (decode_frames(scratch / f"{n}.mp4", 160, 120) for n in ("mine", "clean"))
    assert mine.shape == clean.shape, key
    per_frame = np.abs(mine - clean).mean(axis=(1, 2, 3))
    assert per_frame.max() < 0.5, (key, int(per_frame.argmax()), float(per_frame.max()))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "clips.nope=1"], "unknown config key 'clips.nope'"),
        (["--config", "missing-preset"], "neither a YAML file nor a preset"),
    ],
)
def test_cli_reports_config_errors(tmp_path, two_shot_video, args, message):
    cmd = [REELMILL, "curate", "--input", str(two_shot_video), "--output", str(tmp_path / "o"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr


def test_cli_names_the_missing_model_setting(tmp_path, two_shot_video):
    cmd = [REELMILL, "curate", "--input", str(two_shot_video), "--output", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "scoring.aesthetic.head_weights is not set" in proc.stderr


def test_gpus_are_required_only_where_the_config_reserves_them_on_the_embedded_ray():
    cfg = config.load(CurateJobConfig, "curate", "gpu")
    local = {"address": "local", "cluster_resources": {"CPU": 2.0}}
    with pytest.raises(config.ConfigError) as err:
        check_gpus(cfg, local)
    for setting in ("scenes.num_gpus=0.1", "scoring.aesthetic.num_gpus=0.25", "captioning.num_gpus=1"):
        assert setting in str(err.value)
    check_gpus(cfg, {"address": "local", "cluster_resources": {"CPU": 2.0, "GPU": 1.0}})
    check_gpus(cfg, {"address": "ray://head:10001", "cluster_resources": {"CPU": 2.0}})  # GPU nodes may come
    off = config.load(
        CurateJobConfig, "curate", "gpu", ["scoring.aesthetic.enabled=false", "captioning.enabled=false"]
    )
    with pytest.raises(config.ConfigError, match=r"^scenes\.num_gpus=0\.1: "):
        check_gpus(off, local)
    check_gpus(config.load(CurateJobConfig, "curate", "default"), local)


def test_the_gpu_preset_without_a_gpu_exits_2_before_any_work(tmp_path, two_shot_video):
    sets = ["scoring.aesthetic.enabled=false", "captioning.enabled=false"]
    cmd = [
        REELMILL,
        "curate",
        "--input",
        str(two_shot_video),
        "--output",
        str(tmp_path / "o"),
        "--config",
        "gpu",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU for Ray to see, on any machine
    proc = subprocess.run(
        cmd + [a for s in sets for a in ("--set", s)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "scenes.num_gpus=0.1: this machine has no GPU that Ray can see" in proc.stderr
    assert not list((tmp_path / "o").glob("shards/*.tar"))


def test_cli_reports_missing_input(tmp_path):
    proc = subprocess.run(
        [REELMILL, "curate", "--input", str(tmp_path / "none"), "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
