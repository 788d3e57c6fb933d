"""Shared fixtures: videos made with ffmpeg lavfi (known shot boundaries), broken files, a Ray session."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import ffmpeg
import pytest
import ray

from curation import ffmpeg_tools, synthetic
from curation.synthetic import Shot, VideoSpec, shot_list

ROOT = Path(__file__).resolve().parent.parent

# Tests never reach the model hub: every model is built here and loaded from a directory.
os.environ["HF_HUB_OFFLINE"] = "1"

# A video with a 0.32 s (8-frame) shot between two long ones, and other boundaries.
# No `life` shot here: its churning cells sit near ContentDetector's threshold (the adaptive default copes).
MULTI_SHOT = VideoSpec(
    shot_list([70, 60, 8, 75, 55], cycle=("testsrc2", "mandelbrot", "bars", "gradients", "cellauto")),
    width=320,
    height=240,
    fps="25",
)


@pytest.fixture(scope="session", autouse=True)
def no_internal_errors(tmp_path_factory):
    """Every run a test made (its run.json, anywhere under this session's temporary directory) counted no
    `internal_error`: a bug of ours met on an item is recorded and the job goes on, so only this check
    turns it into a failure."""
    yield
    import json

    bugs = {}
    for run_json in tmp_path_factory.getbasetemp().rglob("run.json"):
        try:
            errors = json.loads(run_json.read_text()).get("errors") or {}
        except (OSError, ValueError):
            continue
        if errors.get("internal_errors"):
            bugs[str(run_json.parent)] = errors["internal_errors"]
    assert not bugs, f"runs with internal errors (see their manifests' traceback/errors): {bugs}"


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def multi_shot_video(media_dir) -> Path:
    return synthetic.make_video(media_dir / "multi_shot.mp4", MULTI_SHOT)


@pytest.fixture(scope="session")
def two_shot_video(media_dir) -> Path:
    spec = VideoSpec([Shot("testsrc2", 60), Shot("mandelbrot", 60)], width=240, height=180)
    return synthetic.make_video(media_dir / "two_shot.mp4", spec)


def make_bad_inputs(directory: Path, good_video: Path) -> dict[str, tuple[Path, str]]:
    """Broken or unusable inputs, each with the error code the job must report for it."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}
    empty = directory / "empty.mp4"
    empty.write_bytes(b"")
    out["empty"] = (empty, "empty_file")
    text = directory / "notes.mp4"
    text.write_text("this is not a video, just some text\n" * 20)
    out["text"] = (text, "not_a_video")
    noise = directory / "random.mkv"
    noise.write_bytes(os.urandom(64 * 1024))
    out["random"] = (noise, "not_a_video")
    # faststart puts the index first, so the cut-off file probes fine but its frames are gone
    faststart = synthetic.make_video(
        directory / "whole.mp4",
        VideoSpec(shot_list([100, 100]), 320, 240, output_options={"movflags": "+faststart"}),
    )
    truncated = directory / "truncated.mp4"
    truncated.write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 3])
    faststart.unlink()
    out["truncated"] = (truncated, "truncated")
    head_only = directory / "head_only.mp4"
    head_only.write_bytes(good_video.read_bytes()[:4096])  # index at the end: never written
    out["head_only"] = (head_only, "truncated")
    audio = synthetic.make_audio_only(directory / "audio_only.mp4")
    out["audio_only"] = (audio, "no_video_stream")
    one = synthetic.make_video(directory / "one_frame.mp4", VideoSpec([Shot("testsrc2", 1)], 160, 120))
    out["one_frame"] = (one, "single_frame")
    short = synthetic.make_video(directory / "short.mp4", VideoSpec([Shot("testsrc2", 25)], 160, 120))
    out["too_short"] = (short, "too_short")
    return out


