"""ffprobe an input video into the facts every later stage needs, or reject it with a reason."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from fractions import Fraction

from curation import ffmpeg_tools
from curation.errors import InputRejected
from curation.quarantine import is_transient

MAX_SANE_FPS = 240


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about the first real video stream (dimensions are as displayed)."""

    duration_s: float
    fps: float
    fps_rational: str
    num_frames: int  # from the container when it says, else duration x fps
    width: int  # after rotation
    height: int
    rotation: int  # 0, 90, 180 or 270 degrees, applied on decode
    codec: str
    pix_fmt: str
    has_audio: bool
    variable_frame_rate: bool
    bit_rate: int | None
    container: str

    def as_row(self) -> dict:
        return asdict(self)


def _rate(text: str | None) -> Fraction | None:
    try:
        rate = Fraction(text) if text else None
    except (ValueError, ZeroDivisionError):
        return None
    return rate if rate and 0 < rate <= MAX_SANE_FPS else None


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    tag = (stream.get("tags") or {}).get("rotate")
    return int(tag) % 360 if tag and tag.lstrip("-").isdigit() else 0


ISO_BMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")


def _looks_like_mp4(path: str) -> bool:
    """Whether the file starts like an MP4/MOV (a box type at bytes 4-8), whatever its name says."""
    try:
        with open(path, "rb") as f:
            return f.read(8)[4:8] in ISO_BMFF_BOXES
    except OSError:
        return False


def _classify_probe_failure(err: ffmpeg_tools.FFmpegError, path: str) -> InputRejected:
    text = err.stderr.lower()
    if "moov atom not found" in text and _looks_like_mp4(path):
        return InputRejected("truncated", "MP4 without its index (moov atom): the upload was cut off")
    if "end of file" in text:
        return InputRejected("truncated", err.detail)
    if "invalid data found" in text or "could not find codec parameters" in text:
        return InputRejected("not_a_video", err.detail)
    if "no such file" in text:
        return InputRejected("not_found", err.detail)
    return InputRejected("undecodable", err.detail)


def probe(path: str, min_duration_s: float, timeout_s: float = 60.0) -> VideoInfo:
    """Probe a local file (or URL ffmpeg reads); raises InputRejected with a specific code."""
    if "://" not in path:
        if not os.path.exists(path):
            raise InputRejected("not_found", path)
        if os.path.getsize(path) == 0:
            raise InputRejected("empty_file", "0 bytes")
    try:
        meta = ffmpeg_tools.probe_json(path, timeout_s)
    except ffmpeg_tools.FFmpegError as err:
        if is_transient(err):  # a timeout or a killed ffprobe says nothing about the file: retried
            raise
        raise _classify_probe_failure(err, path) from None
    streams = meta.get("streams", [])
    fmt = meta.get("format", {})
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({s.get("codec_type", "?") for s in streams}) or ["none"]
        raise InputRejected("no_video_stream", f"streams: {', '.join(kinds)}")
    v = videos[0]
    rate = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    declared_frames = int(v["nb_frames"]) if str(v.get("nb_frames", "")).isdigit() else None
    duration = float(v.get("duration") or fmt.get("duration") or 0.0)
    if (
        declared_frames == 1
        or (rate is None and duration == 0.0)
        or fmt.get("format_name", "").endswith("_pipe")
    ):
        raise InputRejected("single_frame", f"{v.get('codec_name')} still image")
    if rate is None:
        raise InputRejected("undecodable", "no usable frame rate")
    if duration <= 0 and declared_frames:
        duration = declared_frames / float(rate)
    num_frames = declared_frames or int(round(duration * float(rate)))
    if num_frames <= 1:
        raise InputRejected("single_frame", f"{num_frames} frame(s)")
    if duration < min_duration_s:
        raise InputRejected("too_short", f"{duration:.2f}s < {min_duration_s:g}s")
    rotation = _rotation(v)
    width, height = int(v.get("width", 0)), int(v.get("height", 0))
    if width <= 0 or height <= 0:
        raise InputRejected("undecodable", "stream has no frame size")
    if rotation in (90, 270):
        width, height = height, width
    r_rate = _rate(v.get("r_frame_rate"))
    return VideoInfo(
        duration_s=duration,
        fps=float(rate),
        fps_rational=f"{rate.numerator}/{rate.denominator}",
        num_frames=num_frames,
        width=width,
        height=height,
        rotation=rotation,
        codec=v.get("codec_name", "unknown"),
        pix_fmt=v.get("pix_fmt", "unknown"),
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
        variable_frame_rate=bool(r_rate and abs(float(r_rate) - float(rate)) > 0.01),
        bit_rate=int(fmt["bit_rate"]) if str(fmt.get("bit_rate", "")).isdigit() else None,
        container=fmt.get("format_name", "unknown"),
    )
