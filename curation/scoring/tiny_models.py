"""Tiny random-weight stand-ins for the aesthetic scorer's models, of the real architectures.

Used where the real weights cannot be had (tests, and `make demo` on a machine without them): an
open_clip VisionTransformer from a custom model config and a LAION-shaped aesthetic head, saved
to files and then loaded through exactly the path a user's weights take. Their scores mean
nothing; the directory carries `curation.model_labels.RANDOM_WEIGHTS_FILE`, so outputs made with them
are marked `models: random-weights`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch

from curation.model_labels import write_marker
from curation.scoring.aesthetic import AestheticHead

TINY_CLIP_NAME = "reelmill-tiny-vit"
TINY_CLIP = {
    "embed_dim": 768,  # what the LAION head takes
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 1,
    },  # open_clip's BPE vocab
}


def build_tiny_aesthetic_models(directory: str | Path, seed: int = 0) -> dict[str, str]:
    """Write a tiny CLIP (config + checkpoint) and a head to `directory`; returns the
    `scoring.aesthetic.*` settings that load them."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    config = d / f"{TINY_CLIP_NAME}.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    checkpoint = d / "tiny_clip.pt"
    with _random_weights_expected(TINY_CLIP_NAME):
        torch.save(open_clip.create_model(TINY_CLIP_NAME).state_dict(), checkpoint)
    head = AestheticHead(TINY_CLIP["embed_dim"])
    with torch.no_grad():
        head.layers[0].weight.mul_(300)  # spread the random scores over ~1 point, not 0.001
        head.layers[7].bias.fill_(5.0)  # centre them on the 0-10 scale
    head_path = d / "aesthetic_head.pth"
    torch.save(head.state_dict(), head_path)
    write_marker(d, "curation.scoring.tiny_models.build_tiny_aesthetic_models", seed)
    return {
        "clip_model": TINY_CLIP_NAME,
        "clip_pretrained": str(checkpoint),
        "clip_model_config": str(config),
        "head_weights": str(head_path),
    }


@contextlib.contextmanager
def _random_weights_expected(name: str) -> Iterator[None]:
    """open_clip warns on the root logger that a model built without weights is initialized randomly;
    here that is the point, so that one warning (for this model) is dropped."""
    notice = f"No pretrained weights loaded for model '{name}'"

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(notice)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
