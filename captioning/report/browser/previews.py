"""Playable previews for a bounded sample of clips, so the browser plays something from `file://`.

Without `reelmill report OUT --serve` the page cannot reach into the tar shards, so the report writes a
small mp4 (long side `PREVIEW_LONG_SIDE`, low bitrate, no audio) and a contact sheet for
`report.browser_previews` clips drawn (seeded) half from the kept clips and half from the dropped clips
that have media (`--keep-dropped`), topped up from the other side when one is short. A clip that cannot
be read or transcoded gets a reason instead of a preview; the build goes on.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from collections import defaultdict

from captioning.report import plots
from captioning.report.clip_frames import clip_frames, iter_wanted_samples
from captioning.report.config import ReportConfig
from captioning.streaming import Reservoir
from curation import ffmpeg_tools, storage
from curation.errors import InputRejected
from curation.shards import video_member

PREVIEW_DIR = "browser/previews"
PREVIEW_LONG_SIDE = 256
PREVIEW_TIMEOUT_S = 120.0
COPY_BELOW_BYTES = 1 << 20
"""An mp4 clip of at most this size is its own preview (copied, not transcoded): it is already small."""


class PreviewSampler:
    """Reservoir samples (seeded) of the kept and of the dropped clips that have media."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.kept = Reservoir(size, random.Random(f"{seed}:browser-kept"))
        self.dropped = Reservoir(size, random.Random(f"{seed}:browser-dropped"))

    def add(self, row_number: int, key: str, location: str | None, shard: str | None) -> None:
        if not location or not shard:
            return
        (self.kept if location == "shards" else self.dropped).add((row_number, key, location, shard))

    def drawn(self) -> list[tuple[int, str, str, str]]:
        """Half from each side, the rest from whichever has more; in row order."""
        half = self.size // 2
        kept, dropped = self.kept.items, self.dropped.items
        take_dropped = min(len(dropped), max(half, self.size - len(kept)))
        take_kept = min(len(kept), self.size - take_dropped)
        return sorted(kept[:take_kept] + dropped[:take_dropped])


def _name(location: str, shard: str, key: str) -> str:
    return hashlib.sha1(f"{location}/{shard}/{key}".encode()).hexdigest()[:16]


def _transcode(source: str, target: str) -> None:
    scale = f"scale='if(gte(iw,ih),{PREVIEW_LONG_SIDE},-2)':'if(gte(iw,ih),-2,{PREVIEW_LONG_SIDE})'"
    ffmpeg_tools.run(
        [
            ffmpeg_tools.FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", source,
            "-an", "-vf", scale, "-c:v", "libx264", "-preset", "veryfast", "-crf", "32",
            "-maxrate", "300k", "-bufsize", "600k", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
            target,
        ],
        PREVIEW_TIMEOUT_S,
    )  # fmt: skip


def _preview(key: str, data: bytes, member: str, directory: str, name: str, cfg: ReportConfig) -> dict:
    """Write NAME.mp4 and NAME.jpg under the previews folder; returns their paths relative to the page."""
    from PIL import Image

    video = f"{PREVIEW_DIR}/{name}.mp4"
    sheet = f"{PREVIEW_DIR}/{name}.jpg"
    thumb = f"{PREVIEW_DIR}/{name}-thumb.jpg"
    if member == "mp4" and len(data) <= COPY_BELOW_BYTES:
        with open(os.path.join(directory, video), "wb") as f:
            f.write(data)
    else:
        with tempfile.TemporaryDirectory(prefix="reelmill-preview-") as tmp:
            source = os.path.join(
                tmp, "clip.mp4"
            )  # a file: an mp4 without faststart cannot be read from a pipe
            with open(source, "wb") as f:
                f.write(data)
            _transcode(source, os.path.join(directory, video))
    window = clip_frames(key, data, cfg)
    times = plots.contact_sheet(
        os.path.join(directory, sheet), window.frames, window.timestamps, cfg.sheet_frames
    )
    # the middle frame, as the shards' own KEY.jpg is, for the small pictures beside a threshold
    Image.fromarray(window.frames[len(window.frames) // 2]).save(os.path.join(directory, thumb), quality=80)
    return {"video": video, "sheet": sheet, "thumb": thumb, "sheet_times": times}


def write_previews(
    root: str, drawn: list[tuple[int, str, str, str]], directory: str, cfg: ReportConfig, log=print
) -> tuple[dict[int, dict], dict[int, str]]:
    """Previews of the `drawn` clips (row number, key, location, shard), shard by shard.

    Returns (row number -> preview paths, row number -> why it has none).
    """
    os.makedirs(os.path.join(directory, PREVIEW_DIR), exist_ok=True)
    wanted: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for row, key, location, shard in drawn:
        wanted[(location, shard)][key] = row
    done: dict[int, dict] = {}
    failed: dict[int, str] = {}
    if drawn:
        log(f"reelmill report: clip browser previews for {len(drawn)} clips from {len(wanted)} shards")
    for (location, shard), keys in sorted(wanted.items()):
        found = iter_wanted_samples(storage.join(root, location, shard), keys, f"{location}/{shard}")
        for key, sample, problem in found:
            row = keys[key]
            member = None if sample is None else video_member(sample)
            if sample is None or member is None:
                failed[row] = problem or "no video member in the shard"
                continue
            try:
                done[row] = _preview(key, sample[member], member, directory, _name(location, shard, key), cfg)
            except InputRejected as exc:
                failed[row] = exc.reason
            except ffmpeg_tools.FFmpegError as exc:
                failed[row] = f"preview not written: {exc.detail}"
            except Exception as exc:  # noqa: BLE001 (a bug of ours on one clip costs it its preview, not the report)
                failed[row] = f"internal_error: {exc!r}"
    return done, failed
