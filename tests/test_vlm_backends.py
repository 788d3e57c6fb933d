"""Every VLM architecture the captioner can be configured with loads and generates through `VLMBackend`.

The default model is Qwen2.5-VL; SmolVLM2, LLaVA-OneVision and Qwen3-VL must load from a directory
and caption a batch of videos through the same code path. Tiny random-weight models of each real
architecture (`vlm_archs`) stand in for the checkpoints, so what is tested is loading, the processor's
handling of video frames and their timestamps (read from what the model's `generate` is really given),
and generation, not what the models say.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from vlm_archs import ARCHITECTURES, record_generate

from captioning.caption_config import VLMConfig
from captioning.video_frames import VideoWindow
from captioning.vlm import Generation, ModelLoadError, VideoPrompt, VLMBackend, check_model_available

MAX_NEW_TOKENS = 16  # the smallest `captioning.vlm.max_new_tokens` allows
STEP_S = 0.5  # `prepare_clip`'s default 2 fps


def window(rng: np.random.Generator, frames: int, height: int, width: int) -> VideoWindow:
    """Random frames 0.5 s apart from a 30 fps clip (every 15th frame), as `prepare_clip` samples at 2 fps."""
    pixels = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    return VideoWindow(0.0, frames * STEP_S, pixels, np.arange(frames) * STEP_S, 30.0)


def times_in_prompt(text: str) -> list[str]:
    """Frame times written into a decoded prompt: SmolVLM2's `Frame from MM:SS:`, Qwen3-VL's `<t seconds>`."""
    return re.findall(r"Frame from (\d\d:\d\d):", text) + re.findall(r"<(\d+\.\d) seconds>", text)


def expected_times_in_prompt(arch: str, frames: int) -> list[str]:
    """Each model's documented time text for frames taken every `STEP_S` seconds from 0."""
    times = [k * STEP_S for k in range(frames)]
    if arch == "smolvlm":  # every frame, in whole seconds
        return [f"{int(t) // 60:02d}:{int(t) % 60:02d}" for t in times]
    if arch == "qwen3_vl":  # every frame pair (one temporal patch), at its mean time
        return [f"{(a + b) / 2:.1f}" for a, b in zip(times[::2], times[1::2], strict=True)]
    return []


def load(arch: str, directory) -> VLMBackend:
    path = ARCHITECTURES[arch].build(directory)
    return VLMBackend(VLMConfig(model=path, device="cpu", max_new_tokens=MAX_NEW_TOKENS))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_loads_and_captions_a_batch_giving_each_row_its_prompt_video_and_timing(arch, tmp_path):
    """Timing as each model takes it: SmolVLM2 and Qwen3-VL read frame times in the prompt, Qwen2.5-VL
    gets seconds per temporal patch, Qwen2-VL and LLaVA-OneVision only the frames' order."""
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
    calls = record_generate(backend)
    generations = backend.generate(prompts)
    assert len(generations) == 2
    for generation in generations:
        assert isinstance(generation, Generation)
        assert 1 <= generation.new_tokens <= MAX_NEW_TOKENS

    # What the model was given, call by call: each row's own prompt, its video, and the frames' times.
    batches = backend._batches(prompts)
    assert len(calls) == len(batches) == (2 if arch == "llava_onevision" else 1)
    video_token_id = backend.processor.tokenizer.convert_tokens_to_ids(spec.video_token)
    assert bool(expected_times_in_prompt(arch, 4)) == (spec.frame_times == "prompt")
    for rows, call in zip(batches, calls, strict=True):
        assert spec.video_key in call, sorted(call)
        ids = call["input_ids"]
        assert (ids == video_token_id).sum(dim=1).min() > 0  # every row holds its video
        for row, i in enumerate(rows):
            text = backend.processor.tokenizer.decode(ids[row], skip_special_tokens=True)
            assert prompts[i].prompt in text
            frames = len(prompts[i].window.frames)
            assert times_in_prompt(text) == expected_times_in_prompt(arch, frames), text
        if spec.frame_times == "rope":  # seconds per temporal patch of 2 frames
            assert call["second_per_grid_ts"].tolist() == pytest.approx([2 * STEP_S] * len(rows))
        else:
            assert "second_per_grid_ts" not in call


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
