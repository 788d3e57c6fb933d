"""Versioned captioning prompts: one text file per prompt under `captioning/prompts/`.

A prompt's id is its file stem (`dense_v1`) and is stored with every caption (`caption.prompt_id`),
so a released prompt file is never edited: a changed prompt is a new file (`dense_v2.txt`). Lines
starting with `#` at the top of a file are notes for people and are not part of the prompt. The
text may use the placeholders `{duration_s}` (the clip length in seconds, one decimal),
`{min_segments}`, and the measured hints of `captioning.prompt_hints`: `{camera}` (what the camera
does, from the motion scorer) and `{screen_text}` (text recognised on screen); literal braces are
written doubled (`{{`, `}}`), as in `str.format`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path

from captioning.prompt_hints import NOT_MEASURED

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
PLACEHOLDERS = ("duration_s", "min_segments", "camera", "screen_text")
HINTS = ("camera", "screen_text")
_PROMPT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PromptError(ValueError):
    """A prompt id names no prompt file, or a prompt file is malformed."""


@dataclass(frozen=True)
class Prompt:
    """A prompt template and the id it is recorded under."""

    prompt_id: str
    text: str

    @property
    def sha(self) -> str:
        """A short hash of the template, for run.json: proves which text an id stood for."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    def render(self, duration_s: float, min_segments: int, hints: dict[str, str] | None = None) -> str:
        """The prompt for one clip of `duration_s` seconds that must get `min_segments` or more segments;
        `hints` fills `{camera}` and `{screen_text}` (`ClipHints.placeholders`), "not measured" if absent."""
        if not math.isfinite(duration_s) or duration_s <= 0:
            raise ValueError(f"clip duration must be a positive number of seconds, got {duration_s!r}")
        if min_segments < 1:
            raise ValueError(f"min_segments must be >= 1, got {min_segments}")
        filled = dict.fromkeys(HINTS, NOT_MEASURED) | (hints or {})
        return self.text.format(duration_s=f"{duration_s:.1f}", min_segments=int(min_segments), **filled)


def available_prompts() -> list[str]:
    """The ids of the prompts shipped in `captioning/prompts/`."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))


@functools.cache
def load_prompt(prompt_id: str) -> Prompt:
    """The prompt `prompt_id` (a file stem under `captioning/prompts/`), checked for unknown placeholders."""
    available = available_prompts()
    if not _PROMPT_ID.match(prompt_id) or prompt_id not in available:
        close = difflib.get_close_matches(prompt_id, available, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PromptError(
            f"unknown prompt id {prompt_id!r}{hint}; available: {', '.join(available) or 'none'}"
        )
    path = PROMPT_DIR / f"{prompt_id}.txt"
    text = _strip_notes(path.read_text(encoding="utf-8"))
    _check_placeholders(text, path)
    return Prompt(prompt_id, text)


def _strip_notes(text: str) -> str:
    """The file's text without its leading `#` note lines and surrounding blank lines."""
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines).strip() + "\n"


def _check_placeholders(text: str, path: Path) -> None:
    """Fail at load time, not on the first clip, when the template uses a placeholder we do not fill."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:  # a lone brace
        raise PromptError(f"{path}: {exc} (write literal braces as {{{{ and }}}})") from exc
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown:
        raise PromptError(
            f"{path}: unknown placeholders {unknown}; a prompt may use {', '.join(PLACEHOLDERS)}"
        )
    if not text.strip():
        raise PromptError(f"{path}: the prompt is empty")
