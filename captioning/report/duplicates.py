"""The report's duplicates part: what `reelmill dedup` marked in `manifest/dedup/`, in clips and hours.

`manifest/dedup` has a row per kept clip (`jobs.dedup.DEDUP_SCHEMA`): a clip is a duplicate when it has
`duplicate_of`; every other row stays in `dedup/keep.txt` (clips dedup could not check included), so
"kept after dedup" is the rows less the duplicates. Durations live in the clips manifest: the ids of the
duplicates are kept (a set as large as the duplicates, not the run) and their seconds summed while the
report reads the clips manifest again. The pairs nearest the similarity threshold, the ones worth a look,
are kept in a bounded heap.
"""

from __future__ import annotations

import heapq
from collections import Counter

from curation.layout import OutputLayout

COLUMNS = ["clip_id", "status", "duplicate_of", "similarity"]
BORDERLINE_PAIRS = 10


class DuplicatesCollector:
    """Reads `manifest/dedup` once (`read`), then takes the clip rows (`add_clip`) for the hours."""

    def __init__(self, layout: OutputLayout):
        self.manifest = layout.path("manifest", "dedup")
        self.present = bool(layout.manifest_parts(self.manifest))
        self.rows = 0
        self.status: Counter[str] = Counter()
        self.duplicate_ids: set[str] = set()
        self.borderline: list[tuple[float, str, str]] = []  # (-similarity, clip, duplicate_of): max-heap
        self.seconds_duplicates = 0.0
        self.layout = layout

    def read(self) -> None:
        if not self.present:
            return
        for row in self.layout.iter_manifest(self.manifest, COLUMNS):
            self.rows += 1
            self.status[row.get("status") or "ok"] += 1
            if row.get("duplicate_of") is None:
                continue
            self.duplicate_ids.add(row["clip_id"])
            if row.get("similarity") is not None:
                pair = (-float(row["similarity"]), row["clip_id"], row["duplicate_of"])
                if len(self.borderline) < BORDERLINE_PAIRS:
                    heapq.heappush(self.borderline, pair)
                elif pair > self.borderline[0]:
                    heapq.heapreplace(self.borderline, pair)

    def add_clip(self, row: dict) -> None:
        if row.get("clip_id") in self.duplicate_ids and row.get("kept"):
            self.seconds_duplicates += row.get("duration_s") or 0.0

    def result(self, kept_clips: int, hours_kept: float) -> dict | None:
        """report.json's `dedup`, or None when the run has no `manifest/dedup`."""
        if not self.present:
            return None
        duplicates = len(self.duplicate_ids)
        return {
            "checked_clips": self.rows,
            "kept_clips": kept_clips,
            "duplicates": duplicates,
            "kept_after_dedup": self.rows - duplicates,
            "not_checked": {s: n for s, n in self.status.most_common() if s != "ok"},
            "hours_duplicates": self.seconds_duplicates / 3600,
            "hours_after_dedup": hours_kept - self.seconds_duplicates / 3600,
            "borderline_pairs": [
                {"clip_id": clip, "duplicate_of": of, "similarity": -neg}
                for neg, clip, of in sorted(self.borderline, reverse=True)
            ],
        }
