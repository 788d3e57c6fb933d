"""The clip record (DESIGN.md): `KEY.json` in the shards and a row of `manifest/clips`.

The manifest schemas are fixed here, so every part file of a run (and of every run) has the same
columns and types, whatever subset of fields a task happened to fill.
"""

from __future__ import annotations

import functools
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
    shard: str | None = None  # shard file name holding the clip (kept clips; dropped ones with keep_dropped)
    location: str | None = None  # the directory of `shard`: "shards" or "dropped"
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
        """The manifest row (see CLIP_SCHEMA)."""
        return manifest_row(asdict(self))


def manifest_row(record: dict) -> dict:
    """A clip record (as in `KEY.json`) as a manifest row (see CLIP_SCHEMA): the nested fields stay
    structs, `drop_rule` is added beside `drop_reason`. Fields the record lacks (a shard from elsewhere)
    become nulls; `caption_prev` (recaption) is kept as JSON."""
    row = {k: v for k, v in record.items() if k != "caption_prev"}
    for name, arrow_type in STRUCTS.items():
        row[name] = conform(record.get(name), arrow_type)
    row["drop_rule"] = drop_rule(record.get("drop_reason"))
    if record.get("caption_prev") is not None:
        row["caption_prev"] = json.dumps(record["caption_prev"])
    return row


def drop_rule(reason: str | None) -> str | None:
    """The rule a drop reason names: `motion` of `motion<0.5`, `camera` of `camera=shake`, `duration` of
    `duration<2`; a reason that is a code (`caption_failed`, `transition`, `internal_error`) is its own."""
    if not reason:
        return None
    cut = min((i for i in (reason.find(c) for c in "<>=") if i > 0), default=len(reason))
    return reason[:cut]


SCHEMA_VERSION = 2
"""Of the clip manifest: 1 had dotted column names (`scores.motion`) and `caption_metrics` as JSON text;
2 has struct columns, `drop_rule` and `location`. Written as parquet key-value metadata (`schema_metadata`)."""

CAMERA_FIELDS = ("label", "pan_px", "tilt_px", "zoom", "rotation", "residual", "windows")
CAMERA_WINDOW_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("label", pa.string())])
SEGMENT_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("text", pa.string())])
ERROR_TYPE = pa.struct([("stage", pa.string()), ("message", pa.string())])
INTEGER_SCORES = ("text_boxes", "content_x", "content_y", "content_w", "content_h")
SCORES_TYPE = pa.struct(
    [(name, pa.int64() if name in INTEGER_SCORES else pa.float64()) for name in SCORE_NAMES]
)
CAMERA_TYPE = pa.struct(
    [
        ("label", pa.string()),
        *[(name, pa.float64()) for name in ("pan_px", "tilt_px", "zoom", "rotation", "residual")],
        ("windows", pa.list_(CAMERA_WINDOW_TYPE)),
    ]
)
CAPTION_TYPE = pa.struct(
    [
        ("summary", pa.string()),
        ("segments", pa.list_(SEGMENT_TYPE)),
        ("model", pa.string()),
        ("prompt_id", pa.string()),
    ]
)
ALIGNMENT_TYPE = pa.struct(
    [
        ("summary", pa.float64()),
        ("segments", pa.list_(pa.float64())),
        ("baseline", pa.float64()),
        ("baseline_clip", pa.string()),
        ("margin", pa.float64()),
        ("model", pa.string()),
    ]
)
CAPTION_METRICS_TYPE = pa.struct(
    [
        ("num_segments", pa.int64()),
        ("coverage", pa.float64()),
        ("summary_words", pa.int64()),
        ("segment_words", pa.list_(pa.int64())),
        ("attempts", pa.int64()),
        ("windows", pa.int64()),
        ("fixes", pa.list_(pa.string())),
        ("alignment", ALIGNMENT_TYPE),
    ]
)
"""`captioning.captioner.caption_metrics` and `captioning.alignment.clip_metrics` (under `alignment`)."""
STRUCTS = {
    "scores": SCORES_TYPE,
    "camera": CAMERA_TYPE,
    "caption": CAPTION_TYPE,
    "caption_metrics": CAPTION_METRICS_TYPE,
}


def conform(value, arrow_type: pa.DataType):
    """`value` with every part that does not fit `arrow_type` made null, so a record from elsewhere (a
    foreign `KEY.json` in recaption) always becomes a manifest row: a struct keeps its own fields only,
    an integer field takes integral numbers, a float field any number, a string field strings."""
    if value is None:
        return None
    if pa.types.is_struct(arrow_type):
        if not isinstance(value, dict):
            return None
        return {f.name: conform(value.get(f.name), f.type) for f in arrow_type}
    if pa.types.is_list(arrow_type):
        return [conform(v, arrow_type.value_type) for v in value] if isinstance(value, list) else None
    if isinstance(value, bool):
        return value if pa.types.is_boolean(arrow_type) else None
    if pa.types.is_integer(arrow_type):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, int) and -(2**63) <= value < 2**63 else None
    if pa.types.is_floating(arrow_type):
        return float(value) if isinstance(value, int | float) else None
    if pa.types.is_string(arrow_type):
        return value if isinstance(value, str) else None
    return value


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
        ("drop_rule", pa.string()),  # the rule of drop_reason (`drop_rule`)
        ("transition", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("shard", pa.string()),
        ("location", pa.string()),  # where `shard` is: shards | dropped (null: the clip was not written)
        ("errors", pa.list_(ERROR_TYPE)),
        ("scores", SCORES_TYPE),
        ("camera", CAMERA_TYPE),
        ("text", pa.list_(pa.string())),
        ("caption", CAPTION_TYPE),
        ("caption_metrics", CAPTION_METRICS_TYPE),
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


def manifest_schema(schema: pa.Schema, run_fingerprint: str | None = None) -> pa.Schema:
    """`schema` with the key-value metadata every manifest part carries: `reelmill.schema_version`, the
    run's `reelmill.run_fingerprint`, and pandas metadata that makes `pandas.read_parquet` give nullable
    integer and boolean columns (Int64, boolean) instead of floats and objects where a value is null."""
    return schema.with_metadata(
        {**_pandas_metadata(schema), b"reelmill.schema_version": str(SCHEMA_VERSION).encode()}
        | ({b"reelmill.run_fingerprint": run_fingerprint.encode()} if run_fingerprint else {})
    )


@functools.cache
def _pandas_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    frame = schema.empty_table().to_pandas()
    for f in schema:
        if pa.types.is_integer(f.type):
            frame[f.name] = frame[f.name].astype("Int32" if f.type == pa.int32() else "Int64")
        elif pa.types.is_boolean(f.type):
            frame[f.name] = frame[f.name].astype("boolean")
    return {b"pandas": pa.Schema.from_pandas(frame, preserve_index=False).metadata[b"pandas"]}
