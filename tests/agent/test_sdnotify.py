"""sd_notify datagrams, asserted against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon.sdnotify import Notifier, watchdog_interval_s


@pytest.fixture
def systemd_socket() -> Iterator[tuple[str, socket.socket]]:
    directory = tempfile.mkdtemp(prefix="qtha-notify-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_the_socket(systemd_socket: tuple[str, socket.socket]) -> None:
    path, sock = systemd_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready(status="champion v1")
    assert _recv(sock) == "READY=1\nSTATUS=champion v1"
    notifier.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    notifier.status("training\nstep 3")
    assert _recv(sock) == "STATUS=training step 3"  # one line: a newline would start a new assignment
    notifier.extend_timeout(12.5)
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=12500000"
    notifier.stopping(status="checkpointing")
    assert _recv(sock) == "STOPPING=1\nSTATUS=checkpointing"
    notifier.reloading()
    assert _recv(sock) == "RELOADING=1"
    notifier.close()


def test_abstract_namespace_address() -> None:
    name = f"qtha-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).ready()
        assert _recv(sock) == "READY=1"
    finally:
        sock.close()


def test_disabled_outside_systemd_and_failures_do_not_raise(tmp_path: Path) -> None:
    assert not Notifier.from_environment({}).ready()
    missing = Notifier(str(tmp_path / "nobody-listens"))
    assert missing.watchdog() is False  # logged, not raised


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # someone else's watchdog
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_sec(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env, pid=4242) == expected
