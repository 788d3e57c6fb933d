"""Clip rules: shots in, candidate clips out (trimmed, length-limited, each kept or dropped with a reason).

Detection reports every cut, however short the shot; these rules decide what becomes a clip, so a
short shot is dropped with a reason instead of being merged (with its cut) into a neighbour.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from curation.curate_config import ClipConfig


@dataclass(frozen=True)
class ClipSpan:
    """A candidate clip: frames `[start, end)` of one shot on the source's frame timeline."""

    shot_index: int
    start_frame: int
    end_frame: int
    kept: bool
    drop_reason: str | None = None

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


def clip_id(source: str, start_frame: int, end_frame: int) -> str:
    """Deterministic webdataset key: a digest of the source URI plus the frame span (no dots)."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    return f"{digest}-{start_frame:07d}-{end_frame:07d}"


def plan_clips(
    shots: list[tuple[int, int]], fps: float, cfg: ClipConfig, first_shot_index: int = 0
) -> list[ClipSpan]:
    """Apply trim, min and max length to every shot; returns kept and dropped candidates in order."""
    trim = int(round(cfg.trim_s * fps))
    min_frames = cfg.min_clip_s * fps - 1e-6
    max_frames = cfg.max_clip_s * fps + 1e-6
    too_short = f"duration<{cfg.min_clip_s:g}"
    spans: list[ClipSpan] = []
    for index, (shot_start, shot_end) in enumerate(shots, start=first_shot_index):
        start, end = shot_start + trim, shot_end - trim
        length = end - start
        if length < min_frames:
            spans.append(ClipSpan(index, shot_start, shot_end, kept=False, drop_reason=too_short))
            continue
        windows = max(1, math.ceil(length / max_frames))
        edges = [start + round(k * length / windows) for k in range(windows + 1)]
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            ok = (b - a) >= min_frames
            spans.append(ClipSpan(index, a, b, kept=ok, drop_reason=None if ok else too_short))
    return spans
