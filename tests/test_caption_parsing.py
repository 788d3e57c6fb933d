"""Caption parsing and prompts: real-looking model answers in, segments or a rejection reason out.

No model runs here: the tables hold answers in the shapes VLMs actually write, and hypothesis
checks that any text at all yields either a caption that keeps the contract (inside the clip,
ordered, non-overlapping, worded, enough segments) or a rejection from the fixed vocabulary.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captioning.caption_config import CaptionParseConfig
from captioning.parsing import (
    FIXES,
    REJECTION_REASONS,
    ParsedCaption,
    Rejection,
    Segment,
    format_training_caption,
    parse_caption,
)
from captioning.prompts import PromptError, available_prompts, load_prompt
from curation.config import ConfigError

CFG = CaptionParseConfig()
TWO = [(0.0, 2.5, "A dog sits on the grass."), (2.5, 6.0, "The dog runs to the right.")]
SUMMARY = "A dog sits, then runs across a lawn."

# (id, answer, clip duration, expected summary, expected segments, expected fixes or None to skip)
GOOD = [
    (
        "prompt_format",
        f"Summary: {SUMMARY}\n0.0-2.5s: A dog sits on the grass.\n2.5-6.0s: The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "spaced_units",
        f"{SUMMARY}\n0.0 - 2.5 s: A dog sits on the grass.\n2.5 - 6.0 s: The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "brackets",
        f"{SUMMARY}\n[0.0-2.5s] A dog sits on the grass.\n[2.5-6.0s] The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "mm_ss",
        f"{SUMMARY}\n[00:00-00:02] A dog sits on the grass.\n[00:02-00:06] The dog runs to the right.",
        6.0,
        SUMMARY,
        [(0.0, 2.0, TWO[0][2]), (2.0, 6.0, TWO[1][2])],
        [],
    ),
    (
        "hh_mm_ss",
        f"{SUMMARY}\n00:00:00 - 00:00:01.5 A dog sits on the grass.\n00:00:01.5 - 00:00:06 The dog runs to the right.",
        6.0,
        SUMMARY,
        [(0.0, 1.5, TWO[0][2]), (1.5, 6.0, TWO[1][2])],
        [],
    ),
    (
        "to_words",
        f"{SUMMARY}\n0s to 2s: A dog sits on the grass.\n2s to 6s: The dog runs to the right.",
        6.0,
        SUMMARY,
        [(0.0, 2.0, TWO[0][2]), (2.0, 6.0, TWO[1][2])],
        [],
    ),
    (
        "from_to_seconds",
        f"{SUMMARY}\nFrom 0 to 2 seconds, a dog sits on the grass.\nFrom 2 to 6 seconds, the dog runs to the right.",
        6.0,
        SUMMARY,
        [(0.0, 2.0, "a dog sits on the grass."), (2.0, 6.0, "the dog runs to the right.")],
        [],
    ),
    (
        "parens_en_dash",
        f"{SUMMARY}\n(0.0s–2.5s) A dog sits on the grass.\n(2.5s–6.0s) The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "em_dash_separator",
        f"{SUMMARY}\n0.0–2.5 s — A dog sits on the grass.\n2.5–6.0 s — The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "bullets_dash_star",
        f"Summary: {SUMMARY}\n- 0.0-2.5s: A dog sits on the grass.\n* 2.5-6.0s: The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "numbered",
        f"{SUMMARY}\n1. 0.0-2.5s: A dog sits on the grass.\n2. 2.5-6.0s: The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "markdown",
        f"**Summary:** {SUMMARY}\n\n### Segments\n- **0.0-2.5s:** A dog sits on the grass.\n"
        "- **2.5-6.0s:** The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "segment_labels",
        f"{SUMMARY}\nSegment 1 (0.0-2.5s): A dog sits on the grass.\nSegment 2 (2.5-6.0s): The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "json",
        '{"summary": "A dog sits, then runs across a lawn.", "segments": ['
        '{"start": 0.0, "end": 2.5, "text": "A dog sits on the grass."}, '
        '{"start": 2.5, "end": 6.0, "text": "The dog runs to the right."}]}',
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "json_fenced_with_chatter",
        "Sure! Here is the caption in JSON:\n```json\n"
        '{\n  "summary": "A dog sits, then runs across a lawn.",\n  "segments": [\n'
        '    {"start_s": 0, "end_s": 2.5, "text": "A dog sits on the grass."},\n'
        '    {"start_s": 2.5, "end_s": 6, "text": "The dog runs to the right."}\n  ]\n}\n```\n'
        "Let me know if you need anything else.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "json_span_strings",
        '[{"time": "0.0-2.5s", "description": "A dog sits on the grass."}, '
        '{"timestamp": "00:02.5 - 00:06", "caption": "The dog runs to the right."}]',
        6.0,
        "",
        TWO,
        ["no_summary"],
    ),
    (
        "json_segment_strings",
        '{"summary": "A dog sits, then runs across a lawn.", "segments": '
        '["0.0-2.5s: A dog sits on the grass.", "2.5-6.0s: The dog runs to the right."]}',
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "json_entry_without_times_skipped",
        '{"summary": "A dog sits, then runs across a lawn.", "segments": [{"start": 0, "end": 2.5, '
        '"text": "A dog sits on the grass."}, {"text": "Then"}, {"start": 2.5, "end": 6, "text": "The dog runs to the right."}]}',
        6.0,
        SUMMARY,
        TWO,
        ["skipped_json_entries"],
    ),
    (
        "srt",
        "1\n00:00:00,000 --> 00:00:02,500\nA dog sits on the grass.\n\n"
        "2\n00:00:02,500 --> 00:00:06,000\nThe dog runs to the right.\n",
        6.0,
        "",
        TWO,
        ["no_summary"],
    ),
    (
        "times_on_own_line",
        f"Summary:\n{SUMMARY}\n\n[0.0-2.5s]\nA dog sits on the grass.\n[2.5-6.0s]\nThe dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "one_paragraph",
        "0.0-2.5s: A dog sits on the grass. 2.5-6.0s: The dog runs to the right.",
        6.0,
        "",
        TWO,
        ["split_inline", "no_summary"],
    ),
    (
        "chatter_around",
        f"Here is a detailed caption of the clip:\n\n{SUMMARY}\n0.0-2.5s: A dog sits on the grass.\n"
        "2.5-6.0s: The dog runs to the right.\n\nI hope this helps!",
        6.0,
        SUMMARY,
        TWO,
        ["ignored_lines"],
    ),
    (
        "wrapped_line",
        f"{SUMMARY}\n0.0-2.5s: A dog sits on the\ngrass.\n2.5-6.0s: The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        [],
    ),
    (
        "overshoot_clamped",
        f"{SUMMARY}\n0.0-2.5s: A dog sits on the grass.\n2.5-6.4s: The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        ["clamped_end"],
    ),
    (
        "small_overlap_trimmed",
        f"{SUMMARY}\n0.0-2.7s: A dog sits on the grass.\n2.5-6.0s: The dog runs to the right.",
        6.0,
        SUMMARY,
        TWO,
        ["trimmed_overlap"],
    ),
    (
        "same_start_merged",
        f"{SUMMARY}\n0.0-0.2s: A dog sits.\n0.0-2.5s: It is on the grass.\n2.5-6.0s: The dog runs to the right.",
        6.0,
        SUMMARY,
        [(0.0, 2.5, "A dog sits. It is on the grass."), TWO[1]],
        ["merged_overlap"],
    ),
    (
        "unsorted",
        f"{SUMMARY}\n2.5-6.0s: The dog runs to the right.\n0.0-2.5s: A dog sits on the grass.",
        6.0,
        SUMMARY,
        TWO,
        ["sorted"],
    ),
    (
        "quoted_speech_is_not_a_refusal",
        'A man holds a sign.\n0-3s: A man holds a sign that reads "I can\'t stop".\n3-6s: He lowers the sign.',
        6.0,
        "A man holds a sign.",
        [(0.0, 3.0, 'A man holds a sign that reads "I can\'t stop".'), (3.0, 6.0, "He lowers the sign.")],
        [],
    ),
    (
        "long_clip_enough_segments",
        "A car drives down a road.\n"
        + "\n".join(f"{4 * i}-{4 * i + 4}s: The car passes marker {name}." for i, name in enumerate("ABCDE")),
        20.0,
        "A car drives down a road.",
        [(4.0 * i, 4.0 * i + 4, f"The car passes marker {name}.") for i, name in enumerate("ABCDE")],
        [],
    ),
]


@pytest.mark.parametrize(
    ("answer", "duration", "summary", "segments", "fixes"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD]
)
def test_good_answers_parse(answer, duration, summary, segments, fixes):
    result = parse_caption(answer, duration, CFG)
    assert isinstance(result, ParsedCaption), result
    assert result.summary == summary
    assert [(round(s.start_s, 3), round(s.end_s, 3), s.text) for s in result.segments] == segments
    if fixes is not None:
        assert result.fixes == fixes


PROMPT_6S = load_prompt("dense_v1").render(6.0, 1)
PROMPT_EXAMPLE = PROMPT_6S.split("long:\n", 1)[1]  # the worked example at the end of dense_v1

# (id, answer, clip duration, expected reason, prompt or None)
BAD = [
    ("blank", "", 6.0, "empty", None),
    ("whitespace_and_fences", "  \n```\n```\n", 6.0, "empty", None),
    ("punctuation_only", "... --- ...", 6.0, "empty", None),
    ("summary_only", "Summary: A dog runs across a lawn.", 6.0, "no_segments", None),
    ("prose", "A dog sits on the grass.\nThen it runs to the right.", 6.0, "no_segments", None),
    ("counts_are_not_times", "2-3 dogs play in a park.", 6.0, "no_segments", None),
    ("point_times_only", "At 1.0s a dog sits.\nAt 3.0s it runs.", 6.0, "no_segments", None),
    (
        "json_without_times",
        '{"summary": "A dog.", "segments": [{"text": "A dog sits."}]}',
        6.0,
        "no_segments",
        None,
    ),
    (
        "too_few_long_clip",
        f"{SUMMARY}\n0-10s: A dog sits.\n10-20s: The dog runs.",
        20.0,
        "too_few_segments",
        None,
    ),
    (
        "starts_after_end",
        f"{SUMMARY}\n0-3s: A dog sits.\n3-6s: It runs.\n6.0-6.4s: It stops.",
        6.0,
        "outside_clip",
        None,
    ),
    ("ends_far_past", f"{SUMMARY}\n0-3s: A dog sits.\n3-8s: It runs.", 6.0, "outside_clip", None),
    ("wrong_clip_length", f"{SUMMARY}\n0-10s: A dog sits.\n10-20s: It runs.", 6.0, "outside_clip", None),
    (
        "json_negative_start",
        '{"segments": [{"start": -2, "end": 3, "text": "A dog sits."}]}',
        6.0,
        "outside_clip",
        None,
    ),
    ("large_overlap", f"{SUMMARY}\n0-3s: A dog sits.\n2-6s: It runs.", 6.0, "overlap", None),
    ("nested", f"{SUMMARY}\n0-6s: A dog plays.\n1-2s: It sits.\n2-6s: It runs.", 6.0, "overlap", None),
    ("inverted", f"{SUMMARY}\n2.5-0.0s: A dog sits.\n2.5-6.0s: It runs.", 6.0, "out_of_order", None),
    ("zero_length", f"{SUMMARY}\n2-2s: A dog sits.\n2-6s: It runs.", 6.0, "out_of_order", None),
    ("no_text", f"{SUMMARY}\n0.0-2.5s:\n2.5-6.0s: It runs.", 6.0, "empty_segment_text", None),
    ("dots_text", f"{SUMMARY}\n0.0-2.5s: ...\n2.5-6.0s: It runs.", 6.0, "empty_segment_text", None),
    (
        "json_empty_text",
        '{"segments": [{"start": 0, "end": 6, "text": ""}]}',
        6.0,
        "empty_segment_text",
        None,
    ),
    (
        "ngram_loop",
        f"{SUMMARY}\n0-3s: The dog runs and the dog runs and the dog runs and the dog runs and the dog runs",
        6.0,
        "repetition",
        None,
    ),
    ("looping_summary", "The man walks. " * 12, 6.0, "repetition", None),
    (
        "same_segment_repeated",
        f"{SUMMARY}\n" + "\n".join(f"{i}-{i + 1}s: The dog runs." for i in range(6)),
        6.0,
        "repetition",
        None,
    ),
    ("all_segments_identical", f"{SUMMARY}\n0-3s: A dog.\n3-6s: A dog.", 6.0, "repetition", None),
    ("char_loop", f"{SUMMARY}\n0-6s: The crowd laughs hahahahahahahahahahaha", 6.0, "repetition", None),
    ("sorry", "I'm sorry, but I can't help with describing this video.", 6.0, "refusal", None),
    ("as_an_ai", "As an AI language model, I cannot watch videos.", 6.0, "refusal", None),
    (
        "refusal_then_caption",
        "I am unable to view the video directly, but here is a guess:\n0-6s: A dog runs.",
        6.0,
        "refusal",
        None,
    ),
    ("json_refusal", '{"summary": "Sorry, I cannot see the frames.", "segments": []}', 6.0, "refusal", None),
    ("example_copied", PROMPT_EXAMPLE, 6.0, "prompt_echo", PROMPT_6S),
    (
        "prompt_repeated",
        PROMPT_6S + "\nSummary: A dog runs.\n0-6s: A dog runs.",
        6.0,
        "prompt_echo",
        PROMPT_6S,
    ),
    ("placeholders", "Summary: <one sentence>\n<start>-<end>s: <what happens>", 6.0, "prompt_echo", None),
    ("placeholder_text", "Summary: A dog.\n0.0-6.0s: <what happens>", 6.0, "prompt_echo", None),
]


@pytest.mark.parametrize(
    ("answer", "duration", "reason", "prompt"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_answers_are_rejected(answer, duration, reason, prompt):
    result = parse_caption(answer, duration, CFG, prompt=prompt)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.detail
    assert result.detail


def test_example_is_fine_without_the_prompt():
    """The prompt's own example is a valid caption: the format asked for is the format parsed."""
    result = parse_caption(PROMPT_EXAMPLE, 6.0, CFG)
    assert isinstance(result, ParsedCaption)
    assert [(s.start_s, s.end_s) for s in result.segments] == [(0.0, 2.5), (2.5, 6.0)]


