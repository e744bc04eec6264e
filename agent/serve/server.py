"""``qtha serve``: wiring of the server's parts and its process lifecycle (uvicorn until SIGTERM/SIGINT).

Start-up order: check the exposure rule (no key beyond loopback), open the store, start the usage writer and
the champion follower (which loads in the background, so ``/healthz`` answers at once and ``/readyz`` once the
model is warm), then serve HTTP. On SIGTERM uvicorn stops accepting, running requests finish, then the engines
and the usage writer are closed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import uvicorn
from prometheus_client import CollectorRegistry

from agent.artifacts import Layout, open_shared
from agent.clock import Clock, SystemClock
from agent.config import QthaConfig
from agent.logs import configure_logging
from agent.serve.app import ServeParts, create_app
from agent.serve.canary import CANARY_KEY, CanaryRouter
from agent.serve.follower import Follower, Loader
from agent.serve.metrics import ServeMetrics
from agent.serve.security import BearerAuth, check_exposure, read_api_key
from agent.serve.usage import UsageWriter
from agent.store import Store, open_store

__all__ = ["ServeProcess", "build_parts", "run_serve"]

log = logging.getLogger(__name__)

# uvicorn's own limit (connections plus tasks; it answers a plain-text 503) sits well above the app's, which
# answers 503 in OpenAI's shape, so it is only a backstop against a flood the app cannot even answer.
_UVICORN_FACTOR, _UVICORN_FLOOR = 4, 4096


def build_parts(
    config: QthaConfig,
    *,
    store: Store,
    load: Loader,
    registry: CollectorRegistry | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Clock | None = None,
) -> ServeParts:
    """The server's collaborators, not yet started (see :class:`ServeProcess`).

    Raises:
        ServeSetupError: a non-loopback address without an API key, or an unusable key.
    """
    cfg = config.serve
    key = read_api_key(cfg.api_key_file, cfg.api_key_env, os.environ if environ is None else environ)
    check_exposure(cfg.host, key)
    follower: Follower | None = None
    canary: CanaryRouter | None = None
    metrics = ServeMetrics(
        registry or CollectorRegistry(auto_describe=True),
        load=lambda: {
            **(canary.load_by_version() if canary is not None else {}),
            **(follower.load_by_version() if follower is not None else {}),
        },
    )
    follower = Follower(
        read_champion=store.champion.get, load=load, metrics=metrics, poll_interval_s=cfg.poll_interval_s
    )
    canary = CanaryRouter(  # loop (issue 15): the daemon's canary beside the champion
        read_canary=lambda: store.overrides.get(CANARY_KEY),
        read_champion=store.champion.get,
        load=load,
        metrics=metrics,
        poll_interval_s=cfg.poll_interval_s,
    )
    usage = None
    if cfg.usage_log:
        usage = UsageWriter(
            store, metrics, retention_days=cfg.usage_retention_days, max_bytes=int(cfg.usage_max_mb * 2**20)
        )
    return ServeParts(
        follower=follower,
        metrics=metrics,
        auth=BearerAuth(key),
        limits=cfg,
        clock=clock or store.clock,
        usage=usage,
        add_feedback=store.usage.add_feedback,
        canary=canary,
    )


@dataclass
class ServeProcess:
    """A server: its parts and the uvicorn server in front of them."""

    parts: ServeParts
    server: uvicorn.Server

    @classmethod
    def create(cls, parts: ServeParts, *, host: str, port: int) -> ServeProcess:
        limits = parts.limits
        config = uvicorn.Config(
            create_app(parts),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            limit_concurrency=max(_UVICORN_FACTOR * limits.max_connections, _UVICORN_FLOOR),
            backlog=2048,
            timeout_graceful_shutdown=int(limits.request_timeout_s),
        )
        return cls(parts, uvicorn.Server(config))

    def start_parts(self) -> None:
        if self.parts.usage is not None:
            self.parts.usage.start()
        self.parts.follower.start()
        if self.parts.canary is not None:
            self.parts.canary.start()

    def close_parts(self) -> None:
        if self.parts.canary is not None:
            self.parts.canary.close(drain_timeout_s=self.parts.limits.request_timeout_s)
        self.parts.follower.close(drain_timeout_s=self.parts.limits.request_timeout_s)
        if self.parts.usage is not None:
            self.parts.usage.close()

    def run(self) -> None:
        """Serves until SIGTERM or SIGINT, then closes every part."""
        # uvicorn handles the stop signal (graceful shutdown), then restores the handler it found and raises the
        # signal again. Finding a quiet handler here, the process goes on to close the engines and flush the
        # usage log, and exits 0, instead of dying by the signal halfway.
        quiet = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)} if quiet else {}
        self.start_parts()
        try:
            self.server.run()
        finally:
            self.close_parts()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _ignore(signum: int, frame: object) -> None:
    log.info("stop signal %d: finishing the shutdown", signum)


def run_serve(config: QthaConfig, *, load: Loader | None = None) -> int:
    """Runs ``qtha serve`` until a signal stops it; returns the exit status."""
    configure_logging(config.logging.level, json_lines=config.logging.json_lines)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(config.database_url, clock=SystemClock(), echo=config.database.echo)
    try:
        if load is None:
            from agent.serve.loader import EngineLimits, ModelLoader, fetch_from

            layout = Layout(config.state_dir)
            root = config.artifacts.root
            load = ModelLoader(
                model_source=config.model.source,
                layout=layout,
                version_row=store.versions.get,
                limits=EngineLimits(
                    max_batch=config.serve.max_batch,
                    max_queue=config.serve.max_queue,
                    max_prompt_tokens=config.serve.max_prompt_tokens,
                    max_tokens=config.serve.max_tokens,
                ),
                simulator=config.quantum.backend,
                fetch=None if root is None else fetch_from(open_shared(root), layout),
            )
        parts = build_parts(config, store=store, load=load)
        process = ServeProcess.create(parts, host=config.serve.host, port=config.serve.port)
        log.info(
            "qtha serve on http://%s:%d (API key %s)", config.serve.host, config.serve.port,
            "required" if parts.auth.enabled else "not required",
        )
        process.run()
        return 0
    finally:
        store.close()
