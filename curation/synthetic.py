"""Sample videos made with ffmpeg's lavfi sources, with shot boundaries known to the frame.

The demo, the tests and the benchmarks all need raw video with real cuts and no download. Each
shot is one lavfi source trimmed to an exact frame count; shots are concatenated in one filter
graph, so the boundary frames are known by construction and a detector can be checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg

from curation import ffmpeg_tools

# Sources that look different from each other, most of them moving. `{s}` is the size, `{r}` the rate.
SOURCES: dict[str, str] = {
    "testsrc2": "testsrc2=size={s}:rate={r}",
    "mandelbrot": "mandelbrot=size={s}:rate={r}",
    "bars": "smptehdbars=size={s}:rate={r},scroll=horizontal=0.004",
    "cellauto": "cellauto=size={s}:rate={r}:rule=30:random_fill_ratio=0.4:random_seed=7",
    "life": "life=size={s}:rate={r}:ratio=0.3:random_seed=7:mold=8:life_color=#ffcc33:death_color=#202080",
    # the same once its pattern has settled: its first seconds churn like a transition to a shot detector
    "life_settled": "life=size={s}:rate={r}:ratio=0.3:random_seed=7:mold=8:life_color=#ffcc33:"
    "death_color=#202080,trim=start_frame=40,setpts=PTS-STARTPTS",
    "smptebars": "smptebars=size={s}:rate={r}",
    "rgbtestsrc": "rgbtestsrc=size={s}:rate={r}",
    "gradients": "gradients=size={s}:rate={r}:speed=0.03:c0=0x10a040:c1=0xe04010",
    "noise": "color=c=0x808080:size={s}:rate={r},noise=alls=80:allf=t",
    "red": "color=c=0xc02020:size={s}:rate={r}",
    "teal": "color=c=0x20a0a0:size={s}:rate={r}",
    "still": "testsrc2=size={s}:rate=1,fps={r}",
}

# Cycled by `shot_list` so that neighbouring shots always come from different sources.
MOVING_CYCLE = ("testsrc2", "mandelbrot", "bars", "life", "gradients", "cellauto")


@dataclass(frozen=True)
class Shot:
    """One shot: a lavfi source name from SOURCES (or a raw lavfi graph) held for `frames` frames."""

    source: str
    frames: int
    hue: float = 0.0  # degrees; varies the look of a repeated source

    def graph(self, size: str, rate: str) -> str:
        base = SOURCES.get(self.source, self.source).format(s=size, r=rate)
        return f"{base},hue=h={self.hue:g}" if self.hue else base


XFADES = ("fade", "fadeblack", "fadewhite", "dissolve", "wipeleft", "slideup")
"""Gradual transitions of ffmpeg's `xfade` filter that the tests and the shot benchmark use."""


@dataclass(frozen=True)
class Join:
    """How a shot follows the one before it: a hard `cut`, or an `xfade` transition (`fade`, `dissolve`,
    `wipeleft`, ...) whose `frames` blend the end of one shot into the start of the next."""

    kind: str = "cut"
    frames: int = 0


@dataclass
class VideoSpec:
    """A synthetic video: shots at one size and rate, encoded with the given codec options, joined by
    hard cuts or (`joins`, one per shot after the first) by ffmpeg's xfade transitions."""

    shots: list[Shot]
    width: int = 320
    height: int = 240
    fps: str = "25"  # a rational string, e.g. "30000/1001"
    vcodec: str = "libx264"
    pix_fmt: str = "yuv420p"
    output_options: dict = field(default_factory=dict)
    joins: list[Join] | None = None

    def _joins(self) -> list[Join]:
        return self.joins if self.joins is not None else [Join()] * (len(self.shots) - 1)

    @property
    def transitions(self) -> list[tuple[int, int, str]]:
        """`(start, end, kind)` of every join in output frames, as built: a cut's `start == end` is the
        first frame of the next shot; an xfade's `[start, end)` are its blended frames (`gradual`): from
        its offset `a` over `d` frames, frame `a` is still all the old shot (progress 0), frames `a+1` to
        `a+d-1` blend, frame `a+d` is the new shot's."""
        out, total = [], self.shots[0].frames
        for join, shot in zip(self._joins(), self.shots[1:], strict=True):
            if join.kind == "cut":
                out.append((total, total, "cut"))
            else:
                out.append((total - join.frames + 1, total, "gradual"))
            total += shot.frames - (0 if join.kind == "cut" else join.frames)
        return out

    @property
    def boundaries(self) -> list[int]:
        """Frame index of the first frame of every shot after the first (after a transition's frames)."""
        return [end for _, end, _ in self.transitions]

    @property
    def num_frames(self) -> int:
        return sum(s.frames for s in self.shots) - sum(j.frames for j in self._joins() if j.kind != "cut")