def test_tolerances_come_from_config():
    overshoot = "A dog.\n0.0-3.0s: A dog sits.\n3.0-6.2s: It runs."
    overlap = "A dog.\n0.0-3.1s: A dog sits.\n3.0-6.0s: It runs."
    assert isinstance(parse_caption(overshoot, 6.0, CFG), ParsedCaption)
    assert parse_caption(overshoot, 6.0, CaptionParseConfig(clamp_tolerance_s=0.0)).reason == "outside_clip"
    assert isinstance(parse_caption(overlap, 6.0, CFG), ParsedCaption)
    assert parse_caption(overlap, 6.0, CaptionParseConfig(overlap_tolerance_s=0.0)).reason == "overlap"
    loop = "A dog.\n0-6s: a dog runs a dog runs a dog runs"
    assert isinstance(parse_caption(loop, 6.0, CFG), ParsedCaption)  # 3 times is allowed by default
    assert parse_caption(loop, 6.0, CaptionParseConfig(max_ngram_repeats=2)).reason == "repetition"


@pytest.mark.parametrize(
    ("duration", "expected"), [(0.5, 1), (3.9, 1), (4.0, 1), (8.0, 2), (10.0, 2), (20.0, 5), (600.0, 8)]
)
def test_min_segments_for(duration, expected):
    assert CFG.min_segments_for(duration) == expected


