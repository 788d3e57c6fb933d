"""The configs of the jobs: `curate` (the curation stages plus captioning), `recaption` and `encode`.

They live here, not in `curation/`, because dependencies point one way (captioning -> curation): the
curation stages read the `CurateConfig` part, the captioning stages the `captioning` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from captioning.caption_config import CaptionConfig
from captioning.report.config import ReportConfig
from curation.config import check
from curation.curate_config import CurateConfig, IOConfig, LockConfig, ResumeConfig, ShardConfig
from training.encoders import TextEncoderConfig, VAEConfig


@dataclass
class CurateJobConfig(CurateConfig):
    """Everything `reelmill curate` does: the curation sections, then captioning of the kept clips."""

    captioning: CaptionConfig = field(default_factory=CaptionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


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
