"""One streaming pass over a run's manifests: the funnel, score distributions, caption statistics, and
the clips drawn for the parts of the report that decode video.

Manifests are read a record batch at a time (`OutputLayout.iter_manifest`), and every consumer keeps
fixed-size state (reservoir samples, counters over small vocabularies, a heap of `examples` rows), so
memory does not grow with the run; only caption duplicate detection keeps a few hundred bytes per
clip (see `captioning.caption_stats`).
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field

from captioning.caption_stats import CaptionStatsAccumulator
from captioning.parsing import _words
from captioning.report.camera import CAMERA_COLUMNS, CameraCollector, camera_of
from captioning.report.config import ReportConfig
from captioning.streaming import Distribution, FrequentItems, Reservoir
from curation import storage
from curation.layout import OutputLayout
from curation.record import SCORE_NAMES
from curation.scoring_config import SCORE_NAMES as QUALITY_SCORES

HISTOGRAM_BINS = 30
SAMPLE_SIZE = 10_000  # values kept per distribution for percentiles and histograms


class ReportError(ValueError):
    """The directory is not a run's output (no run.json, no manifests)."""


@dataclass
class RunOutputs:
    """A run's output directory as the report reads it: run.json (or the resume spec of a run that
    never finished), its config, and which job wrote it."""

    layout: OutputLayout
    run: dict
    config: dict
    job: str

    @property
    def models(self) -> str | None:
        return self.run.get("models")

    def shard_uri(self, name: str) -> str:
        return storage.join(self.layout.shards, name)


def open_run(root: str) -> RunOutputs:
    layout = OutputLayout(root)
    run = json.loads(storage.read_bytes(layout.run_json)) if storage.exists(layout.run_json) else {}
    spec = json.loads(storage.read_bytes(layout.spec)) if storage.exists(layout.spec) else {}
    if not run and not spec and not layout.manifest_parts(layout.clips_manifest):
        raise ReportError(
            f"{root} holds no run (no run.json and no manifest/clips); give a curate or recaption OUT"
        )
    job = run.get("job") or ("recaption" if layout.manifest_parts(layout.shards_manifest) else "curate")
    return RunOutputs(layout, run, run.get("config") or spec.get("config") or {}, job)


def clip_key(row: dict) -> str:
    """The webdataset key of a manifest row (recaption keeps foreign keys in `key`)."""
    return row.get("key") or row["clip_id"]


def histogram(values: list[float], bins: int = HISTOGRAM_BINS) -> dict:
    """Bin edges and counts of a sample (one bin around a constant)."""
    import numpy as np

    if not values:
        return {"edges": [], "counts": []}
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _summary(dist: Distribution) -> dict:
    """A distribution's numbers for report.json: the sample becomes a histogram."""
    out = dist.result()
    out["histogram"] = histogram(out.pop("values"))
    return out


@dataclass
class _Threshold:
    side: str  # min | max
    value: float
    reason: str  # the drop reason this threshold writes
    outside: int = 0


class _ScoreCollector:
    """Per score (and clip duration, and the short side of written clips): a distribution over the
    clips that have it, and for every configured threshold the exact count of clips beyond it."""

    def __init__(self, config: dict, seed: int):
        self.dists: dict[str, Distribution] = {}
        self.seed = seed
        self.thresholds: dict[str, list[_Threshold]] = {}
        for rule in (config.get("filters") or {}).get("rules") or []:
            for side in ("min", "max"):
                if rule.get(side) is not None:
                    op = "<" if side == "min" else ">"
                    self.thresholds.setdefault(rule["score"], []).append(
                        _Threshold(side, float(rule[side]), f"{rule['score']}{op}{rule[side]:g}")
                    )
        clips = config.get("clips") or {}
        if clips.get("min_clip_s") is not None:
            self.thresholds["duration_s"] = [
                _Threshold("min", float(clips["min_clip_s"]), f"duration<{clips['min_clip_s']:g}")
            ]
        self.resolutions = FrequentItems(1000)

    def _add(self, name: str, value) -> None:
        if value is None or not math.isfinite(value):
            return
        if name not in self.dists:
            self.dists[name] = Distribution(SAMPLE_SIZE, random.Random(f"{self.seed}:{name}"))
        self.dists[name].add(float(value))
        for t in self.thresholds.get(name, ()):
            t.outside += value < t.value if t.side == "min" else value > t.value

    def add(self, row: dict) -> None:
        # the picture box inside bars is a position, not a quality: shown only when a rule filters on it
        for name in SCORE_NAMES:
            if name in QUALITY_SCORES or name in self.thresholds:
                self._add(name, row.get(f"scores.{name}"))
        self._add("duration_s", row.get("duration_s"))
        if row.get("width") and row.get("height"):
            self._add("short_side_px", min(row["width"], row["height"]))
            if row.get("kept"):
                self.resolutions.add(f"{row['width']}x{row['height']}")

    def result(self, drops: dict[str, int], mode: str | None) -> dict:
        out = {}
        for name, dist in self.dists.items():
            entry = _summary(dist)
            entry["thresholds"] = [
                {
                    "side": t.side,
                    "value": t.value,
                    "reason": t.reason,
                    "beyond": t.outside,
                    "share_beyond": t.outside / dist.count if dist.count else None,
                    # first failing rule wins, so a clip beyond two thresholds counts for the first
                    "dropped_by_rule": drops.get(t.reason, 0) if mode != "score-only" else 0,
                }
                for t in self.thresholds.get(name, ())
            ]
            out[name] = entry
        order = [*SCORE_NAMES, "duration_s", "short_side_px"]
        return {name: out[name] for name in order if name in out}


