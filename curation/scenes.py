"""Shot boundary detection: ffmpeg decodes and downscales, a detector finds the transitions.

ffmpeg does the expensive part (decode, scale, colour conversion) in C and hands small BGR frames
through a pipe, one frame at a time, so memory stays flat however long the video is. The detector is
PySceneDetect (`adaptive`, `content`: hard cuts), TransNetV2 (`transnetv2`: hard cuts and gradual
transitions as spans, `curation/transnet.py`), or PySceneDetect's cuts with TransNetV2's spans
(`hybrid`); all of them read the same decoded frames. Shots are the frames between transitions.
Frame numbers are on the video's constant-frame-rate timeline (VFR input is resampled to its
average rate with the fps filter), the same timeline the transcoder cuts on.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import ffmpeg
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector
from scenedetect.common import FrameTimecode

from curation import ffmpeg_tools
from curation.curate_config import SceneConfig
from curation.errors import InputRejected
from curation.probe import VideoInfo
from curation.transnet import HybridMerger, Transition, TransNetTransitions

GREY_SAMPLES_PER_S = 2
MAX_GREY_SAMPLES = 600


@dataclass(frozen=True)
class SceneResult:
    """Shots as `[start, end)` frame ranges, and the transitions between them.

    The shots and the transitions together cover every decoded frame: a hard cut takes no frame,
    a gradual transition's frames belong to no shot.
    """

    shots: list[tuple[int, int]]
    decoded_frames: int
    grey_samples: np.ndarray | None = None  # [N, h, w] uint8, about 2 per second, for bar detection
    transitions: list[Transition] = field(default_factory=list)

    @property
    def cuts(self) -> list[int]:
        return [start for start, _ in self.shots[1:]]


def detection_size(info: VideoInfo, width: int) -> tuple[int, int]:
    """Downscaled (width, height) with the display aspect ratio and even sides."""
    width = min(width, info.width) // 2 * 2 or 2
    height = max(2, int(round(width * info.height / info.width / 2)) * 2)
    return width, height


def make_detector(cfg: SceneConfig):
    """PySceneDetect's detector for `cfg.detector` (hybrid uses the adaptive one)."""
    if cfg.detector == "content":
        return ContentDetector(threshold=cfg.content_threshold, min_scene_len=cfg.min_shot_frames)
    return AdaptiveDetector(
        adaptive_threshold=cfg.adaptive_threshold,
        min_scene_len=cfg.min_shot_frames,
        window_width=cfg.adaptive_window,
        min_content_val=cfg.min_content_val,
    )


def decode_argv(path: str, info: VideoInfo, size: tuple[int, int], fast: bool) -> list[str]:
    decoder_opts = {"skip_loop_filter": "all", "flags2": "fast"} if fast else {}
    stream = ffmpeg_tools.input_stream(path, **decoder_opts).video
    if info.variable_frame_rate:
        stream = stream.filter("fps", info.fps_rational)
    stream = stream.filter("scale", size[0], size[1])
    out_opts = {"format": "rawvideo", "pix_fmt": "bgr24"}
    if not info.variable_frame_rate:
        out_opts["fps_mode"] = "passthrough"  # exactly one output frame per decoded frame
    return ffmpeg_tools.compile_stream(ffmpeg.output(stream, "pipe:", **out_opts))


class _ShotStream:
    """Turns transitions, as they arrive in order, into finished shots handed to `on_shot`.

    A shot is final once the transition after it is known, so its clips can be encoded while
    detection goes on through the rest of the video.
    """

    def __init__(self, on_shot: Callable[[int, int], None] | None):
        self.on_shot = on_shot
        self.shots: list[tuple[int, int]] = []
        self.transitions: list[Transition] = []
        self.shot_start = 0  # where the next shot starts: the end of the last transition

    def add(self, transitions: list[Transition]) -> None:
        for t in transitions:
            if t.kind == "cut" and t.start <= self.shot_start:
                continue  # no frame between it and the previous boundary: not a boundary of its own
            self._shot(t.start)
            self.transitions.append(t)
            self.shot_start = max(self.shot_start, t.end)

    def end(self, frame: int) -> list[tuple[int, int]]:
        self._shot(frame)
        return self.shots

    def _shot(self, end: int) -> None:
        if end > self.shot_start:
            self.shots.append((self.shot_start, end))
            if self.on_shot:
                self.on_shot(self.shot_start, end)


