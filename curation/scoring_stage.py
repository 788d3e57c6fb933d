"""The scoring stages: a task's kept clips get their scores, from samples taken once per clip.

The split stage's encode already yields each clip's samples (curation.transcode); a clip without
them (frame-rate resampling) is decoded once here. CPU scorers run in Ray tasks, the model
scorers (aesthetic, text) in actor pools that load them once per actor; all read the same samples.
"""

from __future__ import annotations

import dataclasses

from curation.curate_config import CurateConfig
from curation.errors import InputRejected
from curation.frames import sample_frames
from curation.quarantine import drop_clip, is_transient, retry_transient
from curation.scoring import MotionScorer, QualityScorer
from curation.scoring.camera import camera_record
from curation.splitter import TaskResult


def scorable(result: TaskResult) -> list:
    """Records of the clips that were written and not dropped yet, in order."""
    return [r for r in result.clips if r.kept and r.clip_id in result.media]


class CpuScoringStage:
    """Motion and visual quality (no model) for every kept clip of a task."""

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg
        self.motion = MotionScorer(cfg.scoring.motion) if cfg.scoring.motion.enabled else None
        self.quality = QualityScorer(cfg.scoring.quality) if cfg.scoring.quality.enabled else None

    def run(self, result: TaskResult) -> TaskResult:
        attempts = self.cfg.resources.transient_attempts
        for record in scorable(result):
            try:
                retry_transient(
                    lambda r=record: self._score(r, result), attempts, f"scoring {record.clip_id}"
                )
            except Exception as exc:  # a bug of ours, or a spent retry: this clip's row says so
                drop_clip(record, exc, "scoring")
        return result

    def _score(self, record, result: TaskResult) -> None:
        """One clip's motion and quality scores (its samples are decoded here when the split had none)."""
        frames = result.samples.get(record.clip_id)
        if frames is None:
            try:
                frames = sample_frames(
                    result.media[record.clip_id]["mp4"],
                    self.cfg.scoring.frames,
                    record.duration_s,
                    (record.width, record.height),
                )
            except InputRejected as rejected:  # the clip we wrote does not decode: never keep it
                record.kept, record.drop_reason = False, "unscorable"
                record.errors.append({"stage": "scoring", "message": rejected.reason})
                return
            result.samples[record.clip_id] = frames
        if self.motion is not None:
            scores, pairs = self.motion.measure(frames)
            record.scores.update(scores)
            if self.cfg.scoring.camera.enabled:
                starts = [float(frames.timestamps[a]) for a, _ in frames.pairs()]
                record.camera = camera_record(pairs, starts, self.cfg.scoring.camera)
        if self.quality is not None:
            record.scores.update(self.quality.score(frames))


class AestheticStage:
    """CLIP embeddings and the LAION aesthetic score; holds the models (build it once per actor)."""

    def __init__(self, cfg: CurateConfig):
        from curation.scoring.aesthetic import AestheticScorer  # torch only where the model runs

        self.scorer = AestheticScorer(cfg.scoring.aesthetic)

    def run(self, result: TaskResult) -> TaskResult:
        records = [r for r in scorable(result) if r.clip_id in result.samples]
        try:
            self._score(records, result)
        except Exception as exc:
            if is_transient(exc):  # out of GPU memory, a dying device: Ray retries the task
                raise
            for record in records:  # find the clip it was about: one at a time, the rest are scored
                try:
                    self._score([record], result)
                except Exception as one:
                    drop_clip(record, one, "aesthetic")
        return result

    def _score(self, records: list, result: TaskResult) -> None:
        if records:
            scored = self.scorer.score_batch([result.samples[r.clip_id] for r in records])
            for record, (scores, embedding) in zip(records, scored, strict=True):
                record.scores.update(scores)
                if embedding is not None:
                    result.embeddings[record.clip_id] = embedding


class TextStage:
    """Burned-in text (PP-OCR detection, `curation.scoring.text`) on every scored clip; holds the model
    (build it once per actor or worker process). Recognised strings, when asked for, go into the record's
    `text`. `device` overrides `scoring.text.device` (the CPU tasks run it on the CPU unless told `cuda`)."""

    def __init__(self, cfg: CurateConfig, threads: int = 1, device: str | None = None):
        from curation.scoring.text import TextScorer  # onnxruntime only where the model runs

        text = cfg.scoring.text if device is None else dataclasses.replace(cfg.scoring.text, device=device)
        self.scorer = TextScorer(text, threads)

    def run(self, result: TaskResult) -> TaskResult:
        for record in scorable(result):
            frames = result.samples.get(record.clip_id)
            if frames is None:  # not decodable: the CPU scoring stage has dropped it already
                continue
            try:
                reading = self.scorer.measure(frames)
            except Exception as exc:
                if is_transient(exc):  # out of GPU memory, a dying device: Ray retries the task
                    raise
                drop_clip(record, exc, "text")
                continue
            record.scores.update(reading.scores)
            if reading.texts is not None:
                record.text = reading.texts
        return result
