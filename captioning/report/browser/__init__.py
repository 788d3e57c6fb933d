"""The clip browser (`OUT/report/clips.html`): every candidate clip of a run, kept and dropped, in a page
that filters, sorts, plays clips and simulates filter thresholds, with no server needed to browse.

`write_browser` is the one entry the report build calls: it streams the clip manifest into a compact
index (`data`), writes previews for a bounded sample (`previews`), the rejected inputs and the run's
facts, and the page itself (`page`), all under the report directory being built.
"""

from __future__ import annotations

from captioning.report.browser.data import location_of, write_index, write_rejected, write_run_facts
from captioning.report.browser.page import write_page
from captioning.report.browser.previews import PreviewSampler, write_previews
from captioning.report.browser.rules import rules_meta
from captioning.report.collect import RunOutputs, clip_key
from captioning.report.config import ReportConfig

__all__ = ["write_browser"]


def write_browser(run: RunOutputs, cfg: ReportConfig, directory: str, log=print) -> dict:
    """Write clips.html and browser/ under `directory` (the report being built); returns its counts."""
    sampler = PreviewSampler(cfg.browser_previews, cfg.seed)

    def on_row(number: int, row: dict) -> None:
        sampler.add(number, clip_key(row), location_of(row), row.get("shard"))

    log(f"reelmill report: clip browser, indexing the clips of {run.layout.root}")
    index = write_index(run, directory, {"job": run.job, **rules_meta(run.config)}, on_row=on_row, log=log)
    previews, failed = {}, {}
    if cfg.browser_previews:
        previews, failed = write_previews(run.layout.root, sampler.drawn(), directory, cfg, log)
    rejected = write_rejected(run, directory)
    # previews are known only after the pass over the manifest, so they travel with the run's facts
    write_run_facts(
        run,
        directory,
        {
            "previews": {str(row): paths for row, paths in previews.items()},
            "preview_errors": {str(row): why for row, why in failed.items()},
        },
    )
    write_page(directory, title=f"Clips · {run.layout.root}")
    return {**index, "previews": len(previews), "preview_errors": len(failed), "rejected": rejected}
