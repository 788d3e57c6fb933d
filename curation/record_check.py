"""Checking a clip record someone else wrote (`KEY.json` of a foreign shard) before anything uses it.

A foreign record is untrusted input: `"width": "1920"`, `"errors": 5` or a segment with
`"start_s": "abc"` would each crash something far from the shard it came from (the manifest's
parquet writer, the caption merge, the training loader). `check_record_json` returns the record
with every wrongly typed field removed and one reason per removed field, in words
(`width: expected an integer, got str '1920'`); the sample is still processed, and the reasons go
into its record's `errors` (stage `input_record`) and its manifest row, so nothing is lost.

The types are those of `ClipRecord` and the manifest columns (`CLIP_SCHEMA`): every field may be
null or absent; fields the record does not know are kept as they are (they never reach a typed
column).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

STAGE = "input_record"
"""The `errors[].stage` of a problem found here."""

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


@dataclass
class CheckedRecord:
    """A foreign record with its wrongly typed fields removed, and why each was removed."""

    record: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def error_entries(self) -> list[dict]:
        """The problems as entries of the record's `errors` list."""
        return [{"stage": STAGE, "message": problem} for problem in self.problems]


def _got(value: object) -> str:
    """A value's JSON type and a short form of it, for a reason: `str '1920'`, `list of 3`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"bool {json.dumps(value)}"
    if isinstance(value, dict):
        return f"object of {len(value)} fields"
    if isinstance(value, list):
        return f"list of {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _is_int(value: object, bounds: tuple[int, int]) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]


def _is_number(value: object) -> bool:
    """A JSON number a float64 column and float() take: finite, and (an int) within int64, which is
    how pyarrow converts a Python int to a double."""
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value, INT64)


Check = Callable[[str, object, list[str]], object]
"""(field path, value, problems) -> the value to keep, or _DROP after appending a reason."""
_DROP = object()


def _scalar(expected: str, accept: Callable[[object], bool]) -> Check:
    def check(path: str, value: object, problems: list[str]) -> object:
        if value is None or accept(value):
            return value
        problems.append(f"{path}: expected {expected}, got {_got(value)}")
        return _DROP

    return check


STRING = _scalar("a string", lambda v: isinstance(v, str))
NUMBER = _scalar("a finite number", _is_number)
INTEGER32 = _scalar("an integer", lambda v: _is_int(v, INT32))
INTEGER64 = _scalar("an integer", lambda v: _is_int(v, INT64))
BOOLEAN = _scalar("true or false", lambda v: isinstance(v, bool))


def _object_of(fields: dict[str, Check] | None = None, each: Check | None = None) -> Check:
    """An object (or null) whose known `fields`, or every value (`each`), are checked in turn."""

    def check(path: str, value: object, problems: list[str]) -> object:
        if value is None:
            return None
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object, got {_got(value)}")
            return _DROP
        out = {}
        for name, item in value.items():
            inner = (fields or {}).get(name, each)
            kept = inner(f"{path}.{name}", item, problems) if inner else item
            if kept is not _DROP:
                out[name] = kept
        return out

    return check


def _list_of(item_check: Check, required: tuple[str, ...] = ()) -> Check:
    """A list (or null) of objects; an item of the wrong type, or with a wrong or missing `required`
    field, is removed as a whole (half a segment or half an error entry means nothing)."""

    def check(path: str, value: object, problems: list[str]) -> object:
        if value is None:
            return None
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list of objects, got {_got(value)}")
            return _DROP
        out = []
        for index, item in enumerate(value):
            where = f"{path}[{index}]"
            before = len(problems)
            kept = item_check(where, item, problems)
            missing = [n for n in required if isinstance(item, dict) and item.get(n) is None]
            if missing:
                problems.append(f"{where}: missing {', '.join(missing)}")
            if kept is _DROP or len(problems) > before:
                problems[before:] = [f"{p} (item removed)" for p in problems[before:]]
                continue
            out.append(kept)
        return out

    return check


def _strings(path: str, value: object, problems: list[str]) -> object:
    """A list (or null) of strings; an item that is not a string is removed, the rest kept."""
    if value is None:
        return None
    if not isinstance(value, list):
        problems.append(f"{path}: expected a list of strings, got {_got(value)}")
        return _DROP
    kept = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            kept.append(item)
        else:
            problems.append(f"{path}[{index}]: expected a string, got {_got(item)} (item removed)")
    return kept


SEGMENT = _object_of({"start_s": NUMBER, "end_s": NUMBER, "text": STRING})
ERROR = _object_of({"stage": STRING, "message": STRING})
CAPTION = _object_of(
    {
        "summary": STRING,
        "segments": _list_of(SEGMENT, required=("start_s", "end_s", "text")),
        "model": STRING,
        "prompt_id": STRING,
    }
)

CAMERA_WINDOW = _object_of({"start_s": NUMBER, "end_s": NUMBER, "label": STRING})
CAMERA = _object_of(
    {
        "label": STRING,
        "pan_px": NUMBER,
        "tilt_px": NUMBER,
        "zoom": NUMBER,
        "rotation": NUMBER,
        "residual": NUMBER,
        "windows": _list_of(CAMERA_WINDOW, required=("start_s", "end_s", "label")),
    }
)

FIELDS: dict[str, Check] = {
    "clip_id": STRING,
    "source": STRING,
    "source_start_s": NUMBER,
    "source_end_s": NUMBER,
    "source_start_frame": INTEGER64,
    "source_end_frame": INTEGER64,
    "shot_index": INTEGER32,
    "task_id": INTEGER64,
    "fps": NUMBER,
    "num_frames": INTEGER64,
    "duration_s": NUMBER,
    "kept": BOOLEAN,
    "drop_reason": STRING,
    "transition": STRING,
    "width": INTEGER32,
    "height": INTEGER32,
    "codec": STRING,
    "shard": STRING,
    "location": STRING,
    "scores": _object_of(each=NUMBER),
    "camera": CAMERA,
    "text": _strings,
    "caption": CAPTION,
    "caption_metrics": _object_of(),
    "errors": _list_of(ERROR),
}
"""The clip record's fields (`ClipRecord`, `CLIP_SCHEMA`) and the check of each."""


def check_record(value: object) -> CheckedRecord:
    """`value` (a parsed `KEY.json`) as a clip record: wrongly typed fields removed, one reason each."""
    if not isinstance(value, dict):
        return CheckedRecord({}, [f"KEY.json: expected an object, got {_got(value)}; the record is replaced"])
    problems: list[str] = []
    record = {}
    for name, item in value.items():
        check = FIELDS.get(name)
        kept = check(name, item, problems) if check else item
        if kept is not _DROP:
            record[name] = kept
    return CheckedRecord(record, problems)


def check_record_json(data: bytes | None) -> CheckedRecord:
    """A sample's `KEY.json` member (None: it has none) read and checked (see `check_record`)."""
    if data is None:
        return CheckedRecord()
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return CheckedRecord(
            {}, [f"KEY.json: not UTF-8 ({exc.reason} at byte {exc.start}); the record is replaced"]
        )
    except ValueError as exc:  # JSONDecodeError, or an integer of more digits than Python parses
        return CheckedRecord({}, [f"KEY.json: not JSON ({str(exc)[:200]}); the record is replaced"])
    except RecursionError:
        return CheckedRecord({}, ["KEY.json: nested too deeply to read; the record is replaced"])
    return check_record(value)
