"""Benchmark `reelmill curate` over a corpus against the transcode floor, and say where its time goes.

A corpus of N videos of S seconds each (1280x720 H.264, 30 fps, shots of 1.5-8 s from moving lavfi
sources, made once and cached in the bench dir), then two runs one after another on the same cores:

  floor   every input transcoded whole with curate's own encoder settings (read from the config:
          libx264, preset, crf, threads, max_short_side, fps, yuv420p, faststart, no audio), as many
          ffmpeg processes at a time as the machine has cores: the least any transcoding job could take
  curate  `reelmill curate --input CORPUS --output OUT --overwrite` with the model stages off
          (aesthetic, captioning), as a user runs it: the console script in a subprocess (interpreter
          start, imports, the embedded Ray, the report at the end all count)

and writes a markdown table (OUT/corpus.md, OUT/corpus.json): floor s, curate s, the ratio, then
curate's wall time taken apart from its run.json `timings` (start-up, the time to the first task,
task time per stage, the time between stages, the end of the run).

CPU seconds are those of everything each run starts (Ray's workers and their ffmpeg processes are
not the command's children once Ray stops, and are reaped by Ray, so rusage would miss them): this
script moves itself into a cgroup of its own where it can (as root), else it counts the machine's
busy time from /proc/stat. Other load on the machine enters wall times either way: run it on an
idle machine (the table says the load average).

    python benchmarks/corpus.py [--videos 8] [--seconds 60] [--out bench_out/corpus] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation import config as config_lib  # noqa: E402
from curation import synthetic  # noqa: E402
from curation.transcode import output_size  # noqa: E402
from jobs.job_configs import CurateJobConfig  # noqa: E402

BIN = Path(sys.executable).parent
# Compressible moving sources, like camera footage rather than noise (bitrate ~ 5-10 Mb/s at 720p).
REALISTIC = ("testsrc2", "mandelbrot", "bars", "gradients")
WIDTH, HEIGHT, FPS = 1280, 720, 30
MODELS_OFF = ["scoring.aesthetic.enabled=false", "captioning.enabled=false"]


class CpuMeter:
    """CPU seconds used by this process and everything it starts, from a cgroup of its own (cgroup v1
    `cpuacct` or v2); without one (not root, no cgroup fs), the whole machine's busy time."""

    def __init__(self):
        self.usage, self.scope = self._machine_busy_s, "machine"
        name = f"reelmill-bench-{os.getpid()}"
        for root, read in (("/sys/fs/cgroup/cpuacct", self._v1), ("/sys/fs/cgroup", self._v2)):
            group = Path(root) / name
            try:
                group.mkdir()
                (group / "cgroup.procs").write_text(str(os.getpid()))
                read(group)
            except OSError:
                with contextlib.suppress(OSError):
                    group.rmdir()
                continue
            self.usage, self.scope = (lambda g=group, r=read: r(g)), "this script's process tree"
            atexit.register(self._leave, group)
            return

    @staticmethod
    def _leave(group: Path) -> None:
        with contextlib.suppress(OSError):
            (group.parent / "cgroup.procs").write_text(str(os.getpid()))
            group.rmdir()

    @staticmethod
    def _v1(group: Path) -> float:
        return int((group / "cpuacct.usage").read_text()) / 1e9

    @staticmethod
    def _v2(group: Path) -> float:
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6

    @staticmethod
    def _machine_busy_s() -> float:
        """Machine-wide non-idle CPU time so far (user+nice+system+irq+softirq)."""
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:8]]
        user, nice, system, _idle, _iowait, irq, softirq = fields
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def make_corpus(directory: Path, videos: int, seconds: float) -> list[Path]:
    """`videos` inputs of `seconds` each, every one with its own shot lengths and order of sources."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(videos):
        path = directory / f"video_{i:03d}.mp4"
        paths.append(path)
        if path.exists():
            continue
        rng = random.Random(i)
        frames, total = [], int(seconds * FPS)
        while sum(frames) < total:
            frames.append(min(rng.randint(45, 240), total - sum(frames)))
        cycle = REALISTIC[i % len(REALISTIC) :] + REALISTIC[: i % len(REALISTIC)]
        spec = synthetic.VideoSpec(
            synthetic.shot_list(frames, cycle=cycle), WIDTH, HEIGHT, str(FPS),
            output_options={"crf": 23, "preset": "fast", "g": 120},
        )  # fmt: skip
        print(f"making {path.name}: {seconds:g}s, {len(frames)} shots", flush=True)
        partial = path.with_suffix(".part.mp4")
        synthetic.make_video(partial, spec, timeout_s=3600)
        partial.rename(path)
    return paths


def floor_cmd(src: Path, dst: Path, cfg: CurateJobConfig) -> list[str]:
    """One whole-input transcode with the encoder settings curate's clips get."""
    t = cfg.transcode
    filters = []
    if t.fps:
        filters.append(f"fps={t.fps:g}")
    width, height = output_size(WIDTH, HEIGHT, t.max_short_side)
    if (width, height) != (WIDTH, HEIGHT):
        filters.append(f"scale={width}:{height}")
    cmd = ["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(src), "-map", "0:v:0", "-an"]
    cmd += ["-vf", ",".join(filters)] if filters else []
    cmd += ["-c:v", "libx264", "-preset", t.preset, "-crf", str(t.crf), "-pix_fmt", "yuv420p"]
    cmd += ["-threads", str(t.threads), "-movflags", "+faststart", str(dst)]
    return cmd


def run_floor(inputs: list[Path], out: Path, cfg: CurateJobConfig, parallel: int, cpu: CpuMeter) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmds = [floor_cmd(src, out / src.name, cfg) for src in inputs]
    cpu0, t0 = cpu.usage(), time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        for done in pool.map(lambda c: subprocess.run(c, capture_output=True, text=True), cmds):
            if done.returncode:
                raise RuntimeError(f"floor transcode failed: {done.stderr[-2000:]}")
    wall, cpu_s = time.perf_counter() - t0, cpu.usage() - cpu0
    return {
        "name": "floor",
        "wall_s": wall,
        "cpu_s": cpu_s,
        "cmd": " ".join(cmds[0]) + f"  ({parallel} at a time)",
    }


def run_curate_cli(
    corpus: Path, out: Path, config: str, overrides: list[str], log: Path, cpu: CpuMeter
) -> dict:
    cmd = [str(BIN / "reelmill"), "curate", "--input", str(corpus), "--output", str(out), "--overwrite"]
    cmd += ["--config", config] + [arg for s in overrides for arg in ("--set", s)]
    cpu0, t0, unix0 = cpu.usage(), time.perf_counter(), time.time()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    time.sleep(2)  # Ray's last processes stop a moment after the command
    return {
        "name": "curate",
        "wall_s": wall,
        "cpu_s": cpu.usage() - cpu0,
        "unix0": unix0,
        "cmd": " ".join(cmd),
    }


def breakdown(row: dict, run: dict) -> list[tuple[str, float | None]]:
    """curate's wall time taken apart (seconds), from the outside (the subprocess) and run.json;
    indented parts are inside the line above them."""
    t = run["timings"]
    stages = t.get("stage_task_s", {})
    top = [
        (
            "process start and imports (before run_curate)",
            t["start_unix"] - row["unix0"] if "start_unix" in t else None,
        ),
        ("before Ray: inputs, output checks, markers, importing ray.data", t.get("setup_s")),
        ("Ray start", t.get("ray_start_s")),
        ("Ray ready -> first task starts (plan, workers, imports)", t.get("first_task_start_s")),
        ("first task start -> last task end", t.get("tasks_span_s")),
        ("last task end -> Ray stopped (results to the driver, shutdown)", t.get("after_tasks_s")),
        ("run.json: counts, score distributions", t.get("finish_s")),
    ]
    known = [s for _, s in top]
    after = row["wall_s"] - sum(known) if None not in known else None
    inside = [
        *[(f"  task time: {name} (sum over tasks)", s) for name, s in stages.items()],
        ("  time between a task's stages (sum over tasks: queues, object store)", t.get("between_stages_s")),
    ]
    return [*top[:5], *inside, *top[5:], ("after run.json: summary, report, exit", after)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default="bench_out/corpus")
    parser.add_argument("--config", default="default", help="curate preset or YAML (its encoder settings)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more curate overrides")
    parser.add_argument("--parallel", type=int, default=os.cpu_count(), help="floor ffmpeg processes at once")
    args = parser.parse_args()
    out = Path(args.out)
    overrides = [*MODELS_OFF, *args.overrides]
    cfg = config_lib.load(CurateJobConfig, "curate", args.config, overrides)
    corpus = out / f"corpus_{args.videos}x{args.seconds:g}s_720p"
    inputs = make_corpus(corpus, args.videos, args.seconds)
    cpu = CpuMeter()

    print(f"running (one after the other, same cores); load average {os.getloadavg()}", flush=True)
    floor = run_floor(inputs, out / "floor", cfg, args.parallel, cpu)
    print(f"  floor   wall {floor['wall_s']:7.1f}s  cpu {floor['cpu_s']:7.1f}s", flush=True)
    curate = run_curate_cli(corpus, out / "curate", args.config, overrides, out / "curate.log", cpu)
    print(f"  curate  wall {curate['wall_s']:7.1f}s  cpu {curate['cpu_s']:7.1f}s", flush=True)
    load = os.getloadavg()
    run = json.loads((out / "curate" / "run.json").read_text())
    counts, t = run["counts"], run["timings"]
    enc = cfg.transcode
    lines = [
        f"Corpus: {args.videos} x {args.seconds:g} s of {WIDTH}x{HEIGHT} H.264 {FPS} fps, {counts['shots']} shots, "
        f"{counts['clips_kept']} clips kept of {counts['clips']}; {os.cpu_count()} cores, load average after "
        f"{load[0]:.2f}/{load[1]:.2f}; encoder libx264 {enc.preset} crf {enc.crf}, short side "
        f"{enc.max_short_side or 'source'}, fps {enc.fps or 'source'}.",
        "",
        f"curate: `{curate['cmd']}` (the console script in a subprocess, as a user runs it).",
        "",
        f"CPU s: {cpu.scope}.",
        "",
        "| run | wall s | CPU s | wall / floor | CPU / floor |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in (floor, curate):
        lines.append(
            f"| {r['name']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['wall_s'] / floor['wall_s']:.2f}x | "
            f"{r['cpu_s'] / floor['cpu_s']:.2f}x |"
        )
    lines += [
        "",
        "curate's wall time, taken apart (run.json `timings`):",
        "",
        "| part | s |",
        "| --- | ---: |",
    ]
    for name, seconds in breakdown(curate, run):
        lines.append(f"| {name} | {'-' if seconds is None else f'{seconds:.1f}'} |")
    lines.append(f"| **total (subprocess wall)** | **{curate['wall_s']:.1f}** |")
    if t.get("tasks_span_s") is not None:
        outside = curate["wall_s"] - t["tasks_span_s"]
        lines += [
            "",
            f"Outside the tasks (start-up before the first task starts, and the end after the last one): "
            f"{outside:.1f} s, {outside / floor['wall_s']:.2f}x of the floor's wall time.",
        ]
    table = "\n".join(lines)
    (out / "corpus.md").write_text(table + "\n")
    (out / "corpus.json").write_text(
        json.dumps({"floor": floor, "curate": curate, "timings": run["timings"], "load": load}, indent=1)
    )
    print("\n" + table)


if __name__ == "__main__":
    main()