@pytest.fixture(scope="session")
def awkward_videos(tmp_path_factory):
    """Valid but awkward inputs: odd size, VP9/webm, MJPEG/avi, rotation metadata, variable frame rate."""
    d = tmp_path_factory.mktemp("awkward")
    shots = shot_list([60, 60])
    out = {
        "odd": synthetic.make_video(d / "odd.mp4", VideoSpec(shots, 321, 241, pix_fmt="yuv444p")),
        "vp9": synthetic.make_video(
            d / "clip.webm",
            VideoSpec(
                shots,
                320,
                240,
                vcodec="libvpx-vp9",
                output_options={"b:v": "300k", "deadline": "realtime", "cpu-used": 8},
            ),
        ),
        "mjpeg": synthetic.make_video(
            d / "clip.avi", VideoSpec(shots, 320, 240, vcodec="mjpeg", pix_fmt="yuvj420p")
        ),
    }
    upright = synthetic.make_video(d / "upright.mp4", VideoSpec(shots, 320, 240))
    out["rotated"] = synthetic.with_rotation(upright, d / "rotated.mp4", 90)
    # variable frame rate: 2.4 s at 25 fps, then 2.4 s at 10 fps, timestamps kept as they are
    fast = ffmpeg.input("testsrc2=size=320x240:rate=25", f="lavfi").trim(end_frame=60).setpts("PTS-STARTPTS")
    slow = (
        ffmpeg.input("mandelbrot=size=320x240:rate=10", f="lavfi").trim(end_frame=24).setpts("PTS-STARTPTS")
    )
    vfr = d / "vfr.mp4"
    ffmpeg_tools.run_stream(
        ffmpeg.concat(fast, slow).output(str(vfr), vcodec="libx264", pix_fmt="yuv420p", fps_mode="vfr"), 120
    )
    out["vfr"] = vfr
    return out


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, two_shot_video):
    return make_bad_inputs(tmp_path_factory.mktemp("bad"), two_shot_video)


@pytest.fixture(scope="session")
def tiny_aesthetic(tmp_path_factory) -> dict[str, str]:
    """Tiny random-weight CLIP + aesthetic head files, loaded by the job as a user's would be."""
    from curation.scoring.tiny_models import build_tiny_aesthetic_models

    return build_tiny_aesthetic_models(tmp_path_factory.mktemp("tiny-aesthetic"))


def model_overrides(models: dict[str, str]) -> list[str]:
    """`--set` assignments that point the aesthetic scorer at `models` on the CPU."""
    return [f"scoring.aesthetic.{k}={v}" for k, v in models.items()] + ["scoring.aesthetic.device=cpu"]


@pytest.fixture(scope="session")
def tiny_vlm_untrained(tmp_path_factory) -> str:
    """A random-weight 2-layer Qwen2-VL saved to a directory: its answers are noise."""
    from captioning.tiny_vlm import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-vlm-untrained"))


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> str:
    """The tiny Qwen2-VL fine-tuned (on CPU) to write `STAND_IN_ANSWER` for any video."""
    from captioning.tiny_vlm import build_tiny_qwen2_vl, fit_answer

    path = build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-vlm"))
    fit_answer(path)
    return path


def caption_overrides(model_dir: str) -> list[str]:
    """`--set` assignments that caption with a tiny VLM in `model_dir`, small and fast on CPU."""
    return [
        f"captioning.vlm.model={model_dir}",
        "captioning.vlm.device=cpu",
        "captioning.vlm.max_new_tokens=96",
        "captioning.frames.max_pixels=12544",
        "captioning.memory_gb=1",
    ]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for a whole test module (starting Ray costs seconds)."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def tar_bytes(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """A webdataset shard of `samples` (`KEY.EXT` members, USTAR as most writers make them), in memory."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def shard_samples(layout) -> dict[str, dict]:
    """Every sample in a run's shards (an `OutputLayout`), read with webdataset, by key."""
    import webdataset as wds

    samples = {}
    for url in layout.shard_files():
        for sample in wds.WebDataset(url, shardshuffle=False):
            assert sample["__key__"] not in samples, "duplicate key"
            samples[sample["__key__"]] = sample
    return samples


def decode_frames(path: Path, width: int = 64, height: int = 48, stored: bool = False):
    """All frames of a video as small RGB arrays, for comparing content across files: on a constant-rate
    timeline (a variable-rate input resampled), or with `stored` every frame as stored, one per timestamp."""
    import ffmpeg
    import numpy as np

    options = {"fps_mode": "passthrough"} if stored else {}
    raw = ffmpeg_tools.run_stream(
        ffmpeg.input(str(path))
        .video.filter("scale", width, height)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", **options),
        120,
    )
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3).astype(np.float32)


TRAIN_VIDEOS = {  # three sources, two to three shots each: six kept clips of 2.6-3.8 s
    "first.mp4": VideoSpec(shot_list([70, 100]), 256, 144, fps="25"),
    "second.mp4": VideoSpec(shot_list([80, 70, 90], cycle=("mandelbrot", "bars", "testsrc2")), 320, 240),
    "third.mp4": VideoSpec(shot_list([95, 75], cycle=("gradients", "testsrc2")), 240, 160),
}


