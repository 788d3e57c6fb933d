"""Tiny random-weight VLMs of each architecture the captioner may be configured with, for loading tests.

Each builder writes a 2-layer model (hidden 64, a 2-layer vision tower over small frames) of the real
architecture class, with a tokenizer trained on the fly that holds the placeholder tokens its processor
expects, a chat template that renders `{"type": "video"}` content, and image and video processors set
for small frames, to a directory through `save_pretrained`. The directory then loads through
`AutoProcessor` and `AutoModelForImageTextToText.from_pretrained` exactly as a user's checkpoint would,
so `captioning.vlm.VLMBackend` is exercised end to end for every architecture without any download.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from captioning.prompts import PROMPT_DIR, available_prompts
from captioning.tiny_vlm import SPECIAL_TOKENS, TINY_PIXELS, build_tiny_qwen2_vl, train_tokenizer
from curation.model_labels import write_marker

# Text model shared by every builder: small enough that building and generating take about a second.
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
}


def _corpus() -> list[str]:
    """The shipped prompts and the phrases processors write around video frames, so both tokenize short."""
    prompts = [(PROMPT_DIR / f"{pid}.txt").read_text(encoding="utf-8") for pid in available_prompts()]
    framing = [
        "You are provided the following series of four frames from a 0:00:02 [H:MM:SS] video.\n",
        "\nFrame from 00:01:",
        "<0.5 seconds> <1.0 seconds> <2.5 seconds>",
        "User: Assistant: user assistant system\n",
    ]
    return prompts * 4 + framing * 8


def _ids(tokenizer, tokens: list[str]) -> dict[str, int]:
    return {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}


def _save(directory: str | Path, model, processor) -> str:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    write_marker(directory, f"vlm_archs.{type(model).__name__}", seed=0)
    return str(directory)


# Qwen2.5-VL and Qwen3-VL use Qwen2-VL's tokens and chat template (the captioner sends text and one video);
# Qwen2.5-VL also its frame sizes (`TINY_PIXELS`: 28-pixel multiples, 4-16 tokens a frame pair).
def build_tiny_qwen2_5_vl(directory: str | Path, seed: int = 0) -> str:
    """Qwen2.5-VL: windowed-attention vision tower, absolute-time multimodal RoPE over video frames."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = train_tokenizer(_corpus())
    ids = _ids(tokenizer, SPECIAL_TOKENS)
    config = Qwen2_5_VLConfig(
        text_config={
            **TEXT,
            "vocab_size": len(tokenizer),
            # (t, h, w) sections of the 16-dim heads' 8 frequency pairs
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,  # windows of 2x2 merged patches; the last layer attends to the whole frame
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=TINY_PIXELS),
        video_processor=Qwen2VLVideoProcessor(size=TINY_PIXELS),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    return _save(directory, model, processor)


QWEN3_PIXELS = {"shortest_edge": 64 * 64 * 2, "longest_edge": 128 * 128 * 8}
"""Qwen3-VL's video budget is over all frames of a video (t * h * w), in 32-pixel multiples."""


def build_tiny_qwen3_vl(directory: str | Path, seed: int = 0) -> str:
    """Qwen3-VL: 16-pixel patches, DeepStack features into the first text layers, interleaved
    multimodal RoPE, and each frame's time written into the prompt as text (`<0.5 seconds>`)."""
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = train_tokenizer(_corpus())
    ids = _ids(tokenizer, SPECIAL_TOKENS)
    config = Qwen3VLConfig(
        text_config={
            **TEXT,
            "head_dim": 16,
            "vocab_size": len(tokenizer),
            # the 8 frequency pairs interleaved t, h, w, t, h, w, t, t (Qwen3-VL's [24, 20, 20] of 64, scaled)
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
                "rope_theta": 10000.0,
            },
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,  # an 8x8 grid of learned positions, interpolated to each frame
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=16, size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128}
        ),
        video_processor=Qwen3VLVideoProcessor(size=QWEN3_PIXELS, cap_pixels_per_frame=True),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    return _save(directory, model, processor)


SMOLVLM_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>",
    "<fake_token_around_image>", "<global-img>", "<image>", "<video>",
    *[f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)],
]  # fmt: skip
"""SmolVLM's image placeholders (a frame is `<fake_token_around_image><global-img><image>...`), the row and
column tokens of split images, and `<video>`, which the processor expands into timestamped frames."""

# SmolVLM2's own template (the processor substitutes it for any conversation with a video anyway).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}"
    "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

SMOLVLM_FRAME = 32
"""Frames are resized to this square side: 4x4 patches of 8 pixels, pixel-shuffled by 2 into 4 tokens."""


