"""Prometheus metrics of the daemon — the only module that imports ``prometheus_client``.

Every metric lives on an injected ``CollectorRegistry`` (client_python's ``registry=`` pattern), so a test or a
restart inside one process builds a fresh set and nothing collides. Names follow Prometheus conventions: a
``qtha_`` prefix, base units (seconds), ``_total`` on counters, ``_info`` gauges fixed at 1 carrying labels.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> m = QthaMetrics(CollectorRegistry(), version="0.1.0")
    >>> m.cycle_finished("promoted", duration_s=42.0, finished_at=1_700_000_000.0)
    >>> m.value("qtha_cycles_total", outcome="promoted")
    1.0
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from threading import Thread
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app

__all__ = [
    "CYCLE_OUTCOMES",
    "MetricsServer",
    "QthaMetrics",
    "RoutedApp",
    "new_registry",
    "render",
    "sample_names",
    "serve",
]

# Outcomes are initialised to zero so `increase(qtha_cycles_total[24h])` exists before the first cycle ends
# (alert rules on absent series never fire).
CYCLE_OUTCOMES = ("promoted", "rejected", "failed", "held")
# A cycle on the default recipe takes minutes; a real model with many steps, hours.
CYCLE_BUCKETS_S = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800)


def new_registry() -> CollectorRegistry:
    """A fresh, empty registry (no process/platform collectors: the daemon exports only its own series)."""
    return CollectorRegistry(auto_describe=True)


class QthaMetrics:
    """The daemon's metric objects on one registry, with methods named after the events that move them.

    Args:
        registry: where the metrics register; build one per daemon (``new_registry()``).
        version: the qtha package version for ``qtha_build_info``.
        backends: backend names whose counters start at zero (so error-rate alerts have a denominator).
    """

    def __init__(
        self, registry: CollectorRegistry, *, version: str, backends: tuple[str, ...] = ("jax",)
    ) -> None:
        self.registry = registry
        r = registry
        self.build_info = Gauge(
            "qtha_build_info", "Build of the running daemon (always 1).", ["version", "python"], registry=r
        )
        self.build_info.labels(version=version, python=platform.python_version()).set(1)
        self.cycles = Counter("qtha_cycles", "Finished cycles by outcome.", ["outcome"], registry=r)
        for outcome in CYCLE_OUTCOMES:
            self.cycles.labels(outcome=outcome)
        self.cycle_duration = Histogram(
            "qtha_cycle_duration_seconds", "Wall time of a finished cycle.", buckets=CYCLE_BUCKETS_S, registry=r
        )
        self.cycle_in_progress = Gauge("qtha_cycle_in_progress", "1 while a cycle is running.", registry=r)
        self.champion_info = Gauge(
            "qtha_champion_info", "The serving champion version (always 1).", ["version"], registry=r
        )
        self.champion_metric = Gauge(
            "qtha_champion_metric", "Latest evaluation metric of the champion.", ["name"], registry=r
        )
        self.promotions = Counter("qtha_promotions", "Champion promotions (automatic or operator).", registry=r)
        self.rollbacks = Counter("qtha_rollbacks", "Champion rollbacks (automatic or operator).", registry=r)
        self.decisions = Counter(
            "qtha_decisions", "Policy decisions by kind and action.", ["kind", "action"], registry=r
        )
        self.quantum_circuits = Counter(
            "qtha_quantum_circuits", "Quantum circuits executed.", ["backend"], registry=r
        )
        self.quantum_shots = Counter("qtha_quantum_shots", "Quantum shots executed.", ["backend"], registry=r)
        self.backend_errors = Counter(
            "qtha_backend_errors", "Errors from quantum backends.", ["backend", "kind"], registry=r
        )
        for backend in backends:
            self.quantum_circuits.labels(backend=backend)
            self.quantum_shots.labels(backend=backend)
        self.budget_remaining = Gauge(
            "qtha_budget_remaining", "Budget left today by resource.", ["resource"], registry=r
        )
        self.paused = Gauge("qtha_paused", "1 while an operator has paused automatic cycles.", registry=r)
        self.last_success = Gauge(
            "qtha_last_success_timestamp_seconds", "Unix time the last cycle finished successfully.", registry=r
        )
        self.train_steps = Counter("qtha_train_steps", "Optimizer steps run by training child processes.", registry=r)
        self.nonfinite_steps = Counter(
            "qtha_nonfinite_steps", "Training steps skipped for a non-finite loss or gradient.", registry=r
        )
        self.is_leader = Gauge("qtha_leader", "1 while this daemon holds the leader lease.", registry=r)
        self.leader_epoch = Gauge(
            "qtha_leader_epoch",
            "Epoch of the leader lease as this daemon last saw it: its own term while leading, the leader's while "
            "standby (0 before any).",
            registry=r,
        )
        self.breaker_open = Gauge(
            "qtha_breaker_open", "1 while the circuit breaker suppresses cycles after repeated failures.", registry=r
        )
        self._champion: str | None = None

    # --- cycle events -------------------------------------------------------------------------------------
    def cycle_started(self) -> None:
        self.cycle_in_progress.set(1)

    def cycle_finished(self, outcome: str, *, duration_s: float | None, finished_at: float) -> None:
        """Counts a finished cycle; ``promoted`` and ``rejected`` are successes (the loop worked)."""
        self.cycle_in_progress.set(0)
        self.cycles.labels(outcome=outcome).inc()
        if duration_s is not None and duration_s >= 0:
            self.cycle_duration.observe(duration_s)
        if outcome in ("promoted", "rejected", "held"):
            self.last_success.set(finished_at)

    def train_progress(self, *, steps: int, nonfinite: int = 0) -> None:
        """Adds steps reported by a training child since the last report (deltas, never totals)."""
        if steps > 0:
            self.train_steps.inc(steps)
        if nonfinite > 0:
            self.nonfinite_steps.inc(nonfinite)

    # --- champion -----------------------------------------------------------------------------------------
    def set_champion(self, version: str | None, metrics: Mapping[str, float] | None = None) -> None:
        """Points ``qtha_champion_info`` at ``version`` (dropping the old series) and sets its metrics."""
        if version != self._champion:
            if self._champion is not None:
                self.champion_info.remove(self._champion)
            if version is not None:
                self.champion_info.labels(version=version).set(1)
            self._champion = version
            self.champion_metric.clear()
        for name, value in (metrics or {}).items():
            self.champion_metric.labels(name=name).set(float(value))

    def promoted(self) -> None:
        self.promotions.inc()

    def rolled_back(self) -> None:
        self.rollbacks.inc()

    def decision(self, kind: str, action: str) -> None:
        self.decisions.labels(kind=kind, action=action).inc()

    # --- quantum and budgets ------------------------------------------------------------------------------
    def quantum_usage(self, backend: str, *, circuits: int, shots: int = 0) -> None:
        if circuits > 0:
            self.quantum_circuits.labels(backend=backend).inc(circuits)
        if shots > 0:
            self.quantum_shots.labels(backend=backend).inc(shots)

    def backend_error(self, backend: str, kind: str, count: int = 1) -> None:
        if count > 0:
            self.backend_errors.labels(backend=backend, kind=kind).inc(count)

    def set_budget(self, remaining: Mapping[str, float]) -> None:
        for resource, value in remaining.items():
            self.budget_remaining.labels(resource=resource).set(float(value))

    def set_paused(self, paused: bool) -> None:
        self.paused.set(1 if paused else 0)

    def set_breaker_open(self, is_open: bool) -> None:
        self.breaker_open.set(1 if is_open else 0)

    def set_leader(self, leader: bool, *, epoch: int | None = None) -> None:
        """``qtha_leader``, and ``qtha_leader_epoch`` when an epoch was seen (kept otherwise)."""
        self.is_leader.set(1 if leader else 0)
        if epoch is not None:
            self.leader_epoch.set(epoch)

    # --- reading back (status output and tests) -------------------------------------------------------------
    def value(self, sample: str, /, **labels: str) -> float | None:
        """The current value of one sample (``None`` when absent); counters are named with ``_total``."""
        return self.registry.get_sample_value(sample, labels or None)


_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry can export, including labelled series that have no child yet."""
    names: set[str] = set()
    for family in registry.collect():
        suffixes = _SUFFIXES.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


