"""Turn a VLM's raw answer into a clip caption (summary + time-stamped segments), or say why not.

`parse_caption` accepts the shapes models really write (JSON, possibly fenced or wrapped in chatter,
and the common line formats: `0.0-2.5s: ...`, `[00:00-00:02] ...`, `From 0 to 2 seconds, ...`, SRT
style `00:00:01,500 --> 00:00:03,000`, with bullets, numbering and Markdown emphasis), repairs
rounding slips (an end a little past the clip, neighbours overlapping by a fraction of a second)
and returns a `ParsedCaption` (its `fixes` name the repairs, from `FIXES`), or a `Rejection` whose
`reason` is one of `REJECTION_REASONS`, so both can be counted per code across a run. It never
raises on model output; a bad argument from our own code (a non-positive duration) is an error.

`format_training_caption` writes the `KEY.txt` training caption; parsing it back gives the same
segments (to the 0.1 s it writes), so a shard's text can be re-checked with the same rules.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from captioning.caption_config import CaptionParseConfig

RejectionReason = Literal[
    "empty",  # nothing but whitespace or punctuation
    "no_segments",  # no time-stamped segment could be read
    "too_few_segments",  # fewer than CaptionParseConfig.min_segments_for(duration)
    "outside_clip",  # a segment starts at or after the clip end, or ends too far past it
    "overlap",  # neighbours overlap by more than overlap_tolerance_s (or nest)
    "out_of_order",  # a segment ends at or before its own start
    "empty_segment_text",  # a segment with times but no words
    "repetition",  # a decoding loop: repeated n-grams, characters or segment texts
    "refusal",  # "I'm sorry", "I cannot", "As an AI ..."
    "prompt_echo",  # the prompt (or its format placeholders) copied back
]
REJECTION_REASONS: tuple[str, ...] = get_args(RejectionReason)

# What the parser repaired in an accepted caption (ParsedCaption.fixes), for the report's counts.
FIXES = (
    "clamped_end",  # an end past the clip (within clamp_tolerance_s) cut to the clip end
    "clamped_start",  # a slightly negative start (JSON) set to 0
    "sorted",  # segments were not written in time order
    "trimmed_overlap",  # an earlier segment cut to where the next one starts
    "merged_overlap",  # two segments starting together merged into one
    "split_inline",  # several segments written on one line
    "ignored_lines",  # non-segment lines after the segments (chatter) left out
    "skipped_json_entries",  # JSON entries without a readable start/end left out
    "no_summary",  # no summary line; the caption is segments only
)

_EPS = 1e-6  # float slack when comparing times against tolerances


@dataclass(frozen=True)
class Segment:
    """One time-stamped description; times are clip-relative seconds, `start_s < end_s`."""

    start_s: float
    end_s: float
    text: str


@dataclass
class ParsedCaption:
    """An accepted caption: segments inside the clip, ordered, non-overlapping, each with text."""

    summary: str
    segments: list[Segment]
    fixes: list[str] = field(default_factory=list)
    """Codes from FIXES for what was repaired on the way (empty when the answer was clean)."""

    def to_record(self, model: str, prompt_id: str) -> dict:
        """The record's `caption` field (DESIGN.md: the clip record)."""
        return {
            "summary": self.summary,
            "segments": [{"start_s": s.start_s, "end_s": s.end_s, "text": s.text} for s in self.segments],
            "model": model,
            "prompt_id": prompt_id,
        }


@dataclass(frozen=True)
class Rejection:
    """Why a model answer cannot be a caption: a `reason` code to count and a `detail` to read."""

    reason: RejectionReason
    detail: str

    def __post_init__(self):
        if self.reason not in REJECTION_REASONS:  # a typo in our code, not a property of the input
            raise ValueError(f"unknown rejection reason {self.reason!r}")


ParseResult = ParsedCaption | Rejection


# ---------------------------------------------------------------------------------------------
# Public entry points


