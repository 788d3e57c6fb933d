"""The frames of the clips the report looks at, pulled out of the run's shards.

Each shard that holds a wanted clip is streamed once (webdataset's own tar iterator), and only the
wanted samples' videos are decoded, by the same probe-and-decode path the captioner uses, into one
window of real-timestamped frames per clip. A clip that cannot be found or decoded is reported with
a reason, never dropped silently.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from captioning.alignment import ClipFrames
from captioning.caption_config import CaptionFramesConfig
from captioning.report.config import ReportConfig
from curation.errors import InputRejected
from curation.shards import READ_ERRORS, iter_samples, video_member

ONE_WINDOW_S = 1e9  # the whole clip in one window, however long


def frames_config(cfg: ReportConfig) -> CaptionFramesConfig:
    return CaptionFramesConfig(
        fps=cfg.frames_fps, max_frames=cfg.max_frames, max_pixels=cfg.max_pixels, window_s=ONE_WINDOW_S
    )


def clip_frames(key: str, video: bytes, cfg: ReportConfig) -> ClipFrames:
    """One clip's video decoded into one window of real-timestamped frames (the captioner's path);
    raises InputRejected for a video that cannot be read."""
    from captioning.video_frames import prepare_clip

    prepared = prepare_clip(key, video, frames_config(cfg))
    (window,) = prepared.windows
    return ClipFrames(key, window.frames, window.timestamps, prepared.duration_s)


def iter_wanted_samples(uri: str, keys, shown: str):
    """Yield `(key, sample, None)` for each of `keys` found in the shard at `uri` (streamed once, in
    shard order, stopping when all are found), then `(key, None, why)` for each one that is not there or
    after the point where the shard cannot be read; `shown` names the shard in those reasons."""
    left = set(keys)
    try:
        for sample in iter_samples(uri):
            key = sample["__key__"]
            if key not in left:
                continue
            left.discard(key)
            yield key, sample, None
            if not left:
                break
    except READ_ERRORS as exc:
        problem = f"shard {shown} unreadable: {exc}"
    else:
        problem = f"not in shard {shown}"
    for key in sorted(left):
        yield key, None, problem


def iter_clip_frames(clips: list[dict], shard_uri: Callable[[str], str], cfg: ReportConfig, log=print):
    """Yield `(key, ClipFrames, None)` or `(key, None, why not)` once for every clip in `clips` (dicts
    with `key` and `shard`), shard by shard, so the caller keeps only what it needs of each."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for clip in clips:
        wanted[clip["shard"]].add(clip["key"])
    for number, (shard, keys) in enumerate(sorted(wanted.items()), 1):
        log(f"reelmill report: decoding {len(keys)} clips from {shard} ({number}/{len(wanted)})")
        for key, sample, problem in iter_wanted_samples(shard_uri(shard), keys, shard):
            name = None if sample is None else video_member(sample)
            if sample is None or name is None:
                yield key, None, problem or "no video member in the shard"
                continue
            try:
                yield key, clip_frames(key, sample[name], cfg), None
            except InputRejected as exc:
                yield key, None, exc.reason
