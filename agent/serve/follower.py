"""Following the champion: load the version the database names, swap it in between requests, retire the old one.

The database's champion row (version id + epoch, moved only by the daemon's compare-and-swap) is the source of
truth. A poller reads it every ``poll_interval_s``; when it names another version, that version is loaded and
warmed beside the serving one (requests keep flowing), then a single reference assignment makes it answer new
requests. Requests hold a lease on the version they started with, so they finish on it; the old engine is
stopped once its last lease ends. A version that fails to load is refused, logged and counted, and the serving
one stays; it is not retried until the champion moves again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from agent.serve.engine import Served
from agent.serve.errors import EngineUnavailable
from agent.serve.metrics import ServeMetrics
from agent.store import ChampionState

__all__ = ["BASE_VERSION", "Follower", "Loader"]

log = logging.getLogger(__name__)

# The name under which the base model serves before the first promotion (no adapter).
BASE_VERSION = "base"

# Loads and warms ``version_id`` (None: the base model) for ``epoch``; raises on any failure.
Loader = Callable[[str | None, int], Served]


@dataclass(eq=False)
class _Live:
    served: Served
    users: int = 0
    retired: bool = False


class Follower:
    """Keeps the champion loaded and hands out leases on it.

    Args:
        read_champion: the champion row (``store.champion.get``).
        load: builds a warmed :class:`Served` for a version (see :mod:`agent.serve.loader`).
        metrics: swaps, load failures and the serving version are recorded here.
        poll_interval_s: how often the champion row is read.
    """

    def __init__(
        self,
        *,
        read_champion: Callable[[], ChampionState],
        load: Loader,
        metrics: ServeMetrics,
        poll_interval_s: float,
    ) -> None:
        self._read = read_champion
        self._load = load
        self._metrics = metrics
        self._interval = poll_interval_s
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._current: _Live | None = None
        self._retiring: list[_Live] = []
        self._refused: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what requests use ---------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def version(self) -> str | None:
        """The version answering new requests (None before the first load)."""
        live = self._current
        return None if live is None else live.served.version_id

    @contextmanager
    def lease(self) -> Iterator[Served]:
        """The serving version, kept alive until the block ends even if a swap happens meanwhile.

        Raises:
            EngineUnavailable: no version is loaded yet.
        """
        with self._lock:
            live = self._current
            if live is None:
                raise EngineUnavailable("no model is loaded yet; GET /readyz answers 200 once one is")
            live.users += 1
        try:
            yield live.served
        finally:
            with self._lock:
                live.users -= 1
                done = live.retired and live.users == 0
            if done:
                self._shut_down(live)

    def load_by_version(self) -> dict[str, tuple[int, int]]:
        """``{version: (queued, in flight)}`` of every live engine (the serving one and those finishing)."""
        with self._lock:
            lives = ([self._current] if self._current else []) + list(self._retiring)
            return {
                live.served.version_id: (live.served.engine.queue_depth, live.users) for live in lives
            }

    # -- following -------------------------------------------------------------------------------------------------

    def poll_once(self) -> bool:
        """Reads the champion and swaps to it if it names another version; True when a swap happened."""
        with self._poll_lock:  # the poller thread and a test (or start-up) never load concurrently
            state = self._read()
            wanted = state.version_id or BASE_VERSION
            if self.version == wanted or self._refused == (wanted, state.epoch):
                return False
            try:
                served = self._load(state.version_id, state.epoch)
            except Exception as exc:  # model code may fail in many ways; each must leave the old version serving
                self._refused = (wanted, state.epoch)
                self._metrics.load_failed(wanted)
                log.error(
                    "refused to serve version %s (champion epoch %d): %s; still serving %s",
                    wanted, state.epoch, exc, self.version or "nothing",
                    extra={"version": wanted, "epoch": state.epoch},
                )
                return False
            with self._lock:
                old, self._current = self._current, _Live(served)
                if old is not None:
                    old.retired = True
                    self._retiring.append(old)
                idle = old is not None and old.users == 0
            self._refused = None
            self._metrics.swapped(served.version_id)
            log.info(
                "serving version %s (champion epoch %d)%s", served.version_id, state.epoch,
                f", was {old.served.version_id}" if old else "",
            )
            if idle:
                self._shut_down(old)  # type: ignore[arg-type]
            return True

    def start(self) -> None:
        """Polls in a background thread: at once, then every ``poll_interval_s``."""
        self._thread = threading.Thread(target=self._run, name="champion-follower", daemon=True)
        self._thread.start()

    def close(self, *, drain_timeout_s: float = 10.0) -> None:
        """Stops polling and stops every engine (after letting running requests finish for a while)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            lives = ([self._current] if self._current else []) + self._retiring
            self._current, self._retiring = None, []
        for live in lives:
            live.served.engine.drain(drain_timeout_s)
            live.served.engine.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # an unreachable database must not stop the poller; the next poll retries
                log.warning("could not read the champion; still serving %s", self.version, exc_info=True)
            self._stop.wait(self._interval)

    def _shut_down(self, live: _Live) -> None:
        # Off the caller's thread: the last lease often ends on the event loop, and stop() joins a thread.
        def stop() -> None:
            live.served.engine.stop()
            with self._lock:
                if live in self._retiring:
                    self._retiring.remove(live)

        threading.Thread(target=stop, name=f"retire-{live.served.version_id}", daemon=True).start()
