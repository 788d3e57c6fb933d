"""`reelmill eval`: sample held-out prompts from a trained model and measure the videos against real clips.

The prompts come from a text file (one per line) or the first captions of held-out shards; the samples are
drawn seeded and batched, with classifier-free guidance, exactly as `reelmill sample` draws them (through
`jobs.sample.load_generator` and `generate_videos`). The real clips are decoded from curated shards at the
model's clip size with the training decode (`training.clip_decode.decode_clip`), so both sets are the same
shape. Then FVD, CLIPSIM, subject consistency and the motion/flicker statistics (training/evaluation/) are
computed on the samples, and the same per-video statistics on the real clips as the reference row.

    DIR/eval.json        metrics (samples and real), feature network, models, counts, seeds, timings
    DIR/samples/NNN.mp4  the samples, with their prompts beside them as NNN.txt
    DIR/index.html       the samples playing beside their prompts, and the metrics table

An unreadable real shard, an undecodable or too short real clip and a failed sampling batch are counted in
eval.json, not fatal; bad input (no prompts, no real clip, a missing checkpoint or metric model) is a
ConfigError, exit status 2.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import UTC, datetime

import numpy as np

from curation.config import ConfigError, to_dict
from curation.inputs import InputError
from training.evaluation.config import EvalConfig
from training.evaluation.real_clips import read_real_clips
from training.evaluation.suite import PER_VIDEO, EvalSuite

EVAL_JSON = "eval.json"


def read_prompts(path: str) -> list[str]:
    """Prompts of a text file, one a line (blank lines and `#` comments skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--prompts {path}: cannot read it ({exc})") from None
    return [line for line in lines if line and not line.startswith("#")]


def choose_prompts(prompts_file: str | None, val_shards: str | None, count: int) -> list[str]:
    from training.sample_callback import held_out_captions

    if bool(prompts_file) == bool(val_shards):
        raise ConfigError("give exactly one of --prompts FILE and --val-shards SHARDS")
    if prompts_file:
        prompts = read_prompts(prompts_file)[:count]
        where = f"--prompts {prompts_file}"
    else:
        try:
            prompts = held_out_captions(val_shards, count)
        except InputError as exc:
            raise ConfigError(f"--val-shards: {exc}") from None
        where = f"--val-shards {val_shards}"
    if not prompts:
        raise ConfigError(f"{where}: no prompts in it")
    return prompts


def sample_videos(
    module, prompts: list[str], size: dict, output: str, batch_size: int, steps: int, guidance: float,
    seed: int, use_ema: bool = True, log=print,
) -> tuple[list[dict], list[np.ndarray], dict]:  # fmt: skip
    """Sample `prompts` in batches (batch k seeded with seed + k), write DIR/samples/NNN.mp4 and .txt;
    returns one row per written sample, their uint8 frames, and the failed batches."""
    from training.video_out import to_frames, write_mp4

    directory = os.path.join(output, "samples")
    os.makedirs(directory, exist_ok=True)
    rows, frames, failed = [], [], {"batches": 0, "prompts": 0, "errors": []}
    started = time.perf_counter()
    batches = range(0, len(prompts), batch_size)
    for k, start in enumerate(batches):
        chunk = prompts[start : start + batch_size]
        try:
            videos = module.generate_videos(
                chunk, int(size["num_frames"]), int(size["height"]), int(size["width"]),
                steps=steps, guidance=guidance, seed=seed + k, use_ema=use_ema,
            )  # fmt: skip
        except (RuntimeError, ValueError) as exc:  # one failing batch (e.g. out of memory) is counted
            failed["batches"] += 1
            failed["prompts"] += len(chunk)
            failed["errors"].append(f"batch {k}: {type(exc).__name__}: {str(exc)[:300]}")
            log(
                f"reelmill eval: sampling batch {k + 1}/{len(batches)} failed ({type(exc).__name__}); counted"
            )
            continue
        for i, (prompt, video) in enumerate(zip(chunk, videos, strict=True)):
            index = start + i
            video_frames = to_frames(video)
            name = f"{index:03d}"
            write_mp4(video_frames, os.path.join(directory, f"{name}.mp4"), fps=float(size["fps"]))
            with open(os.path.join(directory, f"{name}.txt"), "w", encoding="utf-8") as f:
                f.write(prompt + "\n")
            rows.append({"index": index, "prompt": prompt, "video": f"samples/{name}.mp4", "seed": seed + k})
            frames.append(video_frames)
        elapsed = time.perf_counter() - started
        done = min(start + batch_size, len(prompts))
        log(f"reelmill eval: sampled {done}/{len(prompts)} prompts, elapsed {elapsed:.1f} s")
    return rows, frames, failed


def run_eval(
    ckpt: str,
    output: str,
    real: str,
    cfg: EvalConfig | None = None,
    prompts_file: str | None = None,
    val_shards: str | None = None,
    num_samples: int = 16,
    num_real: int = 64,
    batch_size: int = 4,
    steps: int = 30,
    guidance: float = 5.0,
    seed: int = 0,
    device: str = "auto",
    use_ema: bool = True,
    vae_model: str | None = None,
    text_encoder_model: str | None = None,
    log=print,
) -> dict:
    """Sample, measure, and write DIR/eval.json, DIR/samples/ and DIR/index.html; returns eval.json's content."""
    from jobs.sample import load_generator, resolve_device
    from training.evaluation.page import write_page

    cfg = cfg or EvalConfig()
    for flag, value in (("--num-samples", num_samples), ("--num-real", num_real), ("--batch-size", batch_size),
                        ("--steps", steps)):  # fmt: skip
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if not os.path.isfile(ckpt) and not os.path.isdir(ckpt):
        raise ConfigError(f"--ckpt {ckpt}: no such checkpoint file or export directory")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    prompts = choose_prompts(prompts_file, val_shards, num_samples)
    device = resolve_device(device)
    suite = EvalSuite(cfg, device if cfg.device == "auto" else None)  # metric models first: fail fast
    timings["load_metric_models_s"] = time.perf_counter() - started
    module, size = load_generator(
        ckpt, device=device, vae_model=vae_model, text_encoder_model=text_encoder_model
    )
    missing = [k for k, v in size.items() if v is None]
    if missing:
        raise ConfigError(f"--ckpt {ckpt} does not say the clip size it trained on ({', '.join(missing)})")
    log(
        f"reelmill eval: {len(prompts)} prompts, {size['num_frames']} frames {size['width']}x{size['height']} "
        f"at {size['fps']:g} fps, {steps} steps, guidance {guidance:g}, seed {seed}"
    )
    mark = time.perf_counter()
    real_videos, real_captions, real_skipped = read_real_clips(
        real, num_real, size, "--real", lambda line: log(f"reelmill eval: {line}")
    )
    timings["read_real_s"] = time.perf_counter() - mark
    log(
        f"reelmill eval: {len(real_videos)} real clips from {real} (skipped: {_nonzero(real_skipped) or 'none'})"
    )
    os.makedirs(output, exist_ok=True)
    mark = time.perf_counter()
    rows, sample_frames, failed = sample_videos(
        module, prompts, size, output, batch_size, steps, guidance, seed, use_ema, log
    )
    timings["sample_s"] = time.perf_counter() - mark
    fps = float(size["fps"])
    mark = time.perf_counter()
    samples = suite.measure(sample_frames, [r["prompt"] for r in rows], fps)
    reference = suite.measure(real_videos, real_captions, fps)
    fvd_value, fvd_why = suite.fvd(suite.features(real_videos), suite.features(sample_frames))
    timings["metrics_s"] = time.perf_counter() - mark
    samples["metrics"]["fvd"] = fvd_value
    reference["metrics"]["fvd"] = None  # FVD is a distance between the two sets: one number, the samples' row
    for i, row in enumerate(rows):
        row["metrics"] = {name: values[i] for name, values in samples["per_video"].items()}
    timings["total_s"] = time.perf_counter() - started
    models = "random-weights" if suite.random_weights() or _generator_random(module) else "pretrained"
    result = {
        "command": "reelmill eval",
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "ckpt": os.path.abspath(ckpt),
        "real": real,
        "models": models,
        "metric_models": suite.models(),
        "feature_network": suite.models().get("fvd"),
        "skipped_metrics": suite.skipped | ({"fvd": fvd_why} if fvd_why else {}),
        "clip": size,
        "sampling": {
            "steps": steps,
            "guidance": guidance,
            "seed": seed,
            "batch_size": batch_size,
            "use_ema": use_ema,
            "seeds": sorted({r["seed"] for r in rows}),
        },
        "counts": {
            "prompts": len(prompts),
            "samples": len(rows),
            "failed_samples": failed["prompts"],
            "failed_batches": failed["batches"],
            "real": len(real_videos),
            "real_skipped": real_skipped,
        },
        "errors": failed["errors"],
        "metrics": {"samples": samples["metrics"], "real": reference["metrics"]},
        "metric_order": ["fvd", *PER_VIDEO],
        "timings": {
            **timings,
            "metric_seconds_samples": samples["seconds"],
            "metric_seconds_real": reference["seconds"],
        },
        "samples": rows,
        "config": to_dict(cfg),
        "host": {"device": str(device), "python": platform.python_version()},
    }
    with open(os.path.join(output, EVAL_JSON), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    write_page(result, os.path.join(output, "index.html"))
    for line in metrics_table(result):
        log(line)
    log(f"reelmill eval: wrote {os.path.join(output, EVAL_JSON)} and {os.path.join(output, 'index.html')}")
    return result


def _nonzero(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if v}


def _generator_random(module) -> bool:
    """Whether the generator's encoders are tiny stand-ins, or its DiT was trained on theirs."""
    from jobs.sample import generator_models_label

    return generator_models_label(module) == "random-weights"


def metrics_table(result: dict) -> list[str]:
    """The metrics as the job prints them: one row per metric, samples beside the real reference."""
    lines = [
        "reelmill eval: metrics"
        + ("  [models: random-weights]" if result["models"] == "random-weights" else "")
    ]
    lines.append(f"  {'metric':22s} {'samples':>10s} {'real':>10s}")
    samples, real = result["metrics"]["samples"], result["metrics"]["real"]
    for name in result["metric_order"]:
        why = result["skipped_metrics"].get(name)
        if why:
            lines.append(f"  {name:22s} {'-':>10s} {'-':>10s}  ({why})")
            continue
        lines.append(f"  {name:22s} {_number(samples.get(name)):>10s} {_number(real.get(name)):>10s}")
    network = result.get("feature_network")
    if network:
        lines.append(
            f"  fvd features: {network['path']} (sha256 {network['sha256'][:12]}, {network['call']} call)"
        )
    return lines


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"