def test_min_segments_floor():
    assert CaptionParseConfig(min_segments=3).min_segments_for(2.0) == 3


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"min_segments": 0}, "min_segments"),
        ({"seconds_per_segment": 0.0}, "seconds_per_segment"),
        ({"min_segments": 4, "max_required_segments": 3}, "max_required_segments"),
        ({"clamp_tolerance_s": -0.1}, "clamp_tolerance_s"),
        ({"overlap_tolerance_s": -1.0}, "overlap_tolerance_s"),
        ({"ngram_size": 1}, "ngram_size"),
        ({"echo_min_words": 2}, "echo_min_words"),
    ],
)
def test_config_checks_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"captioning.parse.{key}"):
        CaptionParseConfig(**kwargs)


@pytest.mark.parametrize("duration", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_duration_is_our_error(duration):
    with pytest.raises(ValueError, match="duration"):
        parse_caption("0-1s: A dog.", duration, CFG)


def test_rejection_reason_vocabulary_is_enforced():
    with pytest.raises(ValueError, match="unknown rejection reason"):
        Rejection("too_bad", "x")


def test_format_training_caption_and_record():
    parsed = ParsedCaption(SUMMARY, [Segment(0.0, 2.54, "A dog sits."), Segment(2.54, 6.0, "It runs.")])
    assert format_training_caption(parsed) == f"{SUMMARY}\n[0.0-2.5s] A dog sits.\n[2.5-6.0s] It runs."
    assert format_training_caption(ParsedCaption("", parsed.segments)).startswith("[0.0-2.5s]")
    record = parsed.to_record(model="qwen2.5-vl-7b", prompt_id="dense_v1")
    assert record == {
        "summary": SUMMARY,
        "segments": [
            {"start_s": 0.0, "end_s": 2.54, "text": "A dog sits."},
            {"start_s": 2.54, "end_s": 6.0, "text": "It runs."},
        ],
        "model": "qwen2.5-vl-7b",
        "prompt_id": "dense_v1",
    }


# ---------------------------------------------------------------------------------------------
# Prompts


def test_prompt_renders_duration_and_count():
    prompt = load_prompt("dense_v1")
    assert prompt.prompt_id == "dense_v1"
    assert "dense_v1" in available_prompts()
    text = prompt.render(7.25, 3)
    assert "7.2 seconds long" in text or "7.3 seconds long" in text
    assert "Write 3 or more segments" in text
    assert "Summary:" in text and "{" not in text and not text.startswith("#")
    assert len(prompt.sha) == 12
    assert load_prompt("dense_v1") is prompt  # cached: read once per process


def test_unknown_prompt_lists_available():
    with pytest.raises(PromptError, match=r"unknown prompt id 'dense_v9'.*available: .*dense_v1"):
        load_prompt("dense_v9")
    with pytest.raises(PromptError, match="unknown prompt id"):
        load_prompt("../caption_config")


@pytest.mark.parametrize(("duration", "count"), [(0.0, 1), (5.0, 0)])
def test_prompt_render_checks_arguments(duration, count):
    with pytest.raises(ValueError):
        load_prompt("dense_v1").render(duration, count)


# ---------------------------------------------------------------------------------------------
# Properties


def assert_contract(result: ParsedCaption | Rejection, duration: float, cfg: CaptionParseConfig) -> None:
    """What every caption the parser accepts guarantees, and what every rejection looks like."""
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS
        assert result.detail
        return
    assert isinstance(result, ParsedCaption)
    segments = result.segments
    assert len(segments) >= cfg.min_segments_for(duration)
    for seg in segments:
        assert 0.0 <= seg.start_s < seg.end_s <= duration
        assert re.search(r"[^\W\d_]", seg.text)
    for a, b in itertools.pairwise(segments):
        assert a.end_s <= b.start_s
    assert set(result.fixes) <= set(FIXES)


DURATIONS = st.floats(min_value=0.2, max_value=40.0, allow_nan=False, allow_infinity=False)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(text=st.text(max_size=400), duration=DURATIONS)
def test_any_text_keeps_the_contract(text, duration):
    assert_contract(parse_caption(text, duration, CFG), duration, CFG)


WORDS = (
    "dog", "cat", "man", "woman", "child", "car", "bird", "boat", "tree", "road", "river", "camera", "pans",
    "zooms", "left", "right", "slowly", "runs", "walks", "jumps", "sits", "turns", "waves", "smiles", "red",
    "blue", "green", "bright", "dark", "street", "park", "beach", "sky", "water", "across", "toward",
)  # fmt: skip
TIME = st.floats(min_value=0.0, max_value=45.0, allow_nan=False).map(lambda t: round(t, 1))
LINE_TEMPLATES = [
    "{a}-{b}s: {t}",
    "{a} - {b} s: {t}",
    "[{a}-{b}s] {t}",
    "[{ma}-{mb}] {t}",
    "{ha} - {hb} {t}",
    "{a}s to {b}s: {t}",
    "From {a} to {b} seconds, {t}",
    "({a}s–{b}s) {t}",
    "- **{a}-{b}s:** {t}",
    "1. {a}-{b}s: {t}",
    "{a}-{b}s:",
]


def _clock(t: float, hours: bool) -> str:
    minutes, seconds = divmod(t, 60)
    return f"00:{int(minutes):02d}:{seconds:04.1f}" if hours else f"{int(minutes):02d}:{int(seconds):02d}"


@st.composite
def segment_line(draw, a: float | None = None, b: float | None = None, min_words: int = 0) -> str:
    """One segment line in a random format; random times unless given."""
    if a is None or b is None:
        a, b = draw(TIME), draw(TIME)
    words = draw(
        st.lists(st.sampled_from(WORDS), min_size=min_words, max_size=12, unique=draw(st.booleans()))
    )
    return draw(st.sampled_from(LINE_TEMPLATES)).format(
        a=a,
        b=b,
        t=" ".join(words),
        ma=_clock(a, False),
        mb=_clock(b, False),
        ha=_clock(a, True),
        hb=_clock(b, True),
    )


OTHER_LINES = st.one_of(
    st.just(""),
    st.sampled_from(["Summary: A dog runs in a park.", "Here is the caption:", "I hope this helps!", "```"]),
    st.text(max_size=40),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=10).map(" ".join),
)


