"""The whole loop with real processes: ``qtha daemon`` and ``qtha serve`` on the tiny model, and a traffic generator
that talks to the server through the ``openai`` client and sends feedback like a user would.

The tiny random model cannot really learn arithmetic in a test's time, so the *user* is simulated: the traffic
generator scores each answer by the prompt set it belongs to and the version that answered (the ``x-qtha-version``
the server reports) — the stand-in for "this version answers these prompts well". Everything else is the real
thing: the usage log and feedback written by the server, the ``live_*`` series the daemon computes from them,
Page-Hinkley drift on ``live_feedback_score``, training and validation in child processes, the canary routed by
the server, the canary's live comparison, promotion by the champion CAS, hot swap, and rollback on live signals.

One run, three stories in order:
1. steady traffic on the first champion → the prompts shift to a set it answers badly (and the operator drops that
   data in the inbox) → drift fires from live signals → a cycle trains on the new data → canary → promoted → the
   champion's live feedback score recovers;
2. ``qtha cycle --now`` makes a candidate the users dislike: its canary is aborted, the champion keeps serving;
3. the promoted champion starts to degrade live: it is rolled back automatically.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from agent.store import open_store
from tests.agent.test_e2e_support import (
    ROOT,
    DaemonProcess,
    _env,
    free_port,
    qtha,
    qtha_json,
    wait_for,
    write_config,
)
from tests.fixtures.tiny_model import write_tiny_hf

STEADY = [f"What is {a} plus {b}?" for a, b in itertools.product(range(2, 9), range(3, 8))]
SHIFTED = [f"Tom has {a} boxes of {b} pencils. How many pencils?" for a, b in itertools.product(range(2, 9), range(3, 8))]


@dataclass
class Users:
    """The traffic generator: ``workers`` clients asking in a loop, each posting its feedback after each answer."""

    url: str
    opinion: Callable[[str, str], float]  # (prompt set, answering version) → score
    prompts: list[tuple[str, str]] = field(default_factory=lambda: [("steady", p) for p in STEADY])
    answered: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=4000))
    failures: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def recent_versions(self, seconds: float = 2.0) -> set[str]:
        """The versions that answered in the last ``seconds`` (requests in flight at a swap finish on the old one)."""
        since = time.monotonic() - seconds
        return {v for at, _, v in list(self.answered) if at >= since}

    def _ask(self, worker: int) -> None:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=2, timeout=60)
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for i in itertools.count(worker):
                if self.stop.is_set():
                    return
                kind, prompt = self.prompts[i % len(self.prompts)]
                try:
                    reply = client.chat.completions.create(
                        model="qtha", messages=[{"role": "user", "content": prompt}], max_tokens=4, temperature=0
                    )
                except openai.APIError as exc:
                    self.failures.append(exc)
                    continue
                self.answered.append((time.monotonic(), kind, reply.model))
                # The user's judgement right away (the daemon reads feedback by its arrival time); the usage log is
                # written in batches, so retry until the request's record is there.
                feedback = {"request_id": reply.id, "score": self.opinion(kind, reply.model)}
                for _attempt in range(40):
                    if http.post("/v1/feedback", json=feedback).status_code != 404:
                        break
                    time.sleep(0.05)

    def run(self, workers: int = 3) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._ask, args=(w,), daemon=True) for w in range(workers)]
        for thread in threads:
            thread.start()
        return threads


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[Path, Path, DaemonProcess, DaemonProcess, str]]:
    state = tmp_path / "state"
    state.mkdir()
    metrics_port, serve_port = free_port(), free_port()
    config = write_config(
        tmp_path / "qtha.toml",
        {
            "state_dir": str(state),
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "model": {"source": str(write_tiny_hf(tmp_path / "tiny"))},
            "training": {"steps": 4, "seq_len": 256, "batch_size": 4, "learning_rate": 0.05},
            "recipe": {"adapter": "lora", "rank": 4, "learn": False},
            "evaluation": {
                "examples": 4, "max_new_tokens": 2, "batch_size": 4, "pool_examples": 8, "smoke_probes": 2,
                "smoke_max_new_tokens": 2,
            },
            "policy": {
                "cooldown_s": 0.0, "min_slice_examples": 50, "promotion_confidence": 0.5,
                "drift_metric": "live_feedback_score", "drift_threshold": 0.25, "drift_delta": 0.02,
            },
            "live": {
                "window_s": 2.0, "canary_share": 0.5, "canary_bake_s": 6.0, "canary_poll_s": 0.5,
                "canary_max_extensions": 40, "canary_needs_traffic_s": 120.0, "min_samples": 8, "margin": 0.3,
                "latency_ratio": 20.0,
            },
            "scheduler": {
                "commands_interval_s": 0.3, "consider_interval_s": 1.0, "ingest_interval_s": 0.5,
                "live_interval_s": 1.0, "lease_ttl_s": 5.0, "evaluate_interval_s": 3600.0,
            },
            "serve": {"port": serve_port, "poll_interval_s": 0.5, "max_batch": 4, "max_tokens": 8, "default_max_tokens": 4},
        },
    )
    server = DaemonProcess(config, serve_port, tmp_path / "serve.log")  # its start: _start_server (qtha serve)
    daemon = DaemonProcess(config, metrics_port, tmp_path / "daemon.log")
    yield config, state, daemon, server, f"http://127.0.0.1:{serve_port}"
    daemon.stop(timeout=60)
    server.stop(timeout=30)


def _start_server(server: DaemonProcess) -> None:
    log = open(server.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
    server.proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--config", str(server.config)],
        cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_live_traffic_drives_drift_canary_promotion_abort_and_rollback(loop) -> None:  # noqa: ANN001
    config, state, daemon, server, url = loop
    liked = {"steady": {"*"}, "shifted": {"*"}}
    disliked: set[str] = set()

    def opinion(kind: str, version: str) -> float:
        if version in disliked:
            return 0.0
        good = liked[kind]
        return 1.0 if "*" in good or version in good else 0.0

    store = open_store(f"sqlite:///{state / 'qtha.db'}")
    _start_server(server)
    wait_for(lambda: _ready(url) or not server.alive, timeout=300, what=f"server ready\n{server.log()[-2000:]}")
    assert server.alive, server.log()[-3000:]
    users = Users(url, opinion)
    threads = users.run()
    daemon.start()
    try:
        # The first cycle (no champion yet) bakes as a canary beside the base model and is promoted.
        wait_for(lambda: store.champion.get().version_id == "c000001", timeout=600,
                 what=f"the first champion\n{daemon.log()[-3000:]}")
        assert [d.action for d in store.decisions.list(kind="canary", cycle_id=1)][-1] == "promote"
        wait_for(lambda: users.recent_versions() == {"c000001"}, timeout=300, what="the server swapped to c000001")

        # 1. The prompts shift to a set the champion answers badly; the operator drops that data in the inbox.
        wait_for(lambda: len(store.metrics.samples("live_feedback_score", labels={"version": "c000001"})) >= 6,
                 timeout=30, what="steady live samples of the champion")
        liked["shifted"] = {"c000002", "c000003", "c000004"}  # versions trained after the shift answer them well
        users.prompts = [("shifted", p) for p in SHIFTED] + [("steady", p) for p in STEADY[:5]]
        inbox = state / "inbox" / "shifted.jsonl"
        inbox.write_text("".join(f'{{"prompt": "{p}", "answer": "ok"}}\n' for p in SHIFTED))
        second = wait_for(lambda: (c := [x for x in store.cycles.list(limit=5) if x.id == 2]) and c[0], timeout=300,
                          what=f"a cycle triggered by drift\n{daemon.log()[-3000:]}")
        assert "drift" in second.trigger_reasons
        wait_for(lambda: store.champion.get().version_id == "c000002", timeout=600,
                 what=f"canary then promotion of c000002\n{daemon.log()[-3000:]}")
        canary = store.decisions.list(kind="canary", cycle_id=2)
        assert [d.action for d in canary][0] == "wait" and canary[-1].action == "promote"
        wait_for(
            lambda: (s := store.metrics.samples("live_feedback_score", labels={"version": "c000002"}))
            and s[-1].value > 0.9 and users.recent_versions() == {"c000002"},
            timeout=300, what="the live feedback score recovers on c000002",
        )

        # 2. A candidate the users dislike: its canary is aborted and the champion keeps serving.
        disliked.add("c000003")
        qtha(config, "cycle", "--now")
        wait_for(lambda: (c := [x for x in store.cycles.list(limit=5) if x.id == 3]) and c[0].state.terminal,
                 timeout=600, what=f"cycle 3 ends\n{daemon.log()[-3000:]}")
        third = next(x for x in store.cycles.list(limit=5) if x.id == 3)
        assert third.state.value == "rejected" and "canary aborted" in (third.outcome or ""), third
        assert store.decisions.list(kind="canary", cycle_id=3)[-1].action == "abort"
        assert store.champion.get().version_id == "c000002"
        assert len(store.usage.list(version_id="c000003")) > 0  # it did serve its share before the abort

        # 3. The champion degrades live: rolled back automatically to the one before it.
        disliked.add("c000002")
        wait_for(lambda: store.champion.get().version_id == "c000001", timeout=300,
                 what=f"live rollback of c000002\n{daemon.log()[-3000:]}")
        [rollback] = [d for d in store.decisions.list(kind="rollback") if d.action == "rollback"]
        assert any(r["code"] == "live_degraded" for r in rollback.reasons)
        assert qtha_json(config, "status")["champion"]["version"] == "c000001"
    finally:
        users.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        store.close()
    assert not users.failures, users.failures[:3]