class _Boundaries:
    """The configured detector, fed one decoded frame at a time, giving transitions in order as they
    become final."""

    def __init__(self, cfg: SceneConfig, fps: float):
        self.fps = fps
        self.classic = make_detector(cfg) if cfg.detector != "transnetv2" else None
        self.model = TransNetTransitions(cfg) if cfg.detector in ("transnetv2", "hybrid") else None
        self.hybrid = HybridMerger() if cfg.detector == "hybrid" else None
        self.lag = cfg.adaptive_window  # the adaptive detector reports a cut this many frames late

    def push(self, n: int, frame: np.ndarray) -> list[Transition]:
        cuts = []
        if self.classic is not None:
            cuts = [tc.frame_num for tc in self.classic.process_frame(FrameTimecode(n, self.fps), frame)]
        model = self.model.push(frame) if self.model is not None else []
        model_frontier = self.model.frontier if self.model is not None else n
        return self._combine(cuts, model, model_frontier, n + 1 - self.lag)

    def finish(self, n: int) -> list[Transition]:
        cuts = []
        if self.classic is not None:
            cuts = [tc.frame_num for tc in self.classic.post_process(FrameTimecode(n - 1, self.fps))]
        model = self.model.finish() if self.model is not None else []
        return [t for t in self._combine(cuts, model, float("inf"), float("inf")) if t.start < n]

    def _combine(
        self, cuts: list[int], model: list[Transition], model_frontier: float, classic_frontier: float
    ) -> list[Transition]:
        """The detector's own transitions, or in hybrid mode those the merger can release up to the
        frontiers of the model and the classic detector."""
        if self.hybrid is not None:
            self.hybrid.add(cuts, model)
            return self.hybrid.release(model_frontier, classic_frontier)
        return model if self.model is not None else [Transition.cut(c) for c in cuts]


def detect_shots(
    path: str, info: VideoInfo, cfg: SceneConfig, on_shot: Callable[[int, int], None] | None = None
) -> SceneResult:
    """Decode `path` once at low resolution and return its shots; InputRejected if it won't decode.

    `on_shot(start, end)` is called for every shot as soon as it is final, in order. For a video
    rejected at the end (truncated), shots already handed out must be discarded by the caller.
    """
    size = detection_size(info, cfg.width)
    frame_bytes = size[0] * size[1] * 3
    boundaries = _Boundaries(cfg, info.fps)
    shots = _ShotStream(on_shot)
    n = 0
    grey: list[np.ndarray] = []
    grey_every = max(1, round(info.fps / GREY_SAMPLES_PER_S))
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            decode_argv(path, info, size, cfg.fast_decode),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            bufsize=frame_bytes * 4,
        )
        watchdog = threading.Timer(cfg.timeout_s, lambda: (timed_out.set(), proc.kill()))
        watchdog.start()
        try:
            buf = bytearray(frame_bytes)
            view = memoryview(buf)
            while proc.stdout.readinto(view) == frame_bytes:
                frame = np.frombuffer(buf, np.uint8).reshape(size[1], size[0], 3)
                shots.add(boundaries.push(n, frame))
                if n % grey_every == 0 and len(grey) < MAX_GREY_SAMPLES:
                    grey.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
                n += 1
            if n and not timed_out.is_set():
                shots.add(boundaries.finish(n))
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        stderr.seek(0)
        err_text = stderr.read().decode(errors="replace").strip()
    last_line = err_text.splitlines()[-1] if err_text else ""
    if timed_out.is_set():  # transient: a slow moment of the machine, or a video a retry will not help
        raise ffmpeg_tools.FFmpegError(
            f"scene detection timed out after {cfg.timeout_s:g}s", err_text[-4000:], timed_out=True
        )
    if proc.returncode < 0 or "no space left on device" in err_text.lower():  # killed, or a full disk
        raise ffmpeg_tools.FFmpegError(
            f"scene decode ended by signal {-proc.returncode}" if proc.returncode < 0 else "disk full",
            err_text[-4000:],
            returncode=proc.returncode,
        )
    if n == 0:
        raise InputRejected("undecodable", last_line or "no frame could be decoded")
    if n < cfg.min_decoded_fraction * info.num_frames:
        raise InputRejected("truncated", f"decoded {n} of {info.num_frames} frames; {last_line}".rstrip("; "))
    return SceneResult(
        shots=shots.end(n), decoded_frames=n, grey_samples=np.stack(grey), transitions=shots.transitions
    )
