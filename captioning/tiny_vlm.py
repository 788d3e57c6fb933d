"""A tiny Qwen2-VL of the real architecture, for tests and for `make demo` where no VLM weights exist.

`build_tiny_qwen2_vl` trains a small byte-level BPE tokenizer on the fly (on the shipped prompts and
the stand-in answer), builds a 2-layer Qwen2-VL with random weights and saves model, tokenizer and
processor to a directory, which then loads through `AutoModelForImageTextToText.from_pretrained`
like any user's model. Untrained, it writes noise (every caption fails to parse). `fit_answer`
fine-tunes it for a few hundred steps on CPU, through the backend's own processor path, until it
writes one fixed answer for any video: a real model doing real generation, whose output the real
parser reads. Nothing it writes describes a video: its directory carries
`curation.model_labels.RANDOM_WEIGHTS_FILE`, so runs that use it are marked `models: random-weights`.
`fit_answers` teaches answers that depend on the frames instead (one caption for red video, another for
teal), which is how tests show that what a clip shows reaches the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from captioning.caption_config import CaptionParseConfig, VLMConfig
from captioning.prompt_hints import CAMERA_PHRASES, ClipHints
from captioning.prompts import PROMPT_DIR, available_prompts, load_prompt
from captioning.video_frames import VideoWindow
from captioning.vlm import VideoPrompt, VLMBackend
from curation.model_labels import write_marker

STAND_IN_ANSWER = (
    "Summary: A stand-in caption written by a tiny test model.\n"
    "0.0-1.0s: The tiny test model writes this first segment for every clip.\n"
    "1.0-2.0s: It writes this second segment too, whatever the video shows."
)
"""What `fit_answer` teaches by default: valid for any clip of 1.5 s or more up to 12 s (two segments)."""

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# Qwen2-VL's chat template, reduced to what the captioner sends: text, images and videos.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Frames are resized by the processor to 28-pixel multiples between these areas: 4-16 tokens a frame pair.
TINY_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}


def train_tokenizer(
    corpus: list[str],
    vocab_size: int = 512,
    special_tokens: list[str] = SPECIAL_TOKENS,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    chat_template: str = CHAT_TEMPLATE,
):
    """A byte-level BPE tokenizer (any text encodes) with special tokens, trained on `corpus`.

    The defaults are Qwen2-VL's; other architectures' tiny test models pass their processor's own
    placeholder tokens, end-of-turn token and chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=eos_token, pad_token=pad_token, model_max_length=32768
    )
    fast.chat_template = chat_template
    return fast


def _corpus(answers: list[str]) -> list[str]:
    prompts = [(PROMPT_DIR / f"{pid}.txt").read_text(encoding="utf-8") for pid in available_prompts()]
    return prompts * 4 + answers * 8 + ["user assistant system\n"] * 4


def build_tiny_qwen2_vl(
    directory: str | Path, seed: int = 0, answers: tuple[str, ...] = (STAND_IN_ANSWER,)
) -> str:
    """Save a random-weight 2-layer Qwen2-VL (hidden 64) with its tokenizer and processor; returns the path."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    directory = Path(directory)
    tokenizer = train_tokenizer(_corpus(list(answers)))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            # multimodal RoPE: (t, h, w) sections of the 16-dim heads' 8 frequency pairs
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },  # fmt: skip
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=TINY_PIXELS),
        video_processor=Qwen2VLVideoProcessor(size=TINY_PIXELS),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    write_marker(directory, "captioning.tiny_vlm.build_tiny_qwen2_vl", seed)
    return str(directory)


def _random_window(rng: np.random.Generator, duration_s: float) -> VideoWindow:
    """Frames at 2 per second of noise, flat colour or gradients, of sizes like real clips' frames."""
    n = max(1, round(duration_s * 2))
    h, w = int(rng.integers(40, 160)), int(rng.integers(40, 200))
    kind = rng.integers(3)
    if kind == 0:
        frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    elif kind == 1:
        frames = np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8), (n, h, w, 3)).copy()
    else:
        ramp = np.linspace(0, 1, w)[None, None, :, None] * rng.uniform(0, 255, (n, 1, 1, 3))
        frames = np.broadcast_to(ramp, (n, h, w, 3)).astype(np.uint8)
    times = np.arange(n) / 2.0
    return VideoWindow(0.0, duration_s, frames, times, float(rng.choice([24.0, 25.0, 30.0])))


