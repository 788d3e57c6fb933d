"""Configuration of clip scoring (`scoring.*`) and of the keep/drop decision (`filters.*`).

Scorers measure, filters decide: every threshold lives in the declarative `filters.rules` list,
so changing what is kept never changes how anything is measured, and a `score-only` run records
every score without dropping a clip (to pick thresholds from a real distribution first).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

from curation.config import check

# Scores a scorer fills (null when it is off); the manifest has one column per name.
SCORE_NAMES = (
    "motion", "motion_px", "moving_fraction", "aesthetic", "sharpness", "brightness", "contrast",
    "colorfulness", "frozen_fraction", "text_area", "text_boxes",
)  # fmt: skip
# Extra keys of the quality scorer: the picture without letterbox/pillarbox bars, in source pixels.
CONTENT_BOX_NAMES = ("content_x", "content_y", "content_w", "content_h")
FILTERABLE_SCORES = SCORE_NAMES + CONTENT_BOX_NAMES
CAPTION_SCORES = {"caption_alignment": "summary", "caption_alignment_margin": "margin"}
"""Rule names of the caption alignment stage's numbers -> their key in a record's `caption_metrics.alignment`
(not in `scores`, nor manifest columns: they exist only after captioning)."""
RULE_SCORES = FILTERABLE_SCORES + tuple(CAPTION_SCORES)
CAMERA_LABELS = (
    "static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shake", "complex",
)  # fmt: skip
"""The camera motion labels (`curation.scoring.camera`), which a `{score: camera, drop: [...]}` rule names."""


@dataclass
class FrameSamplerConfig:
    """The one decode per clip that feeds every scorer."""

    fps: float = 2.0
    """Frames sampled per second of clip; motion is measured between consecutive samples."""
    max_frames: int = 64
    """Longer clips keep evenly spread pairs of consecutive samples, so motion keeps its time step."""
    short_side: int = 256
    """Samples are scaled so their short side is this (up or down): scores do not depend on the
    source resolution. Scorers that want a smaller size downscale from here."""
    detect_bars: bool = True
    """Find letterbox/pillarbox bars; every scorer then measures only the picture inside them."""
    bar_level: float = 0.1
    """Lines (rows/columns) darker than this (0-1) and flat in every sample are bar candidates."""
    timeout_s: float = 300.0

    def __post_init__(self):
        check(0 < self.bar_level < 1, "scoring.frames.bar_level", "must be in (0, 1)")
        check(0 < self.fps <= 30, "scoring.frames.fps", "must be in (0, 30]")
        check(self.max_frames >= 2, "scoring.frames.max_frames", "must be >= 2 (motion needs pairs)")
        check(self.short_side >= 32, "scoring.frames.short_side", "must be >= 32")
        check(self.timeout_s > 0, "scoring.frames.timeout_s", "must be > 0")


@dataclass
class MotionConfig:
    """Dense optical flow (OpenCV Farneback) between consecutive samples, on grayscale frames."""

    enabled: bool = True
    short_side: int = 128
    """Flow is computed at this short side; `motion_px` is in pixels at this reference size."""
    moving_threshold_px: float = 0.5
    """A pixel counts as moving (`moving_fraction`) above this flow magnitude, in reference pixels
    per sampling step. Above the noise floor of a still x264 shot (about 0.05 px), below a slow pan."""
    levels: int = 3
    """Farneback pyramid levels below the reference size (OpenCV stops at 32 px anyway)."""
    winsize: int = 15
    """Farneback averaging window (pixels at the reference size)."""

    def __post_init__(self):
        check(self.short_side >= 32, "scoring.motion.short_side", "must be >= 32")
        check(self.moving_threshold_px > 0, "scoring.motion.moving_threshold_px", "must be > 0")
        check(1 <= self.levels <= 8, "scoring.motion.levels", "must be in 1..8")
        check(self.winsize >= 3, "scoring.motion.winsize", "must be >= 3")


@dataclass
class CameraConfig:
    """Camera motion labels (`curation/scoring/camera.py`) from the motion scorer's flow: static, pan_left,
    pan_right, tilt_up, tilt_down, zoom_in, zoom_out, shake, complex. Needs `scoring.motion`; distances are
    in its reference pixels per sampling step."""

    enabled: bool = True
    static_px: float = 0.5
    """Below this the picture moves less than half a pixel, at its centre and its corners: a still camera."""
    complex_residual: float = 0.6
    """Above this share of the flow left unexplained by one camera motion, a pair is `complex`."""
    shake_ratio: float = 0.4
    """A moving clip whose mean shift is under this share of its mean shift length goes nowhere: `shake`."""
    window_s: float = 2.0
    """Labels are also given per stretch of this length (`camera.windows`)."""

    def __post_init__(self):
        check(self.static_px > 0, "scoring.camera.static_px", "must be > 0")
        check(0 < self.complex_residual <= 1, "scoring.camera.complex_residual", "must be in (0, 1]")
        check(0 < self.shake_ratio < 1, "scoring.camera.shake_ratio", "must be in (0, 1)")
        check(self.window_s > 0, "scoring.camera.window_s", "must be > 0")


@dataclass
class QualityConfig:
    """Model-free picture quality: exposure, contrast, colour, sharpness, frozen frames."""

    enabled: bool = True
    short_side: int = 256
    """`sharpness` is the Laplacian variance at this short side (it depends strongly on scale)."""
    frozen_threshold: float = 1.0
    """Consecutive samples closer than this mean absolute grey difference (0-255 scale, at 64 px
    short side) count as frozen; x264 noise on a still image stays well below it."""

    def __post_init__(self):
        check(self.short_side >= 32, "scoring.quality.short_side", "must be >= 32")
        check(self.frozen_threshold >= 0, "scoring.quality.frozen_threshold", "must be >= 0")


@dataclass
class AestheticConfig:
    """open_clip image embeddings scored by the LAION improved aesthetic predictor head (0-10)."""

    enabled: bool = True
    clip_model: str = "ViT-L-14"
    """An open_clip model name (or `local-dir:PATH` / `hf-hub:ID`). The head expects ViT-L/14 features."""
    clip_pretrained: str = "openai"
    """An open_clip pretrained tag for `clip_model`, or the path to a checkpoint file."""
    clip_model_config: str | None = None
    """A model config JSON file (or a directory of them) to register with open_clip first, for an
    architecture that open_clip does not ship; `clip_model` is then the file's stem."""
    head_weights: str | None = None
    """Path to the head's state dict, e.g. `sac+logos+ava1-l14-linearMSE.pth` from
    christophschuhmann/improved-aesthetic-predictor."""
    frame_positions: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    """Where in the clip (fractions of its duration) the scored frames are taken."""
    reduce: Literal["mean", "min"] = "mean"
    """How the per-frame scores become the clip's `aesthetic`."""
    batch_size: int = 8
    """Clips per forward pass in `score_batch` (times the number of frame positions)."""
    num_gpus: float = 0.0
    """GPUs reserved per scoring actor (0: run on CPU)."""
    device: str = "auto"
    """`auto` (cuda when available), `cpu`, `cuda`, `cuda:1`, ..."""

    def __post_init__(self):
        check(bool(self.clip_model), "scoring.aesthetic.clip_model", "must not be empty")
        check(bool(self.frame_positions), "scoring.aesthetic.frame_positions", "must not be empty")
        check(
            all(0 <= p <= 1 for p in self.frame_positions),
            "scoring.aesthetic.frame_positions",
            "must be fractions in [0, 1]",
        )
        check(self.batch_size >= 1, "scoring.aesthetic.batch_size", "must be >= 1")
        check(self.num_gpus >= 0, "scoring.aesthetic.num_gpus", "must be >= 0")
        check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "scoring.aesthetic.device",
            "must be auto, cpu or cuda[:N]",
        )


