"""The clip browser's data files: one streaming pass over the clip manifest into a compact columnar index.

The page opens from `file://` with no server, where `fetch()` of a local file is refused, so every data
file is a script that hands its payload to a global (`<script src="browser/clips-data.js">`). The index
holds what the table filters, sorts and simulates on: one array per column, repeated strings (source,
shard, reason, camera label) as indexes into a dictionary, floats at 6 significant digits. What only the
detail pane needs (segments, camera numbers, burned-in text, caption metrics, errors) goes to chunk files
of `DETAIL_CHUNK` rows that the page loads when a row is opened, so the index stays small at 100k rows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

from captioning.report.camera import CAMERA_COLUMNS, CAMERA_NUMBERS
from captioning.report.collect import PROGRESS_ROWS, RunOutputs, clip_key
from curation.record import SCORE_NAMES
from curation.scoring_config import CAPTION_SCORES

INDEX_VERSION = 1
DETAIL_CHUNK = 500
DATA_DIR = "browser"
CLIPS_DATA = "browser/clips-data.js"
REJECTED_DATA = "browser/rejected-data.js"
RUN_DATA = "browser/run-data.js"

CLIP_COLUMNS = [
    "clip_id", "key", "source", "source_start_s", "source_end_s", "duration_s", "fps", "num_frames",
    "width", "height", "codec", "kept", "drop_reason", "drop_rule", "transition", "shard", "location",
    "errors", "text", "error_code", "error", "input_shard", *(f"scores.{n}" for n in SCORE_NAMES),
    *CAMERA_COLUMNS, "caption.summary", "caption.segments", "caption.model", "caption.prompt_id",
    "caption_metrics",
]  # fmt: skip


def number(value) -> str:
    """A float as JS source: 6 significant digits (enough to tell apart neighbours a threshold sits
    between), `null` for missing or non-finite values."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(int(value))
    value = float(value)
    if not math.isfinite(value):
        return "null"
    text = f"{value:.6g}"
    return text[:-2] if text.endswith(".0") else text


def location_of(row: dict) -> str | None:
    """Where a clip's media lives: the `location` column, or on manifests from before it, kept clips in
    shards/ and dropped clips that name a shard in dropped/ (written with `--keep-dropped`)."""
    location = row.get("location")
    if location:
        return location
    if not row.get("shard"):
        return None
    return "shards" if row.get("kept") else "dropped"


def caption_metrics_of(row: dict) -> dict | None:
    """`caption_metrics` as a dict: the reader gives a dict, manifests of old runs a JSON string."""
    metrics = row.get("caption_metrics")
    if isinstance(metrics, str):
        try:
            metrics = json.loads(metrics)
        except ValueError:
            return None
    return metrics if isinstance(metrics, dict) else None


def rule_value_names() -> list[str]:
    """Every number the table shows and a rule may name: the record's scores, then caption scores."""
    return [*SCORE_NAMES, *CAPTION_SCORES]


class _Dictionary:
    """Strings as small integers (first seen first), -1 for null."""

    def __init__(self):
        self.index: dict[str, int] = {}

    def __call__(self, value) -> int:
        if value is None:
            return -1
        value = str(value)
        if value not in self.index:
            self.index[value] = len(self.index)
        return self.index[value]

    def values(self) -> list[str]:
        return list(self.index)


def _segments(row: dict) -> list[list]:
    out = []
    for s in row.get("caption.segments") or []:
        out.append([s.get("start_s"), s.get("end_s"), s.get("text") or ""])
    return out


def _detail(row: dict, metrics: dict | None) -> dict:
    """What the detail pane shows beyond the index: only fields a row has, to keep chunks small."""
    detail = {
        "clip_id": row.get("clip_id"),
        "source_end_s": row.get("source_end_s"),
        "fps": row.get("fps"),
        "num_frames": row.get("num_frames"),
        "codec": row.get("codec"),
        "transition": row.get("transition"),
        "segments": _segments(row),
        "caption_model": row.get("caption.model"),
        "prompt_id": row.get("caption.prompt_id"),
        "metrics": metrics,
        "text": row.get("text"),
        "errors": [dict(e) for e in row.get("errors") or []] or None,
        "error_code": row.get("error_code"),
        "error": row.get("error"),
        "input_shard": row.get("input_shard"),
    }
    if row.get("camera.label") is not None:
        detail["camera"] = {n: row.get(f"camera.{n}") for n in CAMERA_NUMBERS}
        detail["camera_windows"] = [
            [w.get("start_s"), w.get("end_s"), w.get("label")] for w in row.get("camera.windows") or []
        ]
    return {k: v for k, v in detail.items() if v not in (None, [], {})}


def _js_assign(name: str, payload_json: str) -> str:
    return f"window.{name} = {payload_json};\n"


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)


