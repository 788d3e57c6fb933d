"""Clip scoring and filtering: frame sampler, motion, quality, aesthetics, filter decisions.

Every video is made here with ffmpeg lavfi graphs (small, 320x180 unless the test is about
resolution) and every model is a tiny random-weight one saved to a temp dir and loaded back the
way a user's would be; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import ffmpeg
import numpy as np
import pytest

from curation import ffmpeg_tools
from curation.config import ConfigError, from_dict
from curation.errors import InputRejected
from curation.filters import ClipFilter, FilterStats, check_rule, decide
from curation.frames import SampledFrames, sample_frames, sample_size, sample_stride
from curation.scoring import MotionScorer, QualityScorer, null_scores
from curation.scoring.tiny_models import TINY_CLIP, build_tiny_aesthetic_models
from curation.scoring_config import (
    SCORE_NAMES,
    AestheticConfig,
    FilterConfig,
    FilterRule,
    FrameSamplerConfig,
    MotionConfig,
    QualityConfig,
    ScoringConfig,
)
from curation.synthetic import Shot, VideoSpec, make_video

FPS = 25
SAMPLER = FrameSamplerConfig()
# A static random texture, wide enough to slide a 320 px window across it at 8 px/frame.
TEXTURE = "color=c=gray:s=1400x180:r={r},noise=alls=100:allf=u,gblur=sigma=3,eq=contrast=4"
STILL = "testsrc2=s={s}:r={r},trim=end_frame=1,loop=loop=-1:size=1,setpts=N/{r}/TB"


def render(path: Path, graph: str, frames: int, width: int = 320, height: int = 180) -> Path:
    """One lavfi graph (`{s}`/`{r}` filled in) encoded with x264."""
    return make_video(path, VideoSpec([Shot(graph, frames)], width, height, str(FPS)))


def sample(path: Path) -> SampledFrames:
    return sample_frames(path, SAMPLER)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """The synthetic clips most tests share, rendered once."""
    d = tmp_path_factory.mktemp("scoring-videos")
    graphs = {
        # A still picture held for 4 s; mild temporal noise so x264 has something to encode.
        "still": (STILL + ",noise=alls=8:allf=t", 4 * FPS),
        "testsrc2": ("testsrc2=s={s}:r={r}", 2 * FPS),
        "dark": ("testsrc2=s={s}:r={r},lutrgb=r=val*0.05:g=val*0.05:b=val*0.05", 2 * FPS),
        "letterbox": ("testsrc2=s=240x136:r={r},pad=320:180:40:22", 2 * FPS),
        "pillarbox": ("mandelbrot=s=240x180:r={r},pad=320:180:40:0", 2 * FPS),
    }
    for speed in (1, 2, 4, 8):
        graphs[f"pan{speed}"] = (TEXTURE + f",crop=320:180:x='n*{speed}':y=0", 2 * FPS)
    for sigma in (1, 2, 4):
        graphs[f"blur{sigma}"] = (f"testsrc2=s={{s}}:r={{r}},gblur=sigma={sigma}", 2 * FPS)
    paths = {name: render(d / f"{name}.mp4", graph, frames) for name, (graph, frames) in graphs.items()}
    paths["blur0"] = paths["testsrc2"]
    # 2.39:1 picture letterboxed in 640x360: the content box must come back in source pixels.
    paths["letterbox360"] = render(
        d / "letterbox360.mp4", "testsrc2=s=640x268:r={r},pad=640:360:0:46", 2 * FPS, 640, 360
    )
    return paths


@pytest.fixture(scope="module")
def frames(videos) -> dict[str, SampledFrames]:
    return {name: sample(path) for name, path in videos.items()}


@pytest.fixture(scope="module")
def motion() -> MotionScorer:
    return MotionScorer(MotionConfig())


@pytest.fixture(scope="module")
def quality() -> QualityScorer:
    return QualityScorer(QualityConfig())


# --- frame sampler ---------------------------------------------------------------------------


def test_sampler_decodes_once_at_fixed_short_side(videos, frames):
    f = frames["still"]
    assert f.rgb.dtype == np.uint8 and f.rgb.shape == (8, 256, 456, 3)  # 4 s at 2 fps, 16:9
    assert f.source_size == (320, 180) and f.duration_s == pytest.approx(4.0)
    np.testing.assert_allclose(f.timestamps, np.arange(8) / 2)
    assert f.pairs() == [(i, i + 1) for i in range(7)]
    # 10/50/90 % of 4 s are 0.4, 2.0 and 3.6 s: the nearest samples are 0.5, 2.0 and 3.5 s.
    assert f.nearest([0.1, 0.5, 0.9]) == [1, 4, 7]
    assert f.at_fractions([0.1, 0.5, 0.9]).shape == (3, 256, 456, 3)
    # Bytes in (as the pipeline holds clips) give the same samples as the file.
    from_bytes = sample_frames(videos["still"].read_bytes(), SAMPLER, duration_s=4.0, source_size=(320, 180))
    np.testing.assert_array_equal(from_bytes.rgb, f.rgb)


def test_sampler_keeps_even_pairs_of_long_clips(videos):
    cfg = FrameSamplerConfig(fps=4, max_frames=6)
    f = sample_frames(videos["still"], cfg)  # 16 samples at 4 fps, thinned to pairs
    assert 2 <= f.num_frames <= 6 and f.num_frames % 2 == 0
    assert len(f.pairs()) == f.num_frames // 2  # only samples one step apart form pairs
    for a, b in f.pairs():
        assert f.timestamps[b] - f.timestamps[a] == pytest.approx(0.25)
    assert sample_stride(16, 64) == 1
    assert sample_stride(100, 10) == 20  # 5 pairs


def test_sample_size_keeps_aspect_with_even_sides():
    assert sample_size((1920, 1080), 256) == (456, 256)
    assert sample_size((1080, 1920), 256) == (256, 456)
    assert sample_size((320, 240), 256) == (342, 256)


def test_undecodable_clip_is_an_input_error(tmp_path, videos):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(videos["still"].read_bytes()[:3000])
    with pytest.raises(InputRejected):
        sample_frames(broken, SAMPLER, duration_s=4.0, source_size=(320, 180))


# --- motion ----------------------------------------------------------------------------------


def test_still_shot_has_near_zero_motion_and_is_dropped(frames, motion):
    scores = motion.score(frames["still"])
    assert scores["motion"] < 0.0008  # x264 + noise: sub-pixel flow only
    assert scores["moving_fraction"] < 0.2
    assert decide(scores, FilterConfig(rules=[FilterRule("motion", min=0.0012)])) == (False, "motion<0.0012")
    keep, reason = decide({**scores, "brightness": 0.5}, FilterConfig())  # default rules
    assert not keep and reason == "motion<0.0012"


def test_motion_grows_strictly_with_speed(frames, motion):
    scores = [motion.score(frames[f"pan{speed}"]) for speed in (1, 2, 4, 8)]
    values = [s["motion"] for s in scores]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    # 1 px/frame at 25 fps is 12.5 px per 0.5 s step at 320x180, 8.9 px at the 128 px reference.
    assert scores[0]["motion_px"] == pytest.approx(12.5 * 128 / 180, rel=0.1)
    assert all(s["moving_fraction"] > 0.9 for s in scores)


def test_motion_is_resolution_independent(tmp_path):
    """The same clip encoded at 720p and at 360p agrees within 10 % on motion."""
    results = {}
    for name, graph in {
        "testsrc2": "testsrc2=s=1280x720:r=25",
        "pan": "smptehdbars=s=1280x720:r=25,scroll=horizontal=0.004",
    }.items():
        src = ffmpeg.input(graph, f="lavfi").trim(end_frame=2 * FPS).filter("format", "yuv420p")
        split = src.filter_multi_output("split")
        encode = {"vcodec": "libx264", "preset": "veryfast", "crf": 23}
        hi, lo = tmp_path / f"{name}720.mp4", tmp_path / f"{name}360.mp4"
        outputs = [
            ffmpeg.output(split[0], str(hi), **encode),
            ffmpeg.output(split[1].filter("scale", 640, 360), str(lo), **encode),
        ]
        ffmpeg_tools.run_stream(ffmpeg.merge_outputs(*outputs), 120)
        scorer = MotionScorer(MotionConfig())
        results[name] = [scorer.score(sample(p))["motion"] for p in (hi, lo)]
    for name, (hi, lo) in results.items():
        assert hi > 0.005, name
        assert abs(hi - lo) / max(hi, lo) < 0.10, (name, hi, lo)


def test_motion_is_null_when_off_or_without_pairs(frames):
    assert MotionScorer(MotionConfig(enabled=False)).score(frames["still"]) == dict.fromkeys(
        ("motion", "motion_px", "moving_fraction")
    )
    one = frames["still"]
    single = SampledFrames(one.rgb[:1], one.timestamps[:1], one.step_s, one.source_size, one.duration_s)
    assert MotionScorer(MotionConfig()).score(single)["motion"] is None


# --- quality ---------------------------------------------------------------------------------


def test_sharpness_falls_with_blur(frames, quality):
    values = [quality.score(frames[f"blur{sigma}"])["sharpness"] for sigma in (0, 1, 2, 4)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values
    keep, reason = decide({"sharpness": values[0]}, FilterConfig())
    assert keep
    assert decide({"sharpness": values[3]}, FilterConfig()) == (False, "sharpness<20")


def test_near_black_clip_is_dropped_as_too_dark(frames, quality, motion):
    scores = {**quality.score(frames["dark"]), **motion.score(frames["dark"])}
    assert scores["brightness"] < 0.05
    assert decide(scores, FilterConfig()) == (False, "brightness<0.08")
    bright = quality.score(frames["testsrc2"])
    assert 0.3 < bright["brightness"] < 0.7 and bright["contrast"] > 0.1 and bright["colorfulness"] > 50


def test_still_clip_is_frozen_and_moving_clip_is_not(frames, quality):
    assert quality.score(frames["still"])["frozen_fraction"] == 1.0
    assert quality.score(frames["pan1"])["frozen_fraction"] == 0.0


@pytest.mark.parametrize(
    ("name", "box"),
    [
        ("letterbox", (40, 22, 240, 136)),
        ("pillarbox", (40, 0, 240, 180)),
        ("letterbox360", (0, 46, 640, 268)),
        ("testsrc2", (0, 0, 320, 180)),
        ("dark", (0, 0, 320, 180)),  # dark all over is not a letterbox
    ],
)
def test_bars_are_found_in_source_pixels(frames, quality, name, box):
    scores = quality.score(frames[name])
    got = tuple(scores[k] for k in ("content_x", "content_y", "content_w", "content_h"))
    assert np.allclose(got, box, atol=2), got


def test_letterbox_bars_do_not_darken_the_picture(frames, quality):
    boxed = quality.score(frames["letterbox"])["brightness"]
    full = quality.score(frames["testsrc2"])["brightness"]
    assert boxed == pytest.approx(full, abs=0.03)


# --- filter decisions ------------------------------------------------------------------------


def test_drop_reason_format_and_order():
    cfg = FilterConfig(
        rules=[
            FilterRule("brightness", min=0.1, max=0.95),
            FilterRule("motion", min=0.0012),
            FilterRule("aesthetic", min=4.5),
        ]
    )
    assert decide({"brightness": 0.99, "motion": 0.0}, cfg) == (False, "brightness>0.95")
    assert decide({"brightness": 0.5, "motion": 0.0001}, cfg) == (False, "motion<0.0012")
    assert decide({"brightness": 0.5, "motion": 0.01, "aesthetic": 4.0}, cfg) == (False, "aesthetic<4.5")
    assert decide({"brightness": 0.5, "motion": 0.01, "aesthetic": 5.0}, cfg) == (True, None)
    assert check_rule(FilterRule("motion", max=1e-5), 1.0) == "motion>1e-05"


def test_null_score_never_fails_a_rule():
    cfg = FilterConfig()
    assert decide(null_scores(), cfg) == (True, None)
    assert decide({"motion": None, "brightness": 0.5, "aesthetic": None}, cfg) == (True, None)
    assert decide({}, cfg) == (True, None)


def test_score_only_drops_nothing_and_records_everything(frames, motion, quality):
    score_only = FilterConfig(mode="score-only")
    filtering = ClipFilter(FilterConfig())
    rules = FilterConfig().rules
    names = [f"{r.score}<{r.min:g}" for r in rules if r.min is not None]
    names += [f"{r.score}>{r.max:g}" for r in rules if r.max is not None]
    for name, f in frames.items():
        scores = {**motion.score(f), **quality.score(f)}
        model_scores = ("aesthetic", "text_area", "text_boxes")  # their own stages (actor pools)
        assert all(scores[k] is not None for k in SCORE_NAMES if k not in model_scores), name
        json.dumps(scores, allow_nan=False)  # JSON-ready: finite floats or null
        assert decide(scores, score_only) == (True, None)
        keep, reason = filtering(scores)
        assert keep or reason in names, reason  # every drop reason names its rule
    assert filtering.stats.seen == len(frames)
    assert filtering.stats.kept + sum(filtering.stats.dropped.values()) == len(frames)
    assert filtering.stats.dropped["motion<0.0012"] >= 1  # the still clip


def test_filter_stats_merge():
    a, b = FilterStats(), FilterStats()
    a.add(True, None)
    a.add(False, "motion<0.0012")
    b.add(False, "motion<0.0012")
    b.add(False, "brightness<0.08")
    assert a.merge(b).as_dict() == {
        "seen": 4,
        "kept": 1,
        "dropped": {"motion<0.0012": 2, "brightness<0.08": 1},
    }


# --- configs ---------------------------------------------------------------------------------


def test_configs_load_from_dicts():
    cfg = from_dict(
        FilterConfig,
        {
            "mode": "score-only",
            "rules": [{"score": "motion", "min": 0.001}, {"score": "sharpness", "min": 5}],
        },
        prefix="filters.",
    )
    assert cfg.mode == "score-only"
    assert cfg.rules == [FilterRule("motion", min=0.001), FilterRule("sharpness", min=5.0)]
    scoring = from_dict(
        ScoringConfig, {"frames": {"fps": 4}, "aesthetic": {"reduce": "min"}}, prefix="scoring."
    )
    assert scoring.frames.fps == 4.0 and scoring.aesthetic.reduce == "min"
    assert [r.score for r in FilterConfig().rules] == [
        "brightness", "brightness", "motion", "motion", "frozen_fraction", "sharpness", "aesthetic",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "data", "key"),
    [
        (FilterConfig, {"rules": [{"score": "motoin", "min": 1}]}, "filters.rules[0].score"),
        (FilterConfig, {"rules": [{"score": "motion"}]}, "filters.rules[0]"),
        (FilterConfig, {"rules": [{"score": "motion", "min": 2, "max": 1}]}, "filters.rules[0]"),
        (FilterConfig, {"rules": [{"score": "motion", "mn": 2}]}, "filters.rules[0].mn"),
        (FilterConfig, {"mode": "drop-all"}, "filters.mode"),
        (ScoringConfig, {"aesthetic": {"reduce": "max"}}, "scoring.aesthetic.reduce"),
        (ScoringConfig, {"frames": {"fps": 0}}, "scoring.frames.fps"),
        (ScoringConfig, {"motion": {"short_side": 8}}, "scoring.motion.short_side"),
    ],
)
def test_bad_config_names_its_key(cls, data, key):
    prefix = "filters." if cls is FilterConfig else "scoring."
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        from_dict(cls, data, prefix=prefix)


# --- aesthetics ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """A random tiny open_clip ViT (custom config) and a random LAION-shaped head, saved as files."""
    return build_tiny_aesthetic_models(tmp_path_factory.mktemp("tiny-models"))


def tiny_config(models: dict[str, str], **overrides) -> AestheticConfig:
    return AestheticConfig(**{**models, "device": "cpu", **overrides})


def test_aesthetic_head_state_dict_matches_laion_file_layout():
    from curation.scoring.aesthetic import AestheticHead

    keys = list(AestheticHead(768).state_dict())
    assert keys == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]


def test_aesthetic_scores_through_the_real_loading_path(tiny_models, frames):
    from curation.scoring.aesthetic import AestheticScorer

    scorer = AestheticScorer(tiny_config(tiny_models))
    clips = [frames["testsrc2"], frames["dark"], frames["letterbox"]]
    results = scorer.score_batch(clips)
    values = [scores["aesthetic"] for scores, _ in results]
    assert all(math.isfinite(v) and 0 <= v <= 10 for v in values), values
    for _, embedding in results:
        assert embedding.dtype == np.float16 and embedding.shape == (3, 768)
        np.testing.assert_allclose(np.linalg.norm(embedding.astype(np.float32), axis=1), 1, atol=1e-2)
    # Stable: the same clip scores the same alone, in a batch, and from a second loaded scorer.
    again, _ = AestheticScorer(tiny_config(tiny_models, batch_size=1)).score(frames["testsrc2"])
    assert again["aesthetic"] == pytest.approx(values[0], abs=1e-4)
    # A threshold between two clips' scores drops exactly the lower one, naming the rule.
    low, high = sorted(values[:2])
    assert high - low > 1e-3
    cfg = FilterConfig(rules=[FilterRule("aesthetic", min=(low + high) / 2)])
    decisions = [decide(scores, cfg) for scores, _ in results[:2]]
    assert sorted(keep for keep, _ in decisions) == [False, True]
    reason = next(reason for keep, reason in decisions if not keep)
    assert reason == f"aesthetic<{(low + high) / 2:g}"
    lowest = values.index(low)
    assert decisions[lowest][0] is False


def test_aesthetic_reduce_takes_the_mean_or_the_lowest_frame_score(tiny_models, frames):
    """Three different pictures at the scored positions (10/50/90 % of the clip): each is scored alone
    here, through the loaded CLIP and head, and the clip's score is their numpy mean, or their min."""
    import torch
    from PIL import Image

    from curation.scoring.aesthetic import AestheticScorer

    pictures = np.stack([frames[name].rgb[0] for name in ("testsrc2", "dark", "pan4")])
    clip = SampledFrames(pictures, np.array([0.1, 0.5, 0.9]), 0.4, (320, 180), 1.0)
    scorer = AestheticScorer(tiny_config(tiny_models))
    with torch.inference_mode():
        per_frame = np.array(
            [
                float(
                    scorer.head(
                        torch.nn.functional.normalize(
                            scorer.model.encode_image(scorer.preprocess(Image.fromarray(p))[None]), dim=-1
                        )
                    )[0]
                )
                for p in pictures
            ]
        )
    assert np.ptp(per_frame) > 1e-3, per_frame  # the frames score differently, so min and mean differ
    mean = scorer.score(clip)[0]["aesthetic"]
    low = AestheticScorer(tiny_config(tiny_models, reduce="min")).score(clip)[0]["aesthetic"]
    assert mean == pytest.approx(per_frame.mean(), abs=1e-4)
    assert low == pytest.approx(per_frame.min(), abs=1e-4)
    assert low < mean


