"""`reelmill demo` / `make demo`: the whole pipeline on sample videos it makes, on the embedded Ray."""

from __future__ import annotations

import json
import os

from curation import config as config_lib
from curation import storage, synthetic
from curation.curate_config import CurateConfig
from curation.layout import OutputLayout
from jobs.curate import run_curate


def run_demo(output: str, num_cpus: int | None = None) -> dict:
    samples = os.path.join(output, "samples")
    if not os.path.isdir(samples) or not os.listdir(samples):
        print(f"reelmill demo: making sample videos in {samples} (ffmpeg lavfi)")
        synthetic.sample_set(samples)
    cfg = config_lib.load(CurateConfig, "curate", "default", ["input.videos_per_task=2"])
    curated = os.path.join(output, "curated")
    run = run_curate([samples], curated, cfg, overwrite=True, num_cpus=num_cpus)
    layout = OutputLayout(curated)
    shards = layout.shard_files()
    print("\nreelmill demo: done")
    print(f"  inputs     {samples}")
    print(f"  shards     {len(shards)} in {layout.shards}")
    print(f"  manifests  {layout.videos_manifest}  {layout.clips_manifest}")
    print(f"  run.json   {layout.run_json}")
    videos = layout.read_manifest(layout.videos_manifest).to_pylist()
    for v in videos:
        detail = f"{v['num_kept']}/{v['num_clips']} clips kept" if v["status"] == "ok" else v["error"]
        print(f"    {os.path.basename(v['uri']):22s} {v['status']:5s} {detail}")
    print(json.dumps(run["counts"], indent=1))
    if not shards or not storage.exists(layout.run_json):
        raise RuntimeError("demo produced no shards")
    return run
