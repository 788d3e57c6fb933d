"""Running ffmpeg and ffprobe: argv lists only (no shell), a timeout on every call, errors that carry stderr.

Commands are built with ffmpeg-python's graph API and compiled to argv here, so every process the
project starts goes through one place that enforces the timeout and keeps the tail of stderr for
the manifest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence

import ffmpeg

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"


class FFmpegError(RuntimeError):
    """An ffmpeg or ffprobe process failed or timed out; `stderr` holds its last lines."""

    def __init__(
        self, message: str, stderr: str = "", timed_out: bool = False, returncode: int | None = None
    ):
        super().__init__(message)
        self.stderr = stderr
        self.timed_out = timed_out
        self.returncode = returncode

    @property
    def out_of_space(self) -> bool:
        """The scratch or output disk filled up: about the machine, not the input."""
        return "no space left on device" in self.stderr.lower()

    @property
    def network_error(self) -> bool:
        """A web input could not be reached right now (ffmpeg read the URL itself)."""
        text = self.stderr.lower()
        return any(w in text for w in NETWORK_ERRORS)

    @property
    def killed(self) -> bool:
        """Ended by a signal (OOM killer, a human, a dying worker): says nothing about the input."""
        return self.returncode is not None and self.returncode < 0

    @property
    def detail(self) -> str:
        """The most telling line of stderr (the last non-empty one), for a manifest reason."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else str(self)


def require_binaries() -> None:
    """Fail early, with the fix, when ffmpeg is not installed."""
    missing = [b for b in (FFMPEG, FFPROBE) if shutil.which(b) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found on PATH; install ffmpeg (e.g. `apt-get install -y ffmpeg`)"
        )


NETWORK_ERRORS = (
    "failed to resolve", "connection refused", "connection timed out", "network is unreachable",
    "connection reset", "temporary failure in name resolution",
)  # fmt: skip
WEB_PROTOCOLS = "http,https,tcp,tls,crypto"


def protocol_whitelist(path: str) -> str:
    """The protocols ffmpeg may open while reading `path`: only its own scheme's, so a crafted playlist,
    concat list or reference movie inside an input cannot make ffmpeg reach the network or a pipe."""
    return WEB_PROTOCOLS if path.startswith(("http://", "https://")) else "file"


def input_stream(path: str, **options) -> ffmpeg.nodes.FilterableStream:
    """`ffmpeg.input` for an input video, restricted to its scheme's protocols."""
    return ffmpeg.input(path, protocol_whitelist=protocol_whitelist(path), **options)


def compile_stream(stream: ffmpeg.nodes.OutputStream, overwrite: bool = True) -> list[str]:
    """Turn an ffmpeg-python output node into an argv list with quiet, non-interactive defaults."""
    argv = stream.compile(cmd=FFMPEG, overwrite_output=overwrite)
    return [argv[0], "-nostdin", "-hide_banner", "-loglevel", "error", *argv[1:]]


def run(argv: Sequence[str], timeout_s: float, input_bytes: bytes | None = None) -> bytes:
    """Run one ffmpeg/ffprobe argv, return stdout; raise FFmpegError on failure or timeout."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode(errors="replace")[-4000:]
        raise FFmpegError(f"{argv[0]} timed out after {timeout_s:g}s", stderr, timed_out=True) from exc
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")[-4000:]
        raise FFmpegError(f"{argv[0]} exited with {proc.returncode}", stderr, returncode=proc.returncode)
    return proc.stdout


def run_stream(stream: ffmpeg.nodes.OutputStream, timeout_s: float) -> bytes:
    """Compile and run an ffmpeg-python graph."""
    return run(compile_stream(stream), timeout_s)


def probe_json(path: str, timeout_s: float) -> dict:
    """ffprobe a file's format and streams as JSON (ffmpeg.probe has no timeout, hence this)."""
    argv = [
        FFPROBE, "-v", "error", "-print_format", "json", "-protocol_whitelist", protocol_whitelist(path),
        "-show_format", "-show_streams", path,
    ]  # fmt: skip
    return json.loads(run(argv, timeout_s) or b"{}")


def version() -> str:
    """The first line of `ffmpeg -version`, for run.json."""
    try:
        return run([FFMPEG, "-version"], 10).decode().splitlines()[0]
    except (FFmpegError, OSError, IndexError):
        return "unknown"