def parse_caption(
    text: str,
    duration_s: float,
    cfg: CaptionParseConfig | None = None,
    prompt: str | None = None,
) -> ParseResult:
    """Parse and validate one model answer for a clip of `duration_s` seconds.

    `prompt`, the rendered prompt the model was given, enables the `prompt_echo` check. The answer-level
    checks (empty, refusal, prompt_echo, repetition) run before the structural ones, so a refusal or a
    decoding loop is counted as such and not as the missing or overlapping segments it also causes.
    """
    cfg = cfg or CaptionParseConfig()
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"clip duration must be a positive number of seconds, got {duration_s!r}")
    text = text.replace("\x00", "")
    if not _has_word(text):
        return Rejection("empty", "the answer has no words" if text.strip() else "the answer is blank")
    rejection = _check_refusal(_unquoted(text), "the answer")
    if rejection is None and prompt:
        rejection = _check_echo(text, prompt, cfg)
    if rejection is not None:
        return rejection

    extracted = _extract_json(text) or _extract_lines(text)
    units = _text_units(extracted)
    for where, unit in units:
        rejection = _check_refusal(_unquoted(unit), where) or _check_placeholder(unit, where)
        if rejection is not None:
            return rejection
    rejection = _check_repetition(units, extracted.segments, cfg)
    if rejection is not None:
        return rejection
    if not extracted.segments:
        return Rejection("no_segments", extracted.no_segments_detail or "no time-stamped segment found")

    fixes = list(extracted.fixes)
    segments = _normalize(extracted.segments, duration_s, cfg, fixes)
    if isinstance(segments, Rejection):
        return segments
    need = cfg.min_segments_for(duration_s)
    if len(segments) < need:
        return Rejection(
            "too_few_segments",
            f"{len(segments)} segment(s) for a {duration_s:.1f} s clip; at least {need} needed",
        )
    summary = extracted.summary or ""
    if not summary:
        fixes.append("no_summary")
    return ParsedCaption(summary, segments, list(dict.fromkeys(fixes)))


def format_training_caption(parsed: ParsedCaption) -> str:
    """The `KEY.txt` caption: the summary, then one `[0.0-2.5s] text` line per segment."""
    lines = [parsed.summary] if parsed.summary else []
    lines += [f"[{s.start_s:.1f}-{s.end_s:.1f}s] {s.text}" for s in parsed.segments]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Times

# ASCII digits only: Python's \d also matches other scripts' digits, which float() then accepts.
_NUM = r"[0-9]+(?:\.[0-9]+)?"
_CLOCK = r"[0-9]{1,2}:[0-9]{1,2}(?::[0-9]{1,2})?(?:[.,][0-9]+)?"
_UNIT = r"(?:seconds?|secs?|s)\b"
_SEP = r"(?:-->|->|–|—|-|~|\bto\b|\buntil\b|\btill\b)"


def _range(named: bool) -> str:
    """A time range `START [unit] SEP END [unit]`; named groups only where one match is read."""
    start, end, u1, u2 = ("?P<start>", "?P<end>", "?P<u1>", "?P<u2>") if named else ("?:",) * 4
    time = rf"{_CLOCK}|{_NUM}"
    return rf"({start}{time})\s*({u1}{_UNIT})?\s*{_SEP}\s*({end}{time})\s*({u2}{_UNIT})?"


_TIME_RANGE = re.compile(rf"^\s*{_range(named=True)}\s*$", re.I)
_SINGLE_TIME = re.compile(rf"^\s*({_CLOCK}|{_NUM})\s*(?:{_UNIT})?\s*$", re.I)


def _to_seconds(token: str) -> float | None:
    """Seconds of `2.5`, `00:02`, `1:02.5`, `00:00:01,500`; None when it is not a time."""
    parts = token.replace(",", ".").split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    if any(v >= 60 for v in values[1:]) or not all(math.isfinite(v) for v in values):
        return None
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    # Milliseconds are all a caption needs, and rounding hides float noise such as 2.4999999.
    return round(seconds, 3) if math.isfinite(seconds) else None


# ---------------------------------------------------------------------------------------------
# Extraction: answer text -> summary, raw segments, other lines


@dataclass
class _Extraction:
    summary: str | None = None
    segments: list[Segment] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    no_segments_detail: str = ""


def _clean_text(text: str) -> str:
    """One line of caption text: whitespace collapsed, Markdown emphasis and wrapping quotes gone."""
    text = re.sub(r"\s+", " ", text.replace("**", "").replace("__", "")).strip()
    while len(text) >= 2 and text[0] + text[-1] in ('""', "''", "“”", "``"):
        text = text[1:-1].strip()
    return text


