"""`reelmill report OUT --serve`: a small local HTTP server behind the clip browser, so that any clip of
a run plays straight out of its shards, nothing extracted first.

Routes (all GET and HEAD):

- `/` the clip browser (`OUT/report/clips.html`), and every other file under `OUT/report/` by its path;
- `/serve.json` what this server offers; the page fetches it to know it is served (not opened as a file);
- `/media/<location>/<shard>/<member>` one member of `OUT/<location>/<shard>` (location `shards` or
  `dropped`), read by offset through the shard's member index (`member_index`), streamed in chunks,
  with HTTP Range requests answered (a `<video>` seeks with them);
- `/sheet/<location>/<shard>/<key>.jpg` a contact sheet of the clip, decoded and drawn on first request
  the way the report draws its own (`clip_frames`, `plots.contact_sheet`), then kept in a bounded cache.

Nothing outside OUT/report/ and the two shard directories can be named: a path segment `..` (however it
is encoded) is refused, and a shard is a plain file name looked up in its directory.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import signal
import socket
import sys
import tarfile
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

from captioning.report.clip_frames import clip_frames
from captioning.report.collect import open_run
from captioning.report.config import ReportConfig
from captioning.report.member_index import LOCATIONS, MemberIndexes, ShardNotFound
from curation import config as config_lib
from curation import storage
from curation.errors import InputRejected
from curation.layout import OutputLayout
from curation.safe_tar import DEFAULT_MAX_MEMBER_BYTES
from curation.shards import VIDEO_MEMBERS

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Bytes read and sent at a time: a 1 GB member is never held in memory."""
SHEET_CACHE_ITEMS = 256
SHEET_CACHE_BYTES = 64 << 20
"""Contact sheets kept after drawing (about 100 KB each): the most recently asked for."""
SHEET_RENDERS = 2
"""Sheets drawn at once; each runs ffmpeg, and more would only slow every one of them down."""
IDLE_TIMEOUT_S = 60
"""A kept-alive connection with no request for this long is closed, so idle browser tabs hold no thread."""

CONTENT_TYPES = {
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
    "mov": "video/quicktime",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
    "arrow": "application/vnd.apache.arrow.file",
    "parquet": "application/vnd.apache.parquet",
}
"""By a name's last extension; anything else is what `mimetypes` says, else application/octet-stream."""

DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
"""A client that went away mid-response (a `<video>` seeking elsewhere does this all the time)."""


