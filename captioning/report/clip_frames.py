"""The frames of the clips the report looks at, pulled out of the run's shards.

Each shard that holds a wanted clip is streamed once (webdataset's own tar iterator), and only the
wanted samples' videos are decoded, by the same probe-and-decode path the captioner uses, into one
window of real-timestamped frames per clip. A clip that cannot be found or decoded is reported with
a reason, never dropped silently.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from collections.abc import Callable

from captioning.alignment import ClipFrames
from captioning.caption_config import CaptionFramesConfig
from captioning.report.config import ReportConfig
from curation.errors import InputRejected
from curation.shards import iter_samples, video_member

ONE_WINDOW_S = 1e9  # the whole clip in one window, however long


def frames_config(cfg: ReportConfig) -> CaptionFramesConfig:
    return CaptionFramesConfig(
        fps=cfg.frames_fps, max_frames=cfg.max_frames, max_pixels=cfg.max_pixels, window_s=ONE_WINDOW_S
    )


def iter_clip_frames(clips: list[dict], shard_uri: Callable[[str], str], cfg: ReportConfig, log=print):
    """Yield `(key, ClipFrames, None)` or `(key, None, why not)` once for every clip in `clips` (dicts
    with `key` and `shard`), shard by shard, so the caller keeps only what it needs of each."""
    from captioning.video_frames import prepare_clip

    wanted: dict[str, set[str]] = defaultdict(set)
    for clip in clips:
        wanted[clip["shard"]].add(clip["key"])
    frames_cfg = frames_config(cfg)
    for number, (shard, keys) in enumerate(sorted(wanted.items()), 1):
        log(f"reelmill report: decoding {len(keys)} clips from {shard} ({number}/{len(wanted)})")
        left = set(keys)
        try:
            for sample in iter_samples(shard_uri(shard)):
                key = sample["__key__"]
                if key not in left:
                    continue
                left.discard(key)
                name = video_member(sample)
                if name is None:
                    yield key, None, "no video member in the shard"
                    continue
                try:
                    prepared = prepare_clip(key, sample[name], frames_cfg)
                except InputRejected as exc:
                    yield key, None, exc.reason
                    continue
                (window,) = prepared.windows
                yield key, ClipFrames(key, window.frames, window.timestamps, prepared.duration_s), None
                if not left:
                    break
        except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
            problem = f"shard {shard} unreadable: {exc}"
        else:
            problem = f"not in shard {shard}"
        for key in sorted(left):
            yield key, None, problem