_JSON_SEGMENT_KEYS = ("segments", "timeline", "events", "captions", "dense_captions")
_JSON_SUMMARY_KEYS = ("summary", "overall", "overview", "caption", "description")
_JSON_START_KEYS = ("start_s", "start", "start_time", "begin", "from", "t0")
_JSON_END_KEYS = ("end_s", "end", "end_time", "stop", "to", "t1")
_JSON_SPAN_KEYS = ("time", "timestamp", "span", "range", "time_range", "interval")
_JSON_TEXT_KEYS = ("text", "caption", "description", "desc", "event")
_JSON_MAX_TRIES = 64  # decode attempts per answer: bounds the cost of brace-heavy garbage
_JSON_OPEN = re.compile(r"\{|\[\s*[\[{]")  # an object, or a list of objects or of lists


def _extract_json(text: str) -> _Extraction | None:
    """The first JSON value in the answer that looks like a caption (fences and chatter around it ignored)."""
    decoder = json.JSONDecoder()
    pos, tries = 0, 0
    while tries < _JSON_MAX_TRIES:
        match = _JSON_OPEN.search(text, pos)
        if match is None:
            return None
        tries += 1
        try:
            value, end = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            pos = match.start() + 1
            continue
        found = _caption_from_json(value)
        if found is not None:
            return found
        pos = end  # a JSON value that is not a caption: look after it, not inside it
    return None


def _caption_from_json(value: Any, depth: int = 0) -> _Extraction | None:
    """A caption from `{"summary": .., "segments": [..]}`, a bare list of segments, or one level of nesting."""
    if isinstance(value, list):
        if value and all(isinstance(e, dict | list) for e in value):
            entries = [_json_segment(e) for e in value]
            if any(e is not None for e in entries):
                return _json_extraction(None, value, entries)
        return None
    if not isinstance(value, dict):
        return None
    fields = {str(k).lower(): v for k, v in value.items()}
    for key in _JSON_SEGMENT_KEYS:
        if isinstance(fields.get(key), list):
            summary = next((fields[k] for k in _JSON_SUMMARY_KEYS if isinstance(fields.get(k), str)), None)
            items = fields[key]
            return _json_extraction(summary, items, [_json_segment(e) for e in items])
    if depth == 0:  # e.g. {"caption": {"summary": ..., "segments": [...]}}
        for inner in fields.values():
            found = _caption_from_json(inner, depth + 1) if isinstance(inner, dict) else None
            if found is not None:
                return found
    return None


def _json_extraction(summary: str | None, items: list, entries: list[Segment | None]) -> _Extraction:
    out = _Extraction(summary=_clean_text(summary) if summary else None)
    out.segments = [e for e in entries if e is not None]
    if len(out.segments) < len(entries):
        out.fixes.append("skipped_json_entries")
    if not out.segments:
        out.no_segments_detail = f"JSON with {len(items)} segment entries, none with a readable start and end"
    return out


def _json_time(value: Any) -> float | None:
    if isinstance(value, bool):  # bool is an int in Python; `true` is no time
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float
            return None
        return round(seconds, 3) if math.isfinite(seconds) else None
    if isinstance(value, str):
        match = _SINGLE_TIME.match(value)
        return _to_seconds(match.group(1)) if match else None
    return None


def _json_segment(entry: Any) -> Segment | None:
    """A raw segment from `{"start": .., "end": .., "text": ..}` (key variants), `[start, end, text]`
    or a segment line as a string (`"0.0-2.5s: ..."`)."""
    if isinstance(entry, str):
        return _line_segment(_BULLET.sub("", entry.strip()))
    if isinstance(entry, list):
        if len(entry) == 3 and isinstance(entry[2], str):
            start, end = _json_time(entry[0]), _json_time(entry[1])
            return (
                Segment(start, end, _clean_text(entry[2])) if start is not None and end is not None else None
            )
        return None
    if not isinstance(entry, dict):
        return None
    fields = {str(k).lower(): v for k, v in entry.items()}
    start = next((_json_time(fields[k]) for k in _JSON_START_KEYS if k in fields), None)
    end = next((_json_time(fields[k]) for k in _JSON_END_KEYS if k in fields), None)
    if start is None or end is None:
        span = next((fields[k] for k in _JSON_SPAN_KEYS if isinstance(fields.get(k), str)), None)
        match = _TIME_RANGE.match(span) if span else None
        if match:
            start, end = _to_seconds(match["start"]), _to_seconds(match["end"])
    if start is None or end is None:
        return None
    text = next((fields[k] for k in _JSON_TEXT_KEYS if isinstance(fields.get(k), str)), "")
    return Segment(start, end, _clean_text(text))


