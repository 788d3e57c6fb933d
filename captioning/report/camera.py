"""The report's camera motion part: how many clips (and hours) got each camera label, kept and dropped,
the mean numbers behind each label, and a few kept clips per label to look at.

Labels come from the clip manifest (`camera.label`, from the motion scorer's flow: see
`curation.scoring.camera`); the examples are drawn per label with a seeded reservoir, so a label that
a thousandth of the clips carry still gets its examples, and a rebuild shows the same clips.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

from captioning.streaming import Reservoir
from curation.scoring_config import CAMERA_LABELS

CAMERA_NUMBERS = ("pan_px", "tilt_px", "zoom", "rotation", "residual")
CAMERA_COLUMNS = ["camera.label", *(f"camera.{n}" for n in CAMERA_NUMBERS), "camera.windows"]


def camera_of(row: dict) -> dict | None:
    """A manifest row's camera label, numbers and windows, or None when the clip has no label."""
    label = row.get("camera.label")
    if label is None:
        return None
    return {
        "label": label,
        **{n: row.get(f"camera.{n}") for n in CAMERA_NUMBERS},
        "windows": [dict(w) for w in row.get("camera.windows") or []],
    }


class CameraCollector:
    """Per label: clips, kept clips, seconds, sums of the numbers, and a reservoir of kept clips in shards."""

    def __init__(self, examples: int, seed: int):
        self.examples, self.seed = examples, seed
        self.clips: defaultdict[str, dict] = defaultdict(
            lambda: {"clips": 0, "kept": 0, "seconds": 0.0, "seconds_kept": 0.0, "sums": dict.fromkeys(CAMERA_NUMBERS, 0.0)}
        )  # fmt: skip
        self.reservoirs: dict[str, Reservoir] = {}
        self.unlabelled = 0

    def add(self, row: dict, example: Callable[[dict], dict]) -> None:
        """One manifest row; `example` makes a row's example form (`collect.example_clip`) for the kept
        clips in shards, the ones an example can be decoded from."""
        camera = camera_of(row)
        if camera is None:
            self.unlabelled += row.get("drop_reason") != "transition"
            return
        entry = self.clips[camera["label"]]
        seconds = row.get("duration_s") or 0.0
        entry["clips"] += 1
        entry["seconds"] += seconds
        if row.get("kept"):
            entry["kept"] += 1
            entry["seconds_kept"] += seconds
        for name in CAMERA_NUMBERS:
            entry["sums"][name] += camera[name] or 0.0
        if row.get("kept") and row.get("shard") and self.examples > 0:
            if camera["label"] not in self.reservoirs:
                self.reservoirs[camera["label"]] = Reservoir(
                    self.examples, random.Random(f"{self.seed}:camera:{camera['label']}")
                )
            self.reservoirs[camera["label"]].add({**example(row), "camera": camera})

    def result(self) -> dict:
        """report.json's `camera`: a row per label (in CAMERA_LABELS order) and the examples per label."""
        total = sum(e["clips"] for e in self.clips.values())
        labels = []
        for label in [*CAMERA_LABELS, *sorted(set(self.clips) - set(CAMERA_LABELS))]:
            if label not in self.clips:
                continue
            e = self.clips[label]
            labels.append({
                "label": label, "clips": e["clips"], "share": e["clips"] / total, "kept": e["kept"],
                "hours": e["seconds"] / 3600, "hours_kept": e["seconds_kept"] / 3600,
                **{f"mean_{n}": e["sums"][n] / e["clips"] for n in CAMERA_NUMBERS},
            })  # fmt: skip
        examples = {label: sorted(r.items, key=lambda c: c["key"]) for label, r in self.reservoirs.items()}
        return {
            "labelled": total,
            "unlabelled": self.unlabelled,
            "labels": labels,
            "examples": {row["label"]: examples[row["label"]] for row in labels if row["label"] in examples},
        }
