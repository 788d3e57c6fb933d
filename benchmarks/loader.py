"""Throughput of the shard data module at the `dit-b-gpu` shapes, against ffmpeg's decode floor.

Clip shards like curate writes (`KEY.mp4` H.264 yuv420p libx264 veryfast crf 22 faststart, `KEY.json` the
record, `KEY.txt`) of 720p and 480p clips at 25 and 30 fps, 4-6 s long, are made here (curation/synthetic's
lavfi sources), and latent shards of the same clips like `reelmill encode` writes (random float16 latents
[16, 16, 32, 32]: Wan's VAE on 61 frames at 256x256; text [2, 128, 4096]). Side by side in one run, at
61 frames, 16 fps, 256x256, the center window (the mean cost of the training default, random), each with 1
and 2 workers:

  video   ShardDataModule(kind="video"): PyAV decode, resample, cover-resize, crop, batch (uint8)
  latent  ShardDataModule(kind="latent"): npy loads, caption choice, padding, batch (no decode)
  floor   ffmpeg -threads 1 -i CLIP -vf fps=16,trim=<the same window>,crop=<the same box>,
          scale=256:256:flags=area -f rawvideo -pix_fmt rgb24 (the same clips, N processes at once; no Python)

samples/s is measured after the first batch of every worker (start-up and the shuffle buffer's fill are
left out). With `--train-step-json` (from `benchmarks/train_step.py --json`) it also says how many CPU
cores per GPU the video loader needs to keep a training step fed: the step's samples/s divided by the
video loader's samples/s per worker (one worker is one core).

    python benchmarks/loader.py                     # a few minutes on 2 cores
    python benchmarks/loader.py --train-step-json bench_out/train_step.json --workers 1,2,4
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation import ffmpeg_tools, synthetic  # noqa: E402
from curation.shards import TaskShardWriter  # noqa: E402
from training.clip_decode import cover_crop, frames_at_fps  # noqa: E402
from training.data import ShardDataModule  # noqa: E402

SOURCES = ("testsrc2", "bars", "gradients", "cellauto")  # compressible and moving, like camera footage
SIZES = ((1280, 720), (854, 480))
SPEC_VERSION = 1  # bump when the generated clips change, so a cached set is remade


def make_clips(directory: Path, count: int) -> list[dict]:
    """`count` clips (mp4 files) and their records; cached in `directory` between runs."""
    marker = directory / "clips.json"
    if marker.exists():
        cached = json.loads(marker.read_text())
        if cached["version"] == SPEC_VERSION and len(cached["clips"]) == count:
            return cached["clips"]
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = random.Random(0)
    clips = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        fps = (25, 30)[(i // len(SIZES)) % 2]
        frames = int(rng.uniform(4.0, 6.0) * fps)
        spec = synthetic.VideoSpec(
            [synthetic.Shot(SOURCES[i % len(SOURCES)], frames, hue=37.0 * i)],
            width,
            height,
            str(fps),
            output_options={"preset": "veryfast", "crf": 22, "movflags": "+faststart"},
        )
        path = synthetic.make_video(directory / f"clip-{i:04d}.mp4", spec)
        clips.append(
            {
                "key": f"bench-{i:04d}",
                "path": str(path),
                "clip_id": f"bench-{i:04d}",
                "fps": float(fps),
                "width": width,
                "height": height,
                "num_frames": frames,
                "duration_s": frames / fps,
                "codec": "h264",
            }
        )
        print(f"  clip {i + 1}/{count}: {width}x{height} {fps} fps {frames / fps:.1f} s", flush=True)
    marker.write_text(json.dumps({"version": SPEC_VERSION, "clips": clips}))
    return clips


def caption(i: int) -> dict:
    summary = f"A synthetic test pattern number {i} drifts across the frame."
    segments = [
        {"start_s": 0.0, "end_s": 2.0, "text": "Colored shapes move slowly to the right."},
        {"start_s": 2.0, "end_s": 4.0, "text": "The pattern keeps moving while the colors shift."},
    ]
    return {"summary": summary, "segments": segments, "model": "none", "prompt_id": "bench"}


def dense_text(cap: dict) -> str:
    lines = [cap["summary"]] + [
        f"[{s['start_s']:.1f}-{s['end_s']:.1f}s] {s['text']}" for s in cap["segments"]
    ]
    return "\n".join(lines)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_shards(clips: list[dict], out: Path, clips_per_shard: int, text_len: int, text_dim: int) -> None:
    """Clip shards (`out/video/`) and latent shards of the same clips (`out/latent/`)."""
    for kind in ("video", "latent"):
        shutil.rmtree(out / kind, ignore_errors=True)
    rng = np.random.default_rng(0)
    tokens = (text_len, text_len // 3)  # dense and summary lengths; padded to the longest
    with (
        TaskShardWriter(str(out / "video"), 0, clips_per_shard, 2**40) as video,
        TaskShardWriter(str(out / "latent"), 0, clips_per_shard, 2**40) as latent,
    ):
        for i, clip in enumerate(clips):
            record = {k: v for k, v in clip.items() if k not in ("key", "path")} | {"caption": caption(i)}
            meta = {"json": json.dumps(record).encode(), "txt": dense_text(record["caption"]).encode()}
            video.write(clip["key"], {"mp4": Path(clip["path"]).read_bytes(), **meta})
            text = np.zeros((2, text_len, text_dim), np.float16)
            mask = np.zeros((2, text_len), bool)
            for v, n in enumerate(tokens):
                text[v, :n] = rng.standard_normal((n, text_dim))
                mask[v, :n] = True
            members = {
                "latent.npy": npy(rng.standard_normal((16, 16, 32, 32)).astype(np.float16)),
                "text.npy": npy(text),
                "text_mask.npy": npy(mask),
                **meta,
            }
            latent.write(clip["key"], members)


def measure_loader(kind: str, shards: Path, workers: int, samples: int, args) -> float:
    """Samples/s of the data module's training loader once every worker has delivered its first batch."""
    dm = ShardDataModule(
        str(shards),
        kind=kind,
        batch_size=args.batch_size,
        num_workers=workers,
        num_frames=args.num_frames,
        fps=args.fps,
        height=args.size,
        width=args.size,
        crop="center",
        shuffle_buffer=16,
        pin_memory=False,
    )
    loader = dm.train_dataloader()
    iterator = iter(loader)
    for _ in range(max(1, loader.num_workers)):  # start-up: worker processes, the shuffle buffer
        next(iterator)
    start, count = time.perf_counter(), 0
    while count < samples:
        count += len(next(iterator)["__key__"])
    elapsed = time.perf_counter() - start
    del iterator, loader
    return count / elapsed


