"""The captioning stage: prepared clips in, dense temporal captions (or reasoned failures) out.

Every window of every clip gets the prompt for its own length; answers are parsed and validated
(`captioning.parsing`); rejected ones are generated again, first greedily, then sampled at the
retry temperature, up to `captioning.attempts`. A clip's windows are merged into one caption on
the clip's clock. A clip whose window still fails is a `CaptionOutcome` with a failure reason,
never a silent gap: the caller drops it (`caption_failed`) or keeps it uncaptioned, per config.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from captioning.caption_config import CaptionConfig
from captioning.parsing import ParsedCaption, Rejection, Segment, format_training_caption, parse_caption
from captioning.prompts import load_prompt
from captioning.video_frames import PreparedClip
from captioning.vlm import Generation, VideoPrompt

Generate = Callable[..., list[Generation]]
"""`generate(prompts, temperature=None, top_p=1.0, seed=0) -> generations`, as VLMBackend.generate."""


@dataclass
class CaptionOutcome:
    """What captioning made of one clip: a caption, or the reason it has none."""

    key: str
    caption: dict | None = None
    """The record's `caption` field: summary, segments (clip seconds), model, prompt_id."""
    text: str | None = None
    """The training caption for `KEY.txt`."""
    metrics: dict | None = None
    failure: str | None = None
    """A `captioning.parsing.REJECTION_REASONS` code, or `undecodable`, when there is no caption."""
    detail: str | None = None
    attempts: int = 0
    new_tokens: int = 0

    def error(self) -> dict:
        """The record's `errors` entry for a failure."""
        return {
            "stage": "caption",
            "message": f"{self.failure}: {self.detail} (after {self.attempts} attempts)",
        }


