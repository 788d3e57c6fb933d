"""What the `reelmill` process prints besides its own lines: Python logging set up once, at CLI start.

Every log record is printed once. Some libraries put a handler of their own on their top logger
(lightning, huggingface_hub, transformers under CI) and still let records go on to the root logger, and the
root logger gets a handler of its own as soon as anything logs through it unconfigured (open_clip's
`logging.warning`): so every such line printed twice. Here the root logger has one handler, set up first,
which skips a record that a handler on its way up has printed already.

A few library notices that nobody can act on are dropped by message, each on its own (`NOTICES`,
`WARNINGS`); a library's other messages all still print.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings

NOTICES = {
    # an advertisement printed by every Trainer without a LitLogger
    "lightning.pytorch.utilities.rank_zero": r"💡 Tip: For seamless cloud logging",
}
"""logger name -> pattern of a message of that logger that is dropped."""

WARNINGS = (
    # torch deprecated LeafSpec; Lightning 2.6 still checks for it (on every fit), nothing to do on our side
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # our LightningModule transforms batches on the device on purpose, next to a LightningDataModule
    r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a "
    r"`LightningDataModule`",
)
"""Patterns of Python warnings (from libraries, about their own internals or our intended design) that are
not shown."""

_HANDLER_NAME = "reelmill"


class _NotPrintedYet(logging.Filter):
    """Keep a record at the root only when no handler on its way up has printed it."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if logger.handlers:
                return False
            logger = logger.parent if logger.propagate else None
        return True


def configure_logging() -> None:
    """One handler on the root logger (stderr), the library notices dropped, stdout line-buffered (so that
    in a log the job's lines and stderr's progress lines keep their order). Safe to call again."""
    root = logging.getLogger()
    if not any(h.name == _HANDLER_NAME for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.name = _HANDLER_NAME
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_NotPrintedYet())
        root.addHandler(handler)
    for name, pattern in NOTICES.items():
        drop_messages(name, pattern)
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)


def drop_messages(logger_name: str, pattern: str) -> None:
    """Drop the records of `logger_name` whose message matches `pattern` (from its start); idempotent."""
    logger = logging.getLogger(logger_name)
    if any(getattr(f, "pattern", None) == pattern for f in logger.filters):
        return
    logger.addFilter(_Drop(pattern))


class _Drop(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = pattern
        self.regex = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.regex.match(record.getMessage())