def content_type(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
    return CONTENT_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


class Unsatisfiable(ValueError):
    """A Range none of whose bytes exist (416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range `header` asks of `size` bytes, as (first, last) inclusive; None for the whole
    (no header, or one this server ignores as RFC 9110 allows: malformed, several ranges, another unit).
    Raises Unsatisfiable for a range that starts past the end or an empty suffix."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":  # a suffix: the last N bytes
        if last == "":
            return None
        length = int(last)
        if length == 0 or size == 0:
            raise Unsatisfiable(f"bytes=-{length} of {size}")
        return max(0, size - length), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable(f"bytes={start}- of {size}")
    return start, min(int(last) if last else size - 1, size - 1)


@dataclass(frozen=True)
class _Body:
    """Bytes to send: `size` bytes at `offset` of the file at `uri`, or `data` itself."""

    size: int
    name: str
    """What is sent, by name: its extension gives the Content-Type."""
    uri: str | None = None
    offset: int = 0
    data: bytes | None = None
    etag: str | None = None


class _SheetCache:
    """The contact sheets drawn so far, the least recently used dropped first past either bound."""

    def __init__(self, items: int = SHEET_CACHE_ITEMS, max_bytes: int = SHEET_CACHE_BYTES):
        self.items, self.max_bytes = items, max_bytes
        self._sheets: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.renders = threading.Semaphore(SHEET_RENDERS)

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            sheet = self._sheets.get(key)
            if sheet is not None:
                self._sheets.move_to_end(key)
            return sheet

    def put(self, key: tuple, sheet: bytes) -> None:
        with self._lock:
            self._sheets[key] = sheet
            self._sheets.move_to_end(key)
            while len(self._sheets) > self.items or sum(map(len, self._sheets.values())) > self.max_bytes:
                if len(self._sheets) == 1:
                    break
                self._sheets.popitem(last=False)


class _Refused(Exception):
    """A request answered with an error status and a one-line reason."""

    def __init__(self, status: HTTPStatus, reason: str, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


class ClipServer:
    """The server of one run's report and clips. `url` and `port` say where it listens; `close()` stops
    it (from any thread). `start_server` runs it in a background thread; `serve_forever()` runs it in
    the calling one until `close()` or KeyboardInterrupt."""

    def __init__(self, out: str, host: str = "127.0.0.1", port: int = 0, cfg: ReportConfig | None = None):
        run = open_run(out)  # ReportError when OUT holds no run
        self.out = out
        self.layout = OutputLayout(out)
        self.cfg = cfg or _run_report_config(run.config)
        self.members = MemberIndexes(out)
        self.sheets = _SheetCache()
        self._httpd = _HTTPServer((host, port), _Handler, self)  # OSError when the port is taken
        self.host = host
        self.port = self._httpd.server_address[1]
        shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host) or (
            f"[{host}]" if ":" in host else host
        )
        self.url = f"http://{shown}:{self.port}/"
        self._serving = threading.Event()
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        self._serving.set()
        self._httpd.serve_forever(poll_interval=0.25)

    def start(self) -> ClipServer:
        self._serving.set()  # before the thread runs: a close() right away must still shut it down
        self._thread = threading.Thread(target=self.serve_forever, name="reelmill-serve", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._serving.is_set():
            self._httpd.shutdown()  # returns once serve_forever has returned (at once if it already has)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ClipServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what each route answers ------------------------------------------------------------------------

    def info(self) -> dict:
        return {
            "media": True,
            "sheets": True,
            "version": 1,
            "locations": [loc for loc in LOCATIONS if self.layout.entries(loc)],
            "media_path": "media/{location}/{shard}/{member}",
            "sheet_path": "sheet/{location}/{shard}/{key}.jpg",
        }

    def report_file(self, segments: list[str]) -> _Body:
        """A file under OUT/report/ (`/`: clips.html, else index.html while there is no browser page)."""
        if not segments:
            for page in ("clips.html", "index.html"):
                try:
                    return self.report_file([page])
                except _Refused:
                    continue
            raise _Refused(HTTPStatus.NOT_FOUND, f"no report in {self.out}; run `reelmill report {self.out}`")
        uri = storage.join(self.layout.report, *segments)
        fs, path = storage.filesystem(uri)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise _Refused(HTTPStatus.NOT_FOUND, f"no file report/{'/'.join(segments)}")
        return _Body(info.size or 0, segments[-1], uri, etag=f'"{info.size}-{info.mtime_ns}"')

    def member(self, location: str, shard: str, name: str) -> _Body:
        uri, index = self._index(location, shard)
        where = index.members.get(name)
        if where is None:
            raise _Refused(HTTPStatus.NOT_FOUND, f"no member {name} in {location}/{shard}")
        offset, size = where
        return _Body(size, name, uri, offset, etag=f'"{index.stat.size}-{index.stat.mtime_ns}-{offset}"')

    def sheet(self, location: str, shard: str, key: str) -> _Body:
        uri, index = self._index(location, shard)
        name = next((f"{key}.{ext}" for ext in VIDEO_MEMBERS if f"{key}.{ext}" in index.members), None)
        if name is None:
            raise _Refused(HTTPStatus.NOT_FOUND, f"no video of {key} in {location}/{shard}")
        offset, size = index.members[name]
        cache_key = (location, shard, index.stat, name)
        etag = f'"{index.stat.size}-{index.stat.mtime_ns}-{offset}-sheet"'
        sheet = self.sheets.get(cache_key)
        if sheet is None:
            if size > DEFAULT_MAX_MEMBER_BYTES:
                raise _Refused(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"{name} is {size} bytes; sheets are drawn for clips up to {DEFAULT_MAX_MEMBER_BYTES}",
                )
            with self.sheets.renders:
                sheet = self.sheets.get(cache_key)  # drawn meanwhile by a request for the same clip
                if sheet is None:
                    sheet = self._draw_sheet(key, _read(uri, offset, size))
                    self.sheets.put(cache_key, sheet)
        return _Body(len(sheet), "sheet.jpg", data=sheet, etag=etag)

    def _index(self, location: str, shard: str):
        try:
            return self.members.get(location, shard)
        except ShardNotFound as exc:
            raise _Refused(HTTPStatus.NOT_FOUND, str(exc)) from None
        except (tarfile.TarError, EOFError) as exc:
            raise _Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"{location}/{shard}: {exc}") from None

    def _draw_sheet(self, key: str, video: bytes) -> bytes:
        from captioning.report.plots import contact_sheet

        try:
            window = clip_frames(key, video, self.cfg)
        except InputRejected as exc:
            raise _Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"{key}: {exc}") from None
        with tempfile.TemporaryDirectory(prefix="reelmill-sheet-") as tmp:
            path = os.path.join(tmp, "sheet.jpg")
            contact_sheet(path, window.frames, window.timestamps, self.cfg.sheet_frames)
            with open(path, "rb") as f:
                return f.read()


def start_server(
    out: str, host: str = "127.0.0.1", port: int = 0, cfg: ReportConfig | None = None
) -> ClipServer:
    """A `ClipServer` for the run in `out`, serving from a background thread (port 0: a free one).
    Raises ReportError when `out` holds no run, OSError when it cannot listen there."""
    return ClipServer(out, host, port, cfg).start()


def _run_report_config(run_config: dict) -> ReportConfig:
    """The run's own `report` settings (frames per sheet, decode size); the defaults if they are bad."""
    try:
        return config_lib.from_dict(ReportConfig, dict(run_config.get("report") or {}), prefix="report.")
    except config_lib.ConfigError as exc:
        log.warning("the run's report settings are not used for sheets: %s", exc)
        return ReportConfig()


def _read(uri: str, offset: int, size: int) -> bytes:
    with storage.open_input_file(uri) as f:
        data = f.read_at(size, offset)
    if len(data) != size:
        raise _Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"{uri} is shorter than its index says")
    return data