@dataclass
class CaptionStats:
    """What one captioner did, for run.json's throughput and the task marker."""

    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    clips: int = 0
    captioned: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    generations: int = 0
    new_tokens: int = 0
    generate_s: float = 0.0
    fixes: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    """Captioned clips by the attempt that succeeded ("1" = first greedy answer)."""
    runtime: dict = field(default_factory=dict)
    """Where the model ran: device, dtype, attention implementation."""

    def count(self, outcome: CaptionOutcome) -> None:
        """Count one clip's outcome: captioned (by attempt, with the parser's repairs) or failed by reason."""
        self.clips += 1
        self.new_tokens += outcome.new_tokens
        if outcome.caption is None:
            self.failed[outcome.failure] = self.failed.get(outcome.failure, 0) + 1
            return
        self.captioned += 1
        self.attempts[str(outcome.attempts)] = self.attempts.get(str(outcome.attempts), 0) + 1
        for fix in outcome.metrics["fixes"]:
            self.fixes[fix] = self.fixes.get(fix, 0) + 1

    def add(self, other: CaptionStats) -> None:
        for name in ("clips", "captioned", "generations", "new_tokens", "generate_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("failed", "fixes", "attempts"):
            merged = Counter(getattr(self, name))
            merged.update(getattr(other, name))
            setattr(self, name, dict(sorted(merged.items())))


def merge_windows(parts: list[tuple[float, ParsedCaption]], duration_s: float) -> ParsedCaption:
    """One caption from per-window captions `(window_start_s, caption)` in time order.

    Segments move to clip time; each window's segments lie inside that window (the parser saw to
    it), so the merged timeline is ordered and without overlaps. The summary joins the windows'
    distinct summaries, so a long clip's summary still speaks of all of it.
    """
    segments, summaries, fixes = [], [], []
    for start, parsed in parts:
        for s in parsed.segments:
            segments.append(Segment(start + s.start_s, min(start + s.end_s, duration_s), s.text))
        if parsed.summary and parsed.summary not in summaries:
            summaries.append(parsed.summary)
        fixes += [f for f in parsed.fixes if f not in fixes]
    return ParsedCaption(" ".join(summaries), segments, fixes)


def caption_metrics(parsed: ParsedCaption, duration_s: float, attempts: int, windows: int) -> dict:
    """Per-clip numbers the report aggregates (`caption_metrics` in the record)."""
    covered = sum(s.end_s - s.start_s for s in parsed.segments)
    segment_words = [len(s.text.split()) for s in parsed.segments]
    return {
        "num_segments": len(parsed.segments),
        "coverage": round(min(1.0, covered / duration_s), 4),
        "summary_words": len(parsed.summary.split()),
        "segment_words": segment_words,
        "attempts": attempts,
        "windows": windows,
        "fixes": parsed.fixes,
    }


@dataclass
class _Unit:
    """One window of one clip on its way through the attempts."""

    clip: int
    window: int
    prompt: VideoPrompt
    duration_s: float
    result: ParsedCaption | Rejection | None = None
    attempts: int = 0
    new_tokens: int = 0


class Captioner:
    """Caption prepared clips with a model's `generate` (a `VLMBackend`'s, or any with its signature)."""

    def __init__(self, generate: Generate, cfg: CaptionConfig, model_name: str):
        self.generate = generate
        self.cfg = cfg
        self.model_name = model_name
        self.prompt = load_prompt(cfg.prompt_id)

    def run(self, clips: list[PreparedClip]) -> tuple[list[CaptionOutcome], CaptionStats]:
        cfg, stats = self.cfg, CaptionStats()
        units = []
        for c, clip in enumerate(clips):
            for w, window in enumerate(clip.windows):
                rendered = self.prompt.render(
                    window.duration_s,
                    cfg.parse.min_segments_for(window.duration_s),
                    clip.hints.placeholders(window.start_s, window.end_s),
                )
                units.append(_Unit(c, w, VideoPrompt(window, rendered), window.duration_s))
        for attempt in range(cfg.attempts):
            todo = [u for u in units if not isinstance(u.result, ParsedCaption)]
            if not todo:
                break
            sampling = {} if attempt == 0 else {
                "temperature": cfg.retry_temperature, "top_p": cfg.retry_top_p, "seed": cfg.vlm.seed + attempt,
            }  # fmt: skip
            started = time.perf_counter()
            generations = self.generate([u.prompt for u in todo], **sampling)
            stats.generate_s += time.perf_counter() - started
            stats.generations += len(todo)
            for unit, generation in zip(todo, generations, strict=True):
                unit.attempts += 1
                unit.new_tokens += generation.new_tokens
                unit.result = parse_caption(generation.text, unit.duration_s, cfg.parse, unit.prompt.prompt)
        outcomes = [self._outcome(clip, [u for u in units if u.clip == c]) for c, clip in enumerate(clips)]
        for outcome in outcomes:
            stats.count(outcome)
        return outcomes, stats

    def _outcome(self, clip: PreparedClip, units: list[_Unit]) -> CaptionOutcome:
        attempts = max(u.attempts for u in units)
        tokens = sum(u.new_tokens for u in units)
        for unit in units:
            if isinstance(unit.result, Rejection):
                where = f"window {unit.window + 1}/{len(units)}: " if len(units) > 1 else ""
                return CaptionOutcome(
                    clip.key, failure=unit.result.reason, detail=where + unit.result.detail,
                    attempts=attempts, new_tokens=tokens,
                )  # fmt: skip
        parts = [(clip.windows[u.window].start_s, u.result) for u in units]
        merged = merge_windows(parts, clip.duration_s) if len(parts) > 1 else parts[0][1]
        return CaptionOutcome(
            clip.key,
            caption=merged.to_record(self.model_name, self.cfg.prompt_id),
            text=format_training_caption(merged),
            metrics=caption_metrics(merged, clip.duration_s, attempts, len(units)),
            attempts=attempts,
            new_tokens=tokens,
        )


def undecodable(key: str, detail: str) -> CaptionOutcome:
    """The outcome of a clip whose frames could not be prepared."""
    return CaptionOutcome(key, failure="undecodable", detail=detail)
