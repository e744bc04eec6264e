"""Who may call the server: loopback by default, a bearer token for anything else.

The token comes from a file (its first line) or an environment variable, never from the config file itself, and
is compared in constant time (``hmac.compare_digest``) so its bytes cannot be guessed one by one from timing.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path

from agent.access import is_loopback, read_bearer_key
from agent.serve.errors import Unauthorized

__all__ = ["BearerAuth", "ServeSetupError", "check_exposure", "is_loopback", "read_api_key"]



class ServeSetupError(ValueError):
    """The server cannot start as configured (the message names the key to change)."""


def read_api_key(api_key_file: Path | None, api_key_env: str, environ: Mapping[str, str]) -> str | None:
    """The bearer token: the first line of ``api_key_file`` if set, else ``environ[api_key_env]``, else None.

    Raises:
        ServeSetupError: the file is unreadable or empty, or the token is shorter than 16 characters.
    """
    return read_bearer_key(api_key_file, api_key_env, environ, setting="serve.api_key_file", error=ServeSetupError)


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuses to listen beyond loopback without an API key.

    Raises:
        ServeSetupError: ``host`` is not a loopback address and there is no key.
    """
    if api_key is None and not is_loopback(host):
        raise ServeSetupError(
            f"serve.host = {host!r} accepts connections from other machines, which needs an API key: set "
            "serve.api_key_file or the variable named by serve.api_key_env, or listen on 127.0.0.1"
        )


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against the key (no key: every request passes)."""

    def __init__(self, api_key: str | None) -> None:
        self._key = None if api_key is None else api_key.encode()

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def check(self, authorization: str | None) -> None:
        """Raises :class:`Unauthorized` unless the header carries the key."""
        if self._key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            raise Unauthorized("missing or wrong API key; send the header `Authorization: Bearer <key>`")
