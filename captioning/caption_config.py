"""Configuration of caption parsing: what a VLM's raw output must satisfy to become a clip's caption.

The parser repairs what is clearly a rounding or formatting slip (a last segment a little past the
clip end, neighbours that overlap by a fraction of a second) and rejects the rest with a reason from a
small vocabulary (`captioning.parsing.REJECTION_REASONS`), so failures can be counted and read in the
report. Every threshold of those decisions lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from curation.config import check

PREFIX = "captioning.parse"


@dataclass
class CaptionParseConfig:
    """Thresholds of `captioning.parsing.parse_caption`."""

    min_segments: int = 1
    """Fewest segments any caption must have, however short the clip."""
    seconds_per_segment: float = 4.0
    """Longer clips need one segment per this many seconds (rounded down): a 10 s clip needs 2, a
    20 s clip 5. A dense caption that describes a long clip in one line has lost its timeline."""
    max_required_segments: int = 8
    """Cap of that requirement, so a long clip is not rejected for lack of a tenth 'still walking'."""
    clamp_tolerance_s: float = 0.5
    """A segment may end up to this far past the clip end (models round the duration up); it is cut
    to the clip end. Further past, or starting at or after the end, the caption is `outside_clip`."""
    overlap_tolerance_s: float = 0.25
    """Neighbouring segments may overlap by up to this much (models write '2.0-4.5s', '4.0-6.0s'):
    the earlier one is trimmed to where the later starts, or, when it would be left with nothing,
    the two are merged. A larger overlap means the timeline is nested or wrong: `overlap`."""
    ngram_size: int = 3
    """Word n-gram length used to spot loops within one text (summary or segment)."""
    max_ngram_repeats: int = 3
    """One text may contain the same word n-gram at most this many times; a decoding loop
    ('the man walks the man walks ...') repeats it far more often. Counted per text, not across
    segments, where a recurring subject ('the man in the red shirt') is normal."""
    max_segment_text_repeats: int = 2
    """The same segment text (ignoring case and punctuation) may appear at most this many times;
    and a caption of two or more segments that all say the same thing is a `repetition` too."""
    max_char_repeats: int = 8
    """A short chunk (1-20 characters) repeated back to back this many times is a loop ('hahaha...',
    '!!!!!!!!', 'walks.walks.walks.') that word n-grams do not see."""
    echo_min_words: int = 12
    """The output is a `prompt_echo` when it shares this many consecutive words with the prompt (the
    instructions or the prompt's example caption copied back)."""

    def __post_init__(self):
        check(self.min_segments >= 1, f"{PREFIX}.min_segments", "must be >= 1")
        check(
            math.isfinite(self.seconds_per_segment) and self.seconds_per_segment > 0,
            f"{PREFIX}.seconds_per_segment",
            "must be > 0",
        )
        check(
            self.max_required_segments >= self.min_segments,
            f"{PREFIX}.max_required_segments",
            f"must be >= {PREFIX}.min_segments",
        )
        check(self.clamp_tolerance_s >= 0, f"{PREFIX}.clamp_tolerance_s", "must be >= 0")
        check(self.overlap_tolerance_s >= 0, f"{PREFIX}.overlap_tolerance_s", "must be >= 0")
        check(self.ngram_size >= 2, f"{PREFIX}.ngram_size", "must be >= 2")
        check(self.max_ngram_repeats >= 1, f"{PREFIX}.max_ngram_repeats", "must be >= 1")
        check(self.max_segment_text_repeats >= 1, f"{PREFIX}.max_segment_text_repeats", "must be >= 1")
        check(self.max_char_repeats >= 3, f"{PREFIX}.max_char_repeats", "must be >= 3")
        check(self.echo_min_words >= 3, f"{PREFIX}.echo_min_words", "must be >= 3")

    def min_segments_for(self, duration_s: float) -> int:
        """Fewest segments a caption of a clip this long must have (the prompt asks for as many).

        `max(min_segments, min(max_required_segments, floor(duration_s / seconds_per_segment)))`.
        """
        if not math.isfinite(duration_s) or duration_s <= 0:
            raise ValueError(f"clip duration must be a positive number of seconds, got {duration_s!r}")
        by_length = min(self.max_required_segments, math.floor(duration_s / self.seconds_per_segment))
        return max(self.min_segments, by_length)
