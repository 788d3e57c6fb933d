"""`make demo`, the README's main command, runs on a machine with nothing but the checkout."""

import json
import subprocess
from pathlib import Path

import torch
import webdataset as wds

from conftest import probe_video

ROOT = Path(__file__).resolve().parent.parent


def test_make_demo(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        ["make", "-C", str(ROOT), "demo", f"DEMO_OUT={out}"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "reelmill demo: done" in proc.stdout
    assert "models: random-weights" in proc.stdout  # no real weights here: said plainly, and marked
    run = json.loads((out / "curated" / "run.json").read_text())
    assert run["counts"]["videos_ok"] == 3 and run["counts"]["video_errors"] == {"truncated": 1}
    assert run["models"] == "random-weights"
    assert run["scores"]["aesthetic"]["count"] > 0 and "aesthetic<4.5" not in run["filters"]["drops_by_rule"]
    shards = sorted((out / "curated" / "shards").glob("*.tar"))
    keys = [s["__key__"] for url in shards for s in wds.WebDataset(str(url), shardshuffle=False)]
    assert len(keys) == run["counts"]["clips_kept"] > 0
    report = json.loads((out / "curated" / "report" / "report.json").read_text())
    assert report["run"]["models"] == "random-weights" and report["alignment"]["status"] == "ok"
    assert report["funnel"]["kept_clips"] == len(keys)
    assert "models: random-weights" in (out / "curated" / "report" / "index.html").read_text()
    # the chain goes on: latents, a few training steps resumed once from `last`, a sampled mp4
    assert "reelmill demo: the chain is complete  [models: random-weights]" in proc.stdout
    encoded = json.loads((out / "latents" / "run.json").read_text())
    assert encoded["models"] == "random-weights" and encoded["counts"]["written"] == len(keys)
    ckpt = torch.load(out / "train" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 30 and "ema.final.linear.weight" in ckpt["state_dict"]
    info = probe_video(out / "sample.mp4")
    assert (info["codec_name"], info["nb_read_frames"]) == ("h264", "9")
