"""What a job's run.json and summary line say about items that failed, the same in every job.

`errors` (items, in error, their share, internal errors, items to retry) is what `--max-error-fraction`
is checked against; a task's marker with items to retry does not let a rerun skip the task
(`curation.resume.finished`).
"""

from __future__ import annotations


def failure_note(counts: dict) -> str:
    """What a summary line adds when items failed for reasons other than their content."""
    notes = [
        f"{counts[key]} {what}"
        for key, what in (
            ("internal_errors", "internal errors (a bug: see the manifests' traceback/errors)"),
            ("transient_exhausted", "items to retry (transient failures: run the same command again)"),
        )
        if counts.get(key)
    ]
    return f"; {'; '.join(notes)}" if notes else ""


def error_summary(items: int, in_error: int, counts: dict) -> dict:
    """run.json's `errors` section, the same in every job: what `--max-error-fraction` is checked against."""
    return {
        "items": items,
        "in_error": in_error,
        "fraction": in_error / items if items else 0.0,
        "internal_errors": counts.get("internal_errors", 0),
        "transient_exhausted": counts.get("transient_exhausted", 0),
    }


def lost_tasks(pending: list, returned: set[int]) -> list:
    """The pending tasks that came back from the pipeline with nothing (their retries spent): they keep
    no marker, so a rerun runs them again."""
    return [t for t in pending if t.task_id not in returned]


def tasks_section(total: int, run_now: int, skipped_done: int, failed: int, redone: dict) -> dict:
    """run.json's `tasks`, the same in every job: how many there are, ran now, were done already (their
    markers trusted), failed for good, and were redone because their markers were not (`curation.resume`)."""
    return {
        "total": total,
        "run_now": run_now,
        "skipped_done": skipped_done,
        "failed": failed,
        "redone": redone,
    }


def io_report(io_cfg, retries: int) -> dict:
    """run.json's `io`: remote operations retried in this run (every task's and the driver's), and the
    limits they ran under (`io.*` in the config)."""
    return {
        "retries": retries,
        "request_timeout_s": io_cfg.request_timeout_s,
        "connect_timeout_s": io_cfg.connect_timeout_s,
        "attempts": io_cfg.attempts,
    }
