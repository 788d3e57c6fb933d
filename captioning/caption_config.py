"""Configuration of caption parsing: what a VLM's raw output must satisfy to become a clip's caption.

The parser repairs what is clearly a rounding or formatting slip (a last segment a little past the
clip end, neighbours that overlap by a fraction of a second) and rejects the rest with a reason from a
small vocabulary (`captioning.parsing.REJECTION_REASONS`), so failures can be counted and read in the
report. Every threshold of those decisions lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from curation.config import check
from curation.scoring_config import CAPTION_SCORES, AestheticConfig

PREFIX = "captioning.parse"


@dataclass
class CaptionParseConfig:
    """Thresholds of `captioning.parsing.parse_caption`."""

    min_segments: int = 1
    """Fewest segments any caption must have, however short the clip."""
    seconds_per_segment: float = 4.0
    """Longer clips need one segment per this many seconds (rounded down): a 10 s clip needs 2, a
    20 s clip 5. A dense caption that describes a long clip in one line has lost its timeline."""
    max_required_segments: int = 8
    """Cap of that requirement, so a long clip is not rejected for lack of a tenth 'still walking'."""
    clamp_tolerance_s: float = 0.5
    """A segment may end up to this far past the clip end (models round the duration up); it is cut
    to the clip end. Further past, or starting at or after the end, the caption is `outside_clip`."""
    overlap_tolerance_s: float = 0.25
    """Neighbouring segments may overlap by up to this much (models write '2.0-4.5s', '4.0-6.0s'):
    the earlier one is trimmed to where the later starts, or, when it would be left with nothing,
    the two are merged. A larger overlap means the timeline is nested or wrong: `overlap`."""
    ngram_size: int = 3
    """Word n-gram length used to spot loops within one text (summary or segment)."""
    max_ngram_repeats: int = 3
    """One text may contain the same word n-gram at most this many times; a decoding loop
    ('the man walks the man walks ...') repeats it far more often. Counted per text, not across
    segments, where a recurring subject ('the man in the red shirt') is normal."""
    max_segment_text_repeats: int = 2
    """The same segment text (ignoring case and punctuation) may appear at most this many times;
    and a caption of two or more segments that all say the same thing is a `repetition` too."""
    max_char_repeats: int = 8
    """A short chunk (1-20 characters) repeated back to back this many times is a loop ('hahaha...',
    '!!!!!!!!', 'walks.walks.walks.') that word n-grams do not see."""
    echo_min_words: int = 12
    """The output is a `prompt_echo` when it shares this many consecutive words with the prompt (the
    instructions or the prompt's example caption copied back)."""

    def __post_init__(self):
        check(self.min_segments >= 1, f"{PREFIX}.min_segments", "must be >= 1")
        check(
            math.isfinite(self.seconds_per_segment) and self.seconds_per_segment > 0,
            f"{PREFIX}.seconds_per_segment",
            "must be > 0",
        )
        check(
            self.max_required_segments >= self.min_segments,
            f"{PREFIX}.max_required_segments",
            f"must be >= {PREFIX}.min_segments",
        )
        check(self.clamp_tolerance_s >= 0, f"{PREFIX}.clamp_tolerance_s", "must be >= 0")
        check(self.overlap_tolerance_s >= 0, f"{PREFIX}.overlap_tolerance_s", "must be >= 0")
        check(self.ngram_size >= 2, f"{PREFIX}.ngram_size", "must be >= 2")
        check(self.max_ngram_repeats >= 1, f"{PREFIX}.max_ngram_repeats", "must be >= 1")
        check(self.max_segment_text_repeats >= 1, f"{PREFIX}.max_segment_text_repeats", "must be >= 1")
        check(self.max_char_repeats >= 3, f"{PREFIX}.max_char_repeats", "must be >= 3")
        check(self.echo_min_words >= 3, f"{PREFIX}.echo_min_words", "must be >= 3")

    def min_segments_for(self, duration_s: float) -> int:
        """Fewest segments a caption of a clip this long must have (the prompt asks for as many).

        `max(min_segments, min(max_required_segments, floor(duration_s / seconds_per_segment)))`.
        """
        if not math.isfinite(duration_s) or duration_s <= 0:
            raise ValueError(f"clip duration must be a positive number of seconds, got {duration_s!r}")
        by_length = min(self.max_required_segments, math.floor(duration_s / self.seconds_per_segment))
        return max(self.min_segments, by_length)


VLM_PREFIX = "captioning.vlm"


@dataclass
class VLMConfig:
    """Which vision-language model writes the captions, and how it runs (transformers)."""

    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    """Hub id or local directory, loaded with AutoModelForImageTextToText + AutoProcessor. Qwen2.5-VL
    encodes the absolute time of video frames; SmolVLM2, LLaVA-OneVision and Qwen3-VL load too."""
    revision: str | None = None
    local_files_only: bool = False
    """Never reach the hub (use the local cache or directory only)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: the GPU when the actor was given one, else the CPU."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """auto: bfloat16 on GPU, float32 on CPU."""
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"
    """auto: flash_attention_2 on GPU when the flash-attn package is installed, else SDPA."""
    batch_size: int = 8
    """Videos per generate call (left-padded)."""
    max_new_tokens: int = 512
    seed: int = 0
    """Seed of the sampled retries, so a rerun writes the same captions."""

    def __post_init__(self):
        check(bool(self.model), f"{VLM_PREFIX}.model", "must name a hub id or a local directory")
        check(self.batch_size >= 1, f"{VLM_PREFIX}.batch_size", "must be >= 1")
        check(self.max_new_tokens >= 16, f"{VLM_PREFIX}.max_new_tokens", "must be >= 16")


@dataclass
class CaptionFramesConfig:
    """The frames the VLM sees, prepared on CPU ahead of the model."""

    fps: float = 2.0
    """Frames per second of clip time given to the model (with their real timestamps)."""
    max_frames: int = 32
    """Most frames per window; a window that would have more is sampled evenly at a lower rate."""
    max_pixels: int = 360 * 640
    """Frames are downscaled (aspect kept) to at most this many pixels; the processor may resize further."""
    window_s: float = 16.0
    """Clips longer than this are captioned in windows of at most this length (equal parts); their
    segments are shifted to clip time and merged, their summaries joined."""
    timeout_s: float = 600.0

    def __post_init__(self):
        check(math.isfinite(self.fps) and self.fps > 0, "captioning.frames.fps", "must be > 0")
        check(self.max_frames >= 2, "captioning.frames.max_frames", "must be >= 2")
        check(self.max_pixels >= 28 * 28, "captioning.frames.max_pixels", "must be >= 784")
        check(self.window_s >= 1.0, "captioning.frames.window_s", "must be >= 1")


ALIGNMENT_PREFIX = "captioning.alignment"


@dataclass
class AlignmentConfig:
    """Caption-video alignment per clip (`caption_metrics.alignment`), scored right after captioning.

    An actor pool (the CLIP model loaded once per actor) embeds a few of the frames the VLM saw and the
    caption's texts: `summary` and `segments` are cosine similarities with the clip's own frames,
    `baseline` the clip's similarity to another captioned clip's summary of the same task (a fixed
    derangement), `margin` = summary - baseline. Filter rules read them as `caption_alignment` and
    `caption_alignment_margin`. Off by default: on one CPU, CLIP ViT-L/14 takes about 2 s per frame, 9 s
    per 3-6 s clip, more than twice curate's whole wall time without captioning
    (`benchmarks/alignment_cost.py`); the gpu preset turns it on.
    """

    enabled: bool = False
    clip_model: str | None = None
    """open_clip model; unset: the run's `scoring.aesthetic.clip_model` (recaption: ViT-L-14)."""
    clip_pretrained: str | None = None
    """Its pretrained tag or checkpoint file; unset: `scoring.aesthetic.clip_pretrained` (recaption: openai)."""
    clip_model_config: str | None = None
    """A model config JSON for an architecture open_clip does not ship (as `scoring.aesthetic`)."""
    device: str = "auto"
    """`auto`: the run's `scoring.aesthetic.device` when set, else cuda when the actor has a GPU."""
    fps: float = 1.0
    """Frames per second of clip scored, taken from the frames already decoded for the VLM (at most
    `captioning.frames.fps`)."""
    max_frames: int = 16
    """Most frames per clip; a longer clip is sampled evenly at a lower rate."""
    max_pixels: int = 256 * 256
    """Frames are scaled down (aspect kept) to at most this many pixels before they travel to the actors."""
    batch_size: int = 32
    """Frames (and texts) per CLIP forward pass."""
    seed: int = 0
    """Seed of the derangement that picks each clip's baseline caption."""
    actors: int = 1
    """Model copies (Ray actors)."""
    num_gpus: float = 0.0
    """GPUs per actor."""
    cpus: float = 1.0
    """CPUs per actor."""
    memory_gb: float = 2.0
    """Memory reserved per actor (the CLIP model, a task's frames)."""

    def __post_init__(self):
        p = ALIGNMENT_PREFIX
        check(math.isfinite(self.fps) and self.fps > 0, f"{p}.fps", "must be > 0")
        check(self.max_frames >= 1, f"{p}.max_frames", "must be >= 1")
        check(self.max_pixels >= 28 * 28, f"{p}.max_pixels", "must be >= 784")
        check(self.batch_size >= 1, f"{p}.batch_size", "must be >= 1")
        check(self.actors >= 1, f"{p}.actors", "must be >= 1")
        check(self.num_gpus >= 0, f"{p}.num_gpus", "must be >= 0")
        check(self.cpus > 0, f"{p}.cpus", "must be > 0")
        check(self.memory_gb > 0, f"{p}.memory_gb", "must be > 0")
        check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"{p}.device",
            "must be auto, cpu or cuda[:N]",
        )

    def clip_config(self, aesthetic: AestheticConfig | None = None) -> AestheticConfig:
        """The CLIP model to score with: this section's, else the run's aesthetic scorer's (`aesthetic`)."""
        return AestheticConfig(
            clip_model=self.clip_model or (aesthetic.clip_model if aesthetic else "ViT-L-14"),
            clip_pretrained=self.clip_pretrained or (aesthetic.clip_pretrained if aesthetic else "openai"),
            clip_model_config=self.clip_model_config
            or (aesthetic.clip_model_config if aesthetic and not self.clip_model else None),
            device=self.device if self.device != "auto" or aesthetic is None else aesthetic.device,
        )