# A segment line: optional `Segment 3:` label, `from`, bracket, the range, closing bracket, a
# separator, then the text. `#` is escaped because of re.X.
_SEGMENT_LINE = re.compile(
    rf"""^(?P<label>(?:segment|scene|shot|part|event)\s*\#?[0-9]+\s*[:.)\-–—]?\s*)?
    (?P<from>from\s+)?
    (?P<open>[\[(])?\s*
    {_range(named=True)}
    \s*(?P<close>[\])])?
    \s*(?P<sep>[:,.|\-–—])?
    \s*(?P<text>.*)$""",
    re.I | re.X,
)
# Where a second segment starts inside a line ("0-2s: a dog sits. 2-5s: it runs."): only the
# unmistakable forms, a bracketed range, a range with a unit and a colon, or "From x to y seconds,".
_INLINE_START = re.compile(
    rf"(?<!\S)(?:[\[(]\s*{_range(named=False)}\s*[\])]|{_range(named=False)}\s*:|from\s+{_range(named=False)}\s*,)",
    re.I,
)
_BULLET = re.compile(r"^(?:[-*•+>]|[0-9]{1,3}[.)])\s+")
_SUMMARY_LABEL = re.compile(
    r"^(?:overall\s+|short\s+|brief\s+|one[-\s]sentence\s+)?(?:summary|overview|caption|description)"
    r"\s*(?:\([^)]*\))?\s*(?:[:\-–—]\s*(?P<text>.*))?$",
    re.I,
)
_HEADING = re.compile(
    r"^(?:time[-\s]?stamped\s+|dense\s+|detailed\s+)?(?:segments?|timeline|timestamps?|events|scenes|captions?|details?)\s*:?$",
    re.I,
)
_CHATTER = re.compile(
    r"^(?:here(?:'s|’s|\s+is|\s+are)|sure\b|certainly\b|of\s+course\b|okay\b|ok\b|absolutely\b|below\b|"
    r"the\s+following\b|i\s+hope\b|let\s+me\b|note\b|hope\s+this\b)",
    re.I,
)


def _segment_match(line: str) -> re.Match | None:
    """The line as a segment, if it starts with a range that is surely a time (not '2-3 dogs ...')."""
    match = _SEGMENT_LINE.match(line)
    if match is None:
        return None
    clock = ":" in match["start"] or ":" in match["end"]
    marked = match["u1"] or match["u2"] or match["open"] or match["from"] or match["label"]
    return match if clock or marked or match["sep"] in (":", "|") else None


def _split_inline(line: str, first: re.Match) -> list[str]:
    """One segment line holding several segments, split where a further one starts a sentence."""
    starts = [0]
    for match in _INLINE_START.finditer(line, first.start("text")):
        # A time in brackets or "from x to y seconds" also occurs inside a sentence ("barks (1-2s)
        # and runs"); only one that follows a sentence end starts a new segment.
        if line[: match.start()].rstrip().endswith((".", "!", "?", ";")):
            starts.append(match.start())
    return [line[a:b].strip() for a, b in zip(starts, [*starts[1:], len(line)], strict=True)]


def _line_kind(line: str) -> tuple[str, str]:
    """Classify a cleaned line: ('segment'|'summary'|'heading'|'chatter'|'content'|'blank', text)."""
    if _segment_match(line):
        return "segment", line
    if not _has_letter(line):  # separators, SRT cue numbers, stray times
        return "blank", ""
    label = _SUMMARY_LABEL.match(line)
    if label:
        return "summary", _clean_text(label["text"] or "")
    if _HEADING.match(line):
        return "heading", ""
    if _CHATTER.match(line) or line.endswith(":"):
        return "chatter", line
    return "content", line


