"""The VLM backend on transformers: frames and a prompt in, generated text out, in batches.

One code path for every model: `AutoProcessor` + `AutoModelForImageTextToText.from_pretrained` from a
hub id or a local directory, the processor's own chat template, and the video passed as decoded
frames with their real timestamps (transformers' video metadata) so each model encodes time its
own way. Batches are left-padded; decoding is greedy unless a temperature is given (retries).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from dataclasses import dataclass

import numpy as np

from captioning.caption_config import VLMConfig
from captioning.video_frames import VideoWindow
from curation.hub import hub_reachable, probe_failure


class ModelLoadError(RuntimeError):
    """The configured VLM cannot be loaded (not a directory, not cached, hub unreachable)."""


@dataclass(frozen=True)
class VideoPrompt:
    """One generation: a window of frames and the rendered prompt for it."""

    window: VideoWindow
    prompt: str


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    """Tokens generated, the end-of-turn token included, padding not."""


def resolve_runtime(cfg: VLMConfig) -> tuple[str, str, str]:
    """(device, dtype, attn_implementation) for the config's `auto` settings on this machine."""
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    attn = cfg.attn_implementation
    if attn == "auto":
        has_flash = importlib.util.find_spec("flash_attn") is not None
        attn = "flash_attention_2" if device == "cuda" and has_flash and dtype != "float32" else "sdpa"
    return device, dtype, attn


def check_model_available(cfg: VLMConfig) -> None:
    """Fail fast, before a run starts, when the model's config cannot be found or fetched."""
    from transformers import AutoConfig

    local = cfg.local_files_only or os.path.isdir(cfg.model)
    try:
        AutoConfig.from_pretrained(cfg.model, revision=cfg.revision, local_files_only=_offline(cfg))
    except (OSError, ValueError) as exc:
        why = str(exc).splitlines()[0]
        if not local and not hub_reachable():
            why = f"not in the Hugging Face cache; {probe_failure() or 'offline mode (HF_HUB_OFFLINE)'}"
        raise ModelLoadError(
            f"captioning.vlm.model: cannot load {cfg.model!r} ({why}); set it to a "
            "local model directory or a reachable hub id, or pass --set captioning.enabled=false"
        ) from None


def _offline(cfg: VLMConfig) -> bool:
    """Whether the model is read from disk only; asks the hub first (once per process) for a hub id, so
    that an unreachable hub means a look-up in the cache, not a minute of retries."""
    return cfg.local_files_only or os.path.isdir(cfg.model) or not hub_reachable()


