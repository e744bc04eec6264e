"""Who may reach an HTTP endpoint of ours (the server's API, the console): loopback is open, any other address
needs a bearer key of at least :data:`MIN_KEY_CHARS` characters, read from a file or an environment variable."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MIN_KEY_CHARS", "is_loopback", "read_bearer_key"]

# Shorter keys are guessable; refuse them rather than give a false sense of protection.
MIN_KEY_CHARS = 16


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_bearer_key(
    key_file: Path | None,
    key_env: str,
    environ: Mapping[str, str],
    *,
    setting: str,
    error: type[ValueError] = ValueError,
) -> str | None:
    """The key: the first line of ``key_file`` if set, else ``environ[key_env]``, else None.

    Args:
        setting: the configuration key naming the file (``serve.api_key_file``), quoted in messages.
        error: the exception type to raise, so each caller keeps its own.

    Raises:
        error: the file is unreadable or empty, or the key is shorter than :data:`MIN_KEY_CHARS`.
    """
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise error(f"{setting} {key_file} cannot be read: {exc}") from None
        key, where = (lines[0].strip() if lines else ""), f"{setting} {key_file}"
    else:
        key, where = environ.get(key_env, "").strip(), f"environment variable {key_env}"
        if not key:
            return None
    if len(key) < MIN_KEY_CHARS:
        raise error(
            f"the key from {where} has {len(key)} characters; use at least {MIN_KEY_CHARS} (e.g. `openssl rand -hex 32`)"
        )
    return key
