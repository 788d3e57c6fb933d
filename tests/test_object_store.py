"""The whole pipeline on an S3-compatible object store (moto's server on a loopback port): curate ->
recaption -> encode -> train, every input and every output on s3://, read back by webdataset and pyarrow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from conftest import caption_overrides
from curation import config, storage, synthetic
from curation.layout import OutputLayout
from curation.synthetic import VideoSpec, shot_list
from jobs.curate import run_curate
from jobs.encode import run_encode
from jobs.job_configs import CurateJobConfig, EncodeConfig, RecaptionConfig
from jobs.recaption import run_recaption

REELMILL = str(Path(sys.executable).with_name("reelmill"))
ROOT = Path(__file__).resolve().parent.parent


def curate_config(*overrides: str) -> CurateJobConfig:
    sets = ["scoring.aesthetic.enabled=false", "captioning.enabled=false", "filters.mode=score-only"]
    return config.load(
        CurateJobConfig,
        "curate",
        "default",
        [*sets, "input.videos_per_task=1", "shards.max_clips=2", *overrides],
    )


@pytest.fixture(scope="module")
def pipeline(s3_server, ray_local, tiny_vlm, tiny_wan, tmp_path_factory):
    """Raw videos uploaded to a bucket, then each job reading the one before from it and writing to it."""
    bucket = s3_server.bucket("pipeline")
    local = tmp_path_factory.mktemp("s3-videos")
    for i in range(3):
        path = local / f"v{i}.mp4"
        synthetic.make_video(path, VideoSpec(shot_list([50 + 10 * i, 45]), 160, 96))
        storage.write_bytes(f"{bucket}/raw/{path.name}", path.read_bytes())
    runs = {"curate": run_curate([f"{bucket}/raw"], f"{bucket}/curated", curate_config())}
    recaption_cfg = config.load(RecaptionConfig, "recaption", "default", caption_overrides(tiny_vlm))
    runs["recaption"] = run_recaption([f"{bucket}/curated"], f"{bucket}/recaptioned", recaption_cfg)
    encode_cfg = config.load(
        EncodeConfig, "encode", "default",
        ["frames.num_frames=9", "frames.fps=8.0", "frames.height=64", "frames.width=64", "device=cpu",
         f"vae.model={tiny_wan}", f"text_encoder.model={tiny_wan}"],
    )  # fmt: skip
    runs["encode"] = run_encode([f"{bucket}/recaptioned"], f"{bucket}/latents", encode_cfg)
    return bucket, runs


def _keys(bucket: str) -> list[str]:
    name = bucket.removeprefix("s3://")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=name)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _webdataset_keys(shards: list[str]) -> set[str]:
    """Sample keys as the webdataset library reads the shards, through a `pipe:` that streams each
    object (how webdataset reads object stores)."""
    reader = (
        "import sys; from curation import storage; sys.stdout.buffer.write(storage.read_bytes(sys.argv[1]))"
    )
    urls = [f"pipe:{sys.executable} -c '{reader}' {uri}" for uri in shards]
    return {sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False)}


def test_every_job_writes_its_outputs_to_the_bucket(pipeline):
    bucket, runs = pipeline
    curated = runs["curate"]["counts"]
    assert (
        runs["curate"]["tasks"]["run_now"] == 3 and curated["videos_ok"] == 3 and curated["clips_kept"] >= 2
    )
    assert (
        runs["recaption"]["counts"]["captioned"]
        == runs["recaption"]["counts"]["selected"]
        == curated["clips_kept"]
    )
    assert runs["encode"]["counts"]["written"] == curated["clips_kept"]
    for job, out in (("curate", "curated"), ("recaption", "recaptioned"), ("encode", "latents")):
        run_json = json.loads(storage.read_bytes(f"{bucket}/{out}/run.json"))
        assert run_json["job"] == job and run_json["state"] == "finished" and run_json["io"]["retries"] == 0
    keys = _keys(bucket)
    assert not [k for k in keys if ".tmp-" in k]
    assert not [k for k in keys if k.endswith("lock.json")]
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=bucket.removeprefix("s3://"))
    assert not uploads.get("Uploads")


def test_webdataset_and_pyarrow_read_back_what_each_job_wrote(pipeline):
    bucket, runs = pipeline
    for out in ("curated", "recaptioned"):
        layout = OutputLayout(f"{bucket}/{out}")
        clips = layout.read_manifest(layout.clips_manifest).to_pylist()
        kept = {c["clip_id"] for c in clips if c["kept"]}
        assert kept and _webdataset_keys(layout.shard_files()) == kept
    latents = OutputLayout(f"{bucket}/latents")
    rows = pq.read_table(storage.open_input_file(latents.manifest_parts(latents.samples_manifest)[0]))
    assert rows.num_rows >= 1
    assert len(_webdataset_keys(latents.shard_files())) == runs["encode"]["counts"]["written"]


def test_a_rerun_on_the_bucket_verifies_every_checksum_and_redoes_nothing(pipeline):
    bucket, runs = pipeline
    again = run_curate([f"{bucket}/raw"], f"{bucket}/curated", curate_config("resume.verify=checksum"))
    assert again["tasks"]["run_now"] == 0 and again["tasks"]["redone"] == {}
    assert again["counts"] == runs["curate"]["counts"]


def test_train_reads_latents_from_the_bucket_and_checkpoints_to_it(pipeline, tiny_wan):
    bucket, _ = pipeline
    encoder = json.dumps({"model": tiny_wan})
    run_dir = f"{bucket}/runs/tiny"
    done = subprocess.run(
        [REELMILL, "train", "fit", "--config", "dit-tiny-cpu", "--data.kind", "latent",
         "--data.shards", f"{bucket}/latents", "--trainer.default_root_dir", run_dir,
         "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "0",
         "--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
         "--model.vae", encoder, "--model.text_encoder", encoder],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert storage.exists(f"{run_dir}/checkpoints/last.ckpt")
    assert storage.size(f"{run_dir}/checkpoints/last.ckpt") > 0
