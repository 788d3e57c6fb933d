"""Cut kept clips out of a source and encode them (H.264, yuv420p, even sides), plus a thumbnail each.

One ffmpeg process cuts a group of consecutive clips: it seeks once to the group's first frame,
decodes the source once, and `split`s the frames into one trimmed branch (and encoder) per clip
and one per thumbnail. Cutting clip by clip would decode the GOP before every clip again and
start a process per clip.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import ffmpeg

from curation import ffmpeg_tools
from curation.clips import ClipSpan
from curation.curate_config import TranscodeConfig
from curation.probe import VideoInfo

SEEK_MARGIN_FRAMES = 0.25  # seek a quarter frame early so rounding never drops the first frame


@dataclass(frozen=True)
class EncodedClip:
    """A clip as written: the mp4 and jpg bytes and the facts the record needs."""

    span: ClipSpan
    mp4: bytes
    jpg: bytes
    width: int
    height: int
    fps: float
    num_frames: int
    codec: str = "h264"

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def output_size(info: VideoInfo, max_short_side: int | None) -> tuple[int, int]:
    """Output (width, height): source size, downscaled to `max_short_side` if set, sides made even."""
    w, h = info.width, info.height
    scale = 1.0
    if max_short_side and min(w, h) > max_short_side:
        scale = max_short_side / min(w, h)
    return even(w * scale) if scale != 1.0 else w // 2 * 2, even(h * scale) if scale != 1.0 else h // 2 * 2


def thumbnail_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    w, h = size
    scale = min(1.0, short_side / min(w, h))
    return even(w * scale), even(h * scale)


def transcode_group(
    path: str, info: VideoInfo, spans: list[ClipSpan], cfg: TranscodeConfig
) -> list[EncodedClip]:
    """Encode every span in `spans` (kept clips of one source, in order) in one ffmpeg run."""
    first = spans[0].start_frame
    seek = max(0.0, (first - SEEK_MARGIN_FRAMES) / info.fps)
    source = ffmpeg.input(path, ss=f"{seek:.6f}") if first else ffmpeg.input(path)
    video = source.video
    if info.variable_frame_rate:
        video = video.filter("fps", info.fps_rational)
    branches = video.filter_multi_output("split", 2 * len(spans))
    audio = None
    if cfg.keep_audio and info.has_audio:
        audio = source.audio.filter_multi_output("asplit", len(spans))
    size = output_size(info, cfg.max_short_side)
    thumb = thumbnail_size(size, cfg.thumbnail_short_side)
    out_fps = cfg.fps or info.fps
    encoder = {"vcodec": "libx264", "preset": cfg.preset, "crf": cfg.crf, "pix_fmt": "yuv420p"}
    encoder |= {"movflags": "+faststart", "threads": cfg.threads}

    with tempfile.TemporaryDirectory(prefix="reelmill-cut-") as tmp:
        outputs = []
        for k, span in enumerate(spans):
            a, b = span.start_frame - first, span.end_frame - first
            clip = branches[2 * k].trim(start_frame=a, end_frame=b).setpts("PTS-STARTPTS")
            if cfg.fps:
                # the fps filter pads with repeats up to the end of the *source*; cap it to the span
                clip = clip.filter("fps", cfg.fps).trim(duration=span.num_frames / info.fps)
            clip = clip.filter("scale", size[0], size[1]).filter("setsar", 1)
            streams = [clip]
            options = dict(encoder)
            if audio is not None:
                t0, t1 = span.start_frame / info.fps, span.end_frame / info.fps
                streams.append(
                    audio[k].filter("atrim", start=t0 - seek, end=t1 - seek).filter("asetpts", "PTS-STARTPTS")
                )
                options["acodec"] = "aac"
            else:
                options["an"] = None
            outputs.append(ffmpeg.output(*streams, os.path.join(tmp, f"{k}.mp4"), **options))
            mid = a + span.num_frames // 2
            still = branches[2 * k + 1].trim(start_frame=mid, end_frame=mid + 1).filter("scale", *thumb)
            outputs.append(ffmpeg.output(still, os.path.join(tmp, f"{k}.jpg"), vframes=1, **{"q:v": 3}))
        ffmpeg_tools.run_stream(ffmpeg.merge_outputs(*outputs), cfg.timeout_s)
        results = []
        for k, span in enumerate(spans):
            mp4_path = os.path.join(tmp, f"{k}.mp4")
            frames = _frame_count(mp4_path)
            with open(mp4_path, "rb") as f:
                mp4 = f.read()
            with open(os.path.join(tmp, f"{k}.jpg"), "rb") as f:
                jpg = f.read()
            results.append(EncodedClip(span, mp4, jpg, size[0], size[1], float(out_fps), frames))
        return results


def _frame_count(path: str) -> int:
    """Frames in an encoded clip, from its container index (no decode)."""
    meta = ffmpeg_tools.probe_json(path, 30)
    stream = next(s for s in meta["streams"] if s.get("codec_type") == "video")
    return int(stream["nb_frames"])