@FAST
@given(lines=st.lists(st.one_of(segment_line(), OTHER_LINES), max_size=12), duration=DURATIONS)
def test_random_segment_lines_keep_the_contract(lines, duration):
    assert_contract(parse_caption("\n".join(lines), duration, CFG), duration, CFG)


@st.composite
def caption_like_answer(draw) -> tuple[str, float]:
    """A plausible answer with slips: ends past the clip, small and large overlaps, shuffled lines,
    chatter, empty texts, so the repairs and every structural rejection get exercised."""
    duration = draw(DURATIONS)
    count = draw(st.integers(min_value=0, max_value=8))
    ends = sorted(draw(st.lists(st.floats(0.0, duration + 1.0), min_size=count, max_size=count)))
    lines, start = [], 0.0
    for end in ends:
        back = draw(st.sampled_from([0.0, 0.0, 0.0, 0.1, 0.2, 0.6]))  # how far it overlaps its predecessor
        lines.append(draw(segment_line(round(max(0.0, start - back), 1), round(end, 1), min_words=1)))
        start = end
    if draw(st.booleans()):
        lines = draw(st.permutations(lines))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        lines.insert(draw(st.integers(min_value=0, max_value=len(lines))), draw(OTHER_LINES))
    return "\n".join(lines), duration


