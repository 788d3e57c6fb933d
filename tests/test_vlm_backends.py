"""Every VLM architecture the captioner can be configured with loads and generates through `VLMBackend`.

The default model is Qwen2.5-VL; SmolVLM2, LLaVA-OneVision and Qwen3-VL must load from a directory
and caption a batch of videos through the same code path. Tiny random-weight models of each real
architecture (`vlm_archs`) stand in for the checkpoints, so what is tested is loading, the processor's
handling of video frames and their timestamps, and generation, not what the models say.
"""

from __future__ import annotations

import numpy as np
import pytest
from vlm_archs import ARCHITECTURES

from captioning.caption_config import VLMConfig
from captioning.video_frames import VideoWindow
from captioning.vlm import Generation, ModelLoadError, VideoPrompt, VLMBackend, check_model_available

MAX_NEW_TOKENS = 16  # the smallest `captioning.vlm.max_new_tokens` allows


def window(rng: np.random.Generator, frames: int, height: int, width: int) -> VideoWindow:
    """Random frames 0.5 s apart from a 25 fps clip, as `prepare_clip` samples them at 2 fps."""
    pixels = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    return VideoWindow(0.0, frames * 0.5, pixels, np.arange(frames) * 0.5, 25.0)


def load(arch: str, directory) -> VLMBackend:
    path = ARCHITECTURES[arch].build(directory)
    return VLMBackend(VLMConfig(model=path, device="cpu", max_new_tokens=MAX_NEW_TOKENS))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_loads_and_captions_a_batch_of_videos(arch, tmp_path):
    spec = ARCHITECTURES[arch]
    backend = load(arch, tmp_path / arch)
    check_model_available(backend.cfg)
    assert type(backend.model).__name__ == spec.model_class

    rng = np.random.default_rng(0)
    prompts = [
        VideoPrompt(window(rng, 4, 64, 80), "Describe the video."),
        VideoPrompt(window(rng, 6, 48, 96), "What happens, and when?"),
    ]
    # Only LLaVA-OneVision's processor cannot batch videos of different lengths (see `_stacks_videos`).
    assert backend.stacks_videos == (arch == "llava_onevision")
    video_token_id = backend.processor.tokenizer.convert_tokens_to_ids(spec.video_token)
    for rows in backend._batches(prompts):
        inputs = backend.inputs([prompts[i] for i in rows])
        assert spec.video_key in inputs, sorted(inputs.keys())
        assert (inputs["input_ids"] == video_token_id).sum(dim=1).min() > 0  # every row holds its video

    generations = backend.generate(prompts)
    assert len(generations) == 2
    for generation in generations:
        assert isinstance(generation, Generation)
        assert 1 <= generation.new_tokens <= MAX_NEW_TOKENS


def test_videos_of_different_lengths_are_batched_apart_in_prompt_order(tmp_path):
    """LLaVA-OneVision gets one frame count per generate call; the answers still come back in order."""
    backend = load("llava_onevision", tmp_path / "llava")
    rng = np.random.default_rng(1)
    prompts = [VideoPrompt(window(rng, frames, 40, 60), "Describe the video.") for frames in (6, 4, 2)]
    assert backend._batches(prompts) == [[2], [1], [0]]
    together = [g.text for g in backend.generate(prompts)]
    assert together == [backend.generate([p])[0].text for p in prompts]
    assert len(set(together)) > 1


def test_unloadable_models_raise_model_load_error(tmp_path):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # set by conftest: a missing hub id fails without any request
    (tmp_path / "notes.txt").write_text("not a model\n")
    with pytest.raises(ModelLoadError, match="cannot load"):
        VLMBackend(VLMConfig(model=str(tmp_path), device="cpu"))
    with pytest.raises(ModelLoadError, match="cannot load"):
        check_model_available(VLMConfig(model="reelmill-tests/no-such-vlm"))
