"""Real clips for the reference row and FVD: decoded from curated shards at the model's clip size.

The decode is training's own (`training.clip_decode.decode_clip`, the window at the start of each clip), so
a real clip is exactly what the model was trained to produce at that size and frame rate. Shards and clips
that cannot be used are counted, not fatal: an unreadable shard, a corrupt clip, a clip too short for the
clip length; only no usable clip at all is an error (a ConfigError naming the flag or key that gave them).
"""

from __future__ import annotations

import numpy as np

from curation.config import ConfigError
from curation.inputs import InputError


def read_real_clips(
    real: str, count: int, size: dict, flag: str = "--real", log=print
) -> tuple[list[np.ndarray], list[str], dict]:
    """Up to `count` clips of the shards `real` decoded at the model's clip size (start of each clip), their
    dense captions, and what was skipped: unreadable shards, corrupt clips, clips too short for the size."""
    import webdataset as wds

    from curation.inputs import expand_shards
    from curation.shards import video_member
    from training.clip_decode import ClipTooShort, CorruptSample, decode_clip
    from training.data import caption_variants

    try:
        urls = expand_shards([real])
    except InputError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    videos, captions = [], []
    skipped = {"shard_errors": 0, "corrupt": 0, "too_short": 0, "no_video": 0}
    for url in urls:
        if len(videos) >= count:
            break
        try:
            for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
                if len(videos) >= count:
                    break
                name = video_member(sample)
                if name is None:
                    skipped["no_video"] += 1
                    continue
                try:
                    frames = decode_clip(
                        sample[name], int(size["num_frames"]), float(size["fps"]), int(size["height"]),
                        int(size["width"]),
                    )  # fmt: skip
                except ClipTooShort:
                    skipped["too_short"] += 1
                    continue
                except CorruptSample:
                    skipped["corrupt"] += 1
                    continue
                videos.append(frames.numpy())
                variants = caption_variants(sample)
                captions.append(variants[0] if variants else "")
        except Exception as exc:  # noqa: BLE001 (a shard that cannot be read is counted, whatever broke)
            skipped["shard_errors"] += 1
            log(
                f"reelmill eval: real shard {url} unreadable ({type(exc).__name__}: {str(exc)[:200]}); skipped"
            )
    if not videos:
        raise ConfigError(
            f"{flag} {real}: no clip decoded at the model's clip size {size['num_frames']} frames "
            f"{size['width']}x{size['height']} at {size['fps']:g} fps (skipped: {skipped})"
        )
    return videos, captions, skipped
