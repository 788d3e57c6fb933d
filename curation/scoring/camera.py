"""Camera motion labels from the motion scorer's dense flow: static, pan, tilt, zoom, shake, complex.

For each pair of consecutive samples the flow field (reference pixels per sampling step) is fitted
with a similarity transform about the picture centre, by least squares:

    u = tx + s * x - r * y
    v = ty + r * x + s * y

`tx, ty` is the global shift of the content, `s` its relative growth per step (zoom), `r` its
rotation in radians per step. What the transform leaves unexplained (`residual`: the RMS of the
misfit over the RMS of the flow) is the motion of things in the picture, not of the camera.

Content moves against the camera: when the camera pans right the picture slides left (`tx < 0`),
when it tilts up the picture slides down (`ty > 0`, image rows grow downwards), when it zooms in the
picture grows (`s > 0`). A pair is labelled by whichever of shift and zoom moves the picture more at
its corners; a clip by the label most of its pairs share, or `shake` when its pairs pan back and forth
without getting anywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from curation.scoring_config import CameraConfig

GRID_STEP = 4  # fit on every 4th pixel in each direction: the flow is smooth, the fit does not need more
INLIER_PX, INLIER_SCALE = 1.0, 3.0  # the second fit keeps points within max(1 px, 3x the median miss)


@dataclass(frozen=True)
class PairMotion:
    """The similarity transform fitted to one pair's flow."""

    tx: float
    ty: float
    zoom: float  # relative growth per step
    rotation: float  # radians per step
    residual: float  # share of the flow the transform leaves unexplained (0: all camera)
    corner_px: float  # how far the zoom and rotation move a corner of the picture, in pixels

    @property
    def shift_px(self) -> float:
        return float(np.hypot(self.tx, self.ty))


def fit_pair(flow: np.ndarray) -> PairMotion:
    """Fit `flow` ([H, W, 2], pixels) with a similarity transform about the picture centre."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h:GRID_STEP, 0:w:GRID_STEP].astype(np.float64)
    x, y = xs.ravel() - (w - 1) / 2, ys.ravel() - (h - 1) / 2
    u = flow[::GRID_STEP, ::GRID_STEP, 0].astype(np.float64).ravel()
    v = flow[::GRID_STEP, ::GRID_STEP, 1].astype(np.float64).ravel()
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    # unknowns (tx, ty, s, r): u rows then v rows
    design = np.concatenate([np.stack([ones, zeros, x, -y], 1), np.stack([zeros, ones, y, x], 1)])
    target = np.concatenate([u, v])
    params, *_ = np.linalg.lstsq(design, target, rcond=None)
    # Once more without the points the first fit explains worst: where new picture enters at an edge
    # (nothing to match, so the flow there is about zero) or something moves on its own.
    miss = np.hypot(*(target - design @ params).reshape(2, -1))
    keep = np.tile(miss <= max(INLIER_PX, INLIER_SCALE * float(np.median(miss))), 2)
    if keep.sum() >= 8:
        params, *_ = np.linalg.lstsq(design[keep], target[keep], rcond=None)
    tx, ty, s, r = params
    misfit = target - design @ params
    energy = float(np.sqrt(np.mean(target**2)))
    residual = float(np.sqrt(np.mean(misfit**2)) / energy) if energy > 1e-9 else 0.0
    corner = float(np.hypot(s, r) * np.hypot(w / 2, h / 2))
    return PairMotion(float(tx), float(ty), float(s), float(r), residual, corner)


def pair_label(motion: PairMotion, th: CameraConfig) -> str:
    """The camera motion of one pair."""
    if max(motion.shift_px, motion.corner_px) < th.static_px:
        return "static"
    if motion.residual > th.complex_residual:
        return "complex"
    if motion.corner_px > motion.shift_px and abs(motion.zoom) >= abs(motion.rotation):
        return "zoom_in" if motion.zoom > 0 else "zoom_out"
    if motion.corner_px > motion.shift_px:
        return "complex"  # a roll: no label of its own
    if abs(motion.tx) >= abs(motion.ty):
        return "pan_right" if motion.tx < 0 else "pan_left"
    return "tilt_up" if motion.ty > 0 else "tilt_down"


def clip_camera(pairs: list[PairMotion], th: CameraConfig) -> dict | None:
    """The clip's label and the numbers behind it (means over its pairs), or None without pairs."""
    if not pairs:
        return None
    labels = [pair_label(p, th) for p in pairs]
    moving = [p for p, label in zip(pairs, labels, strict=True) if label != "static"]
    mean_shift = np.mean([[p.tx, p.ty] for p in pairs], axis=0)
    mean_length = float(np.mean([p.shift_px for p in pairs]))
    back_and_forth = len(moving) >= 2 and float(np.hypot(*mean_shift)) < th.shake_ratio * mean_length
    label, count = Counter(labels).most_common(1)[0]
    if back_and_forth and any(p.shift_px >= p.corner_px for p in moving):
        label = "shake"
    elif count * 2 <= len(labels):  # no label holds a majority of the pairs
        label = "complex"
    return {
        "label": label,
        "pan_px": float(mean_shift[0]),
        "tilt_px": float(mean_shift[1]),
        "zoom": float(np.mean([p.zoom for p in pairs])),
        "rotation": float(np.mean([p.rotation for p in pairs])),
        "residual": float(np.mean([p.residual for p in pairs])),
    }


def windows(pairs: list[PairMotion], starts: list[float], th: CameraConfig) -> list[dict]:
    """The label of each `th.window_s` stretch of the clip, from the pairs that start in it (`starts`: each
    pair's first sample time, seconds from the clip start), in order; stretches without a pair are left out."""
    step = th.window_s
    groups: dict[int, list[PairMotion]] = {}
    for pair, start in zip(pairs, starts, strict=True):
        groups.setdefault(int(start // step), []).append(pair)
    return [
        {"start_s": k * step, "end_s": (k + 1) * step, "label": clip_camera(group, th)["label"]}
        for k, group in sorted(groups.items())
    ]


def camera_record(pairs: list[PairMotion], starts: list[float], th: CameraConfig) -> dict | None:
    """The clip record's `camera`: the clip's label and numbers, and its windows' labels."""
    camera = clip_camera(pairs, th)
    if camera is not None:
        camera["windows"] = windows(pairs, starts, th)
    return camera
