"""The clip record (DESIGN.md): `KEY.json` in the shards and, flattened, a row of `manifest/clips`.

The manifest schemas are fixed here, so every part file of a run (and of every run) has the same
columns and types, whatever subset of fields a task happened to fill.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from curation.scoring_config import FILTERABLE_SCORES

# Every score the record carries, including the content box inside letterbox/pillarbox bars.
SCORE_NAMES = FILTERABLE_SCORES

TRANSITION = "transition"
"""`drop_reason` of the rows that mark where two shots meet (a cut, or the frames of a gradual
transition): candidates no clip may overlap, counted apart from clips."""


@dataclass
class ClipRecord:
    """One candidate clip, kept or dropped. Times and frames of the source are on its frame timeline."""

    clip_id: str
    source: str
    source_start_s: float
    source_end_s: float
    source_start_frame: int
    source_end_frame: int
    shot_index: int
    task_id: int
    fps: float
    num_frames: int
    duration_s: float
    kept: bool
    drop_reason: str | None = None
    transition: str | None = None  # rows with drop_reason "transition": "cut" or "gradual"
    width: int | None = None  # of the clip as written; null for clips never written
    height: int | None = None
    codec: str | None = None
    shard: str | None = None  # shard file name holding the clip (kept clips)
    scores: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(SCORE_NAMES))
    camera: dict | None = None  # curation.scoring.camera.camera_record: label, numbers, windows
    text: list[str] | None = None  # burned-in text read by `scoring.text.recognize`; [] read, none found
    caption: dict | None = None
    caption_metrics: dict | None = None
    errors: list[dict] = field(default_factory=list)

    @property
    def is_transition(self) -> bool:
        """A row that marks where two shots meet, not a clip (counted apart from clips)."""
        return self.drop_reason == TRANSITION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False).encode()

    def to_row(self) -> dict:
        """The flattened manifest row (see CLIP_SCHEMA)."""
        return flatten_record(asdict(self))


def flatten_record(record: dict) -> dict:
    """A clip record (as in `KEY.json`) as a manifest row: scores and caption fields as dotted columns.

    Fields the record lacks (a shard from elsewhere) become nulls; `caption_metrics` is kept as JSON.
    """
    row = {
        k: v
        for k, v in record.items()
        if k not in ("scores", "camera", "caption", "caption_metrics", "caption_prev")
    }
    scores = record.get("scores") or {}
    row.update({f"scores.{name}": scores.get(name) for name in SCORE_NAMES})
    camera = record.get("camera") or {}
    row.update({f"camera.{name}": camera.get(name) for name in CAMERA_FIELDS})
    caption = record.get("caption") or {}
    for name in ("summary", "segments", "model", "prompt_id"):
        row[f"caption.{name}"] = caption.get(name)
    metrics = record.get("caption_metrics")
    row["caption_metrics"] = json.dumps(metrics) if metrics else None
    if record.get("caption_prev") is not None:
        row["caption_prev"] = json.dumps(record["caption_prev"])
    return row


CAMERA_FIELDS = ("label", "pan_px", "tilt_px", "zoom", "rotation", "residual", "windows")
CAMERA_WINDOW_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("label", pa.string())])
SEGMENT_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("text", pa.string())])
ERROR_TYPE = pa.struct([("stage", pa.string()), ("message", pa.string())])

CLIP_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("source", pa.string()),
        ("source_start_s", pa.float64()),
        ("source_end_s", pa.float64()),
        ("source_start_frame", pa.int64()),
        ("source_end_frame", pa.int64()),
        ("shot_index", pa.int32()),
        ("task_id", pa.int64()),
        ("fps", pa.float64()),
        ("num_frames", pa.int64()),
        ("duration_s", pa.float64()),
        ("kept", pa.bool_()),
        ("drop_reason", pa.string()),
        ("transition", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("shard", pa.string()),
        ("errors", pa.list_(ERROR_TYPE)),
        *[(f"scores.{name}", pa.float64()) for name in SCORE_NAMES],
        ("camera.label", pa.string()),
        *[(f"camera.{name}", pa.float64()) for name in ("pan_px", "tilt_px", "zoom", "rotation", "residual")],
        ("camera.windows", pa.list_(CAMERA_WINDOW_TYPE)),
        ("text", pa.list_(pa.string())),  # kept as the record has it (flatten_record passes it on)
        ("caption.summary", pa.string()),
        ("caption.segments", pa.list_(SEGMENT_TYPE)),
        ("caption.model", pa.string()),
        ("caption.prompt_id", pa.string()),
        ("caption_metrics", pa.string()),
    ]
)

# `recaption`'s clip manifest: the clip record's columns, where the sample came from, the caption it replaced.
RECAPTION_SCHEMA = pa.schema(
    [
        *CLIP_SCHEMA,
        ("key", pa.string()),  # as written (see curation.shards.safe_key)
        ("input_key", pa.string()),  # the key in the input shard, when it had to be changed
        ("input_shard", pa.string()),
        ("caption_prev", pa.string()),  # JSON: the previous `caption`, or {"text": ...} from a KEY.txt
        ("error_code", pa.string()),  # why the sample is not as asked: member_too_large, internal_error, ...
        ("error", pa.string()),
        ("traceback", pa.string()),  # internal_error rows: where the bug is
        ("invalid_record", pa.list_(pa.string())),  # KEY.json fields removed, one reason each
    ]
)

# `recaption`'s input manifest: one row per input shard.
SHARD_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("task_id", pa.int64()),
        ("status", pa.string()),  # ok | error
        ("error", pa.string()),
        ("error_code", pa.string()),  # unreadable | compressed_shard | internal_error
        ("traceback", pa.string()),
        ("samples", pa.int64()),  # read (up to the damage, for a shard with an error)
        ("selected", pa.int64()),
        ("captioned", pa.int64()),
        ("failed", pa.int64()),
    ]
)

VIDEO_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("task_id", pa.int64()),
        ("status", pa.string()),  # ok | error
        ("error", pa.string()),  # "code: detail" when status is error
        ("error_code", pa.string()),
        ("traceback", pa.string()),  # the innermost frames, for error_code internal_error
        ("size_bytes", pa.int64()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("fps_rational", pa.string()),
        ("num_frames", pa.int64()),
        ("decoded_frames", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("rotation", pa.int32()),
        ("codec", pa.string()),
        ("pix_fmt", pa.string()),
        ("has_audio", pa.bool_()),
        ("variable_frame_rate", pa.bool_()),
        ("bit_rate", pa.int64()),
        ("container", pa.string()),
        ("crop_x", pa.int32()),  # the picture kept by transcode.crop_bars, in display pixels
        ("crop_y", pa.int32()),
        ("crop_w", pa.int32()),
        ("crop_h", pa.int32()),
        ("num_shots", pa.int32()),
        ("num_clips", pa.int32()),
        ("num_transitions", pa.int32()),
        ("num_kept", pa.int32()),
        ("num_dropped", pa.int32()),
        ("seconds_kept", pa.float64()),
        ("processing_s", pa.float64()),
    ]
)


def utf8_safe(value):
    """`value` with every string made encodable as UTF-8: a key or file name that was not UTF-8
    arrives with unpaired surrogates, which parquet cannot write; they become `\\udcff` escapes."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, list):
        return [utf8_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: utf8_safe(v) for k, v in value.items()}
    return value


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows to a table with exactly `schema`'s columns (missing fields become nulls)."""
    return pa.Table.from_pylist(
        [{name: utf8_safe(row.get(name)) for name in schema.names} for row in rows], schema=schema
    )


def embedding_schema(dim: int) -> pa.Schema:
    """`manifest/embeddings`: a clip's normalized CLIP image embedding (mean of its scored frames,
    renormalized) and the per-frame ones, float16, for deduplication and caption checks later."""
    return pa.schema(
        [
            ("clip_id", pa.string()),
            ("embedding", pa.list_(pa.float16(), dim)),
            ("frame_embeddings", pa.list_(pa.list_(pa.float16(), dim))),
        ]
    )