def _classify_lines(text: str) -> tuple[list[tuple[str, str]], bool]:
    """Each line, cleaned of fences, headings' `#`, bullets and emphasis, with its kind; and whether
    a line held several segments (then split into one entry each)."""
    lines: list[tuple[str, str]] = []
    split = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            continue
        line = re.sub(r"^#+\s*", "", line.replace("**", "").replace("__", ""))
        line = _BULLET.sub("", line).strip()
        kind, value = _line_kind(line)
        if kind == "segment":
            parts = _split_inline(line, _segment_match(line))
            split = split or len(parts) > 1
            lines += [("segment", part) for part in parts]
        else:
            lines.append((kind, value))
    return lines, split


def _extract_lines(text: str) -> _Extraction:
    """Summary and segments from line formats; the summary is labelled or the first content line.

    A label alone on its line (`Summary:`, an SRT-style `00:00:01,000 --> 00:00:02,500`) takes its
    text from the next line; a lowercase line right after an unfinished segment continues it (a
    wrapped line). Other lines after the segments are chatter and only feed the loop checks.
    """
    lines, split = _classify_lines(text)
    out = _Extraction(fixes=["split_inline"] if split else [])
    pending: str | None = None  # "summary" or "segment": a label whose text is on the next line
    unlabelled_summary: str | None = None
    previous = "blank"
    for kind, value in lines:
        if kind == "blank":
            previous = kind
            continue
        consumed = bool(pending) and kind in ("content", "chatter")
        if consumed:
            _set_pending_text(out, pending, _clean_text(value))
            kind = pending
        elif kind == "content" and previous == "segment" and _continues(out.segments[-1].text, value):
            last = out.segments[-1]
            out.segments[-1] = Segment(last.start_s, last.end_s, _clean_text(f"{last.text} {value}"))
            kind = "segment"  # a further wrapped line may follow
        elif kind == "segment":
            segment = _line_segment(value)
            if segment is not None:
                out.segments.append(segment)
            else:  # looked like a segment but holds no time (`00:75`)
                out.other_lines.append(value)
                kind = "content"
        elif kind == "summary":
            if value and out.summary is None:
                out.summary = value
            elif value:
                out.other_lines.append(value)
        elif kind == "content" and not out.segments and unlabelled_summary is None:
            unlabelled_summary = _clean_text(value)
        elif kind == "content" or (kind == "chatter" and out.segments):
            out.other_lines.append(value)
        pending = None if consumed else _pending_after(kind, value, out)
        previous = kind
    if out.summary is None:
        out.summary = unlabelled_summary
    elif unlabelled_summary is not None:
        out.other_lines.append(unlabelled_summary)
    if out.other_lines and out.segments:
        out.fixes.append("ignored_lines")
    return out


def _pending_after(kind: str, value: str, out: _Extraction) -> str | None:
    """Whether the line just read is a label whose text comes on the next line."""
    if kind == "summary" and not value and out.summary is None:
        return "summary"
    if kind == "segment" and out.segments and not out.segments[-1].text:
        return "segment"
    return None


def _set_pending_text(out: _Extraction, pending: str, text: str) -> None:
    if pending == "summary":
        out.summary = text
    else:
        last = out.segments[-1]
        out.segments[-1] = Segment(last.start_s, last.end_s, text)


def _continues(segment_text: str, line: str) -> bool:
    """A line that goes on with an unfinished segment text: it starts lowercase, the text has no end."""
    return bool(segment_text) and line[:1].islower() and not segment_text.endswith((".", "!", "?", '"'))


def _line_segment(line: str) -> Segment | None:
    match = _segment_match(line)
    if match is None:
        return None
    start, end = _to_seconds(match["start"]), _to_seconds(match["end"])
    if start is None or end is None:
        return None
    return Segment(start, end, _clean_text(match["text"]))


def _text_units(extracted: _Extraction) -> list[tuple[str, str]]:
    """Every text the checks read, each with where it came from (for the rejection detail)."""
    units = [("the summary", extracted.summary)] if extracted.summary else []
    units += [(f"segment {i}", s.text) for i, s in enumerate(extracted.segments, 1) if s.text]
    units += [("a line outside the segments", line) for line in extracted.other_lines]
    return units


