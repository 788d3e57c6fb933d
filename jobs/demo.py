"""`reelmill demo` / `make demo`: the whole pipeline on sample videos it makes, on the embedded Ray."""

from __future__ import annotations

import json
import os

from curation import config as config_lib
from curation import storage, synthetic
from curation.layout import OutputLayout
from jobs.curate import run_curate
from jobs.job_configs import CurateJobConfig


def use_stand_in_models_if_missing(cfg: CurateJobConfig, directory: str) -> str | None:
    """Point the config at tiny random-weight models where the default weights are missing.

    Returns "random-weights" when it did (and says so), None when the real weights are configured.
    """
    aesthetic = cfg.scoring.aesthetic
    if not aesthetic.enabled or (aesthetic.head_weights and storage.exists(aesthetic.head_weights)):
        return None
    from curation.scoring.tiny_models import build_tiny_aesthetic_models

    print(
        "reelmill demo: the aesthetic scorer's weights are missing (scoring.aesthetic.head_weights: the LAION "
        f"head for {aesthetic.clip_model}/{aesthetic.clip_pretrained}); running the same pipeline with tiny "
        f"random-weight models of the same architectures, saved in {directory}.\n"
        "reelmill demo: their aesthetic scores mean nothing, so the aesthetic filter rule is off; every output "
        "is marked models: random-weights"
    )
    for key, value in build_tiny_aesthetic_models(directory).items():
        setattr(aesthetic, key, value)
    aesthetic.device = "cpu"
    cfg.filters.rules = [r for r in cfg.filters.rules if r.score != "aesthetic"]
    return "random-weights"


def use_stand_in_vlm_if_missing(cfg: CurateJobConfig, directory: str) -> str | None:
    """Caption with a tiny Qwen2-VL fitted to one stand-in caption when the configured VLM is missing.

    Returns "random-weights" when it did (and says so), None when the configured model loads.
    """
    captioning = cfg.captioning
    if not captioning.enabled:
        return None
    from captioning.vlm import ModelLoadError, check_model_available

    try:
        check_model_available(captioning.vlm)
        return None
    except ModelLoadError:
        pass
    from captioning.tiny_vlm import build_tiny_qwen2_vl, fit_answer

    path = os.path.join(directory, "tiny-qwen2-vl")
    print(
        f"reelmill demo: the captioning model {captioning.vlm.model} (captioning.vlm.model) is not on this machine "
        "and cannot be fetched; running the same captioning stage with a tiny random-weight Qwen2-VL, fine-tuned "
        f"for a few seconds to write one fixed stand-in caption, saved in {path}.\n"
        "reelmill demo: its captions describe nothing; every output is marked models: random-weights"
    )
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        build_tiny_qwen2_vl(path)
        fit_answer(path)
    captioning.vlm.model, captioning.vlm.device = path, "cpu"
    captioning.vlm.max_new_tokens = 96
    captioning.frames.max_pixels = 112 * 112
    return "random-weights"


def run_demo(output: str, num_cpus: int | None = None) -> dict:
    samples = os.path.join(output, "samples")
    if not os.path.isdir(samples) or not os.listdir(samples):
        print(f"reelmill demo: making sample videos in {samples} (ffmpeg lavfi)")
        synthetic.sample_set(samples)
    cfg = config_lib.load(CurateJobConfig, "curate", "default", ["input.videos_per_task=2"])
    stand_ins = [
        use_stand_in_models_if_missing(cfg, os.path.join(output, "models")),
        use_stand_in_vlm_if_missing(cfg, os.path.join(output, "models")),
    ]
    models = "random-weights" if "random-weights" in stand_ins else None
    curated = os.path.join(output, "curated")
    run = run_curate([samples], curated, cfg, overwrite=True, num_cpus=num_cpus, models=models)
    layout = OutputLayout(curated)
    shards = layout.shard_files()
    print("\nreelmill demo: done" + (f"  [models: {models}]" if models else ""))
    print(f"  inputs     {samples}")
    print(f"  shards     {len(shards)} in {layout.shards}")
    print(f"  manifests  {layout.videos_manifest}  {layout.clips_manifest}")
    print(f"  run.json   {layout.run_json}")
    print(f"  report     {layout.path('report', 'index.html')}  (rebuild: reelmill report {curated})")
    videos = layout.read_manifest(layout.videos_manifest).to_pylist()
    for v in videos:
        detail = f"{v['num_kept']}/{v['num_clips']} clips kept" if v["status"] == "ok" else v["error"]
        print(f"    {os.path.basename(v['uri']):22s} {v['status']:5s} {detail}")
    print(json.dumps(run["counts"], indent=1))
    captioning = run["captioning"]
    if captioning["enabled"]:
        print(
            f"  captions   {captioning['captioned']} of {captioning['clips']} clips by {captioning['model']} "
            f"({captioning['prompt_id']}), failures: {captioning['failed'] or 'none'}"
        )
        clips = layout.read_manifest(layout.clips_manifest).to_pylist()
        example = next((c for c in clips if c["caption.summary"] is not None), None)
        if example is not None:
            print(f"  example    {example['clip_id']} ({example['duration_s']:.1f}s):")
            print(f"    {example['caption.summary']}")
            for seg in example["caption.segments"]:
                print(f"    [{seg['start_s']:.1f}-{seg['end_s']:.1f}s] {seg['text']}")
    if not shards or not storage.exists(layout.run_json):
        raise RuntimeError("demo produced no shards")
    return run
