"""Quarantine, never abort: how a failure on one item (a video, a clip, a sample, a shard) is recorded.

Three kinds of failure, and what each becomes:

- **about the input** (not a video, truncated, a record with wrong types): a row with a reason code,
  permanent; stages raise `InputRejected` or return the reason themselves;
- **transient** (a timeout, a killed ffmpeg, a full disk, a remote read error, a dead worker): not a
  fact about the item, so the item is tried again (`retry_transient`) and, once the attempts are spent,
  recorded as `transient_exhausted`; a rerun of the job tries it again;
- **a bug of ours** (any other exception): an `internal_error` row with the exception type, message and
  a short traceback, counted in run.json so it is seen and fixed, while the job goes on.
"""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"
TRANSIENT_EXHAUSTED = "transient_exhausted"

TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.ENOMEM, errno.ETIMEDOUT,
                    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                    errno.ENETUNREACH, errno.EHOSTUNREACH}  # fmt: skip
"""OSError numbers that say something about the machine or the network, not the file."""

T = TypeVar("T")


class TransientError(RuntimeError):
    """A failure that another attempt may not see (raised by our code to say so explicitly)."""


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is about the moment (retry) rather than the item (record) or our code (bug)."""
    from curation.ffmpeg_tools import FFmpegError  # noqa: PLC0415 (ffmpeg_tools imports nothing of ours)

    if isinstance(exc, TransientError | TimeoutError | subprocess.TimeoutExpired | socket.timeout):
        return True
    if isinstance(exc, FFmpegError):
        return exc.timed_out or exc.killed or exc.out_of_space or exc.network_error
    if isinstance(exc, ConnectionError | MemoryError):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError):
        if exc.errno in TRANSIENT_ERRNOS:
            return True
        # pyarrow and fsspec raise plain OSError (errno None) for failed remote reads
        return exc.errno is None and any(
            w in str(exc).lower() for w in ("timed out", "timeout", "connection")
        )
    return False


def short_traceback(exc: BaseException, frames: int = 4) -> str:
    """The innermost frames of `exc`'s traceback: enough to find the line, small enough for a manifest."""
    tb = traceback.extract_tb(exc.__traceback__)[-frames:]
    return "".join(traceback.format_list(tb)).rstrip()


def describe(exc: BaseException) -> str:
    """`Type: message`, capped, for a manifest's `error` column."""
    return f"{type(exc).__name__}: {exc}"[:500]


def internal_error_row(exc: BaseException, stage: str) -> dict:
    """The manifest fields for a bug of ours met on one item."""
    log.warning("internal error in %s: %s", stage, describe(exc), exc_info=exc)
    return {
        "error_code": INTERNAL_ERROR,
        "error": f"{stage}: {describe(exc)}",
        "traceback": short_traceback(exc),
    }


def retry_transient(fn: Callable[[], T], attempts: int, what: str, backoff_s: float = 0.5) -> T:
    """`fn()`, tried up to `attempts` times while it fails transiently; the last transient failure, or
    any other exception, propagates."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            log.warning("%s failed (attempt %d of %d), retrying: %s", what, attempt, attempts, describe(exc))
            time.sleep(backoff_s * attempt)
    raise AssertionError("unreachable")


def drop_clip(record, exc: BaseException, stage: str) -> None:
    """Drop one clip (a `ClipRecord`) that a stage failed on: `transient_exhausted` when the failure was
    about the moment (a rerun tries it again), else `internal_error`; the message goes into `errors`."""
    if is_transient(exc):
        reason, message = TRANSIENT_EXHAUSTED, describe(exc)
    else:
        reason, message = INTERNAL_ERROR, internal_error_row(exc, stage)["error"]
    record.kept, record.drop_reason = False, reason
    record.errors.append({"stage": stage, "message": message})
