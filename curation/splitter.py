"""The split stage: a task's input videos in, candidate clips out (probed, scene-split, cut, encoded).

Plain Python, no Ray: `jobs/` runs one `ClipSplitter.run` per task in a Ray Data map. A bad input
becomes an error row for its video and never takes the other videos of the task down with it.
Scene detection of one video overlaps with the encoding of the previous one's clips, which runs
in a small pool of ffmpeg processes.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from curation import ffmpeg_tools, storage
from curation.clips import ClipSpan, clip_id, plan_clips
from curation.curate_config import CurateConfig
from curation.errors import InputRejected
from curation.frames import Box, SampledFrames, find_content_box
from curation.inputs import Task
from curation.probe import VideoInfo, probe
from curation.record import ClipRecord
from curation.scenes import detect_shots
from curation.transcode import EncodedClip, transcode_group


@dataclass
class TaskResult:
    """What a task produced: one row per video, one record per candidate clip, media for kept clips."""

    task_id: int
    videos: list[dict] = field(default_factory=list)
    clips: list[ClipRecord] = field(default_factory=list)
    media: dict[str, dict[str, bytes]] = field(default_factory=dict)  # clip_id -> {"mp4": .., "jpg": ..}
    samples: dict[str, SampledFrames] = field(default_factory=dict)  # clip_id -> scorer frames
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # clip_id -> [K, D] float16


def _record(task_id: int, uri: str, info: VideoInfo, span: ClipSpan) -> ClipRecord:
    return ClipRecord(
        clip_id=clip_id(uri, span.start_frame, span.end_frame),
        source=uri,
        source_start_s=span.start_frame / info.fps,
        source_end_s=span.end_frame / info.fps,
        source_start_frame=span.start_frame,
        source_end_frame=span.end_frame,
        shot_index=span.shot_index,
        task_id=task_id,
        fps=info.fps,
        num_frames=span.num_frames,
        duration_s=span.num_frames / info.fps,
        kept=span.kept,
        drop_reason=span.drop_reason,
    )


@dataclass
class _PendingVideo:
    row: dict
    info: VideoInfo
    records: dict[tuple[int, int], ClipRecord]
    jobs: list[tuple[list[ClipSpan], Future]]
    started: float


class ClipSplitter:
    """Probe, detect shots, apply clip rules and encode kept clips for every video of a task."""

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg

    def run(self, task: Task) -> TaskResult:
        result = TaskResult(task.task_id)
        pending: list[_PendingVideo] = []
        with contextlib.ExitStack() as stack, ThreadPoolExecutor(self.cfg.transcode.workers) as pool:
            for uri in task.uris:
                started = time.perf_counter()
                row = {"uri": uri, "task_id": task.task_id, "status": "ok"}
                try:
                    row["size_bytes"] = storage.size(uri) if storage.exists(uri) else None
                    path = stack.enter_context(storage.local_copy(uri))
                    pending.append(self._start_video(path, uri, row, pool, task.task_id, started))
                except InputRejected as rejected:
                    row |= {"status": "error", "error": rejected.reason, "error_code": rejected.code}
                    row["processing_s"] = time.perf_counter() - started
                    result.videos.append(row)
                except OSError as exc:  # unreadable remote object, permission denied, ...
                    row |= {"status": "error", "error": f"unreadable: {exc}", "error_code": "unreadable"}
                    result.videos.append(row)
            for video in pending:
                self._finish_video(video, result)
        order = {uri: i for i, uri in enumerate(task.uris)}
        result.videos.sort(key=lambda r: order[r["uri"]])
        result.clips.sort(key=lambda c: (order[c.source], c.source_start_frame))
        return result

    def _start_video(
        self, path: str, uri: str, row: dict, pool: ThreadPoolExecutor, task_id: int, started: float
    ) -> _PendingVideo:
        """Probe, then detect shots; clips are submitted for encoding as soon as their shot is final."""
        cfg = self.cfg
        info = probe(path, cfg.probe.min_duration_s, cfg.probe.timeout_s)
        row |= info.as_row()
        video = _PendingVideo(row, info, {}, [], started)
        waiting: list[ClipSpan] = []
        held: list[list[ClipSpan]] = []  # groups waiting for the crop box, known after detection
        shots_seen = 0
        sampler = cfg.scoring.frames if cfg.scores_anything else None

        def start(group: list[ClipSpan], crop: Box | None = None) -> None:
            future = pool.submit(transcode_group, path, info, group, cfg.transcode, sampler, crop)
            video.jobs.append((group, future))

        def submit() -> None:
            group = list(waiting)
            waiting.clear()
            held.append(group) if cfg.transcode.crop_bars else start(group)

        def on_shot(start: int, end: int) -> None:
            nonlocal shots_seen
            for span in plan_clips([(start, end)], info.fps, cfg.clips, first_shot_index=shots_seen):
                video.records[(span.start_frame, span.end_frame)] = _record(task_id, uri, info, span)
                if span.kept:
                    waiting.append(span)
            shots_seen += 1
            waiting_s = sum(s.num_frames for s in waiting) / info.fps
            if (
                len(waiting) >= cfg.transcode.clips_per_process
                or waiting_s >= cfg.transcode.seconds_per_process
            ):
                submit()

        try:
            scenes = detect_shots(path, info, cfg.scenes, on_shot)
        except InputRejected:
            for _, future in video.jobs:  # the video is rejected after all: its clips are not wanted
                future.cancel()
            raise
        if waiting:
            submit()
        if cfg.transcode.crop_bars:
            box = find_content_box(
                scenes.grey_samples, (info.width, info.height), cfg.scoring.frames.bar_level
            )
            crop = box.source if box else None
            if crop is not None:
                row |= {"crop_x": crop.x, "crop_y": crop.y, "crop_w": crop.w, "crop_h": crop.h}
            for group in held:
                start(group, crop)
        row["decoded_frames"] = scenes.decoded_frames
        row["num_shots"] = len(scenes.shots)
        return video

    def _finish_video(self, video: _PendingVideo, result: TaskResult) -> None:
        for group, future in video.jobs:
            try:
                encoded: list[EncodedClip] = future.result()
            except ffmpeg_tools.FFmpegError as err:  # damaged data inside the source
                for span in group:
                    record = video.records[(span.start_frame, span.end_frame)]
                    record.kept, record.drop_reason = False, "transcode_failed"
                    record.errors.append({"stage": "transcode", "message": err.detail})
                continue
            for clip in encoded:
                record = video.records[(clip.span.start_frame, clip.span.end_frame)]
                record.width, record.height, record.codec = clip.width, clip.height, clip.codec
                record.fps, record.num_frames, record.duration_s = clip.fps, clip.num_frames, clip.duration_s
                result.media[record.clip_id] = {"mp4": clip.mp4, "jpg": clip.jpg}
                if clip.samples is not None:
                    result.samples[record.clip_id] = clip.samples
        records = list(video.records.values())
        kept = [r for r in records if r.kept]
        video.row |= {
            "num_clips": len(records),
            "num_kept": len(kept),
            "num_dropped": len(records) - len(kept),
            "seconds_kept": sum(r.duration_s for r in kept),
            "processing_s": time.perf_counter() - video.started,
        }
        result.videos.append(video.row)
        result.clips.extend(records)
