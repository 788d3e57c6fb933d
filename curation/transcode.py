"""Cut kept clips out of a source and encode them (H.264, yuv420p, even sides), plus a thumbnail each.

One ffmpeg process cuts a group of consecutive clips: it seeks once to the group's first frame,
decodes the source once, and `split`s the frames into one trimmed branch (and encoder) per clip
and one per thumbnail. Cutting clip by clip would decode the GOP before every clip again and
start a process per clip.
"""

from __future__ import annotations

import itertools
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import ffmpeg
import numpy as np

from curation import ffmpeg_tools
from curation.clips import ClipSpan
from curation.curate_config import TranscodeConfig
from curation.frames import Box, SampledFrames, frames_from_samples, sample_plan, sample_size
from curation.probe import VideoInfo
from curation.scoring_config import FrameSamplerConfig

SAMPLES = "samples.rgb"
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
    samples: SampledFrames | None = None  # the scorers' frames, when taken during the encode

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def output_size(w: int, h: int, max_short_side: int | None) -> tuple[int, int]:
    """Output (width, height): the picture's size, downscaled to `max_short_side` if set, sides even."""
    if max_short_side and min(w, h) > max_short_side:
        scale = max_short_side / min(w, h)
        return even(w * scale), even(h * scale)
    return w // 2 * 2, h // 2 * 2


def concat_starts(spans: list[ClipSpan]) -> list[int]:
    """Where each clip begins in the group's concatenated stream of kept frames."""
    return list(itertools.accumulate((s.num_frames for s in spans[:-1]), initial=0))


def thumbnail_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    w, h = size
    scale = min(1.0, short_side / min(w, h))
    return even(w * scale), even(h * scale)


def _clip_name(k: int) -> str:
    return f"c_{k:05d}.mp4"


def _thumb_name(k: int) -> str:
    return f"t_{k:05d}.jpg"


@dataclass(frozen=True)
class SampleSelection:
    """Which frames of a group's concatenated stream the scorers get, and at what size."""

    expression: str  # an ffmpeg select expression, one term per clip
    plans: list[list[int]]  # per clip, the sample numbers (k: taken at k / fps seconds) it yields
    size: tuple[int, int]
    sampler: FrameSamplerConfig


def sample_selection(
    spans: list[ClipSpan], info: VideoInfo, size: tuple[int, int], sampler: FrameSamplerConfig
) -> SampleSelection | None:
    """The scorer samples of every clip, as one arithmetic select term per clip (ffmpeg parses at
    most 100 terms in a sum); None when such a term cannot say it (sampling faster than the clip's
    rate, or long clips thinned to pairs): the scoring stage then decodes those clips itself."""
    step = info.fps / sampler.fps
    plans, terms = [], []
    for start, span in zip(concat_starts(spans), spans, strict=True):
        numbers, _ = sample_plan(span.num_frames, info.fps, sampler)
        if step < 1 or numbers != list(range(len(numbers))):
            return None
        plans.append(numbers)
        # frames nearest to k * step after the clip's first frame: n - start in [k*step - 0.5, k*step + 0.5)
        terms.append(f"between(n,{start},{start + span.num_frames - 1})*lt(mod(n-{start}+0.5,{step:.9g}),1)")
    return SampleSelection("+".join(terms), plans, sample_size(size, sampler.short_side), sampler)