def _random_hints(rng: np.random.Generator, duration_s: float) -> dict[str, str]:
    """Prompt hints as curate fills them (or "not measured"), so the answer does not depend on them."""
    labels = list(CAMERA_PHRASES)
    windows = tuple(
        (float(s), float(s + 2.0), labels[int(rng.integers(len(labels)))])
        for s in np.arange(0.0, duration_s, 2.0)
    )
    texts = None if rng.random() < 0.3 else tuple(rng.choice(["SALE", "50% OFF", "NEWS", "fox"], 2))
    hints = ClipHints(labels[int(rng.integers(len(labels)))], windows if rng.random() < 0.7 else (), texts)
    return hints.placeholders(0.0, duration_s) if rng.random() < 0.8 else {}


def fit_answer(
    model_dir: str,
    answer: str = STAND_IN_ANSWER,
    prompt_id: str = "dense_v2",
    max_steps: int = 600,
    batch_size: int = 4,
    lr: float = 3e-3,
    seed: int = 0,
) -> int:
    """Fine-tune the model in `model_dir` until it writes `answer` for any video and clip length; saves it.

    Trains on random frames of random sizes under prompts for durations of 1.5-12 s, so the answer
    does not depend on what it is shown, and checks every 50 steps (from step 150) that greedy
    decoding reproduces it exactly for fresh random videos. Returns the steps taken; raises when
    `max_steps` were not enough.
    """
    prompt, rules = load_prompt(prompt_id), CaptionParseConfig()

    def draw(rng: np.random.Generator, count: int) -> list[tuple[VideoPrompt, str]]:
        durations = rng.uniform(1.5, 12.0, count)
        return [
            (
                VideoPrompt(
                    _random_window(rng, d), prompt.render(d, rules.min_segments_for(d), _random_hints(rng, d))
                ),
                answer,
            )
            for d in durations
        ]

    return fit_answers(model_dir, draw, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed)


Draw = Callable[[np.random.Generator, int], list[tuple[VideoPrompt, str]]]
"""`draw(rng, count)`: `count` fresh (video and prompt, answer to teach) pairs."""


def fit_answers(
    model_dir: str,
    draw: Draw,
    max_steps: int = 600,
    batch_size: int = 4,
    lr: float = 3e-3,
    seed: int = 0,
    check_from: int = 150,
    check_every: int = 50,
    decay_steps: int = 400,
) -> int:
    """Fine-tune the model in `model_dir` on the pairs `draw` makes, until greedy decoding reproduces the
    answer of every pair of a fresh draw exactly; saves it and returns the steps taken.

    What the answer may depend on is up to `draw`: one answer for every video teaches the model to ignore
    the frames, an answer that follows the frames (their colour, say) teaches it to look at them. Trains
    through the backend's own processor path, as captioning calls it; checks every `check_every` steps
    from `check_from`; raises when `max_steps` were not enough.
    """
    import torch

    cfg = VLMConfig(
        model=model_dir, device="cpu", dtype="float32", attn_implementation="sdpa", max_new_tokens=128
    )
    backend = VLMBackend(cfg)
    model, tokenizer = backend.model, backend.processor.tokenizer
    eos = tokenizer.convert_ids_to_tokens(backend.eos_ids[0])
    answer_lengths: dict[str, int] = {}

    def answer_length(target: str) -> int:
        if target not in answer_lengths:
            answer_lengths[target] = len(tokenizer(target, add_special_tokens=False)["input_ids"])
        return answer_lengths[target]

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.05, 1 - step / decay_steps))
    for step in range(1, max_steps + 1):
        model.train()
        prompts, answers = zip(*draw(rng, batch_size), strict=True)
        targets = [answer + eos for answer in answers]
        inputs = backend.inputs(list(prompts), answers=targets)
        labels = inputs["input_ids"].clone()
        for row, target in enumerate(targets):  # left-padded: each answer is the last tokens of its row
            labels[row, : -answer_length(target)] = -100
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step >= check_from and step % check_every == 0:
            model.eval()
            checks = draw(rng, 6)
            lengths = [answer_length(answer + eos) for _, answer in checks]
            # room for the answer and its end-of-turn token, no more: a model not there yet stops early
            backend.cfg.max_new_tokens = max(lengths)
            generations = backend.generate([p for p, _ in checks])
            if all(
                g.text == answer and g.new_tokens == length  # the answer, then the end of the turn
                for g, (_, answer), length in zip(generations, checks, lengths, strict=True)
            ):
                model.save_pretrained(model_dir)
                return step
    raise RuntimeError(f"the tiny VLM did not learn its answers in {max_steps} steps")
