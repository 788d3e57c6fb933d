"""Shot detectors side by side: accuracy on videos with known transitions, speed, and curate's wall time.

Three parts, all in one run on the same cores:

1. **Accuracy**, on a synthetic set made here with ffmpeg (seeded): shots from different lavfi
   sources joined by hard cuts (every fifth shot 2-8 frames long) and by `xfade` transitions
   (`fade`, `fadeblack`, `fadewhite`, `dissolve`, `wipeleft`, `slideup`, 0.5-1.5 s). For each
   detector (`adaptive`, `content`, `transnetv2`, `hybrid`) through `curation.scenes.detect_shots`:
   - hard cuts: precision, recall and F1 with a found cut within +-1 frame of the true one (a cut
     found inside a gradual transition is that transition's, neither right nor wrong here);
   - gradual transitions: how many are found at all (any transition overlapping the blended frames),
     spans found where there is none, and the seconds of blended frames left inside shots (what clips
     are cut from), in total and for the worst transition, with and without wipes and slides.
2. **Speed**: frames/s of each detector, decode included, against the decode alone (the same ffmpeg
   command, frames read and thrown away), on the synthetic set and on curate's benchmark input
   (`benchmarks/curate_vs_peer.py`: 1280x720 H.264). Torch gets one thread, as a split task holding one
   CPU does.
3. **curate**: `reelmill curate` on the benchmark input with each detector (CPU scorers off, no
   captioning), wall time against the ffmpeg transcode floor, as in `curate_vs_peer.py`.

    python benchmarks/shots.py [--seconds 60] [--out bench_out/shots] [--parts accuracy,speed,curate] [--seed 11]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import curate_vs_peer  # noqa: E402
import torch  # noqa: E402

from curation import synthetic  # noqa: E402
from curation.curate_config import SceneConfig  # noqa: E402
from curation.probe import probe  # noqa: E402
from curation.scenes import decode_argv, detect_shots, detection_size  # noqa: E402
from curation.synthetic import Join, VideoSpec  # noqa: E402

DETECTORS = ("adaptive", "content", "transnetv2", "hybrid")
FPS = 25
SIZE = (640, 360)
# Neighbouring shots always differ; `life` is left out (its first second churns like a transition).
CYCLE = ("testsrc2", "mandelbrot", "bars", "cellauto", "gradients", "red")
SHOTS = 48  # in the video of hard cuts; every fifth is 2-8 frames long
SHORT_SHOTS = len(range(2, SHOTS, 5))
MODEL_BLIND = ("wipeleft", "slideup")  # moves, not blends: TransNetV2 was not trained to see them


@dataclass
class Truth:
    path: Path
    frames: int
    cuts: list[int] = field(default_factory=list)
    blends: list[tuple[str, range]] = field(default_factory=list)  # (xfade kind, blended frames)


def make_set(directory: Path, seed: int = 11) -> list[Truth]:
    """Two videos: one of hard cuts with many short shots, one where every join is a random xfade or a
    cut. Truth is what `VideoSpec.transitions` says the join made."""
    rng = random.Random(seed)
    cut_frames = [rng.randint(2, 8) if i % 5 == 2 else rng.randint(25, 90) for i in range(SHOTS)]
    gradual_frames = [rng.randint(60, 110) for _ in range(25)]
    joins = []
    for i in range(len(gradual_frames) - 1):
        kind = "cut" if i % 4 == 3 else synthetic.XFADES[i % len(synthetic.XFADES)]
        joins.append(Join() if kind == "cut" else Join(kind, rng.randint(int(0.5 * FPS), int(1.5 * FPS))))
    specs = {
        "cuts": (synthetic.shot_list(cut_frames, CYCLE), None),
        "gradual": (synthetic.shot_list(gradual_frames, CYCLE), joins),
    }
    truths = []
    for name, (shots, join_list) in specs.items():
        spec = VideoSpec(
            shots, *SIZE, fps=str(FPS), joins=join_list, output_options={"preset": "veryfast", "crf": 20}
        )
        path = directory / f"{name}.mp4"
        if not path.exists():
            synthetic.make_video(path, spec)
        truth = Truth(path, spec.num_frames)
        for join, (start, end, kind) in zip(spec._joins(), spec.transitions, strict=True):
            if kind == "cut":
                truth.cuts.append(start)
            else:
                truth.blends.append((join.kind, range(start, end)))
        truths.append(truth)
    return truths


def decode_floor(path: Path) -> tuple[float, int]:
    """Seconds to decode and downscale `path` exactly as scene detection does, reading every frame."""
    info = probe(str(path), 0, 60)
    cfg = SceneConfig()
    size = detection_size(info, cfg.width)
    t0 = time.perf_counter()
    proc = subprocess.Popen(decode_argv(str(path), info, size, cfg.fast_decode), stdout=subprocess.PIPE)
    n, frame = 0, size[0] * size[1] * 3
    while len(proc.stdout.read(frame)) == frame:
        n += 1
    proc.wait()
    return time.perf_counter() - t0, n


def run_detector(path: Path, detector: str):
    info = probe(str(path), 0, 60)
    t0 = time.perf_counter()
    result = detect_shots(str(path), info, SceneConfig(detector=detector))
    return result, time.perf_counter() - t0


def overlaps(t, frames: range) -> bool:
    """Whether transition `t` (a cut counts as its one frame) touches `frames` or the frame after them."""
    return t.start <= frames.stop and max(t.end, t.start + 1) >= frames.start


def at_a_blend(frame: int, truth: Truth) -> bool:
    """Whether a cut found at `frame` is where a blend is, give or take a frame."""
    return any(r.start - 1 <= frame <= r.stop + 1 for _, r in truth.blends)


def score(truth: Truth, result, include_blind: bool = True) -> dict:
    """Cut matches at +-1 frame (a cut found at a blend is the blend's), blends found, spans found where
    there is no blend, and the seconds of each blend left inside shots."""
    blends = [(k, r) for k, r in truth.blends if include_blind or k not in MODEL_BLIND]
    found = [t.start for t in result.transitions if t.kind == "cut" and not at_a_blend(t.start, truth)]
    matched, tp = set(), 0
    for cut in truth.cuts:
        hit = next((f for f in found if abs(f - cut) <= 1 and f not in matched), None)
        if hit is not None:
            matched.add(hit)
            tp += 1
    spans = [t for t in result.transitions if t.kind == "gradual"]
    leaks = [sum(any(a <= f < b for a, b in result.shots) for f in r) / FPS for _, r in blends]
    return {
        "tp": tp,
        "found_cuts": len(found),
        "true_cuts": len(truth.cuts),
        "blends": len(blends),
        "blends_found": sum(any(overlaps(t, r) for t in result.transitions) for _, r in blends),
        "false_spans": sum(not any(overlaps(s, r) for _, r in truth.blends) for s in spans),
        "leak_s": sum(leaks),
        "worst_leak_s": max(leaks, default=0.0),
    }


def accuracy_rows(truths: list[Truth]) -> list[dict]:
    rows = []
    for detector in DETECTORS:
        row = {"detector": detector, "frames": 0, "seconds": 0.0}
        scores = []
        for truth in truths:
            result, seconds = run_detector(truth.path, detector)
            row["frames"] += result.decoded_frames
            row["seconds"] += seconds
            scores.append((score(truth, result), score(truth, result, include_blind=False)))
        total = {k: sum(s[0][k] for s in scores) for k in ("tp", "found_cuts", "true_cuts", "blends")}
        total |= {k: sum(s[0][k] for s in scores) for k in ("blends_found", "false_spans", "leak_s")}
        precision = total["tp"] / max(total["found_cuts"], 1)
        recall = total["tp"] / max(total["true_cuts"], 1)
        row |= total | {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-9),
            "worst_leak_s": max(s[0]["worst_leak_s"] for s in scores),
            "leak_s_blends_only": sum(s[1]["leak_s"] for s in scores),
            "worst_leak_s_blends_only": max(s[1]["worst_leak_s"] for s in scores),
            "blends_only": sum(s[1]["blends"] for s in scores),
        }
        rows.append(row)
        print(f"  {detector:10s} F1 {row['f1']:.3f}  blend s in shots {row['leak_s']:.2f}", flush=True)
    return rows


def speed_rows(paths: list[Path]) -> dict:
    floor_s, frames = 0.0, 0
    for path in paths:
        s, n = decode_floor(path)
        floor_s, frames = floor_s + s, frames + n
    out = {"decode": {"frames": frames, "seconds": floor_s}}
    for detector in DETECTORS:
        out[detector] = {"frames": 0, "seconds": 0.0}
        for path in paths:
            result, seconds = run_detector(path, detector)
            out[detector]["frames"] += result.decoded_frames
            out[detector]["seconds"] += seconds
    return out


def curate_rows(src: Path, out: Path) -> list[dict]:
    rows = [
        curate_vs_peer.timed("floor", curate_vs_peer.floor_cmd(src, out / "floor.mp4"), out / "floor.log")
    ]
    for detector in DETECTORS:
        dest = out / f"curate_{detector}"
        sets = [*curate_vs_peer.NO_SCORING, "captioning.enabled=false", f"scenes.detector={detector}"]
        row = curate_vs_peer.timed(
            detector, curate_vs_peer.curate_cmd(src, dest, sets), out / f"{detector}.log"
        )
        run = json.loads((dest / "run.json").read_text())
        row["clips"] = run["counts"]["clips_kept"]
        rows.append(row)
    return rows


def fps(row: dict) -> float:
    return row["frames"] / row["seconds"]


def accuracy_table(acc: list[dict], seed: int) -> list[str]:
    blends = acc[0]["blends"]
    lines = [
        f"Synthetic set (seed {seed}): {acc[0]['true_cuts']} hard cuts (with {SHORT_SHOTS} shots of 2-8 frames), "
        f"{blends} xfade transitions of 0.5-1.5 s ({acc[0]['blends_only']} fades and dissolves, "
        f"{blends - acc[0]['blends_only']} wipes and slides), {SIZE[0]}x{SIZE[1]} {FPS} fps, "
        f"{acc[0]['frames']} frames.",
        "",
        "| detector | cut P | cut R | cut F1 (+-1 frame) | gradual found | false spans "
        "| blend s in shots (worst) | same, fades and dissolves only (worst) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in acc:
        lines.append(
            f"| {r['detector']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
            f"| {r['blends_found']}/{r['blends']} | {r['false_spans']} | {r['leak_s']:.2f} ({r['worst_leak_s']:.2f}) "
            f"| {r['leak_s_blends_only']:.2f} ({r['worst_leak_s_blends_only']:.2f}) |"
        )
    return lines


def speed_table(synth: dict, bench: dict) -> list[str]:
    lines = [
        f"Frames/s with the decode, {os.cpu_count()} cores, torch on 1 thread:",
        "",
        "| detector | synthetic 640x360 | time / decode | 1280x720 input | time / decode | x real time (30 fps) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("decode", *DETECTORS):
        s, b = synth[name], bench[name]
        lines.append(
            f"| {name} | {fps(s):.0f} | {fps(synth['decode']) / fps(s):.2f}x | {fps(b):.0f} "
            f"| {fps(bench['decode']) / fps(b):.2f}x | {fps(b) / 30:.1f}x |"
        )
    return lines


def curate_table(curate: list[dict], seconds: float) -> list[str]:
    floor = curate[0]
    lines = [
        f"`reelmill curate` on the {seconds:g} s 1280x720 input (CPU scorers and captioning off):",
        "",
        "| run | wall s | CPU s | wall / floor | CPU / floor | clips |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in curate:
        lines.append(
            f"| {r['name']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['wall_s'] / floor['wall_s']:.2f}x "
            f"| {r['cpu_s'] / floor['cpu_s']:.2f}x | {r.get('clips', '-')} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the 1280x720 curate input")
    parser.add_argument("--out", default="bench_out/shots")
    parser.add_argument(
        "--parts", default="accuracy,speed,curate", help="which parts to run, comma-separated"
    )
    parser.add_argument("--seed", type=int, default=11, help="of the synthetic set's shot lengths and joins")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"accuracy", "speed", "curate"}:
        parser.error(f"--parts: expected some of accuracy,speed,curate, got {args.parts!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    truths = make_set(out / f"set_{args.seed}", args.seed)
    src = curate_vs_peer.make_input(out / f"input_{int(args.seconds)}s_720p.mp4", args.seconds)
    results, sections = {}, []
    if "accuracy" in parts:
        print("accuracy on the synthetic set:", flush=True)
        results["accuracy"] = accuracy_rows(truths)
        sections.append(accuracy_table(results["accuracy"], args.seed))
    if "speed" in parts:
        print("speed:", flush=True)
        results["speed_synthetic"] = speed_rows([t.path for t in truths])
        results["speed_input"] = speed_rows([src])
        sections.append(speed_table(results["speed_synthetic"], results["speed_input"]))
    if "curate" in parts:
        print("curate with each detector:", flush=True)
        results["curate"] = curate_rows(src, out)
        sections.append(curate_table(results["curate"], args.seconds))
    text = "\n\n".join("\n".join(lines) for lines in sections)
    (out / "shots.md").write_text(text + "\n")
    (out / "shots.json").write_text(json.dumps(results, indent=1))
    print("\n" + text)


if __name__ == "__main__":
    main()