@dataclass
class TextConfig:
    """Burned-in text (subtitles, watermarks, tickers, "subscribe" overlays), found by PP-OCR text detection
    (`curation/scoring/text.py`; `rapidocr-onnxruntime` ships the weights) on a few of the clip's samples.
    `text_area` is the largest share of a frame that text boxes cover, `text_boxes` the most boxes in one."""

    enabled: bool = True
    frames: int = 3
    """Samples searched, evenly spread over the clip: the cost is one detection per frame."""
    max_side: int = 640
    """Frames are scaled (up or down) to this long side before detection; the cost grows with its square.
    Samples are `scoring.frames.short_side` high, so small text needs them scaled up: subtitles of a 720p
    video were found at 320 already, their area within 20 % of 960's from 640 on, a 20 px watermark
    only at 960."""
    box_threshold: float = 0.5
    """A region is a text box when the detector's mean confidence inside it is above this (PP-OCR's 0.5)."""
    recognize: bool = False
    """Also read the boxes (PP-OCR recognition) into the record's `text`, for the captioner's prompt. Only
    clips with text pay: some 20-40 ms a box, up to 4x the detection on a frame full of text."""
    min_confidence: float = 0.5
    """Recognised strings below this confidence are left out."""
    max_strings: int = 8
    """At most this many distinct strings per clip (top to bottom, first frame first)."""
    max_chars: int = 80
    """Longer strings are cut to this many characters."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: in a text actor, onnxruntime's CUDA provider when it has one (onnxruntime-gpu) and a GPU is
    visible, else the CPU; inside the CPU scoring task (`resources.text_actors: 0`), the CPU."""
    num_gpus: float = 0.0
    """GPUs reserved per text actor; above 0, detection runs in an actor pool (`resources.text_actors`)."""

    def __post_init__(self):
        check(1 <= self.frames <= 64, "scoring.text.frames", "must be in 1..64")
        check(self.max_side >= 64, "scoring.text.max_side", "must be >= 64")
        check(0 < self.box_threshold < 1, "scoring.text.box_threshold", "must be in (0, 1)")
        check(0 <= self.min_confidence < 1, "scoring.text.min_confidence", "must be in [0, 1)")
        check(self.max_strings >= 1, "scoring.text.max_strings", "must be >= 1")
        check(self.max_chars >= 1, "scoring.text.max_chars", "must be >= 1")
        check(self.num_gpus >= 0, "scoring.text.num_gpus", "must be >= 0")


