"""The `curate` job's configuration: one dataclass per stage, defaults that suit most web video."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from curation.config import check
from curation.safe_tar import DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_SAMPLE_BYTES
from curation.scoring_config import FilterConfig, ScoringConfig

X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)  # fmt: skip

VIDEO_EXTENSIONS = [".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"]


DEFAULT_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")
"""Local files and the object stores pyarrow.fs and fsspec open; no web URLs unless asked for."""


@dataclass
class InputConfig:
    """How inputs are found and grouped into tasks (a task names its output shards)."""

    videos_per_task: int = 4
    """Videos per task: the unit of parallelism, of output shard naming and of resume."""
    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    """File suffixes picked up when an input is a directory (globs and manifests take any file)."""
    schemes: list[str] = field(default_factory=lambda: list(DEFAULT_SCHEMES))
    """URI schemes an input may have (`file` is a local path). An input of another scheme is an error
    row (`scheme_not_allowed`); add `http`/`https` to let ffmpeg fetch web URLs itself."""

    def __post_init__(self):
        check(self.videos_per_task >= 1, "input.videos_per_task", "must be at least 1")
        check(bool(self.schemes), "input.schemes", "must name at least one scheme (file: local paths)")


@dataclass
class IOConfig:
    """Reading and writing storage: limits on shards written elsewhere (`curation/safe_tar.py`: foreign
    data is untrusted), and how long a remote request (s3://, gs://) may take and how often it is tried."""

    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    """A tar member larger than this is not read; its sample is recorded as `member_too_large`."""
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES
    """All members of one sample together."""
    allow_compressed: bool = False
    """Read gzip/bzip2/xz/zstd-compressed tars too (members are still capped by size)."""
    request_timeout_s: float = 60.0
    """Longest wait for one object-store request (a stalled read fails instead of hanging the task)."""
    connect_timeout_s: float = 10.0
    """Longest wait to connect to the object store."""
    attempts: int = 4
    """Tries of one remote operation that fails transiently (timeout, connection, throttling), with
    exponential backoff between them; each retry is counted in run.json `io`."""
    backoff_s: float = 0.5
    """Wait before the first retry; doubled for each further one (capped at 30 s), with jitter."""

    def __post_init__(self):
        check(self.max_member_bytes >= 1, "io.max_member_bytes", "must be >= 1")
        check(
            self.max_sample_bytes >= self.max_member_bytes,
            "io.max_sample_bytes",
            "must be >= io.max_member_bytes",
        )
        check(self.request_timeout_s > 0, "io.request_timeout_s", "must be > 0")
        check(self.connect_timeout_s > 0, "io.connect_timeout_s", "must be > 0")
        check(self.attempts >= 1, "io.attempts", "must be >= 1")
        check(self.backoff_s >= 0, "io.backoff_s", "must be >= 0")


@dataclass
class LockConfig:
    """One job per OUT: the job holds `OUT/_state/lock.json` and refreshes its heartbeat while it runs."""

    stale_s: float = 60.0
    """A lock whose heartbeat is older than this is taken to belong to a dead job, and is taken over."""
    heartbeat_s: float = 5.0
    """How often the running job refreshes its lock's heartbeat."""

    def __post_init__(self):
        check(self.heartbeat_s > 0, "lock.heartbeat_s", "must be > 0")
        check(self.stale_s > 2 * self.heartbeat_s, "lock.stale_s", "must be more than twice lock.heartbeat_s")


@dataclass
class ResumeConfig:
    """What a rerun checks before it trusts a task's completion marker."""

    verify: str = "size"
    """size: every file the marker names exists with the size it records (one listing per directory);
    checksum: also reads every file and compares its sha256 (slow on a large run: reads everything)."""

    def __post_init__(self):
        check(self.verify in ("size", "checksum"), "resume.verify", "must be size or checksum")


@dataclass
class ProbeConfig:
    """Which inputs are usable at all."""

    min_duration_s: float = 2.0
    """Shorter videos are recorded as errors (`too_short`): they cannot yield a clip."""
    timeout_s: float = 60.0

    def __post_init__(self):
        check(self.min_duration_s >= 0, "probe.min_duration_s", "must be >= 0")
        check(self.timeout_s > 0, "probe.timeout_s", "must be > 0")


@dataclass
class SceneConfig:
    """Shot boundary detection on downscaled frames: PySceneDetect, TransNetV2, or both."""

    detector: Literal["adaptive", "content", "transnetv2", "hybrid"] = "adaptive"
    """adaptive | content: PySceneDetect, hard cuts only (a dissolve becomes one cut somewhere inside it).
    transnetv2: the TransNetV2 network (`curation/transnet.py`): hard cuts, and gradual transitions as
    frame spans that no clip may overlap (fades and dissolves; it does not see wipes and slides between
    test patterns). hybrid: PySceneDetect's adaptive detector for hard cuts plus TransNetV2's gradual
    spans."""
    width: int = 256
    """Frames are scaled to this width for detection (PySceneDetect's own default downscale target)."""
    min_shot_frames: int = 2
    """Minimum shot length the detector may report. Kept small so that short shots are found and
    dropped by the clip rules instead of being merged into a neighbour with a cut inside it."""
    adaptive_threshold: float = 3.0
    adaptive_window: int = 2
    min_content_val: float = 15.0
    content_threshold: float = 27.0
    transnet_threshold: float = 0.5
    """TransNetV2: a frame is a transition when a head's probability exceeds this (the model's own
    default). Hard cuts are placed where the single-frame head passes it."""
    transnet_span_threshold: float = 0.2
    """TransNetV2: a gradual transition spans the frames where either head exceeds this. On 24 fades,
    dissolves and fades through black or white of 0.5-1.5 s (random pairs of test patterns), at 0.2 no
    more than 0.04 s of a blend was left outside its span, at 0.3 0.08 s, at 0.5 up to 0.68 s (and
    some blends came out as cuts); 0.1 leaves none out but takes a third more frames from the shots."""
    transnet_min_gradual_frames: int = 6
    """TransNetV2: a transition region this long or longer is gradual, unless the picture changes at its
    hard cuts only (`curation.transnet.CUT_SHARE`); a shorter one holds hard cuts. Measured above
    `transnet_span_threshold`: a hard cut 1-4 frames (up to 9 after some cuts), a 2- or 3-frame shot
    between two cuts up to 5, a 4- or 5-frame one 6-8, a 0.5 s blend at 25 fps 9 or more."""
    transnet_merge_frames: int = 10
    """TransNetV2: transition regions this close together are one transition if one is gradual: a fade
    through black or white reads as two regions up to 6 frames apart (merging none of them leaves up to
    0.44 s of the fade in shots); a cut this close to a gradual span becomes part of it."""
    transnet_batch: int | None = None
    """TransNetV2 windows (100 frames each, 50 new) per forward pass; None: 8 on a GPU, where batches pay
    off, and 1 on a CPU, where one window per pass was fastest (2 threads: about 130 frames/s at 1, 70
    at 8, and 5x the memory)."""
    transnet_device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when torch sees a GPU, else cpu."""
    num_gpus: float = 0.0
    """GPUs reserved for each split task (for transnetv2/hybrid on cuda); 0 runs on CPUs only."""
    fast_decode: bool = True
    """Skip the H.264/HEVC loop filter while decoding for detection: much cheaper, same cuts at 256 px."""
    min_decoded_fraction: float = 0.9
    """A video that decodes to fewer frames than this share of its probed count is `truncated`."""
    timeout_s: float = 1800.0

    def __post_init__(self):
        check(self.width >= 32, "scenes.width", "must be >= 32")
        check(self.min_shot_frames >= 1, "scenes.min_shot_frames", "must be >= 1")
        check(self.adaptive_window >= 1, "scenes.adaptive_window", "must be >= 1")
        check(0 < self.transnet_threshold < 1, "scenes.transnet_threshold", "must be in (0, 1)")
        check(
            0 < self.transnet_span_threshold <= self.transnet_threshold,
            "scenes.transnet_span_threshold",
            "must be in (0, scenes.transnet_threshold]",
        )
        check(self.transnet_min_gradual_frames >= 2, "scenes.transnet_min_gradual_frames", "must be >= 2")
        check(self.transnet_merge_frames >= 1, "scenes.transnet_merge_frames", "must be >= 1")
        check(
            self.transnet_batch is None or self.transnet_batch >= 1, "scenes.transnet_batch", "must be >= 1"
        )
        check(self.num_gpus >= 0, "scenes.num_gpus", "must be >= 0")
        check(0 < self.min_decoded_fraction <= 1, "scenes.min_decoded_fraction", "must be in (0, 1]")


@dataclass
class ClipConfig:
    """Rules that turn shots into candidate clips."""

    min_clip_s: float = 2.0
    """Shots shorter than this (after trimming) are dropped with reason `duration<MIN`."""
    max_clip_s: float = 10.0
    """Longer shots are split into even windows no longer than this."""
    trim_s: float = 0.1
    """Trimmed from both ends of every shot so transition frames stay out of clips."""

    def __post_init__(self):
        check(self.min_clip_s > 0, "clips.min_clip_s", "must be > 0")
        check(self.max_clip_s >= self.min_clip_s, "clips.max_clip_s", "must be >= clips.min_clip_s")
        check(self.trim_s >= 0, "clips.trim_s", "must be >= 0")


@dataclass
class TranscodeConfig:
    """How kept clips are cut and encoded (H.264, yuv420p, even dimensions)."""

    max_short_side: int | None = None
    """Downscale so the short side is at most this; null keeps the source resolution."""
    fps: float | None = None
    """Resample to this frame rate; null keeps the source's."""
    crf: int = 22
    preset: str = "veryfast"
    keep_audio: bool = False
    crop_bars: bool = False
    """Crop letterbox/pillarbox bars away (one box per video, found on the detection frames with
    `scoring.frames.bar_level`). Clips of such a video are then encoded once detection is done."""
    clips_per_process: int = 32
    """Most clips cut by one ffmpeg process: the source is decoded (and encoded) once for all of them."""
    seconds_per_process: float = 60.0
    """A group is also started once this much clip time is waiting, so encoding overlaps detection."""
    workers: int = 2
    """ffmpeg processes running at once within a task."""
    threads: int = 0
    """Encoder threads per ffmpeg process; 0 lets x264 choose."""
    thumbnail_short_side: int = 256
    timeout_s: float = 1800.0

    def __post_init__(self):
        check(self.max_short_side is None or self.max_short_side >= 16, "transcode.max_short_side", ">= 16")
        check(self.fps is None or self.fps > 0, "transcode.fps", "must be > 0")
        check(0 <= self.crf <= 51, "transcode.crf", "must be in 0..51")
        check(self.preset in X264_PRESETS, "transcode.preset", f"must be one of {', '.join(X264_PRESETS)}")
        # each clip is one term of ffmpeg select expressions, which parse at most 100 terms
        check(1 <= self.clips_per_process <= 64, "transcode.clips_per_process", "must be in 1..64")
        check(self.seconds_per_process > 0, "transcode.seconds_per_process", "must be > 0")
        check(self.workers >= 1, "transcode.workers", "must be >= 1")
        check(self.threads >= 0, "transcode.threads", "must be >= 0")


@dataclass
class ShardConfig:
    """Webdataset shard parts roll over at whichever limit comes first."""

    max_clips: int = 1000
    max_bytes: int = 1_000_000_000
    keep_dropped: bool = False
    """Also write clips dropped by a score filter to OUT/dropped/ shards, for inspection."""

    def __post_init__(self):
        check(self.max_clips >= 1, "shards.max_clips", "must be >= 1")
        check(self.max_bytes >= 1, "shards.max_bytes", "must be >= 1")


@dataclass
class ResourcesConfig:
    """Ray resources per stage (logical CPUs reserved per task)."""

    split_cpus: float = 1.0
    """CPUs per split task (probe, scene detection, transcode)."""
    write_cpus: float = 0.25
    score_cpus: float = 1.0
    """CPUs per CPU-scoring task (motion, quality)."""
    aesthetic_actors: int = 1
    """Actors in the aesthetic scoring pool (each loads the model once; GPUs per actor are
    `scoring.aesthetic.num_gpus`)."""
    aesthetic_cpus: float = 1.0
    aesthetic_memory_gb: float = 2.0
    """Memory reserved per aesthetic actor (the CLIP ViT-L/14 model and its batches)."""
    text_actors: int = 0
    """Where text detection (`scoring.text`) runs. 0: inside the CPU scoring task, its model loaded once per
    worker process, on the CPU: detection takes about 0.1-0.2 s of one core per clip (a few % of curate's
    CPU time), and a pool of its own would split the task in two, with a trip through the object store
    between, and cost split tasks a slot (`benchmarks/text_cost.py`: +16 % wall on 2 cores, none in the
    task). N: a pool of N actors after the aesthetic one, for the GPU (`scoring.text.num_gpus`,
    onnxruntime-gpu); a pool is used whenever `scoring.text.num_gpus` is set. On the CPU one actor detects
    about 10 clips a second."""
    text_cpus: float = 1.0
    """CPUs per text actor (with `text_actors` > 0), and its onnxruntime threads (rounded, at least 1)."""
    task_memory_gb: float = 1.0
    """Memory reserved per split and scoring task (they hold a whole task's clips), so Ray does not
    start more of them than the node holds and the OOM killer does not loop over them."""
    task_retries: int = 3
    """Times a task is started again after its worker died (killed, out of memory, node lost); then
    its videos are recorded as `transient_exhausted` and a rerun tries them again."""
    transient_attempts: int = 3
    """Attempts at one video when it fails transiently (timeout, killed ffmpeg, full disk, remote read)."""

    def __post_init__(self):
        check(self.split_cpus > 0, "resources.split_cpus", "must be > 0")
        check(self.write_cpus > 0, "resources.write_cpus", "must be > 0")
        check(self.score_cpus > 0, "resources.score_cpus", "must be > 0")
        check(self.aesthetic_actors >= 1, "resources.aesthetic_actors", "must be >= 1")
        check(self.aesthetic_memory_gb > 0, "resources.aesthetic_memory_gb", "must be > 0")
        check(self.text_actors >= 0, "resources.text_actors", "must be >= 0")
        check(self.text_cpus >= 0, "resources.text_cpus", "must be >= 0")
        check(self.task_memory_gb > 0, "resources.task_memory_gb", "must be > 0")
        check(self.task_retries >= 0, "resources.task_retries", "must be >= 0")
        check(self.transient_attempts >= 1, "resources.transient_attempts", "must be >= 1")


@dataclass
class CurateConfig:
    """Everything `reelmill curate` does, section by section."""

    input: InputConfig = field(default_factory=InputConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    scenes: SceneConfig = field(default_factory=SceneConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    io: IOConfig = field(default_factory=IOConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)

    @property
    def scores_anything(self) -> bool:
        s = self.scoring
        return s.motion.enabled or s.quality.enabled or s.aesthetic.enabled or s.text.enabled
