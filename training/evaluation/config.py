"""The config of `reelmill eval` and of the training-time eval callback: which metric models to load.

Every model is named here (a path, an open_clip name, a hub id or a local directory) and loaded through its
library's loader; a missing one is a ConfigError naming the key. A metric is turned off with its
`enabled: false` (FVD: by leaving `fvd.network` empty), and eval.json says why it has no number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from curation.config import check


@dataclass
class FVDConfig:
    """Fréchet Video Distance between Gaussians fitted to a video network's features."""

    network: str | None = None
    """A TorchScript video network file: the standard I3D (`i3d_torchscript.pt`, as StyleGAN-V and
    common_metrics_on_video_quality use it) or any network taking [B, 3, T, H, W] in [-1, 1] and returning
    [B, D]. Empty: FVD is not computed (eval.json says so)."""


@dataclass
class ClipSimConfig:
    """CLIPSIM: text-frame cosine similarity of an open_clip model, averaged over frames."""

    enabled: bool = True
    model: str = "ViT-B-32"
    """An open_clip model name, `hf-hub:ID` or `local-dir:PATH`."""
    pretrained: str | None = "openai"
    """A pretrained tag of `model`, or a checkpoint file (empty or null for `hf-hub:` / `local-dir:`)."""
    model_config: str | None = None
    """A model config JSON to register with open_clip first, for an architecture it does not ship."""


@dataclass
class ConsistencyConfig:
    """Subject consistency: DINOv2 CLS embeddings of each frame against the first and the previous one."""

    enabled: bool = True
    model: str = "facebook/dinov2-small"
    """A transformers hub id or local directory of a DINOv2 model and its image processor."""


@dataclass
class SmoothnessConfig:
    """Frame-difference statistics and the curation motion scorer's `motion`, on every video."""

    enabled: bool = True
    reversal_threshold: float = 8.0
    """Grey levels (of 255): a pixel flickers where its change reverses sign between consecutive frame
    pairs and both changes are larger than this (smaller swings are codec and sampler noise)."""
    motion: bool = True
    """Also run the curation motion scorer (optical flow) on every video: `motion` of a frozen sample is
    ~0, and flicker alone does not raise it."""

    def __post_init__(self):
        check(self.reversal_threshold >= 0, "smoothness.reversal_threshold", "must be >= 0")


@dataclass
class EvalConfig:
    """Everything `reelmill eval` measures, and on what."""

    fvd: FVDConfig = field(default_factory=FVDConfig)
    clipsim: ClipSimConfig = field(default_factory=ClipSimConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    smoothness: SmoothnessConfig = field(default_factory=SmoothnessConfig)
    device: str = "auto"
    """Where the metric models run: auto (cuda when present), cpu, cuda, cuda:1, ..."""
    batch_size: int = 32
    """Frames (CLIP, DINOv2) or videos (FVD network) per forward pass."""

    def __post_init__(self):
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            "must be auto, cpu or cuda[:N]",
        )
