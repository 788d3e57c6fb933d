"""The run's filter rules as the browser simulates them: in order, each with the drop reasons it writes.

The page reproduces `curation.filters.decide` over the index (first failing rule wins, a null value
passes, camera rules drop labels), so it needs the rules exactly as configured and the reason strings
they produce (`motion<0.0012`), spelled here by the same code that writes them into manifests.
"""

from __future__ import annotations

from curation.filters import rule_reasons
from curation.scoring_config import CONTENT_BOX_NAMES, FilterRule


def rules_meta(config: dict) -> dict:
    """`filters.mode` and `filters.rules` of a run's config, each rule with its reasons."""
    filters = config.get("filters") or {}
    rules = []
    for rule in filters.get("rules") or []:
        parsed = FilterRule(
            score=rule["score"], min=rule.get("min"), max=rule.get("max"), drop=rule.get("drop")
        )
        rules.append({**vars(parsed), "reasons": rule_reasons(parsed)})
    named = {r["score"] for r in rules}
    return {
        "mode": filters.get("mode") or "filter",
        "rules": rules,
        # the picture box inside bars is a position, not a quality: a column only when a rule names it
        "hidden_scores": [n for n in CONTENT_BOX_NAMES if n not in named],
    }
