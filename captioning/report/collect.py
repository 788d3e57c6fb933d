"""Streaming passes over a run's manifests: the funnel, score distributions, caption statistics, and
the clips drawn for the parts of the report that decode video.

Manifests are read a record batch at a time (`OutputLayout.iter_manifest`), and every consumer keeps
fixed-size state (reservoir samples, counters over small vocabularies, a heap of `examples` rows), so
memory does not grow with the run; only caption duplicate detection keeps a few hundred bytes per
clip (see `captioning.caption_stats`), and the duplicates section the ids of the duplicates `reelmill
dedup` marked. The first pass gives each score's exact range; a second one, over the score columns
only, counts every clip into that score's bins, kept and dropped apart, so the histograms are exact at
any size. Transition rows (cuts and gradual transitions, `drop_reason` `transition`) are not clips:
they are counted apart and kept out of every clip number.
"""

from __future__ import annotations

import bisect
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
from captioning.report.duplicates import DuplicatesCollector
from captioning.streaming import Distribution, FrequentItems, Reservoir
from curation import storage
from curation.config import ConfigError
from curation.filters import caption_scores, decide
from curation.layout import OutputLayout
from curation.record import SCORE_NAMES, TRANSITION
from curation.scoring_config import SCORE_NAMES as QUALITY_SCORES
from curation.scoring_config import FilterConfig, FilterRule

HISTOGRAM_BINS = 30  # at most; small runs get fewer (`bin_count`)
MIN_BINS = 10
MIN_INTEGER_BINS = 7
LOG_DECADES = 2  # a positive score whose max/min exceeds 10**LOG_DECADES gets log-spaced bins
SAMPLE_SIZE = 10_000  # values kept per distribution for percentiles
INTEGER_VALUED = {
    "text_boxes", "content_x", "content_y", "content_w", "content_h", "short_side_px",
    "words_per_caption", "words_per_segment", "segments_per_clip",
}  # fmt: skip
"""Counts and pixel sizes: binned by whole numbers where their range is narrow."""


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


def bin_count(n: int) -> int:
    """Bins for `n` values: Rice's rule (2 n^(1/3)), between MIN_BINS and HISTOGRAM_BINS."""
    return min(HISTOGRAM_BINS, max(MIN_BINS, math.ceil(2 * n ** (1 / 3))))


def bin_edges(low: float, high: float, n: int, integers: bool = False, marks: tuple[float, ...] = ()) -> dict:
    """The bins for `n` values in [low, high]: `edges`, `scale` (linear | log) and `integer_bins`.

    The bins stretch to cover the thresholds in `marks`, so the picture shows what lies on both sides
    of each. Log-spaced when the values are positive and span more than LOG_DECADES decades (sharpness
    does); one bin per whole number for integer quantities over a narrow range (at least MIN_INTEGER_BINS
    of them, so a constant shows as one bar among empty neighbours); one bin around a constant; else
    evenly spaced."""
    import numpy as np

    log = low > 0 and high / low > 10**LOG_DECADES
    marks = tuple(m for m in marks if m > 0) if log else marks
    low, high = min((low, *marks)), max((high, *marks))
    if log:
        edges = np.geomspace(low, high, bin_count(n) + 1)
        edges[0], edges[-1] = low, high  # exactly the ends, so no value falls outside by rounding
        return {"edges": [float(e) for e in edges], "scale": "log", "integer_bins": False}
    if integers and high - low <= HISTOGRAM_BINS:
        first, last = math.floor(low), math.ceil(high)
        room = max(0, MIN_INTEGER_BINS - (last - first + 1))
        first, last = first - room // 2, last + room - room // 2
        if low >= 0:  # counts and sizes: no bins below zero
            first, last = max(0, first), max(last, max(0, first) + MIN_INTEGER_BINS - 1)
        edges = np.arange(first - 0.5, last + 1.0)
        return {"edges": [float(e) for e in edges], "scale": "linear", "integer_bins": True}
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bin_count(n) + 1)
    return {"edges": [float(e) for e in edges], "scale": "linear", "integer_bins": False}


