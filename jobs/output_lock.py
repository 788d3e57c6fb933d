"""One job per OUT: the job that writes OUT holds `OUT/_state/lock.json` and keeps its heartbeat fresh.

Two jobs on one OUT would clear and rewrite each other's tasks, and one's `--overwrite` would delete
what the other is writing, so a second job refuses to start (`OutputBusy`, exit status 2) and names
the job that holds OUT. A job that died (killed, its machine lost) leaves its lock behind; once its
heartbeat is older than `lock.stale_s` the next job takes it over, and says so.

The lock records who holds it (user, host, pid, job, command line, start time), a heartbeat (unix
time) and a random token that tells this job's lock from any other's. Heartbeats are compared with
this machine's clock: hosts whose clocks differ by more than `lock.stale_s` would misjudge each other.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from curation import storage
from curation.curate_config import LockConfig
from curation.layout import OutputLayout

SETTLE_S = 1.0
"""How long a job waits after writing a lock it could not create exclusively (on an object store, or
over a stale lock) before it reads the lock back to see whose it is: a rival that wrote at about the
same time has written by then, and the last writer holds OUT."""

RELEASE_WAIT_S = 10.0
"""How long the release waits for a heartbeat write in flight to end before it deletes the lock."""

CREATE_TRIES = 3
"""Rounds of read, then create or take over: each lost race reads the winner's lock again."""


@contextlib.contextmanager
def job_output(out: str, job: str, cfg, log: Callable[[str], None] = print) -> Iterator[None]:
    """What every job does before it touches OUT: take its `io` settings (before Ray starts, so the
    workers inherit them) and hold OUT's lock (`cfg.lock`) until the block ends."""
    storage.configure_from(cfg.io)
    with hold_output(out, job, cfg.lock, log):
        yield


class OutputBusy(RuntimeError):
    """Another job holds OUT (its lock's heartbeat is fresh)."""


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name
        return str(os.getuid())


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())  # storage errors can span lines; a message is one


def _heartbeat(lock: dict) -> float:
    """A lock's heartbeat; one that is not a number is as old as can be."""
    try:
        return float(lock.get("heartbeat", 0))
    except (TypeError, ValueError):
        return 0.0


def _holder(lock: dict, now: float) -> str:
    """Who holds a lock, in words, for messages."""
    age = max(0.0, now - _heartbeat(lock))
    return (
        f"reelmill {lock.get('job', '?')} (pid {lock.get('pid', '?')} on host {lock.get('host', '?')} "
        f"as user {lock.get('owner', '?')}, started {lock.get('started', '?')}, heartbeat {age:.0f} s ago)"
    )


class _Unreadable:
    """A lock file that exists but does not parse (being created right now, or damaged)."""


UNREADABLE = _Unreadable()


