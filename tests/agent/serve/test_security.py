"""Loopback by default, a bearer token beyond it, read from a file or the environment, compared in constant time."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.serve.errors import Unauthorized
from agent.serve.security import BearerAuth, ServeSetupError, check_exposure, is_loopback, read_api_key

KEY = "0123456789abcdef0123"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("10.0.0.5", False), ("example.org", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_key_comes_from_the_file_first_then_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"{KEY}\nignored second line\n")
    assert read_api_key(path, "K", {"K": "x" * 40}) == KEY
    assert read_api_key(None, "K", {"K": f"  {KEY} "}) == KEY
    assert read_api_key(None, "K", {}) is None
    with pytest.raises(ServeSetupError, match="16"):
        read_api_key(None, "K", {"K": "short"})
    with pytest.raises(ServeSetupError, match="cannot be read"):
        read_api_key(tmp_path / "missing", "K", {})
    (tmp_path / "empty").write_text("")
    with pytest.raises(ServeSetupError, match="0 characters"):
        read_api_key(tmp_path / "empty", "K", {})


def test_exposure_needs_a_key() -> None:
    check_exposure("127.0.0.1", None)
    check_exposure("0.0.0.0", KEY)
    with pytest.raises(ServeSetupError, match="serve.host = '0.0.0.0'"):
        check_exposure("0.0.0.0", None)


def test_bearer_check() -> None:
    BearerAuth(None).check(None)
    auth = BearerAuth(KEY)
    auth.check(f"Bearer {KEY}")
    auth.check(f"bearer {KEY}")
    for header in (None, "", KEY, f"Basic {KEY}", f"Bearer {KEY}x", "Bearer "):
        with pytest.raises(Unauthorized):
            auth.check(header)