def bin_index(edges: list[float], value: float) -> int:
    """The bin of `value` as numpy.histogram puts it: [edge, next edge), the last bin closed."""
    return min(max(bisect.bisect_right(edges, value) - 1, 0), len(edges) - 2)


def histogram(values: list[float], integers: bool = False) -> dict:
    """Bin edges, scale and counts of a sample (one bin around a constant)."""
    import numpy as np

    if not values:
        return {"edges": [], "scale": "linear", "integer_bins": False, "counts": []}
    bins = bin_edges(min(values), max(values), len(values), integers)
    counts, _ = np.histogram(values, bins=bins["edges"])
    return {**bins, "counts": [int(c) for c in counts]}


def is_transition(row: dict) -> bool:
    """A row that marks a cut or gradual transition between shots: not a clip."""
    return row.get("drop_reason") == TRANSITION


class _RuleCheck:
    """Which clips `filters.rules` would drop in a `score-only` run (which keeps every clip): the same
    `curation.filters.decide` the filter stage runs, over the manifest row."""

    def __init__(self, config: dict):
        filters = config.get("filters") or {}
        self.cfg = None
        if filters.get("mode") == "score-only" and filters.get("rules"):
            fields = ("score", "min", "max", "drop")
            try:
                rules = [FilterRule(**{k: r.get(k) for k in fields}) for r in filters["rules"]]
                self.cfg = FilterConfig(mode="filter", rules=rules)
            except ConfigError:
                pass  # rules this version no longer reads (a run of an older one): no would-be drops shown

    def reason(self, row: dict) -> str | None:
        """The first rule a kept clip fails, or None (always None outside score-only runs)."""
        if self.cfg is None or not row.get("kept"):
            return None
        values = {
            **{name: row.get(f"scores.{name}") for name in SCORE_NAMES},
            "camera": row.get("camera.label"),
            **caption_scores(row.get("caption_metrics")),
        }
        return decide(values, self.cfg)[1]


def clip_state(row: dict, rules: _RuleCheck) -> str:
    """The histogram series of a clip: kept, would_drop (kept by a score-only run, failing a rule) or dropped."""
    if not row.get("kept"):
        return "dropped"
    return "would_drop" if rules.reason(row) is not None else "kept"


@dataclass
class _Threshold:
    side: str  # min | max
    value: float
    reason: str  # the drop reason this threshold writes
    outside: int = 0


