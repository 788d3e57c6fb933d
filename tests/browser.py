"""Headless-Chromium harness for tests of static HTML pages: screenshot, broken images, empty sections.

A page that looks right in its source can still show a missing image or a blank section once a browser
lays it out, so the report's test renders it in a real browser and checks the DOM the browser ended with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
APT_PACKAGE = "chromium"

# Virtual time runs as fast as the page lets it, so a generous budget costs no wall time; it lets timers,
# scripts and image decoding settle before the screenshot or the DOM dump is taken.
VIRTUAL_TIME_BUDGET_MS = 10_000
# The injected check runs at `load` and again this much (virtual) time later, to see late scripts' work.
SETTLE_MS = 5_000

CHECK_SCRIPT = """
<script>
(() => {
  const MEDIA = "img, table, svg, canvas, video, picture, iframe, object";
  function mark() {
    for (const img of document.querySelectorAll("img")) {
      img.dataset.loaded = img.complete && img.naturalWidth > 0 ? "1" : "0";
    }
    for (const section of document.querySelectorAll("section")) {
      const rest = section.cloneNode(true);
      for (const heading of rest.querySelectorAll("h2")) heading.remove();
      const empty = rest.textContent.trim() === "" && rest.querySelector(MEDIA) === null;
      section.dataset.empty = empty ? "1" : "0";
    }
    document.documentElement.dataset.pagecheck = "1";
  }
  window.addEventListener("load", () => { mark(); setTimeout(mark, SETTLE_MS); });
})();
</script>
""".replace("SETTLE_MS", str(SETTLE_MS))


@dataclass
class PageCheck:
    """What a browser made of a page; `ok` is what a test asserts, the rest says what went wrong."""

    screenshot: Path
    screenshot_size: tuple[int, int]
    broken_images: list[str] = field(default_factory=list)
    empty_sections: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    title: str = ""

    @property
    def ok(self) -> bool:
        return not self.broken_images and not self.empty_sections


def find_chromium() -> str:
    """The browser binary: `$CHROMIUM` when set, else the first of the usual names on PATH.

    Fails with the apt package to install, since a missing browser is a setup problem, not a test failure.
    """
    override = os.environ.get("CHROMIUM")
    if override:
        found = shutil.which(override)
        if found is None:
            raise FileNotFoundError(f"$CHROMIUM={override!r} is not an executable")
        return found
    for name in CANDIDATES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise FileNotFoundError(
        f"no Chromium found (tried {', '.join(CANDIDATES)}): install the apt package "
        f"`{APT_PACKAGE}` (`make setup` does) or set $CHROMIUM to a Chromium/Chrome binary"
    )


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header, so checking a screenshot needs no image library."""
    head = Path(path).read_bytes()[:24]
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _run_chromium(args: list[str], timeout_s: float) -> str:
    """One headless run in a fresh profile; its stdout. The whole process group goes on a timeout.

    `--no-sandbox`: Chromium refuses to start as root with its sandbox, and containers without user
    namespaces cannot give it one; the pages are local files the tests wrote. `--disable-dev-shm-usage`:
    containers often have a tiny /dev/shm, where Chromium crashes instead of falling back to /tmp.
    """
    with tempfile.TemporaryDirectory(prefix="pagecheck-profile-", ignore_cleanup_errors=True) as profile:
        command = [
            find_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--allow-file-access-from-files",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            *args,
        ]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"Chromium took over {timeout_s} s: {' '.join(command)}") from None
        if proc.returncode != 0:
            tail = "\n".join(stderr.splitlines()[-15:])
            raise RuntimeError(f"Chromium exited with {proc.returncode}: {' '.join(command)}\n{tail}")
        return stdout


def _with_check_script(html: str) -> str:
    """The page with the check script as the last thing in its body, where it sees every element."""
    at = html.lower().rfind("</body>")
    if at < 0:
        return html + CHECK_SCRIPT
    return html[:at] + CHECK_SCRIPT + html[at:]


class _DomReader(HTMLParser):
    """Collects the marks the check script left in the dumped DOM."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.checked = False
        self.broken_images: list[str] = []
        self.sections: list[str] = []
        self.empty_sections: list[str] = []
        self.title_parts: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "html":
            self.checked = attr.get("data-pagecheck") == "1"
        elif tag == "img" and attr.get("data-loaded") != "1":
            self.broken_images.append(attr.get("src") or "")
        elif tag == "section":
            name = attr.get("id") or f"section #{len(self.sections) + 1}"
            self.sections.append(name)
            if attr.get("data-empty") != "0":
                self.empty_sections.append(name)
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)


def render_page(
    html_path: str | os.PathLike,
    screenshot_path: str | os.PathLike,
    width: int = 1280,
    height: int = 2000,
    timeout_s: float = 60,
) -> PageCheck:
    """Screenshot a page in headless Chromium and report its broken images and empty sections.

    Two runs, since Chromium's command line takes a screenshot or dumps the DOM, not both. The DOM run
    loads a copy of the page with a check script injected; the copy sits beside the page so relative
    image paths resolve as they do for the page itself. An image added too late to be checked counts as
    broken, and so does a section, as empty: the harness cannot vouch for either.
    """
    page = Path(html_path).resolve()
    shot = Path(screenshot_path).resolve()
    if not page.is_file():
        raise FileNotFoundError(page)
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    window = f"--window-size={width},{height}"

    _run_chromium([f"--screenshot={shot}", window, page.as_uri()], timeout_s)
    if not shot.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot for {page}")

    fd, name = tempfile.mkstemp(prefix=f".{page.stem}-pagecheck-", suffix=".html", dir=page.parent)
    probe = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_with_check_script(page.read_text(encoding="utf-8")))
        dom = _run_chromium(["--dump-dom", window, probe.as_uri()], timeout_s)
    finally:
        probe.unlink(missing_ok=True)

    reader = _DomReader()
    reader.feed(dom)
    reader.close()
    if not reader.checked:
        raise RuntimeError(f"{page} never fired `load` within {VIRTUAL_TIME_BUDGET_MS} ms of virtual time")
    return PageCheck(
        screenshot=shot,
        screenshot_size=png_size(shot),
        broken_images=reader.broken_images,
        empty_sections=reader.empty_sections,
        sections=reader.sections,
        title="".join(reader.title_parts).strip(),
    )
