"""Server fixtures: a store with versions to promote, and server parts built on it with a stand-in engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import QthaConfig, load_config
from agent.serve import ServeParts, build_parts
from agent.store import Store, open_store
from tests.support.serve import echo_loader

MakeParts = Callable[..., ServeParts]


@pytest.fixture
def serve_store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store (system clock: usage records carry real times) with candidate versions v1 and v2."""
    store = open_store(f"sqlite:///{tmp_path / 'qtha.db'}")
    for version in ("v1", "v2"):
        store.versions.add(
            version, base_fingerprint="fp", adapter_kind="lora", artifact_path=f"versions/{version}", sha256="0" * 64
        )
    yield store
    store.close()


def promote(store: Store, version: str) -> None:
    seen = store.champion.get()
    store.champion.promote(version, expected_epoch=seen.epoch, actor="test", reason="test")


def serve_config(tmp_path: Path, **serve: object) -> QthaConfig:
    return load_config(None, state_dir=tmp_path, serve={"poll_interval_s": 0.05, **serve})


@pytest.fixture
def make_parts(serve_store: Store, tmp_path: Path) -> MakeParts:
    """``make_parts(load=..., environ=..., **serve_keys)``: server parts on ``serve_store``."""

    def make(*, load: object = None, environ: dict[str, str] | None = None, **serve: object) -> ServeParts:
        return build_parts(
            serve_config(tmp_path, **serve),
            store=serve_store,
            load=load or echo_loader(),  # type: ignore[arg-type]
            registry=CollectorRegistry(),
            environ=environ or {},
        )

    return make
