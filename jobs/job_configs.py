"""The configs of the jobs: `curate` (the curation stages plus captioning), `recaption`, `encode` and `dedup`.

They live here, not in `curation/`, because dependencies point one way (captioning -> curation): the
curation stages read the `CurateConfig` part, the captioning stages the `captioning` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from captioning.caption_config import CaptionConfig, check_caption_rules
from captioning.report.config import ReportConfig
from curation.config import check
from curation.curate_config import CurateConfig, IOConfig, LockConfig, ResumeConfig, ShardConfig
from training.encoders import TextEncoderConfig, VAEConfig


@dataclass
class CurateJobConfig(CurateConfig):
    """Everything `reelmill curate` does: the curation sections, then captioning of the kept clips."""

    captioning: CaptionConfig = field(default_factory=CaptionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self):
        check_caption_rules(self.filters.rules, self.captioning)


NOT_IN_FINGERPRINT = (
    "report",
    "lock",
    "resume",
    "io.request_timeout_s",
    "io.connect_timeout_s",
    "io.attempts",
    "io.backoff_s",
)
"""Config sections and keys that do not change what a job writes to its shards: changing them never
blocks a resume."""


@dataclass
class RecaptionInputConfig:
    """How the input shards are grouped into tasks (the unit of parallelism and of resume)."""

    shards_per_task: int = 1
    """Input shards per task; each task writes its own output shards `shard-TTTTTT-PPP.tar`."""
    timeout_s: float = 3600.0
    """Longest time reading one input shard may take."""

    def __post_init__(self):
        check(self.shards_per_task >= 1, "input.shards_per_task", "must be >= 1")
        check(self.timeout_s > 0, "input.timeout_s", "must be > 0")


@dataclass
class RecaptionConfig:
    """Everything `reelmill recaption` does: read shards, caption their clips, write new shards."""

    input: RecaptionInputConfig = field(default_factory=RecaptionInputConfig)
    io: IOConfig = field(default_factory=IOConfig)
    captioning: CaptionConfig = field(default_factory=CaptionConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    """Output shard limits; `keep_dropped` writes clips whose captioning failed to OUT/dropped/."""
    read_cpus: float = 1.0
    """CPUs per task that reads a shard and prepares its frames."""
    write_cpus: float = 0.25
    report: ReportConfig = field(default_factory=ReportConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)

    def __post_init__(self):
        check(self.read_cpus > 0, "read_cpus", "must be > 0")
        check(self.write_cpus > 0, "write_cpus", "must be > 0")


@dataclass
class EncodeFramesConfig:
    """Which frames of a clip are encoded: the same decode (`training.data.decode_clip`) that training
    on clip shards uses, so a latent shard holds exactly what the data module would have fed the VAE."""

    num_frames: int = 61
    """Frames per clip (Wan's VAE takes 4k+1: 61 -> 16 latent frames)."""
    fps: float = 16.0
    """Frame rate the clip is resampled to before the frames are taken."""
    height: int = 256
    width: int = 256
    crop: str = "start"
    """Where the window of `num_frames` is taken: start | center (deterministic: one latent per clip)."""

    def __post_init__(self):
        check(self.num_frames >= 1, "frames.num_frames", "must be >= 1")
        check(self.fps > 0, "frames.fps", "must be > 0")
        check(self.height >= 8 and self.width >= 8, "frames.height", "height and width must be >= 8")
        check(self.crop in ("start", "center"), "frames.crop", "must be start or center")


@dataclass
class EncodeShardConfig:
    clips_per_shard: int = 64
    """Samples per output shard part; also how many decoded clips travel together through the pipeline
    (64 clips of 61x256x256 frames are about 770 MB), so it bounds the job's memory."""

    def __post_init__(self):
        check(self.clips_per_shard >= 1, "shards.clips_per_shard", "must be >= 1")


@dataclass
class EncodeConfig:
    """Everything `reelmill encode` does: clip shards in, latent shards out (VAE latents, text embeddings)."""

    input: RecaptionInputConfig = field(default_factory=RecaptionInputConfig)
    io: IOConfig = field(default_factory=IOConfig)
    frames: EncodeFramesConfig = field(default_factory=EncodeFramesConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    device: str = "auto"
    """Where the encoders run: auto (cuda when the actor has a GPU), cpu, cuda."""
    batch_size: int = 4
    """Clips per VAE and text-encoder call inside an actor."""
    actors: int = 1
    """Encoder actors (each holds the VAE and the text encoder)."""
    num_gpus: float | None = None
    """GPUs per actor; None: 1 when the Ray cluster has GPUs, else 0."""
    cpus: float = 1.0
    """CPUs per actor."""
    memory_gb: float = 4.0
    """Memory reserved per actor (also keeps Ray Data from fusing the decode tasks into the actors)."""
    read_cpus: float = 1.0
    """CPUs per task that reads a task's shards and decodes its clips."""
    write_cpus: float = 0.25
    shards: EncodeShardConfig = field(default_factory=EncodeShardConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)

    def __post_init__(self):
        check(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.actors >= 1, "actors", "must be >= 1")
        check(self.num_gpus is None or self.num_gpus >= 0, "num_gpus", "must be >= 0")
        check(self.cpus > 0, "cpus", "must be > 0")
        check(self.memory_gb > 0, "memory_gb", "must be > 0")
        check(self.read_cpus > 0, "read_cpus", "must be > 0")
        check(self.write_cpus > 0, "write_cpus", "must be > 0")


@dataclass
class DedupConfig:
    """Everything `reelmill dedup` does: semantic near-duplicates among a run's kept clips, from the CLIP
    embeddings curate wrote (`manifest/embeddings/`), marked in `manifest/dedup/`; shards stay as they are."""

    threshold: float = 0.95
    """A clip is a duplicate of a kept clip when the cosine similarity of their (mean-of-frames, L2
    normalised) CLIP embeddings exceeds this. 0.95: with CLIP ViT-L/14, re-encodes, resizes and small
    crops of one shot stay above ~0.97, different shots of one scene mostly fall below ~0.93 (docs/dedup.md)."""
    target_cluster_size: int = 1000
    """k-means gets k = ceil(kept clips / this) clusters (one for a tiny run); each clip is compared only
    with the clips of its cluster (and its `probe` nearest), so the work is about n x this."""
    probe: int = 3
    """Nearest clusters each clip is compared in: its own, then `probe - 1` more, which finds most pairs
    that straddle a cluster boundary (1: its own only, as plain cluster-based dedup). On the benchmark's
    200k clips, recall of injected copies is 0.930 / 0.992 / 0.998 at probe 1 / 2 / 3 for 1 / 1.4 / 1.7
    times the CPU time."""
    keep_by: list[str] = field(default_factory=lambda: ["scores.aesthetic", "duration_s"])
    """Of two duplicates the one kept is the better by these `manifest/clips` columns, each descending,
    missing values last; then the smaller clip_id, so ties are broken the same on every run."""
    seed: int = 0
    """Seeds the k-means sample and initialisation."""
    kmeans_iterations: int = 20
    kmeans_max_points_per_centroid: int = 256
    """k-means is trained on at most this many clips per cluster (a sample; every clip is assigned)."""
    device: str = "auto"
    """Where faiss runs k-means and the assignment: auto (a GPU when faiss sees one), cpu, gpu."""
    task_clips: int = 50_000
    """Clips per Ray task of the per-cluster pass (whole clusters are packed up to about this)."""
    cpus: float = 1.0
    """CPUs per Ray task of the per-cluster pass."""
    io: IOConfig = field(default_factory=IOConfig)
    """How shards are read by `--materialize` (limits on members, compressed tars), and remote I/O."""
    lock: LockConfig = field(default_factory=LockConfig)

    def __post_init__(self):
        check(-1.0 <= self.threshold <= 1.0, "threshold", "must be a cosine similarity in [-1, 1]")
        check(self.target_cluster_size >= 1, "target_cluster_size", "must be >= 1")
        check(self.probe >= 1, "probe", "must be >= 1")
        check(len(self.keep_by) == len(set(self.keep_by)), "keep_by", "lists a column twice")
        check(self.kmeans_iterations >= 1, "kmeans_iterations", "must be >= 1")
        check(self.kmeans_max_points_per_centroid >= 1, "kmeans_max_points_per_centroid", "must be >= 1")
        check(self.device in ("auto", "cpu", "gpu"), "device", "must be auto, cpu or gpu")
        check(self.task_clips >= 1, "task_clips", "must be >= 1")
        check(self.cpus > 0, "cpus", "must be > 0")
