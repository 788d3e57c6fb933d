"""The `models` label (pretrained | random-weights | none): the tiny builders' marker is found beside every
model a job loads (curate: aesthetic CLIP and head, VLM, alignment CLIP; recaption: VLM, alignment CLIP),
and nothing else is taken for a stand-in."""

import shutil

import pytest

from curation import config
from curation.model_labels import RANDOM_WEIGHTS_FILE, is_random_weights, models_label, write_marker
from jobs.job_configs import CurateJobConfig, RecaptionConfig
from jobs.run_info import curate_models_label, recaption_models_label


@pytest.fixture
def marked_vlm(tmp_path) -> str:
    """A directory as a tiny builder leaves it (its marker on top); what is in it does not matter here."""
    directory = tmp_path / "tiny-vlm"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    write_marker(directory, "tests.marked_vlm", 0)
    return str(directory)


def test_the_marker_is_found_on_a_directory_on_files_in_it_and_on_its_subfolders(tiny_aesthetic, tmp_path):
    head = tiny_aesthetic["head_weights"]  # a file in the marked directory
    root = head.rsplit("/", 1)[0]
    assert is_random_weights(head) and is_random_weights(root) and is_random_weights(f"local-dir:{root}")
    sub = tmp_path / "wan"
    (sub / "vae").mkdir(parents=True)
    write_marker(sub, "tests", 0)
    assert is_random_weights(str(sub / "vae"))  # Wan's layout: vae/ under the marked directory
    # the same files without the marker are somebody's weights; names and tags are never a stand-in
    copy = shutil.copytree(root, tmp_path / "copy", ignore=shutil.ignore_patterns(RANDOM_WEIGHTS_FILE))
    assert not any(is_random_weights(str(p)) for p in [copy, *copy.iterdir()])
    assert not any(map(is_random_weights, ["ViT-L-14", "openai", "Qwen/Qwen2.5-VL-3B-Instruct", "", None]))
    assert models_label([]) == models_label([None]) == "none"
    assert models_label(["Qwen/Qwen2.5-VL-3B-Instruct", None]) == "pretrained"
    assert models_label(["Qwen/Qwen2.5-VL-3B-Instruct"], "random-weights") == "random-weights"


def curate_cfg(*sets: str) -> CurateJobConfig:
    return config.load(CurateJobConfig, "curate", "default", list(sets))


def aesthetic_sets(models: dict[str, str]) -> list[str]:
    return [f"scoring.aesthetic.{k}={v}" for k, v in models.items()]


def test_curate_label_looks_at_every_model_the_run_loads(tiny_aesthetic, marked_vlm):
    hub_vlm = "captioning.vlm.model=Qwen/Qwen2.5-VL-3B-Instruct"
    # the defaults: hub names and tags, no stand-in
    assert curate_models_label(curate_cfg(hub_vlm)) == "pretrained"
    nothing = curate_cfg("scoring.aesthetic.enabled=false", "captioning.enabled=false")
    assert curate_models_label(nothing) == "none"
    # the aesthetic scorer's tiny CLIP and head
    assert curate_models_label(curate_cfg(hub_vlm, *aesthetic_sets(tiny_aesthetic))) == "random-weights"
    # only its head is a stand-in
    head = f"scoring.aesthetic.head_weights={tiny_aesthetic['head_weights']}"
    assert curate_models_label(curate_cfg(hub_vlm, head)) == "random-weights"
    # the VLM alone
    vlm = f"captioning.vlm.model={marked_vlm}"
    assert curate_models_label(curate_cfg("scoring.aesthetic.enabled=false", vlm)) == "random-weights"
    # the alignment CLIP alone: the aesthetic scorer is off, yet alignment takes its CLIP settings
    off = ["scoring.aesthetic.enabled=false", hub_vlm, *aesthetic_sets(tiny_aesthetic)]
    assert curate_models_label(curate_cfg(*off)) == "pretrained"  # nothing loads the tiny CLIP
    aligned = curate_cfg(*off, "captioning.alignment.enabled=true")
    assert curate_models_label(aligned) == "random-weights"
    # a label the caller knows of (the demo's) stands
    assert curate_models_label(curate_cfg(hub_vlm), "random-weights") == "random-weights"


def test_recaption_label_looks_at_the_vlm_and_the_alignment_clip(tiny_aesthetic, marked_vlm):
    def label(*sets: str) -> str:
        return recaption_models_label(config.load(RecaptionConfig, "recaption", "default", list(sets)))

    hub_vlm = "captioning.vlm.model=Qwen/Qwen2.5-VL-3B-Instruct"
    assert label(hub_vlm) == "pretrained"
    assert label(f"captioning.vlm.model={marked_vlm}") == "random-weights"
    clip = [
        "captioning.alignment.clip_model=" + tiny_aesthetic["clip_model"],
        "captioning.alignment.clip_pretrained=" + tiny_aesthetic["clip_pretrained"],
        "captioning.alignment.clip_model_config=" + tiny_aesthetic["clip_model_config"],
    ]
    assert label(hub_vlm, *clip) == "pretrained"  # alignment off: that CLIP is never loaded
    assert label(hub_vlm, *clip, "captioning.alignment.enabled=true") == "random-weights"


def test_each_builders_marker_names_the_function_that_wrote_it(tmp_path):
    """The marker's `builder` is a dotted name that resolves to the very builder that wrote it."""
    import importlib
    import json

    from training.evaluation.tiny_models import build_tiny_dinov2, build_tiny_video_net
    from training.tiny_encoders import build_tiny_image_vae

    for builder in (build_tiny_video_net, build_tiny_dinov2, build_tiny_image_vae):
        builder(tmp_path / builder.__name__)
        marker = json.loads((tmp_path / builder.__name__ / RANDOM_WEIGHTS_FILE).read_text())
        module, name = marker["builder"].rsplit(".", 1)
        assert getattr(importlib.import_module(module), name) is builder, marker
