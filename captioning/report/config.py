"""What the quality report samples and which CLIP model it scores caption-video alignment with."""

from __future__ import annotations

from dataclasses import dataclass

from curation.config import check
from curation.scoring_config import AestheticConfig

PREFIX = "report"


@dataclass
class ReportConfig:
    """`report` section of the curate and recaption configs, and `reelmill report --set report.KEY=V`.

    Changing it does not change what a run writes to its shards, so it never blocks a resume.
    """

    enabled: bool = True
    """Build OUT/report/ at the end of `curate` and `recaption` (`reelmill report OUT` builds it any time)."""
    max_clips: int = 200
    """Captioned clips drawn (uniformly, seeded) for the parts that decode video: CLIP alignment and
    the random examples. Everything else counts every clip of the run."""
    examples: int = 6
    """Clips shown in each gallery: worst aligned, random, longest captions; and most different
    captions when comparing runs."""
    camera_examples: int = 2
    """Kept clips shown per camera label (drawn uniformly per label, seeded)."""
    sheet_frames: int = 8
    """Frames on a clip's contact sheet, evenly spread over the clip."""
    frames_fps: float = 1.0
    """Frames per second decoded from a sampled clip for alignment and its contact sheet."""
    max_frames: int = 32
    """Most frames decoded per clip; a longer clip is sampled evenly at a lower rate."""
    max_pixels: int = 256 * 256
    """Decoded frames are scaled down (aspect kept) to at most this many pixels."""
    alignment: bool = True
    """Score caption-video alignment with CLIP; off, or when the model is missing, the page says why."""
    clip_model: str | None = None
    """open_clip model for alignment; unset: the run's `scoring.aesthetic.clip_model` (curate runs),
    else ViT-L-14."""
    clip_pretrained: str | None = None
    """Its pretrained tag or checkpoint file; unset: the run's `scoring.aesthetic.clip_pretrained`,
    else openai."""
    clip_model_config: str | None = None
    """A model config JSON for an architecture open_clip does not ship (as `scoring.aesthetic`)."""
    device: str = "auto"
    """`auto` (cuda when available), `cpu`, `cuda[:N]`."""
    duplicate_clips: int = 250_000
    """Exact and near-duplicate captions are looked for among the first this many captioned clips:
    the one statistic whose memory grows with the clips it covers (about 0.85 KB each at its peak)."""
    compare_clips: int = 10_000
    """When comparing runs: clips (a sample by key hash, the same keys in both runs) whose captions
    are compared text to text."""
    browser_previews: int = 48
    """Clips of the clip browser (clips.html) given a small playable mp4 and contact sheet, drawn (seeded)
    from the kept clips and the dropped clips that have media; `reelmill report OUT --serve` plays every
    clip without them. 0 writes none."""
    seed: int = 0

    def __post_init__(self):
        for key in ("max_clips", "examples", "sheet_frames", "duplicate_clips", "compare_clips"):
            check(getattr(self, key) >= 1, f"{PREFIX}.{key}", "must be >= 1")
        check(self.camera_examples >= 0, f"{PREFIX}.camera_examples", "must be >= 0")
        check(self.browser_previews >= 0, f"{PREFIX}.browser_previews", "must be >= 0")
        check(self.frames_fps > 0, f"{PREFIX}.frames_fps", "must be > 0")
        check(self.max_frames >= 2, f"{PREFIX}.max_frames", "must be >= 2")
        check(self.max_pixels >= 28 * 28, f"{PREFIX}.max_pixels", "must be >= 784")
        check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"{PREFIX}.device",
            "must be auto, cpu or cuda[:N]",
        )

    def clip_config(self, run_config: dict) -> AestheticConfig:
        """The CLIP model to score alignment with: this section's, else the run's aesthetic scorer's."""
        scorer = (run_config.get("scoring") or {}).get("aesthetic") or {}
        return AestheticConfig(
            clip_model=self.clip_model or scorer.get("clip_model") or "ViT-L-14",
            clip_pretrained=self.clip_pretrained or scorer.get("clip_pretrained") or "openai",
            clip_model_config=self.clip_model_config
            or (None if self.clip_model else scorer.get("clip_model_config")),
            device=self.device if self.device != "auto" else scorer.get("device") or "auto",
        )
