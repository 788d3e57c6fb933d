"""The caption alignment stage: after captioning, how well each clip's new caption matches its frames.

Per captioned clip it writes `caption_metrics.alignment` (`captioning.alignment.clip_metrics`):
`summary` and `segments` (cosine similarities of the texts with the clip's frames, a segment with the
frames inside its span), `baseline` (the clip's frames against another clip's summary), `margin`
(summary - baseline) and `model`. Filter rules read them as `caption_alignment` and
`caption_alignment_margin`, so a clip whose caption describes something else can be dropped.

The baseline comes from the clips of the same task (the row an actor gets), paired by a fixed
derangement over their keys: a task is the unit of resume, so the same task always gets the same
pairs, whatever Ray batches together. A task with one captioned clip has no baseline: its margin is
null, and a rule on it lets the clip pass, as with every null score.

No video is decoded again: the frames come from those decoded for the VLM (`prepared`), a few per
second (`captioning.alignment.fps`), scaled down, taken on CPU ahead of the actors
(`alignment_frames`), so the actors only embed. As the caption actors, the alignment actors hold the
model once each and work task after task (`AlignmentActor`, `add_alignment_actors`).
"""

from __future__ import annotations

import os
import pickle
import socket
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from captioning.alignment import ClipFrames, align_batch
from captioning.caption_config import ALIGNMENT_PREFIX, AlignmentConfig, CaptionConfig
from captioning.captioner import CaptionOutcome
from captioning.video_frames import PreparedClip, evenly, fit_pixels
from curation.config import ConfigError
from curation.quarantine import INTERNAL_ERROR, internal_error_row, is_transient
from curation.scoring_config import AestheticConfig

STAGE = "caption alignment"
FRAMES_COLUMN = "alignment_frames"
STATS_COLUMN = "alignment_stats"


@dataclass
class AlignmentFrames:
    """A task's frames for alignment (one `ClipFrames` per decoded clip), and the clips whose frames
    could not be taken (key -> error)."""

    clips: list[ClipFrames] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    """Why no clip of the task has frames (a bug of ours on the whole task)."""
    prep_s: float = 0.0


@dataclass
class AlignmentStats:
    """What the stage did for one task (the task's marker, `alignment`)."""

    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    device: str | None = None
    clips: int = 0
    """Captioned clips given to the stage."""
    aligned: int = 0
    without_baseline: int = 0
    """Aligned clips without a shuffled baseline (the task's only captioned clip): margin null."""
    frames: int = 0
    texts: int = 0
    prep_s: float = 0.0
    """CPU time taking the frames out of the caption frames (before the actors)."""
    embed_s: float = 0.0
    """Actor time: embedding frames and texts, and the similarities."""
    started_unix: float | None = None
    errors: dict[str, str] = field(default_factory=dict)
    """Clips the stage failed on (a bug of ours): key -> message; the job records them as internal_error."""


def pick_frames(timestamps: np.ndarray, fps: float, max_frames: int) -> list[int]:
    """Indices of the frames to score: one at most every 1/fps seconds, then at most `max_frames`, evenly."""
    picks, due = [], -np.inf
    for i, t in enumerate(timestamps):
        if t >= due - 1e-6:
            picks.append(i)
            due = t + 1.0 / fps
    return evenly(picks, max_frames)


def clip_frames(clip: PreparedClip, cfg: AlignmentConfig) -> ClipFrames:
    """The frames to score of one clip, from its caption windows (times on the clip's clock)."""
    import cv2

    frames = np.concatenate([w.frames for w in clip.windows])
    times = np.concatenate([w.start_s + w.timestamps for w in clip.windows])
    picks = pick_frames(times, cfg.fps, cfg.max_frames)
    frames, times = frames[picks], times[picks]
    height, width = frames.shape[1:3]
    size = fit_pixels(width, height, cfg.max_pixels)
    if size != (width, height):
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    return ClipFrames(clip.key, np.ascontiguousarray(frames), times, clip.duration_s)