def _concatenated_outputs(video, audio, spans, first, seek, info, cfg, size, thumb, tmp, selection) -> list:
    """One encoder for the whole group: the kept frames are selected and laid end to end, a keyframe
    is forced at every clip's first frame, and the segment muxer splits the stream there. x264 then
    runs in its efficient steady state instead of starting (and flushing) once per clip."""
    starts = concat_starts(spans)
    keep = "+".join(f"between(n,{s.start_frame - first},{s.end_frame - first - 1})" for s in spans)
    video = video.filter("select", keep).filter("setpts", f"N/({info.fps_rational})/TB")
    split = video.filter_multi_output("split", 3 if selection else 2)
    encode, stills = split[0], split[1]
    encode = encode.filter("scale", size[0], size[1]).filter("setsar", 1)
    streams = [encode]
    options = {
        "vcodec": "libx264", "preset": cfg.preset, "crf": cfg.crf, "pix_fmt": "yuv420p", "threads": cfg.threads,
        "force_key_frames": "expr:" + "+".join(f"eq(n,{s})" for s in starts),
        "format": "segment", "segment_format": "mp4", "segment_format_options": "movflags=+faststart",
        "reset_timestamps": 1,
    }  # fmt: skip
    # cut at every clip's first frame and nowhere else: with no list (one clip) the muxer would cut
    # every 2 s at any keyframe, and x264 makes one every 250 frames and at scene changes
    total = sum(s.num_frames for s in spans)
    options["segment_frames"] = ",".join(map(str, starts[1:] or [total]))
    if audio is not None:
        spans_s = "+".join(
            f"between(t,{(s.start_frame - SEEK_MARGIN_FRAMES) / info.fps - seek:.6f},"
            f"{(s.end_frame - SEEK_MARGIN_FRAMES) / info.fps - seek:.6f})"
            for s in spans
        )
        streams.append(audio.filter("aselect", spans_s).filter("asetpts", "N/SR/TB"))
        options["acodec"] = "aac"
    else:
        options["an"] = None
    middles = "+".join(
        f"eq(n,{start + span.num_frames // 2})" for start, span in zip(starts, spans, strict=True)
    )
    stills = stills.filter("select", middles).filter("scale", *thumb)
    outputs = [
        ffmpeg.output(*streams, os.path.join(tmp, "c_%05d.mp4"), **options),
        ffmpeg.output(
            stills, os.path.join(tmp, "t_%05d.jpg"), start_number=0, fps_mode="passthrough", **{"q:v": 3}
        ),
    ]
    if selection:  # the scorers' frames come from this same decode
        samples = split[2].filter("select", selection.expression)
        samples = samples.filter("scale", *selection.size, flags="area").filter("setsar", 1)
        raw = {"format": "rawvideo", "pix_fmt": "rgb24", "fps_mode": "passthrough"}
        outputs.append(ffmpeg.output(samples, os.path.join(tmp, SAMPLES), **raw))
    return outputs


def _per_clip_outputs(video, audio, spans, first, seek, info, cfg, size, thumb, tmp, selection) -> list:
    """One trimmed branch and encoder per clip: needed when resampling the frame rate, where clip
    boundaries must not be blurred by the fps filter working across them. No scorer samples are
    taken here (`selection` is None): the scoring stage decodes such clips once itself."""
    branches = video.filter_multi_output("split", 2 * len(spans))
    audio_branches = audio.filter_multi_output("asplit", len(spans)) if audio is not None else None
    encoder = {"vcodec": "libx264", "preset": cfg.preset, "crf": cfg.crf, "pix_fmt": "yuv420p"}
    encoder |= {"movflags": "+faststart", "threads": cfg.threads}
    outputs = []
    for k, span in enumerate(spans):
        a, b = span.start_frame - first, span.end_frame - first
        clip = branches[2 * k].trim(start_frame=a, end_frame=b).setpts("PTS-STARTPTS")
        # the fps filter pads with repeats up to the end of the *source*; cap it to the span
        clip = clip.filter("fps", cfg.fps).trim(duration=span.num_frames / info.fps)
        streams = [clip.filter("scale", size[0], size[1]).filter("setsar", 1)]
        options = dict(encoder)
        if audio_branches is not None:
            t0, t1 = span.start_frame / info.fps - seek, span.end_frame / info.fps - seek
            streams.append(
                audio_branches[k].filter("atrim", start=t0, end=t1).filter("asetpts", "PTS-STARTPTS")
            )
            options["acodec"] = "aac"
        else:
            options["an"] = None
        outputs.append(ffmpeg.output(*streams, os.path.join(tmp, _clip_name(k)), **options))
        mid = a + span.num_frames // 2
        still = branches[2 * k + 1].trim(start_frame=mid, end_frame=mid + 1).filter("scale", *thumb)
        outputs.append(ffmpeg.output(still, os.path.join(tmp, _thumb_name(k)), vframes=1, **{"q:v": 3}))
    return outputs


def _read_samples(
    tmp: str, spans, info, size, selection: SampleSelection | None
) -> list[SampledFrames | None]:
    """Split the raw sample file back into each clip's SampledFrames."""
    if selection is None:
        return [None] * len(spans)
    w, h = selection.size
    raw = np.fromfile(os.path.join(tmp, SAMPLES), np.uint8).reshape(-1, h, w, 3)
    expected = sum(len(p) for p in selection.plans)
    if len(raw) != expected:
        raise ffmpeg_tools.FFmpegError(f"expected {expected} scorer samples, got {len(raw)}")
    out, at = [], 0
    for span, numbers in zip(spans, selection.plans, strict=True):
        rgb = raw[at : at + len(numbers)]
        at += len(numbers)
        out.append(frames_from_samples(rgb, numbers, selection.sampler, size, span.num_frames / info.fps))
    return out