@dataclass(order=True)
class _Ranked:
    words: int
    key: str
    clip: dict = field(compare=False)


def example_clip(row: dict) -> dict:
    """What the report keeps of a sampled clip: where it is, its caption and its scores."""
    metrics = row.get("caption_metrics")
    return {
        "key": clip_key(row),
        "clip_id": row.get("clip_id"),
        "shard": row.get("shard"),
        "source": row.get("source"),
        "source_start_s": row.get("source_start_s"),
        "duration_s": row.get("duration_s"),
        "width": row.get("width"),
        "height": row.get("height"),
        "scores": {n: row[f"scores.{n}"] for n in QUALITY_SCORES if row.get(f"scores.{n}") is not None},
        "caption": {
            "summary": row.get("caption.summary") or "",
            "segments": list(row.get("caption.segments") or []),
            "model": row.get("caption.model"),
            "prompt_id": row.get("caption.prompt_id"),
        },
        "caption_metrics": metrics or None,
        "camera": camera_of(row),
        "words": len(_words(" ".join([row.get("caption.summary") or ""] + [
            s.get("text") or "" for s in row.get("caption.segments") or []
        ]))),
    }  # fmt: skip


class _ExamplePool:
    """A uniform sample (reservoir, seeded) of the captioned clips in the shards, and the clips with
    the longest captions: the only rows the report keeps whole."""

    def __init__(self, size: int, longest: int, seed: int):
        self.longest = longest
        self.reservoir = Reservoir(size, random.Random(f"{seed}:examples"))
        self.top: list[_Ranked] = []

    def add(self, row: dict) -> None:
        if not row.get("kept") or not row.get("shard") or row.get("caption.summary") is None:
            return
        clip = example_clip(row)
        self.reservoir.add(clip)
        ranked = _Ranked(clip["words"], clip["key"], clip)
        if len(self.top) < self.longest:
            heapq.heappush(self.top, ranked)
        elif ranked > self.top[0]:
            heapq.heapreplace(self.top, ranked)

    def longest_captions(self) -> list[dict]:
        return [r.clip for r in sorted(self.top, reverse=True)]


def _funnel_curate(run: RunOutputs, clips: dict) -> dict:
    layout = run.layout
    videos, ok, shots, seconds_in = 0, 0, 0, 0.0
    errors: Counter[str] = Counter()
    resolutions = FrequentItems(1000)
    columns = ["status", "error_code", "num_shots", "duration_s", "width", "height"]
    for row in layout.iter_manifest(layout.videos_manifest, columns):
        videos += 1
        if row["status"] == "ok":
            ok += 1
            shots += row.get("num_shots") or 0
            seconds_in += row.get("duration_s") or 0.0
            if row.get("width") and row.get("height"):
                resolutions.add(f"{row['width']}x{row['height']}")
        else:
            errors[row.get("error_code") or "error"] += 1
    stages = [
        ["videos in", videos],
        ["videos probed ok", ok],
        ["shots found", shots],
        ["candidate clips", clips["candidates"]],
        ["kept clips", clips["kept"]],
    ]
    return {
        "job": "curate",
        "videos": videos,
        "videos_ok": ok,
        "probe_errors": dict(errors.most_common()),
        "shots": shots,
        "candidate_clips": clips["candidates"],
        "kept_clips": clips["kept"],
        "dropped_clips": clips["candidates"] - clips["kept"],
        "drops": clips["drops"],
        "hours_in": seconds_in / 3600,
        "hours_candidates": clips["seconds"] / 3600,
        "hours_kept": clips["seconds_kept"] / 3600,
        "video_resolutions": [{"resolution": k, "videos": c} for k, c in resolutions.top(10)],
        "stages": stages,
    }