def check_caption_rules(rules: list, captioning: CaptionConfig) -> None:
    """A filter rule on a caption alignment score needs the stage that computes it: without it the
    score would be null for every clip and the rule would silently pass them all."""
    for i, rule in enumerate(rules):
        if rule.score not in CAPTION_SCORES:
            continue
        needed = "captioning.enabled" if not captioning.enabled else f"{ALIGNMENT_PREFIX}.enabled"
        check(
            captioning.enabled and captioning.alignment.enabled,
            f"filters.rules[{i}].score",
            f"{rule.score!r} is computed by the caption alignment stage, which is off; set {needed}=true "
            "or remove the rule",
        )


@dataclass
class CaptionConfig:
    """The captioning stage: dense temporal captions for every kept clip."""

    enabled: bool = True
    prompt_id: str = "dense_v2"
    """A prompt file stem under captioning/prompts/ (stored with every caption)."""
    vlm: VLMConfig = field(default_factory=VLMConfig)
    frames: CaptionFramesConfig = field(default_factory=CaptionFramesConfig)
    parse: CaptionParseConfig = field(default_factory=CaptionParseConfig)
    attempts: int = 3
    """Generations per clip before it counts as failed: the first greedy, the rest sampled."""
    retry_temperature: float = 0.7
    retry_top_p: float = 0.9
    on_failure: Literal["drop", "keep"] = "drop"
    """drop: the clip is dropped with reason `caption_failed`; keep: it is kept uncaptioned. Either way
    the failure is in the record's `errors`."""
    actors: int = 1
    """Model copies (Ray actors)."""
    num_gpus: float = 0.0
    """GPUs per actor."""
    cpus: float = 1.0
    """CPUs per actor."""
    memory_gb: float = 4.0
    """Memory reserved per actor (the model, its batches)."""
    prep_cpus: float = 1.0
    """CPUs per frame-preparation task."""
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    """Caption-video alignment per clip, after captioning (off by default)."""

    def __post_init__(self):
        check(self.attempts >= 1, "captioning.attempts", "must be >= 1")
        check(self.retry_temperature > 0, "captioning.retry_temperature", "must be > 0")
        check(0 < self.retry_top_p <= 1, "captioning.retry_top_p", "must be in (0, 1]")
        check(self.actors >= 1, "captioning.actors", "must be >= 1")
        check(self.num_gpus >= 0, "captioning.num_gpus", "must be >= 0")
        check(self.cpus > 0, "captioning.cpus", "must be > 0")
        check(self.memory_gb > 0, "captioning.memory_gb", "must be > 0")
        check(self.prep_cpus > 0, "captioning.prep_cpus", "must be > 0")