class IndexWriter:
    """Accumulates the index columns row by row and writes the detail chunks as they fill."""

    def __init__(self, directory: str):
        self.directory = directory
        self.rows = 0
        self.dicts = {
            name: _Dictionary() for name in ("source", "shard", "reason", "rule", "location", "camera")
        }
        self.strings: dict[str, list[str]] = {"key": [], "clip_id": [], "summary": []}
        self.ints: dict[str, list[int]] = {name: [] for name in [*self.dicts, "kept", "w", "h"]}
        self.floats: dict[str, list[str]] = {"start": [], "dur": []}
        self.scores: dict[str, list[str]] = {name: [] for name in rule_value_names()}
        self.present: set[str] = set()
        self.clip_ids_differ = False
        self.chunk: list[dict] = []
        self.chunks = 0
        os.makedirs(os.path.join(directory, DATA_DIR, "details"), exist_ok=True)

    def add(self, row: dict) -> int:
        """Add one manifest row; returns its row number in the index."""
        key = clip_key(row)
        self.strings["key"].append(key)
        clip_id = row.get("clip_id") or key
        self.strings["clip_id"].append(clip_id)
        self.clip_ids_differ |= clip_id != key
        self.strings["summary"].append(row.get("caption.summary"))
        kept = bool(row.get("kept"))
        values = {
            "source": row.get("source") or row.get("input_shard"),
            "shard": row.get("shard"),
            "reason": None if kept else (row.get("drop_reason") or "dropped"),
            "rule": row.get("drop_rule"),
            "location": location_of(row),
            "camera": row.get("camera.label"),
        }
        for name, value in values.items():
            self.ints[name].append(self.dicts[name](value))
        self.ints["kept"].append(int(kept))
        self.ints["w"].append(row.get("width") or 0)
        self.ints["h"].append(row.get("height") or 0)
        self.floats["start"].append(number(row.get("source_start_s")))
        self.floats["dur"].append(number(row.get("duration_s")))
        metrics = caption_metrics_of(row)
        alignment = (metrics or {}).get("alignment") or {}
        for name in SCORE_NAMES:
            self._score(name, row.get(f"scores.{name}"))
        for name, field in CAPTION_SCORES.items():
            self._score(name, alignment.get(field))
        self.chunk.append(_detail(row, metrics))
        if len(self.chunk) == DETAIL_CHUNK:
            self._flush()
        self.rows += 1
        return self.rows - 1

    def _score(self, name: str, value) -> None:
        text = number(value)
        self.scores[name].append(text)
        if text != "null":
            self.present.add(name)

    def _flush(self) -> None:
        if not self.chunk:
            return
        path = os.path.join(self.directory, DATA_DIR, "details", f"{self.chunks:05d}.js")
        with open(path, "w") as f:
            f.write(f"window.reelmillDetails({self.chunks},{_json(self.chunk)});\n")
        self.chunks += 1
        self.chunk = []

    def finish(self, meta: dict) -> dict:
        """Write the last chunk and clips-data.js; returns the index's counts."""
        self._flush()
        path = os.path.join(self.directory, CLIPS_DATA)
        scores = [n for n in rule_value_names() if n in self.present]
        with open(path, "w") as f:
            f.write("window.REELMILL_CLIPS = {")
            head = {
                "version": INDEX_VERSION,
                "rows": self.rows,
                "detail_chunk": DETAIL_CHUNK,
                "dicts": {name: d.values() for name, d in self.dicts.items()},
                "score_names": scores,
                **meta,
            }
            f.write(_json(head)[1:-1])
            f.write(',"cols":{')
            parts = [f'"key":{_json(self.strings["key"])}', f'"summary":{_json(self.strings["summary"])}']
            if self.clip_ids_differ:
                parts.append(f'"clip_id":{_json(self.strings["clip_id"])}')
            parts += [f'"{name}":[{",".join(map(str, v))}]' for name, v in self.ints.items()]
            parts += [f'"{name}":[{",".join(v)}]' for name, v in self.floats.items()]
            f.write(",".join(parts))
            f.write('},"scores":{')
            f.write(",".join(f'"{name}":[{",".join(self.scores[name])}]' for name in scores))
            f.write("}};\n")
        return {"rows": self.rows, "chunks": self.chunks, "bytes": os.path.getsize(path)}


def write_index(
    run: RunOutputs,
    directory: str,
    meta: dict,
    on_row: Callable[[int, dict], None] | None = None,
    log=print,
) -> dict:
    """Stream `manifest/clips` into the index under `directory` (the report being built); `on_row`
    sees every row with its index number (the preview sampler). Returns the index's counts."""
    writer = IndexWriter(directory)
    layout = run.layout
    for row in layout.iter_manifest(layout.clips_manifest, CLIP_COLUMNS):
        number_ = writer.add(row)
        if on_row is not None:
            on_row(number_, row)
        if writer.rows % PROGRESS_ROWS == 0:
            log(f"reelmill report: clip browser, {writer.rows:,} clip rows indexed")
    return writer.finish(meta)


def write_rejected(run: RunOutputs, directory: str) -> int:
    """Every input the run could not use: `manifest/videos` rows with an error (curate), or
    `manifest/shards` rows with one (recaption). Returns how many."""
    layout = run.layout
    manifest = layout.shards_manifest if run.job == "recaption" else layout.videos_manifest
    uris, codes, errors = [], _Dictionary(), []
    code_of = []
    for row in layout.iter_manifest(manifest, ["uri", "status", "error_code", "error"]):
        if row.get("status") == "ok":
            continue
        uris.append(row.get("uri"))
        code_of.append(codes(row.get("error_code") or "error"))
        errors.append(row.get("error"))
    payload = {
        "input": "shards" if run.job == "recaption" else "videos",
        "codes": codes.values(),
        "cols": {"uri": uris, "code": code_of, "error": errors},
    }
    with open(os.path.join(directory, REJECTED_DATA), "w") as f:
        f.write(_js_assign("REELMILL_REJECTED", _json(payload)))
    return len(uris)


def write_run_facts(run: RunOutputs, directory: str, extra: dict) -> None:
    """run.json as the page shows it (config, versions, models, throughput, timings), plus `extra`."""
    payload = {"run": run.run, "config": run.config, "job": run.job, **extra}
    with open(os.path.join(directory, RUN_DATA), "w") as f:
        f.write(_js_assign("REELMILL_RUN", _json(payload)))
