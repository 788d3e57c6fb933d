"""The configs of the jobs that caption: `curate` (the curation stages plus captioning) and `recaption`.

They live here, not in `curation/`, because dependencies point one way (captioning -> curation): the
curation stages read the `CurateConfig` part, the captioning stages the `captioning` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from captioning.caption_config import CaptionConfig
from captioning.report.config import ReportConfig
from curation.config import check
from curation.curate_config import CurateConfig, ShardConfig


@dataclass
class CurateJobConfig(CurateConfig):
    """Everything `reelmill curate` does: the curation sections, then captioning of the kept clips."""

    captioning: CaptionConfig = field(default_factory=CaptionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


NOT_IN_FINGERPRINT = ("report",)
"""Config sections that do not change what a job writes to its shards: changing them never blocks a resume."""


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
    captioning: CaptionConfig = field(default_factory=CaptionConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    """Output shard limits; `keep_dropped` writes clips whose captioning failed to OUT/dropped/."""
    read_cpus: float = 1.0
    """CPUs per task that reads a shard and prepares its frames."""
    write_cpus: float = 0.25
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self):
        check(self.read_cpus > 0, "read_cpus", "must be > 0")
        check(self.write_cpus > 0, "write_cpus", "must be > 0")
