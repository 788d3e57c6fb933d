"""The effective config of `curate`, `recaption` and `encode`, built once for running and for printing.

A job runs with dataclass defaults, then its preset or `--config` file, then every `--set`, then the
flag shorthands (`--keep-dropped`, `--videos-per-task`, `--vae`, `--text-encoder`). Building that config
in one place means `--print-config` shows exactly what the job would run with, and its YAML output,
passed back as `--config`, loads into the same config.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from curation import config as config_lib
from jobs.job_configs import CurateJobConfig, EncodeConfig, RecaptionConfig

JOB_CONFIGS: dict[str, type] = {
    "curate": CurateJobConfig,
    "recaption": RecaptionConfig,
    "encode": EncodeConfig,
}
"""The commands whose config `--print-config` prints; the key is also the folder of their presets."""


def shorthand_overrides(args: argparse.Namespace) -> list[str]:
    """`--set` assignments, then those the command's shorthand flags stand for (so a flag wins over a
    `--set` of the same key, as it always has)."""
    overrides = list(args.overrides)
    if getattr(args, "keep_dropped", False):
        overrides.append("shards.keep_dropped=true")
    if getattr(args, "videos_per_task", None) is not None:
        overrides.append(f"input.videos_per_task={args.videos_per_task}")
    if getattr(args, "vae", None) is not None:
        overrides.append(f"vae.model={args.vae}")
    if getattr(args, "text_encoder", None) is not None:
        overrides.append(f"text_encoder.model={args.text_encoder}")
    return overrides


def job_config(args: argparse.Namespace) -> Any:
    """The config `args.command` runs with; a bad key or value raises ConfigError naming the key."""
    return config_lib.load(JOB_CONFIGS[args.command], args.command, args.config, shorthand_overrides(args))


def config_yaml(command: str, cfg: Any) -> str:
    """`cfg` as YAML that `--config` loads back into an equal config: every key, in the dataclasses'
    order (the order of the presets and of run.json), none left to a default that could change."""
    header = (
        f"# reelmill {command}: the effective config (defaults, --config, --set, flags).\n"
        f"# Run with it: reelmill {command} --config THIS_FILE.yaml ...\n"
    )
    body = yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False, default_flow_style=False, width=110)
    return header + body
