"""Hot swap under load (stand-in engine): a promotion and then a rollback while clients keep asking.

Zero failed requests, every response names its version, and every answer is the one its version gives. The same
scenario on the real tiny model is in test_model.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import openai

from agent.serve import ServeParts
from agent.store import Store
from tests.agent.serve.conftest import MakeParts, promote
from tests.support.serve import complete, echo_loader, expected_answer, running


@dataclass(frozen=True)
class Answer:
    prompt: str
    version: str
    header: str
    text: str


def drive_swaps(
    url: str,
    store: Store,
    parts: ServeParts,
    *,
    clients: int,
    max_tokens: int,
    settle_s: float,
) -> tuple[list[Answer], list[BaseException]]:
    """Clients ask in a loop (half of them streaming) while v1 → v2 (promotion) → v1 (rollback); returns every
    answer and every failure."""
    answers: list[Answer] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def ask(worker: int) -> None:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        i = 0
        while not stop.is_set():
            prompt = f"question {worker}-{i}"
            i += 1
            try:
                versions, header, text = complete(client, prompt, max_tokens=max_tokens, stream=bool(worker % 2))
                assert len(versions) == 1, versions
                answers.append(Answer(prompt, versions.pop(), header, text))
            except BaseException as exc:  # every failure is collected and fails the test
                failures.append(exc)

    threads = [threading.Thread(target=ask, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()

    def served(version: str) -> Callable[[], bool]:
        return lambda: parts.follower.version == version and any(a.version == version for a in answers[-clients:])

    try:
        _until(served("v1"))
        time.sleep(settle_s)
        promote(store, "v2")
        _until(served("v2"))
        time.sleep(settle_s)
        seen = store.champion.get()
        store.champion.rollback(expected_epoch=seen.epoch, actor="test", reason="rollback under load")
        _until(served("v1"))
        time.sleep(settle_s)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    return answers, failures


def _until(condition: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the swap did not happen in time"
        time.sleep(0.01)


def test_promotion_and_rollback_under_load_lose_nothing(make_parts: MakeParts, serve_store: Store) -> None:
    promote(serve_store, "v1")
    parts = make_parts(load=echo_loader(token_delay_s=0.001))
    with running(parts) as url:
        answers, failures = drive_swaps(url, serve_store, parts, clients=6, max_tokens=200, settle_s=0.3)
    assert failures == []
    assert {a.version for a in answers} == {"v1", "v2"}
    for a in answers:
        assert a.header == a.version
        assert a.text == expected_answer(a.version, [{"role": "user", "content": a.prompt}])