# ---------------------------------------------------------------------------------------------
# Degenerate output: refusals, echoes, loops


_REFUSAL = re.compile(
    r"\b(?:I(?:'|’)m|I\s+am|we(?:'|’)re|we\s+are)\s+(?:so\s+|very\s+|really\s+|truly\s+)?sorry\b"
    r"|\bI\s+apologi[sz]e\b"
    r"|\bI\s+(?:cannot|can\s+not|can(?:'|’)?t|am\s+unable\s+to|am\s+not\s+able\s+to|won(?:'|’)t\s+be\s+able"
    r"|do\s+not\s+have\s+(?:access|the\s+ability)|don(?:'|’)t\s+have\s+(?:access|the\s+ability))\b"
    r"|\bI(?:'|’)m\s+(?:unable\s+to|not\s+able\s+to)\b"
    r"|\bas\s+an\s+AI\b|\bas\s+a\s+(?:large\s+)?language\s+model\b"
    r"|^\s*sorry\b"
    r"|\b(?:unable|not\s+able)\s+to\s+(?:view|watch|see|process|analy[sz]e|access|play)\s+"
    r"(?:the|this|these|any)\s+(?:videos?|clips?|footage|frames?|content|files?)\b",
    re.I | re.M,
)
# Quoted speech or on-screen text ("a sign reads \"I can't\"") is not the model speaking.
_QUOTED = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”")
_PLACEHOLDER = re.compile(r"<[^<>\n]{1,80}>")


def _unquoted(text: str) -> str:
    return _QUOTED.sub(" ", text)


def _check_refusal(text: str, where: str) -> Rejection | None:
    match = _REFUSAL.search(text)
    if match is None:
        return None
    return Rejection("refusal", f"{where} says {_excerpt(text, match.start())!r}")


def _check_placeholder(text: str, where: str) -> Rejection | None:
    """Nothing but format placeholders (`<one sentence>`, `<start>-<end>s: <what happens>`): the
    model copied the template instead of filling it."""
    rest = _PLACEHOLDER.sub("", text)
    if rest != text and not re.search(r"[^\W\d_]{2,}", rest):
        return Rejection("prompt_echo", f"{where} is the format placeholder {_excerpt(text, 0)!r}")
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def _check_echo(text: str, prompt: str, cfg: CaptionParseConfig) -> Rejection | None:
    """The answer shares `echo_min_words` consecutive words with the prompt (instructions or example)."""
    n = cfg.echo_min_words
    prompt_words = _words(prompt)
    shingles = {tuple(prompt_words[i : i + n]) for i in range(len(prompt_words) - n + 1)}
    answer_words = _words(text)
    for i in range(len(answer_words) - n + 1):
        if tuple(answer_words[i : i + n]) in shingles:
            return Rejection("prompt_echo", f"repeats the prompt: {' '.join(answer_words[i : i + n])!r}")
    return None


@functools.cache
def _char_loop(repeats: int) -> re.Pattern:
    # a 1-20 character chunk starting with a non-space, then `repeats - 1` more copies back to back
    return re.compile(rf"(\S.{{0,19}}?)\1{{{repeats - 1},}}", re.S)


def _check_repetition(
    units: list[tuple[str, str]], segments: list[Segment], cfg: CaptionParseConfig
) -> Rejection | None:
    """Decoding loops: a chunk of characters, a word n-gram, or a whole segment text repeated."""
    for where, text in units:
        loop = _char_loop(cfg.max_char_repeats).search(text)
        if loop:
            return Rejection("repetition", f"{where} repeats {loop.group(1)!r} {cfg.max_char_repeats}+ times")
        words = _words(text)
        n = cfg.ngram_size
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if grams:
            gram, count = grams.most_common(1)[0]
            if count > cfg.max_ngram_repeats:
                return Rejection("repetition", f"{where} repeats {' '.join(gram)!r} {count} times")
    texts = [" ".join(_words(s.text)) for s in segments]
    texts = [t for t in texts if t]
    if texts:
        text, count = Counter(texts).most_common(1)[0]
        if count > cfg.max_segment_text_repeats or (count == len(texts) >= 2):
            return Rejection("repetition", f"{count} of {len(segments)} segments say {_excerpt(text, 0)!r}")
    return None


