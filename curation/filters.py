"""The keep/drop decision over a clip's scores, and the counts of what each rule dropped.

`decide` walks the configured rules in order and returns `(keep, reason)` in the datatrove
style; the reason is the first failing rule written as `score<min` or `score>max` with the
threshold as configured (`motion<0.0012`, `brightness>0.95`), so manifests can be grouped by it.
A score that is null (its scorer was off, or it could not be measured) never fails a rule, and
`score-only` mode keeps everything.

Rules read a clip's `scores`, its camera label (`camera`) and its caption scores (`rule_values`):
`caption_alignment` and `caption_alignment_margin` live in `caption_metrics.alignment` (`summary`,
`margin`), which exist only after the caption alignment stage; before it they are null and pass, so
the same rules can be applied before captioning and again after it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from curation.scoring_config import CAPTION_SCORES, FilterConfig, FilterRule


def check_rule(rule: FilterRule, value: float | str | None) -> str | None:
    """The drop reason if `value` fails `rule`, else None (a null or non-finite value passes)."""
    if rule.drop is not None:  # a camera label
        return f"{rule.score}={value}" if value in rule.drop else None
    if value is None or not math.isfinite(value):
        return None
    if rule.min is not None and value < rule.min:
        return f"{rule.score}<{rule.min:g}"
    if rule.max is not None and value > rule.max:
        return f"{rule.score}>{rule.max:g}"
    return None


def caption_scores(caption_metrics: Mapping | None) -> dict[str, float | None]:
    """The caption scores rules read, from a record's `caption_metrics` (null where not measured)."""
    alignment = (caption_metrics or {}).get("alignment") or {}
    return {name: alignment.get(key) for name, key in CAPTION_SCORES.items()}


def rule_values(record) -> dict[str, float | str | None]:
    """Everything a rule may name, of one clip record: its scores, camera label and caption scores."""
    return {
        **record.scores,
        "camera": (record.camera or {}).get("label"),
        **caption_scores(record.caption_metrics),
    }


def rule_reasons(rule: FilterRule) -> list[str]:
    """Every drop reason `rule` can give, as `check_rule` spells them."""
    if rule.drop is not None:
        return [f"{rule.score}={label}" for label in rule.drop]
    out = []
    if rule.min is not None:
        out.append(f"{rule.score}<{rule.min:g}")
    if rule.max is not None:
        out.append(f"{rule.score}>{rule.max:g}")
    return out


def decide(scores: Mapping[str, float | str | None], cfg: FilterConfig) -> tuple[bool, str | None]:
    """(keep, reason): the first rule in `cfg.rules` that the scores fail, or (True, None)."""
    if cfg.mode == "score-only":
        return True, None
    for rule in cfg.rules:
        reason = check_rule(rule, scores.get(rule.score))
        if reason is not None:
            return False, reason
    return True, None


@dataclass
class FilterStats:
    """How many clips were seen, kept, and dropped per reason; mergeable across tasks."""

    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def add(self, keep: bool, reason: str | None) -> None:
        self.seen += 1
        if keep:
            self.kept += 1
        else:
            self.dropped[reason or "unknown"] += 1

    def merge(self, other: FilterStats) -> FilterStats:
        self.seen += other.seen
        self.kept += other.kept
        self.dropped.update(other.dropped)
        return self

    def as_dict(self) -> dict:
        """Plain data for run.json, reasons most frequent first."""
        return {"seen": self.seen, "kept": self.kept, "dropped": dict(self.dropped.most_common())}


class ClipFilter:
    """`decide` with its config bound and a running FilterStats (one per task or actor)."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.stats = FilterStats()

    def __call__(self, scores: Mapping[str, float | None]) -> tuple[bool, str | None]:
        keep, reason = decide(scores, self.cfg)
        self.stats.add(keep, reason)
        return keep, reason
