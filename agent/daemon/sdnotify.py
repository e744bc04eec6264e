"""A tiny systemd ``sd_notify`` client: datagrams to ``$NOTIFY_SOCKET``, no dependency.

systemd's protocol (``man sd_notify``): newline-separated ``KEY=VALUE`` assignments sent as one datagram to the
AF_UNIX socket named by ``NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace). Outside systemd
the variable is unset and every call is a cheap no-op, so the daemon never needs to know how it was started.

Example:
    >>> notifier = Notifier.from_environment({})
    >>> notifier.enabled
    False
    >>> notifier.ready(status="serving")  # no-op outside systemd
    False
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval_s"]

log = logging.getLogger(__name__)


def watchdog_interval_s(environ: Mapping[str, str], *, pid: int | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``WatchdogSec`` (systemd's own recommendation).

    Args:
        environ: the process environment (``WATCHDOG_USEC``, ``WATCHDOG_PID``).
        pid: this process id; when ``WATCHDOG_PID`` names another process, the watchdog is not ours.

    Returns:
        Seconds between keep-alives, or ``None`` when no watchdog is armed for this process.
    """
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and int(owner) != (os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer number of microseconds", usec)
        return None
    return value / 2 / 1e6 if value > 0 else None


class Notifier:
    """Sends state changes to the service manager.

    Args:
        address: the ``NOTIFY_SOCKET`` value (a path, or ``@name`` for the abstract namespace); ``None``
            disables notifications.
    """

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET`` in ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Sends one datagram of ``KEY=VALUE`` lines (keys upper-cased); returns whether it was sent.

        A failure to send is logged, never raised: losing a STATUS line must not stop the daemon (a missed
        WATCHDOG is what systemd is there to catch).
        """
        if self._address is None:
            return False
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        address = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload.encode("utf-8"), address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._address, exc)
            return False
        return True

    def ready(self, *, status: str | None = None) -> bool:
        """``READY=1``: start-up finished (migrations applied, first health probe passed)."""
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        """``STATUS=...``: one human-readable line, shown by ``systemctl status``."""
        return self.notify(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive; systemd restarts the unit when it stops arriving."""
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        """``RELOADING=1``: re-reading the configuration (followed by ``ready()``)."""
        return self.notify(RELOADING=1)

    def stopping(self, *, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown started."""
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: asks for ``seconds`` more before the start/stop timeout fires."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1e6))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
