"""The console over HTTP: a WSGI app for ``/console`` and ``/console/cycles/<n>``, served beside ``/metrics``.

GET and HEAD only; every answer carries a Content Security Policy that forbids scripts and any fetch, and
``Cache-Control: no-store``. Loopback by default: when the metrics address is not a loopback address the console
asks for the key (``Authorization: Bearer <key>``, or HTTP Basic with the key as the password so a browser can
log in), compared in constant time; with no key configured it refuses every request instead of showing the
daemon's history to the network.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.access import MIN_KEY_CHARS, is_loopback, read_bearer_key
from agent.console.pages import CSP, render_console, render_cycle, render_error
from agent.console.signals import SignalSource
from agent.console.view import load_console, load_cycle
from agent.store import NotFoundError, Store

__all__ = ["MIN_KEY_CHARS", "ConsoleApp", "ConsoleKeyError", "is_loopback", "read_key"]

log = logging.getLogger("qtha.console")


_CYCLE = re.compile(r"^/console/cycles/(\d{1,12})/?$")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class ConsoleKeyError(ValueError):
    """The console's key cannot be read or is too short (the message names the setting to change)."""


def read_key(key_file: Path | None, key_env: str, environ: Mapping[str, str]) -> str | None:
    """The console's key: the first line of ``key_file`` if set, else ``environ[key_env]``, else None.

    Raises:
        ConsoleKeyError: the file is unreadable or empty, or the key is shorter than 16 characters.
    """
    return read_bearer_key(key_file, key_env, environ, setting="console.api_key_file", error=ConsoleKeyError)


class ConsoleApp:
    """The WSGI application of the console (read-only).

    Args:
        store: the daemon's database (only read).
        daemon_status: reads the daemon's one-line status (shown on the front page).
        host: the address the console is served on; a non-loopback address needs ``key``.
        key: the bearer key; ``None`` on a non-loopback ``host`` refuses every request.
        sources: live-signal sources (default: metric samples and the usage log).
    """

    def __init__(
        self,
        store: Store,
        *,
        daemon_status: Callable[[], Mapping[str, Any] | None] | None = None,
        host: str = "127.0.0.1",
        key: str | None = None,
        sources: Sequence[SignalSource] | None = None,
    ) -> None:
        self.store = store
        self.daemon_status = daemon_status
        self.open = is_loopback(host)
        self._key = None if key is None else key.encode()
        self.sources = sources

    def handles(self, path: str) -> bool:
        return path == "/console" or path.startswith("/console/")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        status, body, extra = self._answer(path, method, environ)
        payload = body.encode("utf-8")
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(payload))),
            ("Content-Security-Policy", CSP),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            *extra,
        ]
        start_response(status, headers)
        return [b"" if method == "HEAD" else payload]

    def _answer(
        self, path: str, method: str, environ: Mapping[str, Any]
    ) -> tuple[str, str, list[tuple[str, str]]]:
        now = self.store.clock.now()
        if not self._allowed(environ.get("HTTP_AUTHORIZATION")):
            why = (
                "the console is served beyond loopback and no key is configured: set console.api_key_file or the "
                "variable named by console.api_key_env, or bind metrics.host to 127.0.0.1"
                if self._key is None
                else "missing or wrong key: send `Authorization: Bearer <key>` (or log in with the key as password)"
            )
            challenge = (
                [("WWW-Authenticate", 'Basic realm="qtha console", charset="UTF-8"')] if self._key else []
            )
            return "401 Unauthorized", render_error("401 Unauthorized", why, now=now), challenge
        if method not in ("GET", "HEAD"):
            return (
                "405 Method Not Allowed",
                render_error("405", "the console is read-only", now=now),
                [("Allow", "GET, HEAD")],
            )
        try:
            if path in ("/console", "/console/"):
                view = load_console(self.store, daemon_status=self.daemon_status, sources=self.sources)
                return "200 OK", render_console(view), []
            found = _CYCLE.match(path)
            if found:
                card = load_cycle(self.store, int(found.group(1)), sources=self.sources)
                return "200 OK", render_cycle(card), []
        except NotFoundError as exc:
            return "404 Not Found", render_error("404 Not Found", str(exc), now=now), []
        except Exception:  # a database hiccup must not take the metrics thread down; the log has the details
            log.exception("console page %s failed", path)
            return (
                "500 Internal Server Error",
                render_error("500", "the page could not be read; see the log", now=now),
                [],
            )
        return "404 Not Found", render_error("404 Not Found", f"no page {path}; try /console", now=now), []

    def _allowed(self, authorization: str | None) -> bool:
        if self.open:
            return True
        if self._key is None:
            return False
        scheme, _, value = (authorization or "").partition(" ")
        token = value.strip().encode()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(token, validate=True)
            except (binascii.Error, ValueError):
                return False
            token = decoded.partition(b":")[2]
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token, self._key)