def alignment_frames(prepared: list[PreparedClip], cfg: AlignmentConfig) -> AlignmentFrames:
    """The frames of every prepared clip; a clip we fail on (a bug of ours) is named in `failed`."""
    started, out = time.perf_counter(), AlignmentFrames()
    for clip in prepared:
        try:
            out.clips.append(clip_frames(clip, cfg))
        except Exception as exc:
            if is_transient(exc):
                raise
            out.failed[clip.key] = internal_error_row(exc, f"{STAGE} frames")["error"]
    out.prep_s = time.perf_counter() - started
    return out


def alignment_frames_row(row: dict, cfg: CaptionConfig) -> dict:
    """A row with caption frames (`prepared`, as `jobs.captioning_stage.prep_columns` makes it) gains
    `alignment_frames`: the frames the alignment actors score, taken from those."""
    try:
        prepared = pickle.loads(row["prepared"]) if isinstance(row["prepared"], bytes) else row["prepared"]
        frames = alignment_frames(prepared, cfg.alignment)
    except Exception as exc:
        if is_transient(exc):
            raise
        frames = AlignmentFrames(error=internal_error_row(exc, f"{STAGE} frames")["error"])
    return {**row, FRAMES_COLUMN: pickle.dumps(frames)}


class AlignmentStage:
    """The CLIP towers and the per-clip alignment; build one per actor (loading the model is the cost)."""

    def __init__(self, cfg: AlignmentConfig, clip: AestheticConfig):
        from captioning.alignment import CaptionAligner

        self.cfg = cfg
        self.aligner = CaptionAligner(clip, cfg.batch_size)

    def run(self, outcomes: list[CaptionOutcome], frames: AlignmentFrames) -> AlignmentStats:
        """Add `alignment` to the metrics of every captioned outcome (in place)."""
        stats = AlignmentStats(
            device=str(self.aligner.device), prep_s=frames.prep_s, started_unix=time.time()
        )
        started = time.perf_counter()
        by_key = {c.key: c for c in frames.clips}
        captioned = sorted((o for o in outcomes if o.caption is not None), key=lambda o: o.key)
        stats.clips = len(captioned)
        ready = [o for o in captioned if o.key in by_key]
        for outcome in captioned:
            if outcome.key not in by_key:
                missing = frames.error or f"{STAGE}: no frames for the clip"
                stats.errors[outcome.key] = frames.failed.get(outcome.key, missing)
        try:
            self._align(ready, [by_key[o.key] for o in ready], stats)
        except Exception as exc:
            if is_transient(exc):  # out of memory, a dying GPU: Ray tries the task again
                raise
            message = internal_error_row(exc, STAGE)["error"]
            for outcome in ready:
                outcome.metrics.pop("alignment", None)
                stats.errors[outcome.key] = message
            stats.aligned = stats.without_baseline = 0
        stats.embed_s = time.perf_counter() - started
        return stats

    def _align(self, outcomes: list[CaptionOutcome], clips: list[ClipFrames], stats: AlignmentStats) -> None:
        if not outcomes:
            return
        captions = [o.caption for o in outcomes]
        metrics = align_batch(clips, captions, self.aligner, self.cfg.seed)
        for outcome, clip, aligned in zip(outcomes, clips, metrics, strict=True):
            outcome.metrics["alignment"] = aligned
            stats.aligned += 1
            stats.without_baseline += aligned["baseline"] is None
            stats.frames += len(clip.frames)
        texts = {
            t for c in captions for t in [c.get("summary"), *(s["text"] for s in c.get("segments") or [])]
        }
        stats.texts = len(texts - {None, ""})


