"""Camera motion labels (`curation/scoring/camera.py`) on clips whose camera motion is known from how they
were made: a 320x180 window moved over a still random texture with ffmpeg's `crop` (pans, tilts, shake)
or `zoompan` (zooms), and the same window held still."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from curation import config
from curation.filters import decide, rule_reasons
from curation.frames import sample_frames
from curation.scoring import MotionScorer
from curation.scoring.camera import PairMotion, clip_camera, fit_pair, pair_label, windows
from curation.scoring_config import CameraConfig, FrameSamplerConfig, MotionConfig
from curation.synthetic import Shot, VideoSpec, make_video
from jobs.job_configs import CurateJobConfig

FPS = 25
SECONDS = 3
SPEED = 4  # pixels per frame of the pans and tilts, at 320x180
TEXTURE = "color=c=gray:s={size}:r={{r}},noise=alls=100:allf=u,gblur=sigma=3,eq=contrast=4"
SAMPLER = FrameSamplerConfig()
TH = CameraConfig()


def window(size: str, crop: str) -> str:
    return TEXTURE.format(size=size) + f",crop={crop}"


CLIPS = {
    "static": window("800x500", "320:180:x=200:y=150"),
    "pan_right": window("1400x180", f"320:180:x='n*{SPEED}':y=0"),  # the window moves right
    "pan_left": window("1400x180", f"320:180:x='1000-n*{SPEED}':y=0"),
    "tilt_down": window("320x1000", f"320:180:x=0:y='n*{SPEED}'"),  # the window moves down
    "tilt_up": window("320x1000", f"320:180:x=0:y='700-n*{SPEED}'"),
    "zoom_in": TEXTURE.format(size="640x360")
    + ",zoompan=z='1+0.005*on':d=1:x='iw/2-iw/zoom/2':y='ih/2-ih/zoom/2':s=320x180:fps={r}",
    "zoom_out": TEXTURE.format(size="640x360")
    + ",zoompan=z='1.5-0.005*on':d=1:x='iw/2-iw/zoom/2':y='ih/2-ih/zoom/2':s=320x180:fps={r}",
    "shake": window("800x500", "320:180:x='240+30*sin(n*2.7)':y='160+24*sin(n*1.9+1)'"),
}
HOLD_THEN_PAN = window(
    "1400x180", f"320:180:x='if(lt(n,{FPS * SECONDS // 2}),0,(n-{FPS * SECONDS // 2})*{SPEED})':y=0"
)


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, tuple[dict, list[PairMotion]]]:
    d = tmp_path_factory.mktemp("camera")
    scorer = MotionScorer(MotionConfig())
    out = {}
    for name, graph in CLIPS.items():
        path = make_video(d / f"{name}.mp4", VideoSpec([Shot(graph, SECONDS * FPS)], 320, 180, str(FPS)))
        out[name] = scorer.measure(sample_frames(Path(path), SAMPLER))
    path = make_video(
        d / "hold_then_pan.mp4", VideoSpec([Shot(HOLD_THEN_PAN, SECONDS * FPS)], 320, 180, str(FPS))
    )
    frames = sample_frames(Path(path), SAMPLER)
    out["hold_then_pan"] = (*scorer.measure(frames), [float(frames.timestamps[a]) for a, _ in frames.pairs()])
    return out


@pytest.mark.parametrize("name", list(CLIPS))
def test_each_made_camera_motion_gets_its_label(measured, name):
    _, pairs = measured[name]
    assert len(pairs) >= 4
    camera = clip_camera(pairs, TH)
    assert camera["label"] == name, camera


def test_windows_label_each_stretch_of_a_clip_that_holds_then_pans(measured):
    _, pairs, starts = measured["hold_then_pan"]
    got = windows(pairs, starts, CameraConfig(window_s=SECONDS / 2))
    assert [w["label"] for w in got] == ["static", "pan_right"], (got, starts)
    assert [(w["start_s"], w["end_s"]) for w in got] == [(0, SECONDS / 2), (SECONDS / 2, SECONDS)]


def test_the_pan_and_tilt_numbers_are_the_window_speed_at_the_reference_size(measured):
    # SPEED px per frame at 180 px high, one sampling step apart, measured at the 128 px short side
    step_frames = FPS / SAMPLER.fps
    expected = SPEED * step_frames * MotionConfig().short_side / 180
    for name, axis, sign in (("pan_right", "pan_px", -1), ("pan_left", "pan_px", 1)):
        assert clip_camera(measured[name][1], TH)[axis] == pytest.approx(sign * expected, rel=0.1), name
    for name, axis, sign in (("tilt_down", "tilt_px", -1), ("tilt_up", "tilt_px", 1)):
        assert clip_camera(measured[name][1], TH)[axis] == pytest.approx(sign * expected, rel=0.1), name


def test_the_fit_recovers_a_constructed_similarity_flow():
    h, w = 90, 160
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = xs - (w - 1) / 2, ys - (h - 1) / 2
    tx, ty, s, r = 1.5, -0.75, 0.02, 0.01
    flow = np.stack([tx + s * x - r * y, ty + r * x + s * y], axis=-1)
    fit = fit_pair(flow)
    assert (fit.tx, fit.ty, fit.zoom, fit.rotation) == pytest.approx((tx, ty, s, r), abs=1e-4)
    assert fit.residual < 1e-4
    # the same flow plus independent motion of things in the picture: no longer one camera motion
    rng = np.random.default_rng(0)
    assert fit_pair(flow + rng.normal(0, 6, flow.shape).astype(np.float32)).residual > TH.complex_residual
    assert pair_label(fit_pair(np.zeros((h, w, 2), np.float32)), TH) == "static"


def test_a_clip_without_pairs_has_no_camera_label():
    assert clip_camera([], TH) is None


def test_a_camera_rule_drops_the_labels_it_names_and_nothing_else():
    rules = "filters.rules=[{score: camera, drop: [shake, complex]}, {score: motion, min: 0.001}]"
    cfg = config.load(CurateJobConfig, "curate", "default", [rules]).filters
    assert decide({"camera": "shake", "motion": 0.01}, cfg) == (False, "camera=shake")
    assert decide({"camera": "pan_left", "motion": 0.01}, cfg) == (True, None)
    assert decide({"camera": None, "motion": 0.0}, cfg) == (False, "motion<0.001")  # no label: passes
    assert rule_reasons(cfg.rules[0]) == ["camera=shake", "camera=complex"]


@pytest.mark.parametrize(
    "rule, key",
    [
        ("{score: camera, drop: [wobble]}", "filters.rules[0].drop"),
        ("{score: camera, min: 1}", "filters.rules[0]"),
        ("{score: motion, min: 0.1, drop: [shake]}", "filters.rules[0].drop"),
    ],
)
def test_a_bad_camera_rule_names_its_key(rule, key):
    with pytest.raises(config.ConfigError, match=rf"^{re.escape(key)}: "):
        config.load(CurateJobConfig, "curate", "default", [f"filters.rules=[{rule}]"])
