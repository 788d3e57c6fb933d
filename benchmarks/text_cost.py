"""What burned-in text detection (`scoring.text`) costs: per clip, against decoding, and in `reelmill curate`.

The input: `--videos` videos of curate's benchmark input (`benchmarks/curate_vs_peer.py`: 1280x720 H.264
of lavfi shots, a quarter of them `testsrc2`, whose timecode is text), `--seconds` in all, one task each,
so that split tasks run side by side as on a real run. Two parts, run on the same cores:

1. **Per clip**: the input sampled as the scorers get it (2 samples/s, 256 px short side), cut into
   clips of `--clip-s` seconds; PP-OCR detection (one onnxruntime thread, as a text actor of under
   1.5 CPUs runs) timed per clip for some `frames` x `max_side` settings, next to the ffmpeg decode of
   the same seconds of video (`ffmpeg -i IN -f null -`, all frames at source size: the least any
   pipeline reading the video pays) and the sampling decode the scorers share.
2. **curate**: `reelmill curate` (score-only, aesthetic and captioning off) with the new signals
   switched on one after another: CPU scorers alone (camera and text off), + camera labels, + text
   detection at the preset's settings, in the CPU scoring task (with `--recognize`, + recognition; with
   `--pool`, detection in an actor pool of its own instead, `resources.text_actors=1`). Runs go round-robin
   `--repeats` times; the table gives each row's median wall time and CPU time (of the command's process
   tree: on a shared machine, other people's work swings the wall by tens of percent, much less the
   CPU), the overhead of each over the CPU scorers alone, and the ratio to the ffmpeg transcode floor
   (each video transcoded in turn).

    python benchmarks/text_cost.py [--seconds 80] [--videos 4] [--repeats 3] [--out bench_out/text] [--recognize]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import curate_vs_peer  # noqa: E402
import psutil  # noqa: E402

from curation.frames import sample_frames  # noqa: E402
from curation.scoring.text import TextScorer  # noqa: E402
from curation.scoring_config import FrameSamplerConfig, TextConfig  # noqa: E402

SETTINGS = ((1, 640), (3, 448), (3, 640), (3, 960), (5, 640))  # (frames, max_side)
BASE = ["scoring.aesthetic.enabled=false", "captioning.enabled=false", "input.videos_per_task=1"]
ROWS = {
    "cpu-scores": [*BASE, "scoring.camera.enabled=false", "scoring.text.enabled=false"],
    "+camera": [*BASE, "scoring.text.enabled=false"],
    "+camera+text": [*BASE, "scoring.text.enabled=true"],
}
RECOGNIZE = {"+camera+text+recognize": [*BASE, "scoring.text.enabled=true", "scoring.text.recognize=true"]}
POOL = {"+camera+text in a pool": [*BASE, "scoring.text.enabled=true", "resources.text_actors=1"]}


def decode_floor_s(src: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-f", "null", "-"], check=True)
    return time.perf_counter() - t0


def per_clip(sources: list[Path], clip_s: float) -> tuple[list[str], dict]:
    """Detection per clip at each setting, against decode and sampling of the same seconds."""
    sampler = FrameSamplerConfig(max_frames=100_000)
    per = round(clip_s * sampler.fps)
    clips, seconds, sampling_s, floor_s = [], 0.0, 0.0, 0.0
    for src in sources:
        t0 = time.perf_counter()
        frames = sample_frames(src, sampler)
        sampling_s += time.perf_counter() - t0
        floor_s += decode_floor_s(src)
        clips += [frames.rgb[i : i + per] for i in range(0, len(frames.rgb) - per + 1, per)]
        seconds += frames.duration_s
    rows = []
    for count, side in SETTINGS:
        scorer = TextScorer(TextConfig(frames=count, max_side=side), threads=1)
        scorer.score(clips[0])  # first run: onnxruntime's own warm-up
        t0 = time.perf_counter()
        found = sum(scorer.score(c)["text_boxes"] > 0 for c in clips)
        rows.append({"frames": count, "max_side": side, "clip_ms": (time.perf_counter() - t0) / len(clips) * 1e3,
                     "with_text": found})  # fmt: skip
    decode_ms, sampling_ms = floor_s / seconds * clip_s * 1e3, sampling_s / seconds * clip_s * 1e3
    lines = [
        f"Per {clip_s:g} s clip ({len(clips)} clips of the {seconds:.0f} s of input; samples {frames.size[0]}x"
        f"{frames.size[1]}; one onnxruntime thread). Decode floor (`ffmpeg -i IN -f null -`, 1280x720): "
        f"{decode_ms:.0f} ms per clip; the scorers' sampling decode: {sampling_ms:.0f} ms per clip.",
        "",
        "| frames | max_side | detection ms / clip | / decode floor | clips with text |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['frames']} | {r['max_side']} | {r['clip_ms']:.0f} | {r['clip_ms'] / decode_ms:.2f}x "
            f"| {r['with_text']}/{len(clips)} |"
        )
    return lines, {"rows": rows, "decode_ms": decode_ms, "sampling_ms": sampling_ms, "clips": len(clips)}


def measured(name: str, cmd: list[str], log: Path) -> dict:
    """Run `cmd`; its wall time, and the CPU time of its whole process tree (the embedded Ray's workers and
    their ffmpegs included), polled every 0.1 s: on a shared machine the machine-wide busy time
    (`curate_vs_peer.busy_seconds`) counts everyone's work, this only the command's."""
    t0, seen = time.perf_counter(), {}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for p in tree:
                try:
                    times = p.cpu_times()
                    seen[(p.pid, p.create_time())] = times.user + times.system  # its own, not its children's
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            time.sleep(0.1)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    wall, cpu = time.perf_counter() - t0, sum(seen.values())
    print(f"  {name:24s} wall {wall:7.1f}s  tree cpu {cpu:7.1f}s", flush=True)
    return {"name": name, "wall_s": wall, "cpu_s": cpu}


def curate_rows(sources: list[Path], out: Path, rows: dict[str, list[str]], repeats: int) -> list[dict]:
    floor = " && ".join(shlex.join(curate_vs_peer.floor_cmd(src, out / "floor.mp4")) for src in sources)
    runs: dict[str, list[dict]] = {"floor": [], **{name: [] for name in rows}}
    for attempt in range(repeats):  # round-robin, so a busy spell on a shared machine hits every row
        print(f"round {attempt + 1}/{repeats}:", flush=True)
        runs["floor"].append(measured("floor", ["sh", "-c", floor], out / "floor.log"))
        for name, sets in rows.items():
            dest = out / f"curate{name.replace('+', '_').replace(' ', '_')}"
            cmd = curate_vs_peer.curate_cmd(sources[0].parent, dest, sets)
            row = measured(name, cmd, out / f"{dest.name}.log")
            run = json.loads((dest / "run.json").read_text())
            row["clips"] = run["counts"]["clips"]
            row["text_s"] = run["timings"].get("stage_task_s", {}).get("text", 0.0)
            runs[name].append(row)
    return [
        {
            "name": name,
            "wall_s": statistics.median(r["wall_s"] for r in got),
            "cpu_s": statistics.median(r["cpu_s"] for r in got),
            "walls": [round(r["wall_s"], 1) for r in got],
            "cpus": [round(r["cpu_s"], 1) for r in got],
            "clips": got[0].get("clips", "-"),
            "text_s": statistics.median(r.get("text_s", 0.0) for r in got),
        }
        for name, got in runs.items()
    ]


def curate_table(rows: list[dict], seconds: float, videos: int, repeats: int) -> list[str]:
    floor, base = rows[0], rows[1]
    lines = [
        f"`reelmill curate` on {videos} videos of 1280x720, {seconds:g} s in all, one task each, score-only, "
        f"aesthetic and captioning off; {os.cpu_count()} cores; median of {repeats} round-robin runs (each "
        "run's value in brackets). CPU s: the command's process tree. `text task s`: the text stage's time "
        "summed over tasks (run.json `timings.stage_task_s.text`).",
        "",
        "| run | wall s | CPU s | wall vs cpu-scores | CPU vs cpu-scores | wall / floor | text task s | clips |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        wall = "-" if r is floor else f"{r['wall_s'] / base['wall_s'] - 1:+.1%}"
        cpu = "-" if r is floor else f"{r['cpu_s'] / base['cpu_s'] - 1:+.1%}"
        lines.append(
            f"| {r['name']} | {r['wall_s']:.1f} {r['walls']} | {r['cpu_s']:.1f} {r['cpus']} | {wall} | {cpu} "
            f"| {r['wall_s'] / floor['wall_s']:.2f}x | {r['text_s']:.1f} | {r['clips']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=80.0, help="length of the 1280x720 input, in all")
    parser.add_argument("--videos", type=int, default=4, help="videos the input is made of, one task each")
    parser.add_argument("--clip-s", type=float, default=5.0, help="clip length of the per-clip part")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin runs of every curate row")
    parser.add_argument("--recognize", action="store_true", help="also a curate row with recognition on")
    parser.add_argument(
        "--pool", action="store_true", help="also a row with text in an actor pool of its own"
    )
    parser.add_argument("--skip-camera", action="store_true", help="leave out the +camera row")
    parser.add_argument("--parts", default="clip,curate", help="clip, curate or both, comma-separated")
    parser.add_argument("--out", default="bench_out/text")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"clip", "curate"}:
        parser.error(f"--parts: expected some of clip,curate, got {args.parts!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    each = args.seconds / args.videos
    sources = [
        curate_vs_peer.make_input(out / f"input_{args.videos}x{each:g}s" / f"video_{i}.mp4", each)
        for i in range(args.videos)
    ]
    sections, results = [], {}
    if "clip" in parts:
        print("detection per clip:", flush=True)
        lines, results["clip"] = per_clip(sources, args.clip_s)
        sections.append(lines)
        print("\n".join(lines), flush=True)
    if "curate" in parts:
        for d in out.glob("curate*"):
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else None
        rows = ROWS | (RECOGNIZE if args.recognize else {}) | (POOL if args.pool else {})
        if args.skip_camera:
            rows.pop("+camera")
        results["curate"] = curate_rows(sources, out, rows, args.repeats)
        sections.append(curate_table(results["curate"], args.seconds, args.videos, args.repeats))
    table = "\n\n".join("\n".join(s) for s in sections)
    (out / "text_cost.md").write_text(table + "\n")
    (out / "text_cost.json").write_text(json.dumps(results, indent=1))
    print("\n" + table)


if __name__ == "__main__":
    main()
