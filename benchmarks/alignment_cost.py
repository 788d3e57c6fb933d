"""What the caption alignment stage costs, per frame and per clip, and against `reelmill curate`'s wall time.

Two parts, one after the other on the same cores:

1. **stage**: `captioning.alignment_stage` on clips made here with ffmpeg lavfi (3-6 s, 640x360), the
   frames taken from the VLM's frames as in a run (`captioning.frames` defaults, then
   `captioning.alignment` defaults: 1 fps, at most 256x256 pixels), with random-weight CLIPs of
   three sizes built from open_clip's own model configs and loaded through the stage's loader
   (only the time matters, so no weights are downloaded): the tests' tiny ViT, ViT-B-16 and ViT-L-14
   (the default, `scoring.aesthetic`'s model). Torch gets `--threads` threads, as an actor holding
   that many CPUs does. Reports seconds per frame and per clip (embedding frames and texts, and the
   similarities; taking the frames out of the caption frames is counted apart, `prep`).
2. **curate**: `reelmill curate` with captioning (the tests' tiny VLM, fine-tuned here or given with
   `--vlm`) on a few generated videos, alignment off and on (tiny CLIP), and a run without captioning
   (the CPU scorers only). From run.json: wall time and the stage's task seconds
   (`timings.stage_task_s["caption alignment"]`).

The overhead of the stage at a real model size is projected from both: per-clip CPU seconds of each
CLIP (part 1; CPU time, because wall time on a shared machine measures the neighbours) times the
clips of a run, against that run's wall time (part 2). A part not run keeps its last results in `--out`.

    python benchmarks/alignment_cost.py [--parts stage,curate] [--clips 8] [--threads 1] [--vlm DIR]
                                        [--models tiny,ViT-B-16,ViT-L-14] [--out bench_out/alignment]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import open_clip  # noqa: E402
import torch  # noqa: E402

from captioning.alignment_stage import AlignmentStage, alignment_frames  # noqa: E402
from captioning.caption_config import AlignmentConfig, CaptionFramesConfig  # noqa: E402
from captioning.captioner import CaptionOutcome  # noqa: E402
from captioning.video_frames import prepare_clip  # noqa: E402
from curation import synthetic  # noqa: E402
from curation.scoring.tiny_models import TINY_CLIP_NAME, build_tiny_aesthetic_models  # noqa: E402
from curation.scoring_config import AestheticConfig  # noqa: E402
from curation.synthetic import Shot, VideoSpec  # noqa: E402

BIN = Path(sys.executable).parent
SOURCES = ("testsrc2", "mandelbrot", "bars", "gradients", "cellauto", "life")


def make_clips(directory: Path, count: int) -> list[tuple[str, bytes]]:
    directory.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        frames = 75 + 25 * (i % 4)  # 3-6 s at 25 fps
        path = synthetic.make_video(
            directory / f"clip{i}.mp4", VideoSpec([Shot(SOURCES[i % len(SOURCES)], frames)], 640, 360)
        )
        clips.append((f"clip{i}", path.read_bytes()))
    return clips


def clip_config(name: str, directory: Path) -> AestheticConfig:
    """A random-weight CLIP of open_clip's `name` config, saved and loaded back as a user's checkpoint."""
    if name == "tiny":
        models = build_tiny_aesthetic_models(directory / "tiny")
        return AestheticConfig(
            clip_model=TINY_CLIP_NAME,
            clip_pretrained=models["clip_pretrained"],
            clip_model_config=models["clip_model_config"],
            device="cpu",
        )
    checkpoint = directory / f"{name}-random.pt"
    if not checkpoint.exists():
        torch.save(open_clip.create_model(name).state_dict(), checkpoint)
    return AestheticConfig(clip_model=name, clip_pretrained=str(checkpoint), device="cpu")


def caption(duration_s: float, i: int) -> dict:
    """A caption of the usual shape: a summary and one segment per ~2 s."""
    count = max(1, round(duration_s / 2))
    step = duration_s / count
    return {
        "summary": f"a synthetic test pattern number {i} moves slowly across the frame",
        "segments": [
            {"start_s": k * step, "end_s": (k + 1) * step, "text": f"part {k} of pattern {i} shifts"}
            for k in range(count)
        ],
    }


def stage_part(args, out: Path) -> list[dict]:
    torch.set_num_threads(args.threads)
    clips = make_clips(out / "clips", args.clips)
    prepared = [prepare_clip(key, mp4, CaptionFramesConfig()) for key, mp4 in clips]
    cfg = AlignmentConfig(enabled=True)
    rows = []
    for name in args.models.split(","):
        clip = clip_config(name, out / "models")
        started = time.perf_counter()
        stage = AlignmentStage(cfg, clip)
        load_s = time.perf_counter() - started
        frames = alignment_frames(prepared, cfg)
        outcomes = [
            CaptionOutcome(p.key, caption=caption(p.duration_s, i), metrics={})
            for i, p in enumerate(prepared)
        ]
        stage.run(outcomes[:2], frames)  # warm-up (first calls allocate)
        cpu0 = time.process_time()
        stats = stage.run(outcomes, frames)
        cpu_s = time.process_time() - cpu0  # this process's CPU time: less at the mercy of a busy machine
        row = {
            "model": name,
            "threads": args.threads,
            "clips": stats.aligned,
            "frames": stats.frames,
            "texts": stats.texts,
            "load_s": round(load_s, 2),
            "prep_s_per_clip": round(frames.prep_s / len(prepared), 4),
            "embed_s": round(stats.embed_s, 3),
            "s_per_frame": round(stats.embed_s / stats.frames, 4),
            "s_per_clip": round(stats.embed_s / stats.aligned, 4),
            "cpu_s_per_frame": round(cpu_s / stats.frames, 4),
            "cpu_s_per_clip": round(cpu_s / stats.aligned, 4),
        }
        rows.append(row)
        print(
            f"  {name:9s} {row['s_per_frame']:.4f} s/frame  {row['s_per_clip']:.3f} s/clip  "
            f"(cpu {row['cpu_s_per_frame']:.4f} s/frame)",
            flush=True,
        )
    return rows


CURATE_VIDEOS = {  # 9 shots, 2.8-4 s each: about 9 clips
    "first.mp4": VideoSpec(synthetic.shot_list([70, 100, 90]), 320, 240),
    "second.mp4": VideoSpec(
        synthetic.shot_list([80, 70, 90], cycle=("mandelbrot", "bars", "testsrc2")), 320, 240
    ),
    "third.mp4": VideoSpec(
        synthetic.shot_list([95, 75, 85], cycle=("gradients", "testsrc2", "cellauto")), 320, 240
    ),
}


def tiny_vlm(args, out: Path) -> str:
    if args.vlm:
        return args.vlm
    from captioning.tiny_vlm import build_tiny_qwen2_vl, fit_answer

    path = build_tiny_qwen2_vl(out / "tiny-vlm")
    fit_answer(path)
    return path


def curate_part(args, out: Path) -> list[dict]:
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for name, spec in CURATE_VIDEOS.items():
        if not (videos / name).exists():
            synthetic.make_video(videos / name, spec)
    clip = clip_config("tiny", out / "models")
    vlm = tiny_vlm(args, out)
    common = [
        "scoring.aesthetic.enabled=false",
        "filters.mode=score-only",
        "input.videos_per_task=1",
        "scoring.camera.enabled=false",  # no camera hints in the prompt: the tiny VLM was fit without them
        f"scoring.aesthetic.clip_model={clip.clip_model}",
        f"scoring.aesthetic.clip_pretrained={clip.clip_pretrained}",
        f"scoring.aesthetic.clip_model_config={clip.clip_model_config}",
        "scoring.aesthetic.device=cpu",
    ]
    captioning = [
        f"captioning.vlm.model={vlm}",
        "captioning.vlm.device=cpu",
        "captioning.vlm.max_new_tokens=96",
        "captioning.frames.max_pixels=12544",
        "captioning.memory_gb=1",
        "captioning.cpus=0.5",  # room for the alignment actor next to a split task on 2 CPUs
    ]
    alignment = ["captioning.alignment.enabled=true", "captioning.alignment.cpus=0.5"]
    runs = {
        "scores only": [*common, "captioning.enabled=false"],
        "captioning": [*common, *captioning],
        "captioning+alignment": [*common, *captioning, *alignment],
    }
    rows = []
    for name, sets in runs.items():
        target = out / "curate" / name.replace(" ", "_").replace("+", "_")
        shutil.rmtree(target, ignore_errors=True)
        cmd = [str(BIN / "reelmill"), "curate", "--input", str(videos), "--output", str(target)]
        for assignment in sets:
            cmd += ["--set", assignment]
        log = out / f"{target.name}.log"
        with open(log, "w") as f:
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
        run = json.loads((target / "run.json").read_text())
        stages = run["timings"].get("stage_task_s", {})
        row = {
            "run": name,
            "wall_s": round(run["timings"]["wall_s"], 2),
            "clips": run["counts"]["clips"],
            "alignment_task_s": round(stages.get("caption alignment", 0.0), 3),
            "cmd": " ".join(cmd),
        }
        rows.append(row)
        print(
            f"  {name:22s} wall {row['wall_s']:7.1f}s  alignment {row['alignment_task_s']:.2f}s", flush=True
        )
    return rows


def table(stage: list[dict], curate: list[dict]) -> str:
    lines = []
    if stage:
        lines += [
            "| CLIP (random weights) | threads | clips | frames | s/frame | s/clip | CPU s/frame | CPU s/clip "
            "| prep s/clip | load s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in stage:
            lines.append(
                f"| {r['model']} | {r['threads']} | {r['clips']} | {r['frames']} | {r['s_per_frame']:.4f} | "
                f"{r['s_per_clip']:.3f} | {r['cpu_s_per_frame']:.4f} | {r['cpu_s_per_clip']:.3f} | "
                f"{r['prep_s_per_clip']:.4f} | {r['load_s']:.1f} |"
            )
    if curate:
        base = {r["run"]: r for r in curate}
        lines += [
            "",
            "| curate run | clips | wall s | alignment task s | share of wall |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in curate:
            share = r["alignment_task_s"] / r["wall_s"] if r["wall_s"] else 0.0
            lines.append(
                f"| {r['run']} | {r['clips']} | {r['wall_s']:.1f} | {r['alignment_task_s']:.2f} | {share:.1%} |"
            )
        if stage:
            lines += [
                "",
                "| projected alignment (clips x CPU s/clip) | vs scores-only wall | vs captioning wall (tiny VLM) |",
            ]
            lines.append("| --- | --- | --- |")
            for r in stage:  # CPU seconds per clip: the stage's own work, whatever else the machine runs
                clips = base.get("captioning", {}).get("clips", 0)
                cost = clips * r["cpu_s_per_clip"]
                ratios = [
                    f"{cost / base[k]['wall_s']:.1%}" if k in base and base[k]["wall_s"] else "-"
                    for k in ("scores only", "captioning")
                ]
                lines.append(
                    f"| {r['model']}: {clips} x {r['cpu_s_per_clip']:.3f} = {cost:.1f} s | {ratios[0]} | {ratios[1]} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="stage,curate")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="tiny,ViT-B-16,ViT-L-14")
    parser.add_argument(
        "--vlm", default=None, help="a tiny VLM directory already fine-tuned (tests' tiny_vlm)"
    )
    parser.add_argument("--out", default="bench_out/alignment")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    # a part not run now keeps its rows from the last run into the same --out
    stage = stage_part(args, out) if "stage" in parts else previous.get("stage", [])
    curate = curate_part(args, out) if "curate" in parts else previous.get("curate", [])
    text = table(stage, curate)
    (out / "results.json").write_text(json.dumps({"stage": stage, "curate": curate}, indent=1))
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