def floor_command(clip: dict, args) -> list[str]:
    available = frames_at_fps(clip["num_frames"] / clip["fps"], args.fps)
    start = (available - args.num_frames) // 2  # the center window, as the loader takes it
    x, y, width, height = cover_crop(clip["width"], clip["height"], args.size, args.size)
    graph = (
        f"fps={args.fps:g},trim=start_frame={start}:end_frame={start + args.num_frames},"
        f"crop={width}:{height}:{x}:{y},scale={args.size}:{args.size}:flags=area"
    )
    return [
        ffmpeg_tools.FFMPEG, "-v", "error", "-nostdin", "-threads", "1", "-filter_threads", "1",
        "-i", clip["path"], "-vf", graph, "-frames:v", str(args.num_frames),
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip


def measure_floor(clips: list[dict], workers: int, samples: int, args) -> float:
    """Samples/s of `workers` ffmpeg processes at a time decoding the same windows to raw RGB."""
    commands = [floor_command(clips[i % len(clips)], args) for i in range(samples)]
    expected = args.num_frames * args.size * args.size * 3

    def run(cmd: list[str]) -> None:
        done = subprocess.run(cmd, capture_output=True, check=True)
        if len(done.stdout) != expected:
            raise RuntimeError(f"ffmpeg gave {len(done.stdout)} bytes, expected {expected}: {cmd}")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, commands[:workers]))  # warm the page cache and the binary
        start = time.perf_counter()
        list(pool.map(run, commands))
    return samples / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/loader"))
    ap.add_argument("--clips", type=int, default=12, help="distinct clips generated (cached in --out)")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure")
    ap.add_argument("--video-samples", type=int, default=24, help="samples timed per video/floor row")
    ap.add_argument("--latent-samples", type=int, default=320, help="samples timed per latent row")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-frames", type=int, default=61)
    ap.add_argument("--fps", type=float, default=16.0)
    ap.add_argument("--size", type=int, default=256, help="height = width")
    ap.add_argument("--text-len", type=int, default=128)
    ap.add_argument("--text-dim", type=int, default=4096)
    ap.add_argument("--train-step-json", type=Path, help="benchmarks/train_step.py --json output")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    print(f"clips in {args.out}:", flush=True)
    clips = make_clips(args.out / "clips", args.clips)
    write_shards(clips, args.out, clips_per_shard=4, text_len=args.text_len, text_dim=args.text_dim)
    rows = []
    for n in workers:
        for kind in ("video", "latent", "floor"):
            if kind == "floor":
                rate = measure_floor(clips, n, args.video_samples, args)
            else:
                samples = args.video_samples if kind == "video" else args.latent_samples
                rate = measure_loader(kind, args.out / kind, n, samples, args)
            rows.append({"kind": kind, "workers": n, "samples_per_s": rate})
            print(f"  {kind:6s} x{n}: {rate:8.2f} samples/s", flush=True)

    floor = {r["workers"]: r["samples_per_s"] for r in rows if r["kind"] == "floor"}
    names = {
        "video": "video (PyAV, in the loader)",
        "latent": "latent (npy)",
        "floor": "ffmpeg decode floor",
    }
    sizes = sorted({f"{c['width']}x{c['height']}" for c in clips})
    print()
    print(
        f"{len(clips)} clips ({', '.join(sizes)}; 25/30 fps; 4-6 s; H.264 crf 22) -> {args.num_frames} "
        "frames "
        f"at {args.fps:g} fps, {args.size}x{args.size}, center window; batch {args.batch_size}; latents "
        f"16x16x32x32, text 2x{args.text_len}x{args.text_dim} float16; {len(os.sched_getaffinity(0))} "
        "cores.\n"
    )
    print("| loader | workers | samples/s | per worker | vs floor |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = r["samples_per_s"] / floor[r["workers"]]
        print(
            f"| {names[r['kind']]} | {r['workers']} | {r['samples_per_s']:.2f} "
            f"| {r['samples_per_s'] / r['workers']:.2f} | {ratio:.2f}x |"
        )

    if args.train_step_json:
        step = json.loads(args.train_step_json.read_text())
        per_core = max(r["samples_per_s"] / r["workers"] for r in rows if r["kind"] == "video")
        latent_per_core = max(r["samples_per_s"] / r["workers"] for r in rows if r["kind"] == "latent")
        print(
            f"\nTraining step ({step['meta']['device']}) against the video loader at {per_core:.2f} "
            "samples/s "
            f"per core (latent: {latent_per_core:.1f}):\n"
        )
        print("| preset | latent | batch | step samples/s | video cores per GPU | latent cores per GPU |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for r in step["rows"]:
            need = r["samples_per_s"]
            print(
                f"| {r['preset']} | {r['latent']} | {r['batch']} | {need:.2f} | {need / per_core:.1f} "
                f"| {need / latent_per_core:.2f} |"
            )


if __name__ == "__main__":
    main()
