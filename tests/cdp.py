"""A small Chrome DevTools Protocol driver for tests that use a page, not just look at it.

`tests/browser.py` renders a static page from Chromium's command line; the clip browser has to be
clicked, typed into and reloaded, so this drives a headless Chromium over its DevTools websocket
(`--remote-debugging-port=0`, the port read from its "DevTools listening on ws://..." line) with aiohttp.
Every console error and uncaught exception the page raises is collected in `errors`, so a test can
assert the page ran clean.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from browser import find_chromium

LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class CDPError(RuntimeError):
    """Chromium answered a command with an error, or a page expression threw."""


class Chromium:
    """One headless Chromium with one page; use as a context manager. Methods are synchronous."""

    def __init__(self, width: int = 1400, height: int = 900, timeout_s: float = 30):
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self.errors: list[str] = []
        self.loop = asyncio.new_event_loop()
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._events: list[dict] = []
        self._profile = tempfile.TemporaryDirectory(prefix="cdp-profile-", ignore_cleanup_errors=True)
        self.proc: subprocess.Popen | None = None

    # ---- lifecycle ----
    def __enter__(self) -> Chromium:
        self.proc = subprocess.Popen(
            [
                find_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", "--allow-file-access-from-files",
                f"--user-data-dir={self._profile.name}", f"--window-size={self.width},{self.height}",
                "--remote-debugging-port=0", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        browser_ws = self._read_endpoint()
        self.loop.run_until_complete(self._connect(browser_ws))
        return self

    def _read_endpoint(self) -> str:
        deadline = time.monotonic() + self.timeout_s
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            lines.append(line)
            found = LISTENING.search(line)
            if found:
                return found.group(1)
        self.close()
        raise RuntimeError("Chromium did not open its DevTools port:\n" + "".join(lines[-15:]))

    async def _connect(self, browser_ws: str) -> None:
        port = browser_ws.split("//", 1)[1].split("/", 1)[0]
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://{port}/json/list") as response:
            targets = await response.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = self.loop.create_task(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self._send(f"{domain}.enable")
        await self._send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if getattr(self, "ws", None) is not None:
                self.loop.run_until_complete(self.ws.close())
            if getattr(self, "session", None) is not None:
                self.loop.run_until_complete(self.session.close())
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        with contextlib.suppress(Exception):
            self.loop.close()
        self._profile.cleanup()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- protocol ----
    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            self._note(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("the DevTools connection closed"))

    def _note(self, event: dict) -> None:
        """Keep events (for `wait_event`) and the page's errors."""
        method, params = event.get("method"), event.get("params") or {}
        self._events.append(event)
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            text = (details.get("exception") or {}).get("description") or details.get("text")
            self.errors.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args") or [])
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and (params.get("entry") or {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url') or ''}".strip())

    async def _send(self, method: str, params: dict | None = None) -> dict:
        self._next_id += 1
        future = self.loop.create_future()
        self._pending[self._next_id] = future
        await self.ws.send_str(json.dumps({"id": self._next_id, "method": method, "params": params or {}}))
        reply = await asyncio.wait_for(future, self.timeout_s)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result") or {}

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.loop.run_until_complete(self._send(method, params))

    # ---- what tests use ----
    def open(self, url: str, ready: str = "true") -> None:
        """Load `url` and wait for its `load` event and then for the expression `ready` to be true.
        A URL that differs from the page's only in its hash is loaded afresh too (a navigation within
        the document would fire no `load`)."""
        if self.eval("location.href.split('#')[0]") == url.split("#")[0]:
            self.open("about:blank")
        self._events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")
        self.wait_for(ready)

    def reload(self, ready: str = "true") -> None:
        self._events.clear()
        self.send("Page.reload", {"ignoreCache": True})
        self.wait_event("Page.loadEventFired")
        self.wait_for(ready)

    def wait_event(self, method: str) -> dict:
        async def wait() -> dict:
            deadline = self.loop.time() + self.timeout_s
            while self.loop.time() < deadline:
                for event in self._events:
                    if event.get("method") == method:
                        return event
                await asyncio.sleep(0.02)
            seen = sorted({e.get("method") for e in self._events})
            raise TimeoutError(f"no {method} within {self.timeout_s} s; seen: {seen}")

        return self.loop.run_until_complete(wait())

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True, "userGesture": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(
                f"{expression!r}: {(details.get('exception') or {}).get('description') or details}"
            )
        return (result.get("result") or {}).get("value")

    def wait_for(self, expression: str, timeout_s: float | None = None):
        """Poll `expression` until it is truthy (in Python: a DOM node comes back as `{}`, so test one
        with `!!`); returns its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout_s or self.timeout_s} s")
            self.loop.run_until_complete(asyncio.sleep(0.05))

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the first element matching `selector`
        (of its part inside the window, for an element wider than it)."""
        box = self.eval(
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: "center", inline: "nearest"}});
            const r = e.getBoundingClientRect();
            const left = Math.max(r.left, 0), right = Math.min(r.right, window.innerWidth);
            return [(left + right) / 2, r.top + r.height / 2]; }})()"""
        )
        if box is None:
            raise CDPError(f"nothing matches {selector!r}")
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            )

    def choose(self, selector: str, value: str) -> None:
        """Pick `value` in a <select> (or type it into an <input>) and fire the events a user's change does."""
        done = self.eval(
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;
            e.focus(); e.value = {json.dumps(value)}; if (e.value !== {json.dumps(value)}) return false;
            e.dispatchEvent(new Event("input", {{bubbles: true}}));
            e.dispatchEvent(new Event("change", {{bubbles: true}})); return true; }})()"""
        )
        if not done:
            raise CDPError(f"cannot set {selector!r} to {value!r}")

    def type_text(self, selector: str, text: str) -> None:
        """Focus an input and type `text` into it key by key (Input.insertText)."""
        self.click(selector)
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path: str | os.PathLike, full_page: bool = False) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params)["data"]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out
