"""The split stage: a task's input videos in, candidate clips out (probed, scene-split, cut, encoded).

Plain Python, no Ray: `jobs/` runs one `ClipSplitter.run` per task in a Ray Data map. A bad input
becomes an error row for its video and never takes the other videos of the task down with it.
Scene detection of one video overlaps with the encoding of the previous one's clips, which runs
in a small pool of ffmpeg processes.
"""

from __future__ import annotations

import bisect
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
from curation.inputs import Task, check_scheme
from curation.probe import VideoInfo, probe
from curation.quarantine import (
    INTERNAL_ERROR,
    TRANSIENT_EXHAUSTED,
    describe,
    internal_error_row,
    is_transient,
    retry_transient,
)
from curation.record import TRANSITION, ClipRecord
from curation.scenes import detect_shots
from curation.transcode import EncodedClip, transcode_group
from curation.transnet import Transition


@dataclass
class TaskResult:
    """What a task produced: one row per video, one record per candidate clip, media for kept clips."""

    task_id: int
    videos: list[dict] = field(default_factory=list)
    clips: list[ClipRecord] = field(default_factory=list)
    media: dict[str, dict[str, bytes]] = field(default_factory=dict)  # clip_id -> {"mp4": .., "jpg": ..}
    samples: dict[str, SampledFrames] = field(default_factory=dict)  # clip_id -> scorer frames
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # clip_id -> [K, D] float16
    stage_s: dict[str, float] = field(default_factory=dict)  # stage -> seconds on this task (run.json)
    started_unix: float | None = None  # when its first stage began (wall clock: stages are processes)
    io_retries: int = 0  # remote I/O operations its stages retried (run.json `io`)

    def clock(self, stage: str, started_unix: float, seconds: float, io_retries: int = 0) -> None:
        """Count `seconds` of task time to `stage` (run.json's timings), and the I/O it retried."""
        self.stage_s[stage] = self.stage_s.get(stage, 0.0) + seconds
        self.io_retries += io_retries
        if self.started_unix is None:
            self.started_unix = started_unix


def _transition_record(
    task_id: int, uri: str, info: VideoInfo, transition: Transition, shot: int
) -> ClipRecord:
    """A transition as a dropped candidate (`drop_reason` "transition", `transition` its kind), so the
    manifest and the report show where shots meet and what no clip may contain; `shot` is the index of
    the shot it leads into."""
    span = ClipSpan(shot, transition.start, transition.end, kept=False, drop_reason=TRANSITION)
    record = _record(task_id, uri, info, span)
    record.transition = transition.kind
    return record


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
    path: str  # what ffmpeg reads (a local copy of a remote input)
    files: contextlib.ExitStack  # holds that copy until the video's clips are encoded
    crop: Box | None = None


