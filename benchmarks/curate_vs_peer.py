"""Benchmark `reelmill curate` against PySceneDetect's own split and the ffmpeg transcode floor.

One input (about 100 s of 1280x720 H.264 with many shots, made here with ffmpeg lavfi), three
commands run one after another on the same cores, at the same output settings (source resolution,
libx264 veryfast crf 22, no audio):

  floor   ffmpeg -i IN -c:v libx264 -preset veryfast -crf 22 OUT        (one transcode, no cutting)
  peer    scenedetect -i IN detect-adaptive split-video                 (detect, then one ffmpeg per scene)
  curate  reelmill curate --input IN --output OUT                       (embedded Ray, manifests, shards)
  curate+cpu-scores  the same with the motion and quality scorers on     (the cost of scoring)

CPU seconds are the machine's busy time from /proc/stat over each run (Ray's workers are not
children of the command, so per-process accounting would miss them): run it on an idle machine.

    python benchmarks/curate_vs_peer.py [--seconds 100] [--out bench_out]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation import synthetic  # noqa: E402

BIN = Path(sys.executable).parent
# Compressible moving sources, like camera footage rather than noise (bitrate ~ 5-10 Mb/s at 720p).
REALISTIC = ("testsrc2", "mandelbrot", "bars", "gradients")


def busy_seconds() -> float:
    """Machine-wide non-idle CPU time so far (user+nice+system+irq+softirq)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def timed(name: str, cmd: list[str], log: Path) -> dict:
    cpu0, t0 = busy_seconds(), time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - t0, busy_seconds() - cpu0
    print(f"  {name:7s} wall {wall:7.1f}s  cpu {cpu:7.1f}s", flush=True)
    return {"name": name, "wall_s": wall, "cpu_s": cpu, "cmd": " ".join(cmd)}


def make_input(path: Path, seconds: float) -> Path:
    if path.exists():
        return path
    rng = random.Random(7)
    fps, frames, total = 30, [], int(seconds * 30)
    while sum(frames) < total:
        frames.append(min(rng.randint(45, 240), total - sum(frames)))
    spec = synthetic.VideoSpec(
        synthetic.shot_list(frames, cycle=REALISTIC), 1280, 720, str(fps),
        output_options={"crf": 23, "preset": "fast", "g": 120},
    )  # fmt: skip
    print(f"making {seconds:g}s input with {len(frames)} shots -> {path}", flush=True)
    return synthetic.make_video(path, spec, timeout_s=3600)


# Same output settings as the peer; the model scorer is off in both curate rows (its cost is a GPU
# matter), the second row adds the CPU scorers (motion, quality) and their frame samples.
NO_SCORING = [
    "scoring.motion.enabled=false",
    "scoring.quality.enabled=false",
    "scoring.aesthetic.enabled=false",
]
CPU_SCORING = ["scoring.aesthetic.enabled=false"]


def floor_cmd(src: Path, dest: Path) -> list[str]:
    """One ffmpeg transcode of the whole input at the rows' output settings: the floor they are compared to."""
    return [
        "ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(src), "-map", "0:v:0", "-an", "-c:v", "libx264",
        "-preset", "veryfast", "-crf", "22", "-pix_fmt", "yuv420p", str(dest),
    ]  # fmt: skip


def curate_cmd(src: Path, out: Path, overrides: list[str]) -> list[str]:
    cmd = [str(BIN / "reelmill"), "curate", "--input", str(src), "--output", str(out), "--overwrite"]
    sets = ["transcode.crf=22", "transcode.preset=veryfast", "filters.mode=score-only", *overrides]
    return cmd + [arg for s in sets for arg in ("--set", s)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=100.0)
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = make_input(out / f"input_{int(args.seconds)}s_720p.mp4", args.seconds)
    for d in ("floor.mp4", "peer", "curate", "scored"):
        shutil.rmtree(out / d, ignore_errors=True) if (out / d).is_dir() else (out / d).unlink(
            missing_ok=True
        )
    (out / "peer").mkdir()

    print("running (one at a time, same cores):", flush=True)
    rows = [
        timed("floor", floor_cmd(src, out / "floor.mp4"), out / "floor.log"),
        timed(
            "peer",
            [str(BIN / "scenedetect"), "-i", str(src), "-o", str(out / "peer"), "detect-adaptive", "split-video",
             "-a", "-an -map 0:v:0 -c:v libx264 -preset veryfast -crf 22 -pix_fmt yuv420p"],
            out / "peer.log",
        ),
        timed("curate", curate_cmd(src, out / "curate", NO_SCORING), out / "curate.log"),
        timed("curate+cpu-scores", curate_cmd(src, out / "scored", CPU_SCORING), out / "scored.log"),
    ]  # fmt: skip
    run = json.loads((out / "curate" / "run.json").read_text())
    floor = rows[0]
    rows[1]["clips"] = len(list((out / "peer").glob("*.mp4")))
    rows[2]["clips"] = run["counts"]["clips_kept"]
    rows[2]["ray_start_s"] = run["timings"].get("ray_start_s")
    rows[3]["clips"] = json.loads((out / "scored" / "run.json").read_text())["counts"]["clips_kept"]
    lines = [
        f"Input: {args.seconds:g} s of 1280x720 H.264 30 fps, {run['counts']['shots']} shots; "
        f"{os.cpu_count()} cores; output libx264 veryfast crf 22, source resolution, no audio.",
        "",
        "| command | wall s | CPU s | wall / floor | CPU / floor | clips |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['wall_s'] / floor['wall_s']:.2f}x | "
            f"{r['cpu_s'] / floor['cpu_s']:.2f}x | {r.get('clips', '-')} |"
        )
    lines.append("")
    lines.append(f"curate's wall time includes {rows[2]['ray_start_s']:.1f} s to start the embedded Ray.")
    extra = rows[3]["wall_s"] - rows[2]["wall_s"]
    lines.append(
        f"CPU scorers (motion, quality; samples from the transcoder's decode): +{extra:.1f} s wall "
        f"({extra / rows[2]['wall_s']:+.0%}), +{rows[3]['cpu_s'] - rows[2]['cpu_s']:.1f} CPU s "
        f"({(rows[3]['cpu_s'] - rows[2]['cpu_s']) / run['counts']['hours_kept'] / 3600:.3f} CPU s per clip second)."
    )
    table = "\n".join(lines)
    (out / "curate_vs_peer.md").write_text(table + "\n")
    (out / "curate_vs_peer.json").write_text(json.dumps(rows, indent=1))
    print("\n" + table)


if __name__ == "__main__":
    main()
