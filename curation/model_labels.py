"""Which kind of weights a run's models are: the `models` label of run.json, logs, checkpoints and exports.

Every tiny random-weight builder (`curation.scoring.tiny_models`, `captioning.tiny_vlm`,
`training.tiny_encoders`, `training.evaluation.tiny_models`) writes `RANDOM_WEIGHTS_FILE` at the top of
the directory it fills. Jobs look for it beside every model they load, so an output made with a stand-in
says `models: random-weights` whoever started the job (the demo, a test, a user pointing a config at a
stand-in by hand) and can never pass for the output of a real model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

RANDOM_WEIGHTS_FILE = "reelmill-random-weights.json"
"""Written at the top of every tiny model directory; `is_random_weights` looks for it."""

RANDOM_WEIGHTS = "random-weights"
PRETRAINED = "pretrained"
NO_MODELS = "none"


def write_marker(directory: str | Path, builder: str, seed: int) -> None:
    """Mark `directory` as holding random weights written by `builder` (a dotted function name)."""
    info = {"models": RANDOM_WEIGHTS, "builder": builder, "seed": seed}
    (Path(directory) / RANDOM_WEIGHTS_FILE).write_text(json.dumps(info, indent=2))


def is_random_weights(model: str | None) -> bool:
    """Whether `model` (a directory, a file in one such as a checkpoint or a head's weights, or an
    open_clip `local-dir:` name) was written by a tiny builder. Hub ids and open_clip names or tags are
    no local path, so they are never marked."""
    if not model:
        return False
    path = Path(str(model).removeprefix("local-dir:"))
    if not path.exists():
        return False
    # a file's directory, and a model's parent: the Wan layout keeps vae/ and text_encoder/ under the marker
    return any((p / RANDOM_WEIGHTS_FILE).is_file() for p in (path, path.parent))


def models_label(models: Iterable[str | None], extra: str | None = None) -> str:
    """The label of a run that loaded `models` (every path, name or tag the job reads weights from; None
    for a setting left unset): `random-weights` when any is a tiny stand-in, or when `extra` (a label a
    caller knows of, e.g. from the run that made the job's input) says so; `none` when the job loaded no
    model; else `pretrained`."""
    named = [m for m in models if m]
    if extra == RANDOM_WEIGHTS or any(is_random_weights(m) for m in named):
        return RANDOM_WEIGHTS
    return PRETRAINED if named else NO_MODELS