def _funnel_recaption(run: RunOutputs, clips: dict) -> dict:
    layout = run.layout
    shards = unreadable = samples = selected = 0
    for row in layout.iter_manifest(layout.shards_manifest, ["status", "samples", "selected"]):
        shards += 1
        unreadable += row["status"] != "ok"
        samples += row.get("samples") or 0
        selected += row.get("selected") or 0
    stages = [
        ["input shards", shards],
        ["samples", samples],
        ["selected", selected],
        ["captioned", clips["captioned"]],
        ["written", clips["kept"]],
    ]
    return {
        "job": "recaption",
        "shards_in": shards,
        "shard_errors": unreadable,
        "samples": samples,
        "selected": selected,
        "captioned": clips["captioned"],
        "kept_clips": clips["kept"],
        "dropped_clips": clips["candidates"] - clips["kept"],
        "drops": clips["drops"],
        "hours_kept": clips["seconds_kept"] / 3600,
        "stages": stages,
    }


CLIP_COLUMNS = [
    "clip_id", "key", "source", "source_start_s", "duration_s", "width", "height", "kept", "drop_reason",
    "shard", "errors", "caption.summary", "caption.segments", "caption.model", "caption.prompt_id",
    "caption_metrics", *(f"scores.{n}" for n in SCORE_NAMES), *CAMERA_COLUMNS,
]  # fmt: skip


@dataclass
class Collected:
    """Everything one pass over the manifests gives."""

    funnel: dict
    scores: dict
    resolutions: list[dict]
    captions: dict
    pool: list[dict]
    pool_of: int
    longest: list[dict]
    camera: dict


PROGRESS_ROWS = 100_000


def collect(run: RunOutputs, cfg: ReportConfig, log=print) -> Collected:
    """Stream the clip manifest once through every consumer, then the videos or shards manifest."""
    scores = _ScoreCollector(run.config, cfg.seed)
    captions = CaptionStatsAccumulator(seed=cfg.seed, top_n=20, max_duplicate_clips=cfg.duplicate_clips)
    pool = _ExamplePool(cfg.max_clips, cfg.examples, cfg.seed)
    camera = CameraCollector(cfg.camera_examples, cfg.seed)
    drops: Counter[str] = Counter()
    totals = {"candidates": 0, "kept": 0, "captioned": 0, "seconds": 0.0, "seconds_kept": 0.0}
    for row in run.layout.iter_manifest(run.layout.clips_manifest, CLIP_COLUMNS):
        totals["candidates"] += 1
        if totals["candidates"] % PROGRESS_ROWS == 0:
            log(f"reelmill report: {totals['candidates']:,} clip rows read")
        seconds = row.get("duration_s") or 0.0
        totals["seconds"] += seconds
        if row.get("kept"):
            totals["kept"] += 1
            totals["seconds_kept"] += seconds
        else:
            drops[row.get("drop_reason") or "dropped"] += 1
        totals["captioned"] += row.get("caption.summary") is not None
        scores.add(row)
        captions.add(row)
        pool.add(row)
        camera.add(row, example_clip)
    totals["drops"] = dict(drops.most_common())
    funnel = (_funnel_recaption if run.job == "recaption" else _funnel_curate)(run, totals)
    mode = (run.config.get("filters") or {}).get("mode")
    caption_result = captions.result()
    for dist in caption_result["distributions"].values():
        dist["histogram"] = histogram(dist.pop("values"))
    return Collected(
        funnel=funnel,
        scores=scores.result(totals["drops"], mode),
        resolutions=[{"resolution": k, "clips": c} for k, c in scores.resolutions.top(10)],
        captions=caption_result,
        pool=pool.reservoir.items,
        pool_of=pool.reservoir.seen,
        longest=pool.longest_captions(),
        camera=camera.result(),
    )