@FAST
@given(case=caption_like_answer())
def test_caption_like_answers_keep_the_contract(case):
    answer, duration = case
    assert_contract(parse_caption(answer, duration, CFG), duration, CFG)


@st.composite
def valid_caption(draw) -> tuple[ParsedCaption, float]:
    """A caption that satisfies every rule: times on a 0.1 s grid, distinct texts without loops."""
    tenths = draw(st.integers(min_value=20, max_value=400))
    duration = tenths / 10
    count = draw(st.integers(min_value=CFG.min_segments_for(duration), max_value=8))
    contiguous = draw(st.booleans())
    if contiguous:
        cuts = sorted(
            draw(st.lists(st.integers(1, tenths - 1), min_size=count - 1, max_size=count - 1, unique=True))
        )
        bounds = list(itertools.pairwise([0, *cuts, tenths]))
    else:
        points = sorted(
            draw(st.lists(st.integers(0, tenths), min_size=2 * count, max_size=2 * count, unique=True))
        )
        bounds = list(zip(points[::2], points[1::2], strict=True))
    # unique words per text: no n-gram can repeat; unique texts: no segment repeats
    text = (
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=12, unique=True)
        .map(" ".join)
        .map(str.capitalize)
    )
    texts = draw(st.lists(text, min_size=count, max_size=count, unique=True))
    summary = draw(st.one_of(st.just(""), text))
    segments = [Segment(a / 10, b / 10, t) for (a, b), t in zip(bounds, texts, strict=True)]
    return ParsedCaption(summary, segments), duration


@FAST
@given(case=valid_caption())
def test_training_caption_round_trip(case):
    caption, duration = case
    result = parse_caption(format_training_caption(caption), duration, CFG)
    assert isinstance(result, ParsedCaption), result
    assert result.summary == caption.summary
    assert len(result.segments) == len(caption.segments)
    for got, want in zip(result.segments, caption.segments, strict=True):
        assert got.text == want.text
        assert got.start_s == pytest.approx(want.start_s, abs=0.05)
        assert got.end_s == pytest.approx(want.end_s, abs=0.05)
