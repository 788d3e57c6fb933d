"""`make demo`, the README's main command, runs on a machine with nothing but the checkout, and its log
reads cleanly: a progress line per task, each line once, none of the libraries' noise."""

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from conftest import decode_frames, probe_video

ROOT = Path(__file__).resolve().parent.parent

NOISE = {
    "hub retries": r"Retrying in \d+s|thrown while requesting (?:HEAD|GET)",
    "a second root handler": r"^(?:WARNING|INFO):(?:root|huggingface_hub|lightning)[.:]",
    "open_clip's random stand-in": r"No pretrained weights loaded for model",
    "transformers' bars": r"Writing model shards|Loading weights",
    "Qwen's pixel cap notice": r"per-frame pixel cap",
    "Ray's token auth": r"Token authentication is enabled",
    "Ray core on actor arguments": r"core_worker\.cc.*constructor arguments in the object store",
    "Ray Data's progress": r"Total Progress|logging_progress\.py|Starting execution|Execution plan|"
    r"Progress will be logged|Progress bars disabled|execution finished in",
    "Lightning's advertisement": r"Tip: For seamless cloud logging",
    "Lightning's LeafSpec": r"isinstance\(treespec, LeafSpec\)",
    "resuming's own directory": r"Checkpoint directory .* exists and is not empty",
}
"""What the demo's log once held and must not again (each fixed at its cause or dropped by message)."""