def render(registry: CollectorRegistry) -> str:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(registry).decode("utf-8")


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP server; ``close()`` stops it and frees the port."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # One slow client (a browser on the console) must not hold up Prometheus' scrape.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a scrape every few seconds would flood the daemon's log


class RoutedApp(Protocol):
    """A WSGI app served beside ``/metrics`` for the paths it ``handles`` (the operator's console)."""

    def handles(self, path: str) -> bool: ...

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]: ...


def _dispatch(metrics_app: Any, extra: RoutedApp | None) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if extra is not None and extra.handles(path):
            return extra(environ, start_response)
        return metrics_app(environ, start_response)

    return app


def serve(
    registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 9464, extra: RoutedApp | None = None
) -> MetricsServer:
    """Serves ``registry`` at ``http://host:port/metrics`` from a daemon thread (port 0 picks a free one), and
    ``extra`` (the console) for the paths it handles.

    Raises:
        OSError: the port is taken; the message names the address so the operator can change ``metrics.port``.
    """
    server_class = type(
        "_Server", (_ThreadingServer,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET}
    )
    try:
        server = make_server(
            host, port, _dispatch(make_wsgi_app(registry), extra), server_class, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot serve metrics on {host}:{port} ({exc.strerror}); set metrics.port to a free port"
        ) from exc
    thread = Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