def _segments(path: str) -> list[str]:
    """The decoded segments of a URL path; _Refused for any that could step outside where it points
    (`..`, `.`, an encoded `/`, a backslash, NUL) or an empty one inside the path. A member name with
    directories is asked for with plain slashes."""
    parts = path.split("/")[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    segments = [unquote(p, errors="strict") for p in parts]
    for segment in segments:
        if segment in ("", ".", "..") or any(c in segment for c in "/\\\0"):
            raise _Refused(
                HTTPStatus.BAD_REQUEST, "a path segment that is empty, `.` or `..`, or holds `/`, `\\`"
            )
    return segments


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never keeps the process from exiting

    def __init__(self, address, handler, app: ClipServer):
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, DISCONNECTED):
            return
        log.error("serving %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept-alive connections: a <video> makes many range requests
    server_version = "reelmill"
    timeout = IDLE_TIMEOUT_S
    server: _HTTPServer

    def log_message(self, format, *args) -> None:  # noqa: A002 (the stdlib's name)
        pass  # no line per request; failures are logged where they happen

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        self._started = False
        try:
            body = self._route()
            self._send(body, send_body)
        except _Refused as refused:
            self._send_error(refused.status, refused.reason, refused.headers, send_body)
        except DISCONNECTED:
            self.close_connection = True
        except Exception:
            log.error("%s %s failed", self.command, self.path, exc_info=True)
            if self._started:  # the status line is out: all that is left is to end the response short
                self.close_connection = True
                return
            try:
                reason = "internal error (see the server's log)"
                self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, reason, send_body=send_body)
            except DISCONNECTED:
                self.close_connection = True

    def _route(self) -> _Body:
        try:
            segments = _segments(urlsplit(self.path).path)
        except UnicodeDecodeError:
            raise _Refused(HTTPStatus.BAD_REQUEST, "a path that is not UTF-8") from None
        app = self.server.app
        head = segments[0] if segments else ""
        if head == "serve.json" and len(segments) == 1:
            data = json.dumps(app.info()).encode()
            return _Body(len(data), "serve.json", data=data)
        if head in ("media", "sheet"):
            if len(segments) < 4:
                raise _Refused(HTTPStatus.NOT_FOUND, f"/{head}/LOCATION/SHARD/MEMBER")
            location, shard, name = segments[1], segments[2], "/".join(segments[3:])
            if head == "media":
                return app.member(location, shard, name)
            if not name.endswith(".jpg"):
                raise _Refused(HTTPStatus.NOT_FOUND, "/sheet/LOCATION/SHARD/KEY.jpg")
            return app.sheet(location, shard, name[: -len(".jpg")])
        return app.report_file(segments)

    def _send(self, body: _Body, send_body: bool) -> None:
        try:
            span = parse_range(self.headers.get("Range"), body.size)
        except Unsatisfiable:
            raise _Refused(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                "range not satisfiable",
                {"Content-Range": f"bytes */{body.size}"},
            ) from None
        if_range = self.headers.get("If-Range")
        if span is not None and if_range is not None and if_range.strip() != body.etag:
            span = None  # the client's partial copy is of another version: send the whole
        first, last = span if span is not None else (0, body.size - 1)
        length = last - first + 1 if body.size else 0
        self.send_response(HTTPStatus.PARTIAL_CONTENT if span is not None else HTTPStatus.OK)
        self.send_header("Content-Type", content_type(body.name))
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-cache")  # a rebuilt report or rewritten shard shows at once
        if body.etag:
            self.send_header("ETag", body.etag)
        if span is not None:
            self.send_header("Content-Range", f"bytes {first}-{last}/{body.size}")
        self.end_headers()
        self._started = True
        if not send_body or length == 0:
            return
        if body.data is not None:
            self.wfile.write(body.data[first : last + 1])
            return
        with storage.open_input_file(body.uri) as f:
            position, left = body.offset + first, length
            while left > 0:
                chunk = f.read_at(min(CHUNK_BYTES, left), position)
                if not chunk:  # the file shrank under us; the client sees a short body
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                position += len(chunk)
                left -= len(chunk)

    def _send_error(self, status: HTTPStatus, reason: str, headers: dict | None = None, send_body=True):
        data = (reason + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(data)


def serve(out: str, host: str, port: int, cfg: ReportConfig | None = None, log=print) -> int:
    """`reelmill report OUT --serve`: serve in this thread until Ctrl-C or SIGTERM; the exit status (0,
    or 2 when the address cannot be listened on). Raises ReportError when `out` holds no run."""
    try:
        server = ClipServer(out, host, port, cfg)
    except OSError as exc:
        print(
            f"reelmill report: error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr
        )
        return 2
    log(f"reelmill report: serving {out} at {server.url} (Ctrl-C to stop)")
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # how a server is stopped: not an error
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        server.close()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def has_browser_page(out: str) -> bool:
    """Whether OUT/report/ holds the clip browser already (else `--serve` builds the report first)."""
    return storage.exists(OutputLayout(out).path("report", "clips.html"))