def transcode_group(
    path: str,
    info: VideoInfo,
    spans: list[ClipSpan],
    cfg: TranscodeConfig,
    sampler: FrameSamplerConfig | None = None,
    crop: Box | None = None,
) -> list[EncodedClip]:
    """Encode `spans` (kept clips of one source, in order) in one ffmpeg run that decodes the
    source once, from a seek to the group's first frame; with a `sampler`, the same decode also
    yields each clip's scorer samples. `crop` (display pixels) cuts bars away first."""
    first = spans[0].start_frame
    seek = max(0.0, (first - SEEK_MARGIN_FRAMES) / info.fps) if first else 0.0
    source = ffmpeg_tools.input_stream(path, ss=f"{seek:.6f}") if first else ffmpeg_tools.input_stream(path)
    video = source.video
    if info.variable_frame_rate:  # the constant-rate timeline the shots were detected on
        video = video.filter("fps", info.fps_rational)
    picture = (info.width, info.height)
    if crop is not None:
        picture = (crop.w // 2 * 2, crop.h // 2 * 2)
        video = video.filter("crop", picture[0], picture[1], crop.x, crop.y)
    audio = source.audio if cfg.keep_audio and info.has_audio else None
    size = output_size(*picture, cfg.max_short_side)
    thumb = thumbnail_size(size, cfg.thumbnail_short_side)
    build = _per_clip_outputs if cfg.fps else _concatenated_outputs
    selection = sample_selection(spans, info, size, sampler) if sampler and not cfg.fps else None
    with tempfile.TemporaryDirectory(prefix="reelmill-cut-") as tmp:
        outputs = build(video, audio, spans, first, seek, info, cfg, size, thumb, tmp, selection)
        ffmpeg_tools.run_stream(ffmpeg.merge_outputs(*outputs), cfg.timeout_s)
        written = sorted(n for n in os.listdir(tmp) if n.endswith(".mp4"))
        if len(written) != len(spans):
            raise ffmpeg_tools.FFmpegError(f"expected {len(spans)} clips from ffmpeg, got {len(written)}")
        samples = _read_samples(tmp, spans, info, size, selection)
        results = []
        for k, span in enumerate(spans):
            mp4_path = os.path.join(tmp, _clip_name(k))
            with open(mp4_path, "rb") as f:
                mp4 = f.read()
            with open(os.path.join(tmp, _thumb_name(k)), "rb") as f:
                jpg = f.read()
            fps = float(cfg.fps or info.fps)
            frames = _frame_count(mp4, mp4_path)
            results.append(EncodedClip(span, mp4, jpg, size[0], size[1], fps, frames, samples=samples[k]))
        return results


def _frame_count(mp4: bytes, path: str) -> int:
    """Frames in an encoded clip, from its container index (no decode): read here from the bytes,
    which saves an ffprobe process per clip; ffprobe where they do not parse as expected."""
    try:
        return mp4_frame_count(mp4)
    except (ValueError, struct.error):
        meta = ffmpeg_tools.probe_json(path, 30)
        stream = next(s for s in meta["streams"] if s.get("codec_type") == "video")
        return int(stream["nb_frames"])


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each ISO BMFF box in `data[start:end]`."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:  # a 64-bit size follows the type
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:  # to the end of the enclosing box
            size = end - at
        if size < header or at + size > end:
            raise ValueError(f"malformed {kind!r} box at byte {at}")
        yield kind, at + header, at + size
        at += size


def _box(data: bytes, start: int, end: int, *path: bytes) -> tuple[int, int]:
    """Payload span of the first box down `path` (e.g. b"minf", b"stbl", b"stsz") inside `data[start:end]`."""
    for name in path:
        start, end = next(((a, b) for kind, a, b in _boxes(data, start, end) if kind == name), (-1, -1))
        if start < 0:
            raise ValueError(f"no {name!r} box")
    return start, end


def mp4_frame_count(mp4: bytes) -> int:
    """Samples in the video track of an MP4 (its `stsz` box): the number of frames, as ffprobe's
    `nb_frames` reports it."""
    moov = _box(mp4, 0, len(mp4), b"moov")
    for kind, start, end in _boxes(mp4, *moov):
        if kind != b"trak":
            continue
        mdia = _box(mp4, start, end, b"mdia")
        hdlr, _ = _box(mp4, *mdia, b"hdlr")  # version+flags, pre_defined, then the handler type
        if mp4[hdlr + 8 : hdlr + 12] == b"vide":
            stsz, _ = _box(mp4, *mdia, b"minf", b"stbl", b"stsz")  # version+flags, sample_size, count
            return struct.unpack_from(">I", mp4, stsz + 8)[0]
    raise ValueError("no video track")
