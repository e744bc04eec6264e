"""The champion follower: loads what the database names, swaps between requests, refuses broken versions."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from agent.serve import Follower, ServeMetrics
from agent.serve.errors import EngineUnavailable
from agent.store import Store
from tests.agent.serve.conftest import promote
from tests.support.serve import EchoEngine, echo_loader


def _follower(store: Store, loaded: list[str], *, broken: frozenset[str] = frozenset()) -> tuple[Follower, ServeMetrics]:
    metrics = ServeMetrics(CollectorRegistry())
    follower = Follower(
        read_champion=store.champion.get,
        load=echo_loader(loaded, broken=broken),
        metrics=metrics,
        poll_interval_s=0.01,
    )
    return follower, metrics


def _wait(condition, timeout_s: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_serves_the_base_until_a_promotion_then_swaps(serve_store: Store) -> None:
    loaded: list[str] = []
    follower, metrics = _follower(serve_store, loaded)
    with pytest.raises(EngineUnavailable):
        with follower.lease():
            pass
    assert follower.poll_once() and follower.version == "base"
    assert not follower.poll_once()  # nothing moved: nothing reloads
    promote(serve_store, "v1")
    assert follower.poll_once() and follower.version == "v1" and loaded == ["base", "v1"]
    assert metrics.value("qtha_serve_swaps_total", version="v1") == 1.0
    assert metrics.value("qtha_serve_serving_info", version="v1") == 1.0
    assert metrics.value("qtha_serve_serving_info", version="base") is None
    follower.close()


def test_a_lease_keeps_its_version_through_a_swap_and_the_old_engine_stops_after(serve_store: Store) -> None:
    follower, _ = _follower(serve_store, [])
    promote(serve_store, "v1")
    follower.poll_once()
    with follower.lease() as held:
        promote(serve_store, "v2")
        follower.poll_once()
        with follower.lease() as fresh:
            assert (held.version_id, fresh.version_id) == ("v1", "v2")
        assert set(follower.load_by_version()) == {"v1", "v2"}
        old_engine = held.engine
        assert isinstance(old_engine, EchoEngine) and not old_engine.stopped.is_set()
    _wait(old_engine.stopped.is_set)
    _wait(lambda: set(follower.load_by_version()) == {"v2"})
    follower.close()


def test_an_unloadable_champion_is_refused_counted_and_not_retried(serve_store: Store) -> None:
    loaded: list[str] = []
    follower, metrics = _follower(serve_store, loaded, broken=frozenset({"v2"}))
    promote(serve_store, "v1")
    follower.poll_once()
    promote(serve_store, "v2")
    assert not follower.poll_once() and not follower.poll_once()
    assert follower.version == "v1" and loaded == ["v1"]
    assert metrics.value("qtha_serve_load_failures_total", version="v2") == 1.0
    # A rollback moves the epoch: the follower acts on it (v1 already serves, so nothing reloads either).
    seen = serve_store.champion.get()
    serve_store.champion.rollback(expected_epoch=seen.epoch, actor="test", reason="bad")
    assert not follower.poll_once() and follower.version == "v1"
    follower.close()


def test_the_poller_thread_follows_within_its_interval(serve_store: Store) -> None:
    follower, _ = _follower(serve_store, [])
    follower.start()
    _wait(lambda: follower.version == "base")
    promote(serve_store, "v1")
    _wait(lambda: follower.version == "v1", timeout_s=1.0)
    follower.close()
    assert follower.version is None