class ClipSplitter:
    """Probe, detect shots, apply clip rules and encode kept clips for every video of a task."""

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg

    def run(self, task: Task) -> TaskResult:
        result = TaskResult(task.task_id)
        pending: list[_PendingVideo] = []
        with ThreadPoolExecutor(self.cfg.transcode.workers) as pool:
            for uri in task.uris:
                video = self._open_video(uri, task.task_id, pool, result)
                if video is not None:
                    pending.append(video)
            for video in pending:
                with video.files:
                    try:
                        self._finish_video(video, result)
                    except Exception as exc:  # a bug of ours: the video is an error row, the task goes on
                        video.row |= {"status": "error", **internal_error_row(exc, "split")}
                        result.videos.append(video.row)
        order = {uri: i for i, uri in enumerate(task.uris)}
        result.videos.sort(key=lambda r: order[r["uri"]])
        result.clips.sort(key=lambda c: (order[c.source], c.source_start_frame))
        return result

    def _open_video(
        self, uri: str, task_id: int, pool: ThreadPoolExecutor, result: TaskResult
    ) -> _PendingVideo | None:
        """Probe and detect one video (tried again while it fails transiently); a video that cannot be
        used, whatever the reason, is an error row and None, never an exception."""
        started = time.perf_counter()
        row = {"uri": uri, "task_id": task_id, "status": "ok"}

        def attempt() -> _PendingVideo:
            files = contextlib.ExitStack()
            try:
                check_scheme(uri, self.cfg.input.schemes)
                row["size_bytes"] = storage.size(uri) if storage.exists(uri) else None
                path = files.enter_context(storage.local_copy(uri))
                return self._start_video(path, uri, dict(row), pool, task_id, started, files)
            except BaseException:
                files.close()
                raise

        try:
            return retry_transient(attempt, self.cfg.resources.transient_attempts, f"video {uri}")
        except InputRejected as rejected:
            row |= {"status": "error", "error": rejected.reason, "error_code": rejected.code}
        except Exception as exc:
            if is_transient(exc):
                row |= {"status": "error", "error_code": TRANSIENT_EXHAUSTED, "error": describe(exc)}
            elif isinstance(exc, OSError):  # unreadable remote object, permission denied, ...
                row |= {"status": "error", "error": f"unreadable: {exc}", "error_code": "unreadable"}
            else:
                row |= {"status": "error", **internal_error_row(exc, "split")}
        row["processing_s"] = time.perf_counter() - started
        result.videos.append(row)
        return None

    def _start_video(
        self,
        path: str,
        uri: str,
        row: dict,
        pool: ThreadPoolExecutor,
        task_id: int,
        started: float,
        files: contextlib.ExitStack,
    ) -> _PendingVideo:
        """Probe, then detect shots; clips are submitted for encoding as soon as their shot is final."""
        cfg = self.cfg
        info = probe(path, cfg.probe.min_duration_s, cfg.probe.timeout_s)
        row |= info.as_row()
        video = _PendingVideo(row, info, {}, [], started, path, files)
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
        except BaseException:
            for (
                _,
                future,
            ) in video.jobs:  # the video is rejected (or retried) after all: its clips are not wanted
                future.cancel()
            for _, future in video.jobs:  # and none of their ffmpeg runs may outlive the file they read
                with contextlib.suppress(BaseException):
                    future.result()
            raise
        if waiting:
            submit()
        if cfg.transcode.crop_bars:
            box = find_content_box(
                scenes.grey_samples, (info.width, info.height), cfg.scoring.frames.bar_level
            )
            crop = video.crop = box.source if box else None
            if crop is not None:
                row |= {"crop_x": crop.x, "crop_y": crop.y, "crop_w": crop.w, "crop_h": crop.h}
            for group in held:
                start(group, crop)
        shot_starts = [start for start, _ in scenes.shots]
        for transition in scenes.transitions:
            shot = bisect.bisect_left(shot_starts, transition.end)
            record = _transition_record(task_id, uri, info, transition, shot)
            video.records[(transition.start, transition.end)] = record
        row["decoded_frames"] = scenes.decoded_frames
        row["num_shots"] = len(scenes.shots)
        return video

    def _finish_video(self, video: _PendingVideo, result: TaskResult) -> None:
        for group, future in video.jobs:
            try:
                encoded = self._encoded(video, group, future)
            except Exception as exc:  # damaged data inside the source, a spent retry, or a bug of ours
                if isinstance(exc, ffmpeg_tools.FFmpegError) and not is_transient(exc):
                    reason, message = "transcode_failed", exc.detail
                elif is_transient(exc):
                    reason, message = TRANSIENT_EXHAUSTED, describe(exc)
                else:
                    reason, message = INTERNAL_ERROR, internal_error_row(exc, "transcode")["error"]
                for span in group:
                    record = video.records[(span.start_frame, span.end_frame)]
                    record.kept, record.drop_reason = False, reason
                    record.errors.append({"stage": "transcode", "message": message})
                continue
            for clip in encoded:
                record = video.records[(clip.span.start_frame, clip.span.end_frame)]
                record.width, record.height, record.codec = clip.width, clip.height, clip.codec
                record.fps, record.num_frames, record.duration_s = clip.fps, clip.num_frames, clip.duration_s
                result.media[record.clip_id] = {"mp4": clip.mp4, "jpg": clip.jpg}
                if clip.samples is not None:
                    result.samples[record.clip_id] = clip.samples
        records = sorted(video.records.values(), key=lambda r: (r.source_start_frame, r.source_end_frame))
        clips = [r for r in records if not r.is_transition]
        kept = [r for r in records if r.kept]
        video.row |= {
            "num_clips": len(clips),
            "num_kept": len(kept),
            "num_dropped": len(clips) - len(kept),
            "num_transitions": len(records) - len(clips),
            "seconds_kept": sum(r.duration_s for r in kept),
            "processing_s": time.perf_counter() - video.started,
        }
        result.videos.append(video.row)
        result.clips.extend(records)

    def _encoded(self, video: _PendingVideo, group: list[ClipSpan], future: Future) -> list[EncodedClip]:
        """A group's encoded clips; a transient failure (timeout, killed ffmpeg, full disk) is tried
        again in this thread, up to `resources.transient_attempts` in all."""
        try:
            return future.result()
        except Exception as exc:
            attempts = self.cfg.resources.transient_attempts
            if not is_transient(exc) or attempts < 2:
                raise
            cfg = self.cfg
            sampler = cfg.scoring.frames if cfg.scores_anything else None
            crop = video.crop
            return retry_transient(
                lambda: transcode_group(video.path, video.info, group, cfg.transcode, sampler, crop),
                attempts - 1,
                f"transcode of {video.row['uri']}",
            )
