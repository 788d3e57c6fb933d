"""What curation measured about a clip, as phrases a prompt can quote (`{camera}`, `{screen_text}`).

A VLM that watches a few frames per second often cannot tell a pan from a subject moving, and reads
small burned-in text badly; the motion scorer's camera labels and the text scorer's recognised strings
are measured on more frames. Hints are per caption window, with times relative to the window's start,
because each window is captioned on its own and the model sees only its own span.
"""

from __future__ import annotations

from dataclasses import dataclass

CAMERA_PHRASES = {
    "static": "the camera holds still",
    "pan_left": "the camera pans left",
    "pan_right": "the camera pans right",
    "tilt_up": "the camera tilts up",
    "tilt_down": "the camera tilts down",
    "zoom_in": "the camera zooms in",
    "zoom_out": "the camera zooms out",
    "shake": "the camera shakes (handheld)",
    "complex": "the camera moves in several ways at once",
}
NOT_MEASURED = "not measured"
MAX_TEXTS = 5
MAX_TEXT_CHARS = 60


@dataclass(frozen=True)
class ClipHints:
    """A clip's measurements from its record: camera windows (clip seconds) and recognised text."""

    camera_label: str | None = None
    camera_windows: tuple[tuple[float, float, str], ...] = ()
    texts: tuple[str, ...] | None = None  # None: text was not read; (): read, none found

    @classmethod
    def from_record(cls, record: dict | None) -> ClipHints:
        """The hints a clip record (`KEY.json`, or `ClipRecord` as a dict) carries; empty when it has none."""
        record = record if isinstance(record, dict) else {}
        camera = record.get("camera") if isinstance(record.get("camera"), dict) else {}
        listed = camera.get("windows") if isinstance(camera.get("windows"), list) else []
        windows = tuple(
            (float(w["start_s"]), float(w["end_s"]), w["label"])
            for w in listed
            if isinstance(w, dict)
            and w.get("label") in CAMERA_PHRASES
            and all(isinstance(w.get(k), int | float) for k in ("start_s", "end_s"))
        )
        label = camera.get("label") if camera.get("label") in CAMERA_PHRASES else None
        texts = record.get("text")
        if isinstance(texts, list):
            texts = tuple(t.strip() for t in texts if isinstance(t, str) and t.strip())
        else:  # absent, or not a list of strings: not read
            texts = None
        return cls(label, windows, texts)

    def placeholders(self, start_s: float, end_s: float) -> dict[str, str]:
        """`{camera}` and `{screen_text}` for the caption window `[start_s, end_s)` of the clip."""
        return {"camera": self.camera_phrase(start_s, end_s), "screen_text": self.text_phrase()}

    def camera_phrase(self, start_s: float, end_s: float) -> str:
        """What the camera does in the window: one phrase, or time-stamped phrases when it changes."""
        inside = [
            (max(s, start_s) - start_s, min(e, end_s) - start_s, label)
            for s, e, label in self.camera_windows
            if s < end_s and e > start_s
        ]
        merged: list[list] = []
        for s, e, label in inside:
            if merged and merged[-1][2] == label:
                merged[-1][1] = e
            else:
                merged.append([s, e, label])
        if len(merged) == 1 or (not merged and self.camera_label):
            return CAMERA_PHRASES[merged[0][2] if merged else self.camera_label]
        if not merged:
            return NOT_MEASURED
        return "; ".join(f"{s:.1f}-{e:.1f}s: {CAMERA_PHRASES[label]}" for s, e, label in merged)

    def text_phrase(self) -> str:
        """The on-screen text, quoted, or why there is none to quote."""
        if self.texts is None:
            return NOT_MEASURED
        if not self.texts:
            return "none found"
        shown = [t[:MAX_TEXT_CHARS] for t in dict.fromkeys(self.texts)][:MAX_TEXTS]
        return ", ".join(f'"{t}"' for t in shown)
