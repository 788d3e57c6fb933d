"""The captioning stage as two plain objects, the way `jobs/` runs it on Ray: CPU frame preparation in
tasks, then the model in an actor pool. Shared by `curate` (clips of a task) and `recaption`
(samples of a shard); both hand over `(key, mp4 bytes)` pairs and get `CaptionOutcome`s back.
"""

from __future__ import annotations

from captioning.caption_config import CaptionConfig
from captioning.captioner import Captioner, CaptionOutcome, CaptionStats, undecodable
from captioning.prompt_hints import ClipHints
from captioning.video_frames import PreparedClip, prepare_clip
from curation.errors import InputRejected
from curation.quarantine import INTERNAL_ERROR, internal_error_row, is_transient
from curation.record import ClipRecord


class CaptionPrep:
    """Decode clips into caption windows (CPU). A clip that does not decode becomes a failed outcome."""

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg

    def run(
        self, clips: list[tuple[str, bytes]], hints: dict[str, ClipHints] | None = None
    ) -> tuple[list[PreparedClip], list[CaptionOutcome]]:
        """`clips` as (key, mp4 bytes); `hints` by key, from the clips' records, for the prompt."""
        prepared, failed = [], []
        for key, mp4 in clips:
            try:
                prepared.append(prepare_clip(key, mp4, self.cfg.frames, (hints or {}).get(key)))
            except InputRejected as rejected:
                failed.append(undecodable(key, rejected.reason))
            except Exception as exc:  # a bug of ours on this clip: its row says so, the others go on
                if is_transient(exc):  # a timeout or a killed ffmpeg: the task is tried again
                    raise
                failed.append(internal_error_outcome(key, exc, "caption frames"))
        return prepared, failed


class CaptionModelStage:
    """The VLM and the captioner around it; build one per actor (loading the model is the cost)."""

    def __init__(self, cfg: CaptionConfig):
        from captioning.vlm import VLMBackend

        self.backend = VLMBackend(cfg.vlm)
        self.captioner = Captioner(self.backend.generate, cfg, cfg.vlm.model)

    def run(
        self, prepared: list[PreparedClip], failed: list[CaptionOutcome]
    ) -> tuple[list[CaptionOutcome], CaptionStats]:
        try:
            outcomes, stats = self.captioner.run(prepared)
        except Exception as exc:
            if is_transient(exc):  # the task is tried again (Ray's retry), not recorded
                raise
            outcomes, stats = (
                [internal_error_outcome(p.key, exc, "caption") for p in prepared],
                CaptionStats(),
            )
            for outcome in outcomes:
                stats.count(outcome)
        stats.runtime = self.backend.runtime
        for outcome in failed:
            stats.count(outcome)
        return outcomes + failed, stats


def internal_error_outcome(key: str, exc: Exception, stage: str) -> CaptionOutcome:
    """A clip that has no caption because our code failed on it (counted as `internal_error`)."""
    return CaptionOutcome(key, failure=INTERNAL_ERROR, detail=internal_error_row(exc, stage)["error"])


def apply_to_clip(
    record: ClipRecord, media: dict[str, bytes], outcome: CaptionOutcome, on_failure: str
) -> None:
    """Put a caption into a curate clip (record and `KEY.txt`), or record why there is none."""
    if outcome.caption is not None:
        record.caption, record.caption_metrics = outcome.caption, outcome.metrics
        media["txt"] = outcome.text.encode()
        return
    record.errors.append(outcome.error())
    if on_failure == "drop":
        record.kept, record.drop_reason = False, "caption_failed"
