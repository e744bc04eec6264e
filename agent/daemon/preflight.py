"""What must hold before the daemon starts, checked the same way at start-up and by ``qtha doctor``.

Each check raises :class:`PreflightError` with one line naming the cause and the fix, and a ``kind`` the CLI maps
to an exit status: ``"config"`` (fix the configuration: exit 2) or ``"environment"`` (fix the machine: a server
down, a directory not writable, a port taken: exit 5).

The state directory is created 0700 and every file under it 0600 (:func:`restrict_umask`), inside systemd or not:
it holds the database, the model versions and the operator's data.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "HealthError",
    "PreflightError",
    "check_port",
    "listen_error",
    "prepare_state_dir",
    "restrict_umask",
]

PRIVATE_UMASK = 0o077


class PreflightError(RuntimeError):
    """A start-up precondition does not hold; the message is one line with the cause and the fix."""

    def __init__(self, message: str, *, kind: Literal["config", "environment"] = "environment") -> None:
        super().__init__(message)
        self.kind = kind


def restrict_umask() -> int:
    """Sets the process umask to 077 (files 0600, directories 0700), as ``UMask=`` does under systemd when the
    unit asks for less; returns the previous umask. A stricter umask already set is kept."""
    previous = os.umask(PRIVATE_UMASK)
    os.umask(previous | PRIVATE_UMASK)
    return previous


class HealthError(PreflightError):
    """The daemon's health probe failed (database unreadable, state directory not writable); environment."""


@dataclass(frozen=True)
class StateDir:
    """What :func:`prepare_state_dir` found."""

    path: Path
    created: bool
    mode: int


def prepare_state_dir(path: Path) -> StateDir:
    """Creates ``path`` (0700) if missing and checks it is a writable directory.

    Raises:
        PreflightError: it is a file, cannot be created, or is not writable.
    """
    created = False
    try:
        if not path.exists():
            path.mkdir(mode=0o700, parents=True)
            created = True
    except FileExistsError:
        pass  # another process created it meanwhile
    except NotADirectoryError:
        raise PreflightError(
            f"state directory {path}: a parent is a file, not a directory; set state_dir (QTHA_STATE_DIR) elsewhere"
        ) from None
    except OSError as exc:
        raise PreflightError(
            f"state directory {path} cannot be created ({exc.strerror}); create it writable for this user or set "
            "state_dir (QTHA_STATE_DIR)"
        ) from None
    if not path.is_dir():
        raise PreflightError(
            f"state directory {path} is a file, not a directory; move the file away or set state_dir (QTHA_STATE_DIR)"
        )
    probe = path / f".probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        why = "read-only file system" if exc.errno == errno.EROFS else exc.strerror
        raise PreflightError(
            f"state directory {path} is not writable ({why}); make it writable for uid {os.getuid()} or set "
            "state_dir (QTHA_STATE_DIR)"
        ) from None
    mode = stat.S_IMODE(path.stat().st_mode)
    return StateDir(path=path, created=created, mode=mode)


def check_port(host: str, port: int) -> None:
    """Checks that the metrics endpoint can listen on ``host:port`` (binds and closes at once).

    Raises:
        PreflightError: the port is taken (environment) or the address cannot be used here (config).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PreflightError(
            f"metrics.host {host!r} does not resolve ({exc.strerror}); set metrics.host to an address of this host",
            kind="config",
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # The same option the HTTP server sets, so a port in TIME_WAIT after a restart is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise listen_error(host, port, exc) from None


def listen_error(host: str, port: int, exc: OSError) -> PreflightError:
    """The one-line error for a failed bind of the metrics endpoint (also used when the server itself fails)."""
    if exc.errno == errno.EADDRINUSE:
        return PreflightError(
            f"metrics port {port} on {host} is in use (another qtha daemon?); stop it or set metrics.port "
            "(QTHA_METRICS__PORT)"
        )
    if exc.errno == errno.EACCES:
        return PreflightError(
            f"metrics port {port} on {host} needs privileges; use a port above 1023 (metrics.port)", kind="config"
        )
    return PreflightError(
        f"cannot listen on {host}:{port} ({exc.strerror}); set metrics.host/metrics.port to a usable address",
        kind="config",
    )