class OutputLock:
    """The lock on one OUT; `hold_output` is the way to use it."""

    def __init__(self, out: str, job: str, cfg: LockConfig, log: Callable[[str], object] = print):
        self.out, self.job, self.cfg, self.log = out, job, cfg, log
        self.uri = OutputLayout(out).lock
        self.token = uuid.uuid4().hex
        self.record = {
            "owner": _user(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job": job,
            "command": sys.argv,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "heartbeat": time.time(),
            "token": self.token,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_root = False

    def read(self) -> dict | _Unreadable | None:
        """The lock as it is in OUT now: its content, UNREADABLE, or None when there is none."""
        try:
            data = storage.read_bytes(self.uri)
        except FileNotFoundError:
            return None
        try:
            lock = json.loads(data)
        except ValueError:
            return UNREADABLE
        return lock if isinstance(lock, dict) else UNREADABLE

    def _encoded(self) -> bytes:
        self.record["heartbeat"] = time.time()
        return json.dumps(self.record, indent=1).encode()

    def _busy(self, lock: dict) -> OutputBusy:
        now = time.time()
        left = max(0.0, _heartbeat(lock) + self.cfg.stale_s - now)
        return OutputBusy(
            f"{self.out} is in use by {_holder(lock, now)}; wait for it to finish, or, if that job is dead, "
            f"rerun after lock.stale_s ({self.cfg.stale_s:g} s) without a heartbeat (in {left:.0f} s)"
        )

    def acquire(self) -> None:
        """Take the lock, or raise `OutputBusy` naming the job that holds it.

        Locally the lock is created with O_CREAT | O_EXCL, so of two jobs starting together exactly one
        creates it. Object stores (through pyarrow) have no conditional put, and a stale lock is replaced
        by an ordinary atomic write, so there each contender writes its own token, waits `SETTLE_S`, and
        reads the lock back: the job whose token is there holds OUT, the other gives up. What remains
        open is a rival whose write lands more than `SETTLE_S` after ours (stalled between its read and
        its write, a very slow store): both would then go on. Its heartbeat thread then finds the lock
        no longer its own and says so (`_beat`).
        """
        self._created_root = not storage.exists(self.out)
        for attempt in range(CREATE_TRIES + 1):
            lock = self.read()
            if lock is UNREADABLE:  # an exclusive create writes its content just after creating the file
                time.sleep(SETTLE_S)
                lock = self.read()
            if isinstance(lock, dict) and lock.get("token") == self.token:
                break  # our write, read back after the settle time: no rival's came after it
            if isinstance(lock, dict) and time.time() - _heartbeat(lock) < self.cfg.stale_s:
                raise self._busy(lock)
            if attempt == CREATE_TRIES:
                raise OutputBusy(
                    f"{self.out}: its lock {self.uri} keeps changing; is another job starting there?"
                )
            if lock is None and storage.is_local(self.uri):
                if self._create_local():
                    break
                continue  # a rival created it first: read theirs
            if lock is not None:
                previous = (
                    _holder(lock, time.time()) if isinstance(lock, dict) else "a lock that does not parse"
                )
                self.log(
                    f"reelmill {self.job}: taking over {self.uri} from {previous}: no heartbeat for over "
                    f"lock.stale_s ({self.cfg.stale_s:g} s), so that job is taken to be dead"
                )
            storage.write_bytes(self.uri, self._encoded())
            time.sleep(SETTLE_S)  # then the next round reads back whose lock it is
        self._thread = threading.Thread(target=self._beat, name="reelmill-output-lock", daemon=True)
        self._thread.start()

    def _create_local(self) -> bool:
        """Create the lock with our content unless a file is there; whether it was created."""
        path = os.path.abspath(storage.local_path(self.uri))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._encoded())
        return True

    def _beat(self) -> None:
        """Refresh the heartbeat every `lock.heartbeat_s` while the job runs. The lock is read first: once
        it holds another job's token (that job took it over, taking this one for dead) this job no longer
        holds OUT, says so once, and stops writing there. A failed write is said once and tried again at
        the next beat: a lost heartbeat or two cost nothing, and the job itself must go on."""
        failing = False
        while not self._stop.wait(self.cfg.heartbeat_s):
            try:
                lock = self.read()
                if not (isinstance(lock, dict) and lock.get("token") == self.token):
                    now = (
                        f"now held by {_holder(lock, time.time())}"
                        if isinstance(lock, dict)
                        else "it is gone, or does not parse"
                    )
                    self.log(
                        f"reelmill {self.job}: error: {self.uri} is no longer this job's lock ({now}); "
                        f"another job may be writing {self.out} too"
                    )
                    return
                storage.write_bytes(self.uri, self._encoded())
                failing = False
            except OSError as exc:
                if not failing:
                    self.log(
                        f"reelmill {self.job}: the heartbeat of {self.uri} could not be written: "
                        f"{_one_line(exc)}"
                    )
                failing = True

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours (a job that took it over keeps
        its own). Never raises: a lock left behind goes stale and the next job takes it over (so does
        one that a heartbeat write, hung past `RELEASE_WAIT_S`, puts back after the delete)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(RELEASE_WAIT_S)
        try:
            lock = self.read()
            if isinstance(lock, dict) and lock.get("token") == self.token:
                storage.delete(self.uri)
                layout = OutputLayout(self.out)
                layout.remove_dir_if_empty(layout.path("_state"))
                if self._created_root:
                    layout.remove_dir_if_empty(self.out)
        except OSError as exc:
            self.log(
                f"reelmill {self.job}: {self.uri} could not be deleted ({_one_line(exc)}); the next job "
                f"takes it over after lock.stale_s ({self.cfg.stale_s:g} s)"
            )


@contextlib.contextmanager
def hold_output(
    out: str, job: str, cfg: LockConfig, log: Callable[[str], object] = print
) -> Iterator[OutputLock]:
    """Hold OUT for the block: raise `OutputBusy` if another live job holds it, take over the lock of a
    dead one, keep the heartbeat fresh, and give the lock up however the block ends."""
    lock = OutputLock(out, job, cfg, log)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
