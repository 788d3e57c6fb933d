"""`reelmill report OUT`: (re)build OUT/report/ from a run's outputs; also run at the end of `curate`
and `recaption` (`report.enabled`).

The report's settings are the run's own `report` section (from its run.json), then `--set` overrides;
it runs in this process, with no Ray, reading the manifests and only the shards that hold sampled clips.
"""

from __future__ import annotations

from captioning.report.build import build_report
from captioning.report.collect import open_run
from captioning.report.config import ReportConfig
from curation import config as config_lib


def report_config(run_config: dict, overrides: list[str]) -> ReportConfig:
    """The run's `report` settings with `report.KEY=VALUE` overrides applied."""
    data = {"report": dict(run_config.get("report") or {})}
    for assignment in overrides:
        if not assignment.strip().startswith("report."):
            raise config_lib.ConfigError(f"--set {assignment!r}: report takes report.KEY=VALUE only")
        config_lib.apply_override(data, assignment)
    return config_lib.from_dict(ReportConfig, data["report"], prefix="report.")


def run_report(output: str, overrides: list[str] = (), compare: str | None = None, log=print) -> dict:
    """Build OUT/report/ (index.html, report.json, plots, contact sheets); returns report.json's content."""
    cfg = report_config(open_run(output).config, list(overrides))
    return build_report(output, cfg, compare=compare, log=log)


def report_after_job(output: str, cfg: ReportConfig, log=print) -> None:
    """The automatic report at the end of a job; a job's outputs stand even if the report cannot be made,
    so an input problem it meets is said, not raised (a bug still raises)."""
    if not cfg.enabled:
        return
    try:
        build_report(output, cfg, log=log)
    except config_lib.ConfigError as exc:
        log(f"reelmill report: not built: {exc}; fix it and run `reelmill report {output}`")