class AlignmentActor:
    """Ray Data actor: CLIP is loaded once, then aligns task after task.

    Reads `outcomes` (pickled `CaptionOutcome`s, from the caption actors) and `alignment_frames`;
    writes `outcomes` with `metrics["alignment"]` added and `alignment_stats` (an `AlignmentStats`
    as a dict, pickled); every other column passes through.
    """

    def __init__(self, cfg: AlignmentConfig, clip: AestheticConfig):
        self.stage = AlignmentStage(cfg, clip)

    def __call__(self, batch: dict) -> dict:
        out = {k: list(v) for k, v in batch.items() if k != FRAMES_COLUMN}
        out["outcomes"], out[STATS_COLUMN] = [], []
        for blob, frames in zip(batch["outcomes"], batch[FRAMES_COLUMN], strict=True):
            outcomes = pickle.loads(blob)
            stats = self.stage.run(outcomes, pickle.loads(frames))
            out["outcomes"].append(pickle.dumps(outcomes))
            out[STATS_COLUMN].append(pickle.dumps(asdict(stats)))
        return out


def add_alignment_actors(ds, cfg: CaptionConfig, clip: AestheticConfig, retry_args: dict | None = None):
    """Append the alignment actor pool to a dataset of rows with `outcomes` and `alignment_frames`
    (after `jobs.captioning_stage.add_caption_actors`); `retry_args` bound the retries of a task whose
    actor died. The caller holds `jobs.ray_runtime.retry_args_accepted`."""
    import ray

    al = cfg.alignment
    return ds.map_batches(
        AlignmentActor,
        fn_constructor_kwargs={"cfg": al, "clip": clip},
        batch_size=1,  # a row is a whole task: its clips are the baseline's batch
        compute=ray.data.ActorPoolStrategy(size=al.actors),
        num_cpus=al.cpus,
        num_gpus=al.num_gpus,
        memory=int(al.memory_gb * 2**30),
        **(retry_args or {}),
    )


def check_alignment_model(cfg: CaptionConfig, aesthetic: AestheticConfig | None = None) -> None:
    """Fail before any work starts when the alignment CLIP cannot be found (without loading it): its
    config file, its architecture, and its weights as a checkpoint file or a pretrained tag. The error
    names the key to set: `captioning.alignment.*` when that section names the model, else the
    `scoring.aesthetic.*` key it came from."""
    if not (cfg.enabled and cfg.alignment.enabled):
        return
    import open_clip

    al, clip = cfg.alignment, cfg.alignment.clip_config(aesthetic)

    def fail(key: str, message: str):
        # the key the value came from: this section's, or the aesthetic scorer's it fell back to
        section = ALIGNMENT_PREFIX if getattr(al, key) or aesthetic is None else "scoring.aesthetic"
        raise ConfigError(f"{section}.{key}: {message}")

    if clip.clip_model_config:
        if not os.path.exists(clip.clip_model_config):
            fail("clip_model_config", f"no such file: {clip.clip_model_config}")
        from pathlib import Path

        open_clip.add_model_config(Path(clip.clip_model_config))
    name, pretrained = clip.clip_model, clip.clip_pretrained
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    if open_clip.get_model_config(name) is None:
        fail("clip_model", f"open_clip has no model {name!r} (a custom one needs clip_model_config)")
    if not os.path.isfile(pretrained) and not open_clip.get_pretrained_cfg(name, pretrained):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        fail(
            "clip_pretrained",
            f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {name} ({tags})",
        )


def settle_alignment(result, stats: dict, filters) -> None:
    """Curate's write, once the task's captions are applied to its records (a `TaskResult`; `stats` the
    actor's `alignment_stats`): a clip the stage failed on is dropped as `internal_error`, and every
    other kept clip meets the filter rules again, now with its caption scores (`filters.rule_values`),
    so a `{score: caption_alignment_margin, min: ...}` rule drops it like any other rule."""
    from curation.filters import decide, rule_values

    for record in result.clips:
        if not (record.kept and record.clip_id in result.media):
            continue
        error = stats["errors"].get(record.clip_id)
        if error is not None:
            record.kept, record.drop_reason = False, INTERNAL_ERROR
            record.errors.append({"stage": STAGE, "message": error})
        else:
            record.kept, record.drop_reason = decide(rule_values(record), filters)
    result.clock(STAGE, stats["started_unix"], stats["prep_s"] + stats["embed_s"])
