"""The canary beside the champion (issue 15, added by branch `loop`): the daemon names a candidate and a share of
live traffic in the operator-override row ``canary`` (``{"version", "share", ...}``; written by
:mod:`agent.daemon.canary`); this router loads that version beside the champion (same loader) and answers that
share of new requests with it, chosen by a stable hash of the request id. A request naming the canary's id in
``model`` always gets it. When the row goes away (promoted or aborted) the canary engine is retired; if the canary
was promoted, the champion follower swaps to it on its own poll.

Metrics and the usage log need nothing new: every request is already labelled with the version that answered it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from agent.serve.engine import Served
from agent.serve.follower import Follower, Loader
from agent.serve.metrics import ServeMetrics
from agent.store import ChampionState

__all__ = ["CANARY_KEY", "CanaryRouter", "in_share"]

log = logging.getLogger(__name__)

CANARY_KEY = "canary"  # the same row as agent.daemon.live.CANARY_KEY (tests check they agree)


def in_share(request_id: str, share: float) -> bool:
    """Stable: a request id is in the first ``share`` of the hash range or not, on every server."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) < share * 2**32


class CanaryRouter:
    """Follows the ``canary`` row and routes its share of requests to the canary version.

    Args:
        read_canary: the row (``store.overrides.get("canary")``); None when no canary runs.
        read_champion: the champion row (its epoch tags the canary's load).
        load, metrics: as for :class:`Follower`.
        poll_interval_s: how often the row is read.
    """

    def __init__(
        self,
        *,
        read_canary: Callable[[], Mapping[str, Any] | None],
        read_champion: Callable[[], ChampionState],
        load: Loader,
        metrics: ServeMetrics,
        poll_interval_s: float,
    ) -> None:
        self._read = read_canary
        self._champion = read_champion
        self._load = load
        self._metrics = metrics
        self._interval = poll_interval_s
        self._lock = threading.Lock()
        self._follower: Follower | None = None
        self._share = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> str | None:
        follower = self._follower
        return None if follower is None else follower.version

    def pick(self, request_id: str, model: str | None, aliases: tuple[str, ...]) -> AbstractContextManager[Served] | None:
        """A lease on the canary when this request goes to it, else None (the champion answers)."""
        with self._lock:
            follower, share = self._follower, self._share
        if follower is None or not follower.ready:
            return None
        if model is not None and model == follower.version:
            return follower.lease()
        if (model is None or model in aliases) and in_share(request_id, share):
            return follower.lease()
        return None

    def poll_once(self) -> None:
        row = self._read()
        wanted = str(row["version"]) if row else None
        champion = self._champion()
        if wanted is None or wanted == champion.version_id:
            self._retire()
            return
        with self._lock:
            current = self._follower
        if current is None or current.version != wanted:
            fixed = ChampionState(version_id=wanted, epoch=champion.epoch, pinned=False, updated_at=None)
            follower = Follower(
                read_champion=lambda: fixed, load=self._load, metrics=self._metrics, poll_interval_s=self._interval
            )
            if not follower.poll_once():
                return  # refused: logged and counted by the follower; the champion keeps all traffic
            log.info("canary %s serves %.0f%% of new requests", wanted, 100 * float(row["share"]))  # type: ignore[index]
            self._retire()
            with self._lock:
                self._follower = follower
        with self._lock:
            self._share = float(row["share"])  # type: ignore[index]

    def load_by_version(self) -> dict[str, tuple[int, int]]:
        follower = self._follower
        return {} if follower is None else follower.load_by_version()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="canary-router", daemon=True)
        self._thread.start()

    def close(self, *, drain_timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._retire(drain_timeout_s)

    def _retire(self, drain_timeout_s: float = 10.0) -> None:
        with self._lock:
            old, self._follower, self._share = self._follower, None, 0.0
        if old is not None:
            log.info("canary %s retired", old.version)
            threading.Thread(target=old.close, kwargs={"drain_timeout_s": drain_timeout_s}, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # an unreachable database must not stop the router; the next poll retries
                log.warning("could not read the canary row; canary %s unchanged", self.version, exc_info=True)
            self._stop.wait(self._interval)