def unreachable_hub() -> str:
    """An endpoint that refuses connections: the demo looks its models up, as offline, and fetches none."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def repeated(lines: list[str]) -> dict[str, int]:
    """Lines that occur more than once; a line is compared without its timestamp and the `(... pid=N)`
    prefix Ray puts on a worker's output, so a notice per actor counts as repeated. Lines without a letter
    or digit say nothing and may repeat: blank ones, and the closing brackets of the counts the demo
    prints as indented JSON."""
    keys = [
        re.sub(r"^\S*\(.*?pid=\d+.*?\)\S*\s*|^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+\]?\s*", "", s) for s in lines
    ]
    return {k: n for k, n in Counter(k for k in keys if re.search(r"\w", k)).items() if n > 1}


def sheet_matches_its_clip(sheet_path: Path, times: list[float], clip_mp4: bytes, tmp_path: Path) -> None:
    """A contact sheet holds its clip's frames: 256-wide tiles in a 4-column grid (4 px gaps, a 22 px
    label under each), each tile one of the clip's own frames, none of them blank. (That tile n
    is the frame at `times[n]` is tests/test_caption_frame_times.py's claim: the frames are sampled about
    half a step late today.)"""
    from PIL import Image

    sheet = np.asarray(Image.open(sheet_path).convert("RGB"), dtype=np.float32)
    clip = tmp_path / "sheet-clip.mp4"
    clip.write_bytes(clip_mp4)
    info = probe_video(clip)
    rows = -(-len(times) // 4)
    tile_h = (sheet.shape[0] - 4) // rows - 22 - 4
    assert sheet.shape == (rows * (tile_h + 22 + 4) + 4, min(4, len(times)) * (256 + 4) + 4, 3)
    # the tiles keep the clip's shape (to a pixel: the report's frames are scaled to even sizes first)
    assert abs(tile_h - 256 * int(info["height"]) / int(info["width"])) <= 1.5, tile_h
    frames = block_means(decode_frames(clip, 256, tile_h))
    for n, t in enumerate(times):
        x, y = 4 + (n % 4) * (256 + 4), 4 + (n // 4) * (tile_h + 22 + 4)
        tile = sheet[y : y + tile_h, x : x + 256]
        assert tile.std() > 10, f"tile {n} of {sheet_path.name} is blank"
        errors = np.mean(np.abs(frames - block_means(tile)), axis=(1, 2, 3))
        # one frame of the clip is the tile (a mean error of 1-2 levels), far closer than the clip's typical frame
        best = float(errors.min())
        assert best < 5 and best < np.median(errors) / 3, (sheet_path.name, n, t, best)


def block_means(pictures: np.ndarray, block: int = 8) -> np.ndarray:
    """Means over 8x8-pixel blocks: a tile and the frame it was made from then differ by a level or two,
    not by the JPEG and rescaling noise that fine detail (mandelbrot, noise) puts on every pixel."""
    h, w = pictures.shape[-3] // block * block, pictures.shape[-2] // block * block
    cells = pictures[..., :h, :w, :].reshape(*pictures.shape[:-3], h // block, block, w // block, block, 3)
    return cells.mean(axis=(-4, -2))


def test_make_demo(tmp_path):
    """`make demo` as the README runs it, with the `reelmill` of the interpreter under test (`BIN`) and
    its setup target taken as done (`-o setup`): no apt-get or pip from a test."""
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = unreachable_hub()  # like CI: no hub, and the demo has to find that out itself
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "reelmill").is_file(), f"no reelmill next to {sys.executable}"
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "-o", "setup", "demo", f"DEMO_OUT={out}", f"BIN={bin_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    log = proc.stdout  # stdout and stderr together, in order, as `make demo > log 2>&1` has it
    (tmp_path / "demo.log").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    assert log.splitlines()[0] == f"{bin_dir}/reelmill demo --output {out}"  # the one command make ran
    assert "reelmill demo: done" in log
    assert "models: random-weights" in log  # no real weights here: said plainly, and marked
    assert "Qwen/Qwen2.5-VL-3B-Instruct (captioning.vlm.model) is not on this machine" in log
    run = json.loads((out / "curated" / "run.json").read_text())
    assert run["state"] == "finished"
    assert run["counts"]["videos_ok"] == 3 and run["counts"]["video_errors"] == {"truncated": 1}
    assert run["models"] == "random-weights"
    # the learned shot detector: 3 + 1 + 1 hard cuts in the three videos, and studio_takes' dissolve
    assert run["config"]["scenes"]["detector"] == "transnetv2"
    assert run["counts"]["transitions"] == {"cut": 5, "gradual": 1}
    assert "TransNetV2 (scenes.detector=transnetv2): hard cuts 5, gradual transitions 1 (in no clip;" in log
    assert run["scores"]["aesthetic"]["count"] > 0 and "aesthetic<4.5" not in run["filters"]["drops_by_rule"]
    shards = sorted((out / "curated" / "shards").glob("*.tar"))
    keys = [s["__key__"] for url in shards for s in wds.WebDataset(str(url), shardshuffle=False)]
    assert len(keys) == run["counts"]["clips_kept"] > 0
    report = json.loads((out / "curated" / "report" / "report.json").read_text())
    assert report["run"]["models"] == "random-weights" and report["alignment"]["status"] == "ok"
    assert report["funnel"]["kept_clips"] == len(keys)
    assert "models: random-weights" in (out / "curated" / "report" / "index.html").read_text()
    # the report's galleries: each sheet is its clip's frames (the first one checked against the clip)
    shown = [clip for gallery in report["examples"].values() for clip in gallery if clip.get("sheet")]
    assert shown
    members = {s["__key__"]: s for url in shards for s in wds.WebDataset(str(url), shardshuffle=False)}
    for clip in {c["key"]: c for c in shown}.values():
        sheet = out / "curated" / "report" / clip["sheet"]
        sheet_matches_its_clip(sheet, clip["sheet_times"], members[clip["key"]]["mp4"], tmp_path)
    # the chain goes on: latents, a few training steps resumed once from `last`, a sampled mp4
    assert "reelmill demo: the chain is complete  [models: random-weights]" in log
    encoded = json.loads((out / "latents" / "run.json").read_text())
    assert encoded["models"] == "random-weights" and encoded["counts"]["written"] == len(keys)
    ckpt = torch.load(out / "train" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 30 and "ema.final.linear.weight" in ckpt["state_dict"]
    info = probe_video(out / "sample.mp4")
    assert (info["codec_name"], info["nb_read_frames"]) == ("h264", "9")
    # and evaluates it (reelmill eval) against the curated clips, with stand-in metric models, said so
    evaluated = json.loads((out / "eval" / "eval.json").read_text())
    assert evaluated["models"] == "random-weights" and evaluated["counts"]["samples"] == 2
    assert evaluated["counts"]["real"] > 0 and evaluated["skipped_metrics"] == {}
    for name in ("fvd", "clipsim", "subject_consistency", "frame_diff", "flicker", "motion"):
        assert evaluated["metrics"]["samples"][name] is not None, name
    assert "a metric model of reelmill eval is missing" in log
    assert (
        "reelmill eval: metrics  [models: random-weights]" in log and (out / "eval" / "index.html").is_file()
    )

    # the log: a progress line per task of each job, the last one with every task done
    for job, result in (("curate", run), ("encode", encoded)):
        done = re.findall(rf"^reelmill {job}: tasks (\d+)/(\d+), .*, ETA [\d:]+$", log, re.M)
        total = result["tasks"]["total"]
        assert len(done) == result["tasks"]["run_now"] and done[-1] == (str(total), str(total)), done
        assert result["state"] == "finished"
    for what, pattern in NOISE.items():
        found = re.findall(rf"^.*(?:{pattern}).*$", log, re.M)
        assert not found, f"{what}: {found}"
    # each line once. The demo trains twice on purpose (a fit, then a resume from its checkpoint), so the
    # trainer's start-up lines come once per fit: each part of the log is checked on its own.
    first, resumed = log.split("reelmill demo: resuming from the last checkpoint", 1)
    for part in (first, resumed):
        assert not repeated(part.splitlines()), repeated(part.splitlines())