@dataclass
class ScoringConfig:
    """All scorers of a clip, fed by one frame sampler."""

    frames: FrameSamplerConfig = field(default_factory=FrameSamplerConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    text: TextConfig = field(default_factory=TextConfig)


@dataclass
class FilterRule:
    """Keep a clip only if `min <= scores[score] <= max` (either bound may be left out); or, for
    `score: camera`, only if its camera label is not one of `drop` (e.g. `drop: [shake, complex]`)."""

    score: str
    min: float | None = None
    max: float | None = None
    drop: list[str] | None = None


def default_rules() -> list[FilterRule]:
    """The default rules, most telling reason first: a black clip is `brightness<..`, not `motion<..`.

    Set on synthetic clips (numbers in tests/test_scoring.py) and the usual ranges of each measure;
    run with `filters.mode=score-only` on a sample of your own data to tune them.
    """
    return [
        FilterRule("brightness", min=0.08),  # mean luma under ~20/255: black, fades, lens cap
        FilterRule("brightness", max=0.95),  # over ~242/255: blown out, a white slate
        # Still shots and slideshows: a still x264 shot with sensor noise scores ~0.0006, a title
        # scrolling across 320 px in 80 s ~0.003.
        FilterRule("motion", min=0.0012),
        # Whip pans, heavy shake, chaos: a tenth of the frame diagonal every 0.5 s, i.e. crossing
        # a 16:9 frame in under ~4.5 s.
        FilterRule("motion", max=0.1),
        FilterRule("frozen_fraction", max=0.5),  # mostly repeated frames: freeze frames, stills
        # Laplacian variance at 256 px: a sharp test pattern ~220, blurred by sigma 1 px ~40,
        # 2 px ~10; a flat colour 0.
        FilterRule("sharpness", min=20.0),
        FilterRule("aesthetic", min=4.5),  # LAION predictor, 0-10 (LAION-Aesthetics cut at 4.5, 5, 6)
    ]


@dataclass
class FilterConfig:
    """The keep/drop decision over a clip's scores: rules in order, the first failure is the reason."""

    mode: Literal["filter", "score-only"] = "filter"
    """`score-only` evaluates nothing and keeps every clip (scores are still recorded)."""
    rules: list[FilterRule] = field(default_factory=default_rules)

    def __post_init__(self):
        for i, rule in enumerate(self.rules):
            key = f"filters.rules[{i}]"
            if rule.score == "camera":
                check(
                    rule.min is None and rule.max is None and rule.drop,
                    key,
                    "camera rules take `drop: [labels]`",
                )
                unknown = [label for label in rule.drop if label not in CAMERA_LABELS]
                check(not unknown, f"{key}.drop", f"unknown {unknown}; one of {', '.join(CAMERA_LABELS)}")
                continue
            check(rule.drop is None, f"{key}.drop", "only `score: camera` rules drop labels")
            close = difflib.get_close_matches(rule.score, RULE_SCORES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            check(
                rule.score in RULE_SCORES,
                f"{key}.score",
                f"unknown score {rule.score!r}{hint}; one of {', '.join(RULE_SCORES)}",
            )
            check(rule.min is not None or rule.max is not None, key, "needs `min`, `max` or both")
            if rule.min is not None and rule.max is not None:
                check(rule.min <= rule.max, key, f"min ({rule.min:g}) is above max ({rule.max:g})")