@pytest.fixture(scope="session")
def curated_run(tmp_path_factory, tiny_vlm) -> Path:
    """A real `reelmill curate` run (its own local Ray, in a subprocess) over generated videos, captioned
    by the tiny VLM, two clips to a shard: the OUT that training, `encode` and their tests read."""
    import subprocess
    import sys

    videos = tmp_path_factory.mktemp("train-videos")
    for name, spec in TRAIN_VIDEOS.items():
        synthetic.make_video(videos / name, spec)
    out = tmp_path_factory.mktemp("train-curated") / "out"
    sets = [
        *caption_overrides(tiny_vlm),
        "scoring.aesthetic.enabled=false",
        "filters.mode=score-only",
        "input.videos_per_task=1",
        "shards.max_clips=2",
    ]
    cmd = [
        str(Path(sys.executable).with_name("reelmill")),
        "curate",
        "--input",
        str(videos),
        "--output",
        str(out),
    ]
    for assignment in sets:
        cmd += ["--set", assignment]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory) -> str:
    """A tiny random-weight AutoencoderKLWan, UMT5 encoder and tokenizer, laid out like the Wan hub repo
    (vae/, text_encoder/, tokenizer/): the default subfolders of VAEConfig/TextEncoderConfig find them."""
    from training.tiny_encoders import build_tiny_wan_t2v

    return build_tiny_wan_t2v(tmp_path_factory.mktemp("tiny-wan"))


def probe_video(path: Path) -> dict:
    """ffprobe's view of a video's first stream, with the frames really decoded and counted."""
    import json

    out = ffmpeg_tools.run(
        [ffmpeg_tools.FFPROBE, "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)], 60
    )
    return json.loads(out)["streams"][0]


@pytest.fixture(scope="session")
def wheel_install(tmp_path_factory) -> Path:
    """reelmill built as a wheel and installed into a fresh virtualenv; returns the venv's bin/ directory.

    The wheel is what a cluster image or a `runtime_env` pip install gets, so commands run from there (in a
    working directory with no checkout) prove the package is whole: no source tree, no editable install.
    Its dependencies are this environment's, seen through a path entry (a plain `.pth` line, so this
    environment's editable reelmill stays invisible there), which saves installing gigabytes again.
    """
    import shutil

    root = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools' build/ in the checkout could hold modules deleted since
    source = shutil.copytree(
        ROOT,
        root / "src",
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*_out", ".*_cache", "runs"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", source],
        check=True, cwd=root, capture_output=True,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("reelmill-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "reelmill_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", "--force-reinstall",
         "--no-index", wheel],
        check=True, capture_output=True,
    )  # fmt: skip
    return venv / "bin"


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 (moto's server, a real HTTP endpoint) for the session: AWS_ENDPOINT_URL and test
    credentials are set in os.environ (and restored after), so pyarrow, boto3 and Ray workers started
    afterwards all talk to it (a test that monkeypatches AWS_* variables requests this fixture first,
    or their restoring undoes it). `.endpoint` is its URL; `.bucket(prefix)` creates a fresh bucket and
    returns its `s3://` URI."""
    import socket
    import time
    import types
    import urllib.request
    import uuid

    import boto3

    with socket.socket() as probe:  # a free port, for moto to bind next
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"moto's S3 server did not start on {endpoint}") from None
            time.sleep(0.2)
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )  # fmt: skip
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def bucket(name_prefix: str = "bucket") -> str:
        stem = (
            "".join(c if c.isascii() and c.isalnum() else "-" for c in name_prefix.lower()).strip("-")[:40]
            or "bucket"
        )
        name = f"{stem}-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    try:
        yield types.SimpleNamespace(endpoint=endpoint, bucket=bucket)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextlib.contextmanager
def full_tmpfs(mount: Path, room: str = "16K"):
    """A 64 MB tmpfs at `mount` filled to all but `room` (`truncate` sizes; "0" leaves none): a real full
    disk (ENOSPC) for the writes that land there. Needs root, as this machine's tests and CI run.
    Yields the filler file (shrink it to make room)."""
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    filler = mount / "filler"
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        if room != "0":
            subprocess.run(["truncate", "-s", f"-{room}", str(filler)], check=True)
        yield filler
    finally:
        gc.collect()  # a failed write's file objects, held by its traceback's cycle, let go of the mount
        subprocess.run(["umount", str(mount)], check=True)