def test_aesthetic_loads_an_open_clip_local_dir(tiny_models, frames, tmp_path):
    """`local-dir:` (open_clip_config.json + weights in one folder) loads through the same path."""
    from curation.scoring.aesthetic import AestheticScorer

    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(Path(tiny_models["clip_pretrained"]).read_bytes())
    cfg = tiny_config(tiny_models, clip_model=f"local-dir:{tmp_path}", clip_model_config=None)
    scores, _ = AestheticScorer(cfg).score(frames["testsrc2"])
    reference, _ = AestheticScorer(tiny_config(tiny_models)).score(frames["testsrc2"])
    assert scores["aesthetic"] == pytest.approx(reference["aesthetic"], abs=1e-4)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"head_weights": None}, "scoring.aesthetic.head_weights"),
        ({"head_weights": "/nonexistent/sac+logos+ava1-l14-linearMSE.pth"}, "scoring.aesthetic.head_weights"),
        ({"clip_pretrained": "/nonexistent/clip.pt"}, "scoring.aesthetic.clip_pretrained"),
        ({"clip_model": "no-such-model", "clip_model_config": None}, "scoring.aesthetic.clip_model"),
        ({"clip_model_config": "/nonexistent/model.json"}, "scoring.aesthetic.clip_model_config"),
    ],
)
def test_missing_model_is_an_error_naming_the_key(tiny_models, overrides, key):
    from curation.scoring.aesthetic import AestheticScorer, MissingModelError

    with pytest.raises(MissingModelError, match=key.replace(".", r"\.")) as info:
        AestheticScorer(tiny_config(tiny_models, **overrides))
    assert info.value.key == key


def test_head_that_does_not_fit_the_clip_model_names_the_key(tiny_models, tmp_path):
    import torch

    from curation.scoring.aesthetic import AestheticHead, AestheticScorer, MissingModelError

    head = tmp_path / "head512.pth"
    torch.save(AestheticHead(512).state_dict(), head)
    with pytest.raises(MissingModelError, match="head_weights"):
        AestheticScorer(tiny_config(tiny_models, head_weights=str(head)))


def test_aesthetic_off_loads_nothing_and_scores_null(frames):
    from curation.scoring.aesthetic import AestheticScorer

    scorer = AestheticScorer(AestheticConfig(enabled=False))  # no weights anywhere: must not load
    assert scorer.score(frames["testsrc2"]) == ({"aesthetic": None}, None)
