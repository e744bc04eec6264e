"""Headless Chromium driven over the DevTools protocol: load a page, collect what went wrong, take a screenshot.

Debian's ``chromium`` package (``.ci/run`` and ``make test`` install it). The browser runs with a fresh profile,
no network services of its own (no component updates, sync or safe browsing), and reports on a port it picks
itself (``--remote-debugging-port=0``; the port is read back from ``DevToolsActivePort``). A page load records:
console messages and uncaught exceptions, log entries (CSP violations land there), every request the page made
and every request that failed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

__all__ = ["Chromium", "PageLoad", "assert_clean_load", "find_chromium"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    """What one navigation produced."""

    url: str
    status: int | None = None
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    text: str = ""
    title: str = ""


class Chromium:
    """A headless browser; use as a context manager.

    Args:
        width, height: the viewport (screenshots are this size, or the page's full height up to ``max_height``).
    """

    def __init__(self, *, width: int = 1280, height: int = 900, timeout_s: float = 60.0) -> None:
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self._profile = Path(tempfile.mkdtemp(prefix="qtha-chromium-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: websocket.WebSocket | None = None
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        binary = find_chromium()
        if binary is None:
            raise FileNotFoundError("chromium not found; `apt-get install chromium`")
        args = [
            binary,
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-sync",
            "--disable-extensions",
            "--disable-features=Translate,OptimizationHints,MediaRouter",
            "--safebrowsing-disable-auto-update",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._port()
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=self.timeout_s, suppress_origin=True
        )
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _port(self) -> int:
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if marker.exists():
                first = marker.read_text().splitlines()
                if first and first[0].isdigit():
                    return int(first[0])
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self._proc.returncode} before listening")
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Sends one command and returns its result (events that arrive meanwhile are kept)."""
        assert self._ws is not None
        self._next_id += 1
        ident = self._next_id
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._events.append(message)

    def _wait_event(self, method: str) -> dict[str, Any]:
        assert self._ws is not None
        for i, event in enumerate(self._events):
            if event["method"] == method:
                return self._events.pop(i)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            if message.get("method") == method:
                return message
            if "method" in message:
                self._events.append(message)
        raise TimeoutError(f"no {method} within {self.timeout_s} s")

    def open(self, url: str, *, headers: dict[str, str] | None = None) -> PageLoad:
        """Navigates to ``url``, waits for the load event and returns what happened."""
        self._events.clear()
        self.call("Network.setExtraHTTPHeaders", headers=headers or {})
        self.call("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")
        self.call("Runtime.evaluate", expression="1")  # flushes events queued before the load finished
        load = PageLoad(url)
        for event in self._events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                load.errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                load.errors.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                entry = params["entry"]
                load.errors.append(f"log {entry.get('level')}: {entry.get('source')}: {entry.get('text')}")
            elif method == "Network.requestWillBeSent":
                load.requests.append(params["request"]["url"])
            elif method == "Network.responseReceived" and params.get("type") == "Document":
                load.status = int(params["response"]["status"])
            elif method == "Network.loadingFailed":
                load.failed.append(f"{params.get('errorText')} ({params.get('blockedReason', '')})")
        load.text = self.evaluate("document.body ? document.body.innerText : ''")
        load.title = self.evaluate("document.title")
        return load

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path, *, full_page: bool = True, max_height: int = 4000) -> Path:
        """A PNG of the page: the viewport, or the whole page up to ``max_height`` pixels."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            height = min(
                int(self.evaluate("document.documentElement.scrollHeight") or self.height), max_height
            )
            params |= {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1},
            }
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def assert_clean_load(load: PageLoad, origin: str) -> None:
    """The page answered 200, logged no error or CSP violation, and fetched nothing but ``origin`` (or data:)."""
    assert load.status == 200, load
    assert load.errors == [], load.errors
    assert load.failed == [], load.failed
    outside = [u for u in load.requests if not (u.startswith(origin) or u.startswith("data:"))]
    assert outside == [], f"the page fetched from elsewhere: {outside}"
