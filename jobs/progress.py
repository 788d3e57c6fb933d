"""A job's progress, one finished task at a time, for the data engineer watching it.

`curate`, `recaption` and `encode` consume their Ray Data pipeline one finished task at a time; each
task's summary goes to `TaskProgress.task_done`, which keeps running totals and shows them: in a log (stderr
is not a terminal) one line per task, on a terminal one tqdm bar redrawn in place. The same totals go to
OUT/run.json with `"state": "running"` as the job goes (at most every `write_every_s` seconds), so a run
can be watched from another machine; the job's final run.json replaces it with `"state": "finished"`.

    reelmill curate: tasks 3/8, 12 videos, 41 clips, 30 clips kept, 1.6 h of video in (96.0x real time),
    12.0 videos/min, elapsed 1:00, ETA 1:40

(one line). Tasks done before a rerun count as done; the other totals are this run's.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from curation import storage


@dataclass(frozen=True)
class Tally:
    """One running total: `label` as shown, summed over the task summaries' `keys` (a dict value, such as
    skip reasons with their counts, adds its counts)."""

    label: str
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        """Its key in run.json's `progress.counts`."""
        return self.label.replace(" ", "_")

    def of(self, summary: dict) -> int:
        total = 0
        for key in self.keys:
            value = summary.get(key) or 0
            total += sum(value.values()) if isinstance(value, dict) else value
        return total


def tally(label: str, *keys: str) -> Tally:
    return Tally(label, keys or (label,))


class TaskProgress:
    """Running totals over finished tasks, shown per task and written to run.json; a context manager
    around the loop over the pipeline's rows (on an exception, run.json says `"state": "failed"`).

    `tallies` are what each summary adds up (the first one's rate is shown); `seconds_key` names the
    summary's seconds of video in, where the job knows it. `header` (job, command, output, started_at ...)
    starts every partial run.json."""

    def __init__(
        self,
        job: str,
        run_json: str,
        total: int,
        tallies: tuple[Tally, ...],
        *,
        done_before: int = 0,
        seconds_key: str | None = None,
        header: dict | None = None,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        write_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.job, self.run_json, self.total, self.tallies = job, run_json, total, tallies
        self.done_before, self.seconds_key, self.header = done_before, seconds_key, dict(header or {})
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.write_every_s, self.clock = write_every_s, clock
        self.done_now = self.failed = 0
        self.counts = dict.fromkeys((t.name for t in tallies), 0)
        self.seconds_in = 0.0
        self.started = clock()
        self.last_write: float | None = None
        self.write_failed = False
        self.bar = None

    def __enter__(self) -> TaskProgress:
        self.started = self.clock()
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total, initial=self.done_before, desc=f"reelmill {self.job}", unit="task",
                file=self.stream, dynamic_ncols=True, smoothing=0,
            )  # fmt: skip
        self.write_running()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.bar is not None:
            self.bar.close()
        if exc is not None:
            state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self._write(state, {"error": f"{type(exc).__name__}: {exc}"})

    @property
    def done(self) -> int:
        return self.done_before + self.done_now

    def task_done(self, summary: dict) -> None:
        """Count one finished task (a summary with `failed` is a task that failed for good) and show it."""
        self.done_now += 1
        self.failed += "failed" in summary
        for t in self.tallies:
            self.counts[t.name] += t.of(summary)
        if self.seconds_key:
            self.seconds_in += summary.get(self.seconds_key) or 0.0
        if self.bar is not None:
            self.bar.set_postfix_str(self._totals(), refresh=False)
            self.bar.update(1)
        else:
            print(self.line(), file=self.stream, flush=True)
        self.write_running(force=self.done >= self.total)

    def elapsed(self) -> float:
        return max(self.clock() - self.started, 1e-9)

    def eta_s(self) -> float | None:
        """Seconds left at this run's pace so far; None before its first task."""
        if not self.done_now:
            return None
        return max(self.total - self.done, 0) * self.elapsed() / self.done_now

    def line(self) -> str:
        """The log line: tasks done/total, the totals, throughput and ETA."""
        eta = self.eta_s()
        first = self.tallies[0]
        rate = _rate(self.counts[first.name] / self.elapsed(), first.label)
        return (
            f"reelmill {self.job}: tasks {self.done}/{self.total}"
            + (f" ({self.failed} failed)" if self.failed else "")
            + f", {self._totals()}, {rate}, elapsed {_clock(self.elapsed())}, "
            + f"ETA {_clock(eta) if eta is not None else '?'}"
        )

    def _totals(self) -> str:
        parts = [f"{self.counts[t.name]} {t.label}" for t in self.tallies]
        if self.seconds_key:
            speed = self.seconds_in / self.elapsed()
            parts.append(f"{_video_length(self.seconds_in)} of video in ({speed:.1f}x real time)")
        return ", ".join(parts)

    def snapshot(self) -> dict:
        """The totals as run.json's `progress`."""
        elapsed = self.elapsed()
        out = {
            "counts": dict(self.counts),
            "elapsed_s": round(elapsed, 3),
            "per_s": {k: v / elapsed for k, v in self.counts.items()},
            "eta_s": self.eta_s(),
        }
        if self.seconds_key:
            out["hours_in"] = self.seconds_in / 3600
        return out

    def write_running(self, force: bool = False) -> None:
        """run.json with `"state": "running"`, unless one was written less than `write_every_s` ago."""
        now = self.clock()
        if force or self.last_write is None or now - self.last_write >= self.write_every_s:
            self.last_write = now
            self._write("running")

    def _write(self, state: str, extra: dict | None = None) -> None:
        run = {
            **self.header,
            "state": state,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tasks": {
                "total": self.total, "done": self.done, "skipped_done": self.done_before,
                "run_now": self.done_now, "failed": self.failed,
            },
            "progress": self.snapshot(),
            **(extra or {}),
        }  # fmt: skip
        try:
            storage.write_bytes(self.run_json, json.dumps(run, indent=1).encode())
        except OSError as exc:  # progress is for watching; the job's own outputs decide whether it failed
            if not self.write_failed:
                self.write_failed = True
                print(f"reelmill {self.job}: cannot write {self.run_json} ({exc})", file=self.stream)


def _clock(seconds: float) -> str:
    """1:05, 12:00, 2:03:04."""
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _video_length(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _rate(per_s: float, unit: str) -> str:
    """Per second, or per minute or hour where that shows a number of at least 1."""
    scale, per = next(((k, p) for k, p in ((1, "s"), (60, "min")) if per_s * k >= 1), (3600, "h"))
    return f"{per_s * scale:.1f} {unit}/{per}"
