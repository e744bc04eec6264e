"""Tests that need a real tool (promtool, systemd-analyze, haproxy, PostgreSQL, pyqpanda3) skip through these helpers.

Locally a missing tool skips with one line saying how to get it (``make test`` runs ``.ci/tools`` first, which
installs what it can). Under ``CI=true`` the root conftest turns such a skip into a failure, so CI cannot stay green
when an install step breaks.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

__all__ = ["MISSING_TOOL", "find_tool", "needs_tool", "skip_missing_tool", "strict"]

MISSING_TOOL = "missing tool"


def strict() -> bool:
    """True under CI, where a missing tool is a failure."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def find_tool(name: str) -> str | None:
    """``name`` on PATH, beside this interpreter (``.ci/tools`` puts promtool into the virtualenv's bin/) or in
    /usr/sbin (Debian installs daemons such as haproxy there, outside a plain user's PATH)."""
    found = shutil.which(name)
    places = (Path(sys.executable).with_name(name), Path("/usr/sbin") / name)
    return found or next((str(p) for p in places if os.access(p, os.X_OK)), None)


def _reason(name: str, how: str) -> str:
    return f"{MISSING_TOOL} {name}: {how}"


def needs_tool(name: str, *, available: bool, how: str) -> pytest.MarkDecorator:
    """A skip marker for a test that cannot run without ``name``."""
    return pytest.mark.skipif(not available, reason=_reason(name, how))


def skip_missing_tool(name: str, how: str) -> None:
    """Skips the running test or fixture because ``name`` is missing."""
    pytest.skip(_reason(name, how))
