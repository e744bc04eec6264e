"""The canary beside the champion (stand-in engine): the daemon's `canary` row sends its share of requests to the
candidate, labelled with its version in the metrics and the usage log; removing the row retires it."""

from __future__ import annotations

import time

import openai

from agent.daemon.live import CANARY_KEY as DAEMON_KEY
from agent.serve.canary import CANARY_KEY, in_share
from agent.store import Store
from tests.agent.serve.conftest import MakeParts, promote
from tests.support.serve import running


def test_the_server_and_the_daemon_name_the_same_row() -> None:
    assert CANARY_KEY == DAEMON_KEY


def test_share_is_stable_and_about_right() -> None:
    ids = [f"chatcmpl-{i:06d}" for i in range(4000)]
    picked = [i for i in ids if in_share(i, 0.25)]
    assert picked == [i for i in ids if in_share(i, 0.25)]  # the same request id always goes the same way
    assert 0.22 < len(picked) / len(ids) < 0.28
    assert not any(in_share(i, 0.0) for i in ids) and all(in_share(i, 1.0) for i in ids)


def _wait(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_canary_serves_its_share_and_is_retired_with_its_row(serve_store: Store, make_parts: MakeParts) -> None:
    promote(serve_store, "v1")
    parts = make_parts()
    with running(parts) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        serve_store.overrides.set(CANARY_KEY, {"version": "v2", "share": 0.5}, actor="test", reason="canary")
        _wait(lambda: parts.canary is not None and parts.canary.version == "v2")
        models = [
            client.chat.completions.create(model="qtha", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=8).model
            for i in range(60)
        ]
        assert set(models) == {"v1", "v2"} and 15 <= models.count("v2") <= 45
        named = client.chat.completions.create(model="v2", messages=[{"role": "user", "content": "x"}], max_tokens=4)
        assert named.model == "v2"  # a request naming the canary always gets it
        # Every request is labelled with the version that answered it, in the metrics and in the usage log.
        value = parts.metrics.registry.get_sample_value
        _wait(lambda: len(serve_store.usage.list(version_id="v2")) == models.count("v2") + 1)
        assert value("qtha_serve_requests_total", {"version": "v2", "status": "200"}) == models.count("v2") + 1
        serve_store.overrides.clear(CANARY_KEY, actor="test", reason="canary aborted")
        _wait(lambda: parts.canary.version is None)
        after = {
            client.chat.completions.create(model="qtha", messages=[{"role": "user", "content": f"r{i}"}], max_tokens=4).model
            for i in range(20)
        }
        assert after == {"v1"}