class _ScoreCollector:
    """Per score (and clip duration, and the short side of written clips): a distribution over the
    clips that have it, and for every configured threshold the exact count of clips beyond it. Then,
    in a second pass (`count_bins`), exact histogram counts per series of clips (`clip_state`)."""

    def __init__(self, config: dict, seed: int):
        self.dists: dict[str, Distribution] = {}
        self.seed = seed
        self.bins: dict[str, dict] = {}
        self.series = ["kept", "dropped"]
        if (config.get("filters") or {}).get("mode") == "score-only":
            self.series.insert(1, "would_drop")
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

    def values(self, row: dict):
        """(name, value) of every finite number of a clip row the report plots."""
        # the picture box inside bars is a position, not a quality: shown only when a rule filters on it
        for name in SCORE_NAMES:
            if name in QUALITY_SCORES or name in self.thresholds:
                value = row.get(f"scores.{name}")
                if value is not None and math.isfinite(value):
                    yield name, float(value)
        if row.get("duration_s") is not None and math.isfinite(row["duration_s"]):
            yield "duration_s", float(row["duration_s"])
        if row.get("width") and row.get("height"):
            yield "short_side_px", float(min(row["width"], row["height"]))

    def add(self, row: dict) -> None:
        for name, value in self.values(row):
            if name not in self.dists:
                self.dists[name] = Distribution(SAMPLE_SIZE, random.Random(f"{self.seed}:{name}"))
            self.dists[name].add(value)
            for t in self.thresholds.get(name, ()):
                t.outside += value < t.value if t.side == "min" else value > t.value
        if row.get("kept") and row.get("width") and row.get("height"):
            self.resolutions.add(f"{row['width']}x{row['height']}")

    def plan_bins(self) -> None:
        """Fix each score's bins from its exact range, once the first pass has seen every clip."""
        for name, dist in self.dists.items():
            marks = tuple(t.value for t in self.thresholds.get(name, ()))
            bins = bin_edges(dist.min, dist.max, dist.count, name in INTEGER_VALUED, marks)
            bins["series"] = {s: [0] * (len(bins["edges"]) - 1) for s in self.series}
            self.bins[name] = bins

    def count_bins(self, row: dict, state: str) -> None:
        for name, value in self.values(row):
            hist = self.bins[name]
            hist["series"][state][bin_index(hist["edges"], value)] += 1

    def result(self, drops: dict[str, int], would_drop: dict[str, int], mode: str | None) -> dict:
        out = {}
        for name, dist in self.dists.items():
            entry = dist.result()
            del entry["values"]
            hist = self.bins[name]
            totals = [sum(c) for c in zip(*hist["series"].values(), strict=True)]
            entry["histogram"] = {**hist, "counts": totals}
            entry["thresholds"] = [
                {
                    "side": t.side,
                    "value": t.value,
                    "reason": t.reason,
                    "beyond": t.outside,
                    "share_beyond": t.outside / dist.count if dist.count else None,
                    # first failing rule wins, so a clip beyond two thresholds counts for the first
                    "dropped_by_rule": drops.get(t.reason, 0),
                    **({"would_drop_by_rule": would_drop.get(t.reason, 0)} if mode == "score-only" else {}),
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
    # the funnel's charts, one unit each: a clip count and an hour are not drawn on one axis
    clip_stages = [["candidate clips", clips["candidates"]], ["kept clips", clips["kept"]]]
    hour_stages = [
        ["input videos (probed ok)", seconds_in / 3600],
        ["candidate clips", clips["seconds"] / 3600],
        ["kept clips", clips["seconds_kept"] / 3600],
    ]
    if clips["would_drop"] is not None:
        clip_stages.append(
            ["pass filters.rules (score-only)", clips["kept"] - sum(clips["would_drop"].values())]
        )
        hour_stages.append(["pass filters.rules (score-only)", clips["seconds_would_keep"] / 3600])
    panels = [
        {"title": "Input videos", "unit": "videos", "stages": [["input videos", videos], ["probed ok", ok]]},
        {"title": "Clips", "unit": "clips", "stages": clip_stages},
        {"title": "Duration of video", "unit": "hours", "stages": hour_stages},
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
        "transitions": clips["transitions"],
        "would_drop": clips["would_drop"],
        "stages": stages,
        "panels": panels,
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
    panels = [
        {"title": "Input shards", "unit": "shards", "stages": [["input shards", shards], ["readable", shards - unreadable]]},
        {"title": "Clips", "unit": "clips", "stages": stages[1:]},
        {"title": "Duration of video", "unit": "hours",
         "stages": [["selected clips", clips["seconds"] / 3600], ["written clips", clips["seconds_kept"] / 3600]]},
    ]  # fmt: skip
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
        "panels": panels,
    }


CLIP_COLUMNS = [
    "clip_id", "key", "source", "source_start_s", "duration_s", "width", "height", "kept", "drop_reason",
    "shard", "errors", "caption.summary", "caption.segments", "caption.model", "caption.prompt_id",
    "caption_metrics", *(f"scores.{n}" for n in SCORE_NAMES), *CAMERA_COLUMNS,
    "transition",
]  # fmt: skip
BIN_COLUMNS = [
    "clip_id", "duration_s", "width", "height", "kept", "drop_reason", "caption_metrics", "camera.label",
    *(f"scores.{n}" for n in SCORE_NAMES),
]  # fmt: skip
"""What the second pass reads: the plotted numbers, and what decides a clip's series."""


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
    dedup: dict | None


PROGRESS_ROWS = 100_000


def collect(run: RunOutputs, cfg: ReportConfig, log=print) -> Collected:
    """Stream the clip manifest through every consumer, then the videos or shards manifest and
    `manifest/dedup`, then the clip manifest's numbers again into the histograms' bins."""
    layout = run.layout
    scores = _ScoreCollector(run.config, cfg.seed)
    captions = CaptionStatsAccumulator(seed=cfg.seed, top_n=20, max_duplicate_clips=cfg.duplicate_clips)
    pool = _ExamplePool(cfg.max_clips, cfg.examples, cfg.seed)
    camera = CameraCollector(cfg.camera_examples, cfg.seed)
    rules = _RuleCheck(run.config)
    drops: Counter[str] = Counter()
    would_drop: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    totals = {"candidates": 0, "kept": 0, "captioned": 0, "seconds": 0.0, "seconds_kept": 0.0,
              "seconds_would_keep": 0.0}  # fmt: skip
    rows = 0
    for row in layout.iter_manifest(layout.clips_manifest, CLIP_COLUMNS):
        rows += 1
        if rows % PROGRESS_ROWS == 0:
            log(f"reelmill report: {rows:,} clip rows read")
        if is_transition(row):
            transitions[row.get("transition") or TRANSITION] += 1
            continue
        totals["candidates"] += 1
        seconds = row.get("duration_s") or 0.0
        totals["seconds"] += seconds
        if row.get("kept"):
            totals["kept"] += 1
            totals["seconds_kept"] += seconds
            reason = rules.reason(row)
            if reason is None:
                totals["seconds_would_keep"] += seconds
            else:
                would_drop[reason] += 1
        else:
            drops[row.get("drop_reason") or "dropped"] += 1
        totals["captioned"] += row.get("caption.summary") is not None
        scores.add(row)
        captions.add(row)
        pool.add(row)
        camera.add(row, example_clip)
    totals["drops"] = dict(drops.most_common())
    totals["would_drop"] = dict(would_drop.most_common()) if rules.cfg is not None else None
    totals["transitions"] = dict(sorted(transitions.items()))
    funnel = (_funnel_recaption if run.job == "recaption" else _funnel_curate)(run, totals)
    duplicates = DuplicatesCollector(layout)
    duplicates.read()
    scores.plan_bins()
    if scores.dists or duplicates.present:
        for row in layout.iter_manifest(layout.clips_manifest, BIN_COLUMNS):
            if not is_transition(row):
                scores.count_bins(row, clip_state(row, rules))
                duplicates.add_clip(row)
    dedup = duplicates.result(totals["kept"], totals["seconds_kept"] / 3600)
    if dedup is not None and "panels" in funnel:
        funnel["panels"][1]["stages"].append(["kept after dedup", dedup["kept_after_dedup"]])
        funnel["panels"][2]["stages"].append(["kept after dedup", dedup["hours_after_dedup"]])
    mode = (run.config.get("filters") or {}).get("mode")
    caption_result = captions.result()
    for name, dist in caption_result["distributions"].items():
        dist["histogram"] = histogram(dist.pop("values"), name in INTEGER_VALUED)
    return Collected(
        funnel=funnel,
        scores=scores.result(totals["drops"], totals["would_drop"] or {}, mode),
        resolutions=[{"resolution": k, "clips": c} for k, c in scores.resolutions.top(10)],
        captions=caption_result,
        pool=pool.reservoir.items,
        pool_of=pool.reservoir.seen,
        longest=pool.longest_captions(),
        camera=camera.result(),
        dedup=dedup,
    )