def shot_list(durations_frames: list[int], cycle: tuple[str, ...] = MOVING_CYCLE) -> list[Shot]:
    """Shots of the given lengths, cycling through moving sources with varied hues."""
    shots = []
    for i, frames in enumerate(durations_frames):
        source = cycle[i % len(cycle)]
        hue = (i // len(cycle)) * 67.0 % 360
        shots.append(Shot(source, frames, hue))
    return shots


def make_video(path: str | Path, spec: VideoSpec, timeout_s: float = 600) -> Path:
    """Render `spec` to `path` in one ffmpeg run and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = f"{spec.width}x{spec.height}"
    parts = [
        ffmpeg.input(shot.graph(size, spec.fps), f="lavfi")
        .trim(end_frame=shot.frames)
        .setpts("PTS-STARTPTS")
        .filter("scale", spec.width, spec.height)  # some sources round odd sizes to even
        .filter("setsar", 1)
        .filter("format", spec.pix_fmt)
        for shot in spec.shots
    ]
    if spec.joins is None or all(j.kind == "cut" for j in spec.joins):
        video = ffmpeg.concat(*parts, v=1, a=0) if len(parts) > 1 else parts[0]
    else:
        video = _joined(parts, spec)
    options = {"vcodec": spec.vcodec, "pix_fmt": spec.pix_fmt, "r": spec.fps, **spec.output_options}
    ffmpeg_tools.run_stream(ffmpeg.output(video, str(path), **options), timeout_s)
    return path


def _joined(parts: list, spec: VideoSpec):
    """Shots joined one after another by a cut (concat) or an xfade whose offset is where the shots so
    far end, less its own length: the blended frames are exactly the ones `VideoSpec.transitions` names."""
    fps = _rate(spec.fps)
    num, _, den = spec.fps.partition("/")
    timebase = f"{den or 1}/{num}"  # xfade wants one timebase on both inputs; concat changes it
    parts = [part.filter("settb", timebase) for part in parts]
    video, total = parts[0], spec.shots[0].frames
    for join, part, shot in zip(spec._joins(), parts[1:], spec.shots[1:], strict=True):
        if join.kind == "cut":
            video = ffmpeg.concat(video, part, v=1, a=0).filter("settb", timebase)
            total += shot.frames
            continue
        offset = (total - join.frames) / fps
        video = ffmpeg.filter(
            [video, part], "xfade", transition=join.kind, duration=join.frames / fps, offset=offset
        )
        total += shot.frames - join.frames
    return video


def _rate(rate: str) -> float:
    num, _, den = rate.partition("/")
    return float(num) / float(den or 1)


def with_rotation(source: str | Path, path: str | Path, degrees: int) -> Path:
    """A stream copy of `source` whose display matrix says to rotate it by `degrees` (as phones write)."""
    path = Path(path)
    stream = ffmpeg.input(str(source)).output(str(path), c="copy", **{"metadata:s:v:0": f"rotate={degrees}"})
    ffmpeg_tools.run_stream(stream, 120)
    return path


def with_audio(source: str | Path, path: str | Path, frequency: int = 440) -> Path:
    """`source` with a sine-tone audio track of the same length added (video stream copied)."""
    path = Path(path)
    video = ffmpeg.input(str(source))
    tone = ffmpeg.input(f"sine=frequency={frequency}", f="lavfi")
    stream = ffmpeg.output(video.video, tone.audio, str(path), vcodec="copy", acodec="aac", shortest=None)
    ffmpeg_tools.run_stream(stream, 120)
    return path


def make_audio_only(path: str | Path, seconds: float = 2.0) -> Path:
    """An audio-only file (a sine tone): a valid media file with no video stream."""
    path = Path(path)
    tone = ffmpeg.input(f"sine=frequency=440:duration={seconds:g}", f="lavfi")
    ffmpeg_tools.run_stream(ffmpeg.output(tone, str(path)), 120)
    return path


def sample_set(directory: str | Path, fps: str = "25", width: int = 480, height: int = 270) -> list[Path]:
    """The demo's inputs: a few multi-shot videos (one with a 0.32 s flash shot, one with a 0.8 s
    dissolve between two of its shots) and one broken file."""
    directory = Path(directory)
    dissolve = [Join(), Join("dissolve", 20)]
    specs = {
        "city_walk.mp4": VideoSpec(shot_list([90, 130, 8, 110]), width, height, fps),
        "studio_takes.mp4": VideoSpec(shot_list([170, 90, 140])[::-1], width, height, fps, joins=dissolve),
        "long_take.mp4": VideoSpec([Shot("testsrc2", 300), Shot("gradients", 100)], width, height, fps),
    }
    paths = [make_video(directory / name, spec) for name, spec in specs.items()]
    broken = directory / "broken_upload.mp4"
    broken.write_bytes(paths[0].read_bytes()[:2048])
    return [*paths, broken]
