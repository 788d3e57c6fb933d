"""Two runs side by side (`reelmill report OUT --compare OTHER`): every metric of both, and the clips
whose captions differ most, e.g. two captioners or prompts over the same clips.

Captions are matched by webdataset key. To keep memory bounded the text comparison runs on the
`report.compare_clips` captioned clips of this run with the smallest key hashes: a uniform sample that
picks the same keys in any run, so comparing A with B and B with A looks at the same clips.
"""

from __future__ import annotations

import difflib
import hashlib
import heapq

from captioning.caption_stats import caption_text
from captioning.parsing import _words
from captioning.report.collect import RunOutputs, clip_key
from captioning.report.config import ReportConfig

_SECTIONS = {
    "funnel": ("stages", "video_resolutions", "job"),
    "captions": ("settings", "histogram", "values", "top_openings", "by_phrase", "top_groups", "examples",
                 "exact_percentiles", "openings_exact", "exact", "failures_exact"),
    "alignment": ("distributions", "not_decoded", "model", "status", "reason"),
}  # fmt: skip
_SCORE_STATS = ("count", "mean", "p5", "p50", "p95")


def _flatten(value, prefix: str, skip: tuple[str, ...], out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in skip:
                _flatten(v, f"{prefix}.{k}", skip, out)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float) or value is None:
        out[prefix] = value


def metrics(report: dict) -> dict[str, float | int | None]:
    """The report's numbers as `section.name...` -> value (lists and settings left out)."""
    out: dict = {}
    for section, skip in _SECTIONS.items():
        _flatten(report[section], section, skip, out)
    for name, entry in report["scores"].items():
        for stat in _SCORE_STATS:
            out[f"scores.{name}.{stat}"] = entry.get(stat)
        for t in entry["thresholds"]:
            out[f"scores.{name}.share_{'below' if t['side'] == 'min' else 'above'}_{t['value']:g}"] = t[
                "share_beyond"
            ]
    return {k: v for k, v in out.items() if not k.endswith((".max_clips",))}


def _delta(a, b):
    return None if a is None or b is None else b - a


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


_CAPTION_COLUMNS = ["clip_id", "key", "shard", "caption.summary", "caption.segments"]


def _caption(row: dict) -> dict:
    return {"summary": row.get("caption.summary") or "", "segments": list(row.get("caption.segments") or [])}


def _sample_captions(run: RunOutputs, size: int) -> dict[str, dict]:
    """The captioned rows of `run` with the `size` smallest key hashes: key -> caption and shard."""
    heap: list[tuple[int, str, dict]] = []
    for row in run.layout.iter_manifest(run.layout.clips_manifest, _CAPTION_COLUMNS):
        if row.get("caption.summary") is None:
            continue
        key = clip_key(row)
        item = (
            -_key_hash(key),
            key,
            {"caption": _caption(row), "shard": row.get("shard"), "text": caption_text(row)},
        )
        if len(heap) < size:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    return {key: value for _, key, value in heap}


def difference(a: str, b: str) -> float:
    """1 - difflib's similarity ratio of the two texts' word sequences (0: same words in the same order)."""
    return 1.0 - difflib.SequenceMatcher(None, _words(a), _words(b), autojunk=False).ratio()


def compare_captions(run: RunOutputs, other: RunOutputs, cfg: ReportConfig) -> dict:
    mine = _sample_captions(run, cfg.compare_clips)
    seen: set[str] = set()
    total = identical = 0
    top: list[tuple[float, str, dict]] = []
    for row in other.layout.iter_manifest(other.layout.clips_manifest, _CAPTION_COLUMNS):
        key = clip_key(row)
        if key not in mine or key in seen or row.get("caption.summary") is None:
            continue
        seen.add(key)
        diff = difference(mine[key]["text"], caption_text(row))
        total += diff
        identical += diff == 0.0
        pair = {"key": key, "difference": diff, "shard": mine[key]["shard"],
                "this": mine[key]["caption"], "other": _caption(row)}  # fmt: skip
        item = (diff, key, pair)
        if len(top) < cfg.examples:
            heapq.heappush(top, item)
        elif item[:2] > top[0][:2]:
            heapq.heapreplace(top, item)
    compared = len(seen)
    return {
        "max_clips": cfg.compare_clips,
        "sampled": len(mine),
        "compared": compared,
        "only_this": len(mine) - compared,
        "mean_difference": total / compared if compared else None,
        "identical_share": identical / compared if compared else None,
        "most_different": [pair for _, _, pair in sorted(top, key=lambda t: (-t[0], t[1]))],
    }


def compare_runs(
    run: RunOutputs, report: dict, other: RunOutputs, other_report: dict, cfg: ReportConfig, log=print
) -> dict:
    """The `compare` section of report.json: both runs' metrics and the most different captions."""
    log(f"reelmill report: comparing captions with {other.layout.root}")
    mine, theirs = metrics(report), metrics(other_report)
    names = list(mine) + [k for k in theirs if k not in mine]
    return {
        "other": other_report["run"],
        "metrics": [
            {
                "metric": name,
                "this": mine.get(name),
                "other": theirs.get(name),
                "delta": _delta(mine.get(name), theirs.get(name)),
            }
            for name in names
        ],
        "captions": compare_captions(run, other, cfg),
    }