class VLMBackend:
    """A loaded VLM. Build one per Ray actor: loading is the expensive part."""

    def __init__(self, cfg: VLMConfig):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per actor is noise in job logs
        self.cfg = cfg
        self.device, dtype, attn = resolve_runtime(cfg)
        kwargs = {"revision": cfg.revision, "local_files_only": _offline(cfg)}
        try:
            self.processor = AutoProcessor.from_pretrained(cfg.model, **kwargs)
            self.model = AutoModelForImageTextToText.from_pretrained(
                cfg.model, dtype=getattr(torch, dtype), attn_implementation=attn, **kwargs
            )
        except (OSError, ValueError) as exc:  # ValueError: a directory that holds no model or processor
            raise ModelLoadError(f"captioning.vlm.model: cannot load {cfg.model!r}: {exc}") from None
        self.model.to(self.device).eval()
        _choose_pixel_cap(self.processor)
        self.processor.tokenizer.padding_side = "left"  # generation continues every row at the right edge
        self.eos_ids = _eos_ids(self.model, self.processor)
        self.pad_id = self.processor.tokenizer.pad_token_id
        self.stacks_videos = _stacks_videos(self.processor)
        self.runtime = {"device": self.device, "dtype": dtype, "attn_implementation": attn}
        hf_logging.set_verbosity_error()  # per-call processor notices would flood worker logs

    def chat_text(self, prompt: str) -> str:
        """The model's chat template around one video and the prompt, ready for generation."""
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def inputs(self, prompts: list[VideoPrompt], answers: list[str] | None = None):
        """Processor output for a batch; `answers` appends target text (for fine-tuning)."""
        texts = [self.chat_text(p.prompt) for p in prompts]
        if answers is not None:
            texts = [t + a for t, a in zip(texts, answers, strict=True)]
        return self.processor(
            text=texts,
            videos=[p.window.frames for p in prompts],
            video_metadata=[p.window.metadata() for p in prompts],
            do_sample_frames=False,  # the frames are already the ones we chose, at their real times
            padding=True,
            return_tensors="pt",
        )

    def generate(
        self, prompts: list[VideoPrompt], temperature: float | None = None, top_p: float = 1.0, seed: int = 0
    ) -> list[Generation]:
        """Generate for every prompt, `cfg.batch_size` at a time; greedy when `temperature` is None."""
        import torch

        out: list[Generation | None] = [None] * len(prompts)
        for rows in self._batches(prompts):
            inputs = self.inputs([prompts[i] for i in rows]).to(self.device)
            sampling = {"do_sample": False}
            if temperature is not None:
                torch.manual_seed(seed + rows[0])
                sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
            with torch.inference_mode():
                ids = self.model.generate(
                    **inputs,
                    max_new_tokens=self.cfg.max_new_tokens,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_ids,
                    **sampling,
                )
            new = ids[:, inputs["input_ids"].shape[1] :].cpu().numpy()
            texts = self.processor.batch_decode(new, skip_special_tokens=True)
            for i, text, row in zip(rows, texts, new, strict=True):
                out[i] = Generation(text, self._count(row))
        return out

    def _batches(self, prompts: list[VideoPrompt]) -> list[list[int]]:
        """The prompt indices of each generate call: `cfg.batch_size` prompts at a time, in order.

        A processor that stacks a batch's videos into one [videos, frames, ...] tensor (LLaVA-OneVision)
        cannot take videos of different lengths together: for it, each call holds one frame count.
        """

        def length(i: int) -> int:
            return len(prompts[i].window.frames) if self.stacks_videos else 0

        size = self.cfg.batch_size
        groups = [list(g) for _, g in itertools.groupby(sorted(range(len(prompts)), key=length), key=length)]
        return [group[start : start + size] for group in groups for start in range(0, len(group), size)]

    def _count(self, row: np.ndarray) -> int:
        ends = np.flatnonzero(np.isin(row, self.eos_ids))
        return int(ends[0]) + 1 if len(ends) else len(row)


def _choose_pixel_cap(processor) -> None:
    """Qwen's video processors (transformers 5) bound a video's total pixels the reference way
    (qwen-vl-utils) only when asked, and warn in every process (the driver, each actor) until the choice
    is made. We take the reference behaviour: what Qwen's own preprocessing does, and v5.22's default."""
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is not None and getattr(video_processor, "cap_pixels_per_frame", False) is None:
        video_processor.cap_pixels_per_frame = True


def _stacks_videos(processor) -> bool:
    """Whether the video processor needs every video of a batch to have one frame count: Qwen's flatten
    frames into patches and SmolVLM's pad them, but LLaVA-OneVision's stack the batch as one tensor."""
    videos = [np.zeros((frames, 32, 32, 3), np.uint8) for frames in (2, 4)]
    try:
        processor.video_processor(videos, do_sample_frames=False, return_tensors="pt")
    except Exception:  # whatever failed, one frame count per batch is what every processor can take
        return True
    return False


def _eos_ids(model, processor) -> list[int]:
    """Every token that ends the answer: the generation config's, and the chat template's end of turn."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    tokenizer = processor.tokenizer
    for token in ("<|im_end|>", "<end_of_utterance>", "<|eot_id|>", tokenizer.eos_token):
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    return ids