# ---------------------------------------------------------------------------------------------
# Normalization: raw segments -> segments inside the clip, ordered, non-overlapping


def _normalize(
    raw: list[Segment], duration_s: float, cfg: CaptionParseConfig, fixes: list[str]
) -> list[Segment] | Rejection:
    for i, seg in enumerate(raw, 1):
        if not _has_letter(seg.text):
            return Rejection("empty_segment_text", f"segment {i} ({_span(seg)}) has no text")
    for i, seg in enumerate(raw, 1):
        if seg.end_s <= seg.start_s:
            return Rejection("out_of_order", f"segment {i} ({_span(seg)}) ends at or before its start")
    clipped = []
    for i, seg in enumerate(raw, 1):
        result = _clamp(seg, i, duration_s, cfg, fixes)
        if isinstance(result, Rejection):
            return result
        clipped.append(result)
    ordered = sorted(clipped, key=lambda s: (s.start_s, s.end_s))
    if ordered != clipped:
        fixes.append("sorted")
    return _resolve_overlaps(ordered, cfg, fixes)


def _clamp(
    seg: Segment, i: int, duration_s: float, cfg: CaptionParseConfig, fixes: list[str]
) -> Segment | Rejection:
    """The segment cut to [0, duration] when it overshoots by at most clamp_tolerance_s."""
    tol = cfg.clamp_tolerance_s + _EPS
    start, end = seg.start_s, seg.end_s
    if start >= duration_s:
        return Rejection(
            "outside_clip", f"segment {i} ({_span(seg)}) starts at or after the clip end ({duration_s:.2f} s)"
        )
    if end > duration_s + tol:
        return Rejection(
            "outside_clip",
            f"segment {i} ({_span(seg)}) ends more than {cfg.clamp_tolerance_s:g} s after the clip ({duration_s:.2f} s)",
        )
    if start < -tol or end <= 0:
        return Rejection("outside_clip", f"segment {i} ({_span(seg)}) starts before the clip")
    if end > duration_s:
        end = duration_s
        fixes.append("clamped_end")
    if start < 0:
        start = 0.0
        fixes.append("clamped_start")
    return Segment(start, end, seg.text)


def _resolve_overlaps(
    ordered: list[Segment], cfg: CaptionParseConfig, fixes: list[str]
) -> list[Segment] | Rejection:
    """Trim (or merge) neighbours overlapping by up to overlap_tolerance_s; reject larger overlaps."""
    out: list[Segment] = []
    for seg in ordered:
        prev = out[-1] if out else None
        overlap = prev.end_s - seg.start_s if prev else 0.0
        if prev is None or overlap <= 0:
            out.append(seg)
        elif overlap > cfg.overlap_tolerance_s + _EPS:
            return Rejection(
                "overlap",
                f"{_span(prev)} and {_span(seg)} overlap by {overlap:.2f} s "
                f"(more than {cfg.overlap_tolerance_s:g} s)",
            )
        elif seg.start_s > prev.start_s:
            out[-1] = Segment(prev.start_s, seg.start_s, prev.text)
            out.append(seg)
            fixes.append("trimmed_overlap")
        else:  # both start together and one is short: trimming would leave nothing of `prev`
            out[-1] = Segment(prev.start_s, max(prev.end_s, seg.end_s), f"{prev.text} {seg.text}")
            fixes.append("merged_overlap")
    return out


# ---------------------------------------------------------------------------------------------
# Small helpers


def _has_word(text: str) -> bool:
    return re.search(r"[^\W_]", text) is not None


def _has_letter(text: str) -> bool:
    return re.search(r"[^\W\d_]", text) is not None


def _span(seg: Segment) -> str:
    return f"{seg.start_s:g}-{seg.end_s:g}s"


def _excerpt(text: str, at: int, width: int = 60) -> str:
    snippet = re.sub(r"\s+", " ", text[at : at + width]).strip()
    return snippet + ("..." if len(text) > at + width else "")