def build_tiny_smolvlm(directory: str | Path, seed: int = 0) -> str:
    """SmolVLM2: a SigLIP-style tower over each frame as an image, pixel shuffle, a Llama text model; the
    processor writes the frame count, duration and each frame's `MM:SS` into the prompt."""
    import torch
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    tokenizer = train_tokenizer(
        _corpus(),
        special_tokens=SMOLVLM_TOKENS,
        eos_token="<end_of_utterance>",
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    ids = _ids(tokenizer, SMOLVLM_TOKENS)
    patch, scale = 8, 2
    config = SmolVLMConfig(
        text_config={
            **TEXT,
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<end_of_utterance>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": SMOLVLM_FRAME,
            "patch_size": patch,
        },
        image_token_id=ids["<image>"],
        scale_factor=scale,
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<end_of_utterance>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    side = {"longest_edge": SMOLVLM_FRAME}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size={"longest_edge": 2 * SMOLVLM_FRAME}, max_image_size=side),
        video_processor=SmolVLMVideoProcessor(size=side, max_image_size=side),
        tokenizer=tokenizer,
        image_seq_len=(SMOLVLM_FRAME // patch) ** 2 // scale**2,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    return _save(directory, model, processor)


LLAVA_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# llava-onevision-qwen2's template, reduced: images, then videos, then the text of each message.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] if c['type'] == 'image' %}<image>{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'video' %}<video>{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ '\\n' + c['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_FRAME = 32
"""Frames are resized to this square side: 4x4 patches of 8 pixels, pooled to 2x2 tokens a frame."""


def build_tiny_llava_onevision(directory: str | Path, seed: int = 0) -> str:
    """LLaVA-OneVision: a SigLIP tower over each frame, a projector, 2x2 pooling of every frame's
    features and one newline embedding after the video, a Qwen2 text model."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tokenizer = train_tokenizer(_corpus(), special_tokens=LLAVA_TOKENS, chat_template=LLAVA_CHAT_TEMPLATE)
    ids = _ids(tokenizer, LLAVA_TOKENS)
    patch = 8
    pinpoints = [[LLAVA_FRAME * h, LLAVA_FRAME * w] for h in (1, 2) for w in (1, 2)]
    config = LlavaOnevisionConfig(
        text_config={
            **TEXT,
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": LLAVA_FRAME,
            "patch_size": patch,
            "vision_use_head": False,
        },
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_4",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    square = {"height": LLAVA_FRAME, "width": LLAVA_FRAME}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=square),
        tokenizer=tokenizer,
        num_image_tokens=(LLAVA_FRAME // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_CHAT_TEMPLATE,
        vision_aspect_ratio="anyres_max_4",
    )
    return _save(directory, model, processor)


class Arch(NamedTuple):
    """How one architecture is built and how its processor hands video to the model."""

    build: Callable[..., str]
    model_class: str
    video_key: str
    """The processor output that holds the video's pixels."""
    video_token: str
    """The placeholder the processor repeats in the text for the video's features."""
    frame_times: str | None = None
    """How the model is told when each frame was taken: `prompt` (the processor writes the times into the
    text), `rope` (seconds per temporal patch, `second_per_grid_ts`, scale the position ids), or None."""


ARCHITECTURES: dict[str, Arch] = {
    # Qwen2-VL's temporal positions count frame pairs: it is told the frames' order, not their times.
    "qwen2_vl": Arch(
        build_tiny_qwen2_vl, "Qwen2VLForConditionalGeneration", "pixel_values_videos", "<|video_pad|>"
    ),
    "qwen2_5_vl": Arch(
        build_tiny_qwen2_5_vl,
        "Qwen2_5_VLForConditionalGeneration",
        "pixel_values_videos",
        "<|video_pad|>",
        frame_times="rope",
    ),
    # SmolVLM feeds a video's frames as images: `pixel_values` [videos, frames, 3, H, W], padded to the
    # batch's longest video, and `<image>` placeholders under each frame's timestamp (`Frame from 00:01:`).
    "smolvlm": Arch(
        build_tiny_smolvlm, "SmolVLMForConditionalGeneration", "pixel_values", "<image>", frame_times="prompt"
    ),
    "llava_onevision": Arch(
        build_tiny_llava_onevision, "LlavaOnevisionForConditionalGeneration", "pixel_values_videos", "<video>"
    ),
    # Qwen3-VL writes each frame pair's mean time before its tokens (`<1.2 seconds>`).
    "qwen3_vl": Arch(
        build_tiny_qwen3_vl,
        "Qwen3VLForConditionalGeneration",
        "pixel_values_videos",
        "<|video_pad|>",
        frame_times="prompt",
    ),
}


def record_generate(backend) -> list[dict]:
    """Every call the backend makes to its model's `generate`, as the keyword arguments it passed (the
    token ids, attention mask, pixels, grids): what the model really receives. The calls go through to
    the real `generate` unchanged."""
    calls: list[dict] = []
    real = backend.model.generate

    def generate(*args, **kwargs):
        assert not args, "the backend passes the model its inputs by name"
        calls.append(kwargs)
        return real(**kwargs)

    backend.model.generate = generate
    return calls
