"""Serving replicas: two real ``qtha serve`` processes on the tiny model, each with a state directory of its own (as
on separate hosts), follow the champion through one PostgreSQL database, fetch it from the shared artifact store
(``[artifacts] root``) and swap together on a promotion; the sample HAProxy (ops/haproxy/qtha-serve.cfg, as
shipped) spreads requests over them and keeps requests off a replica whose ``/readyz`` says it is not ready.

CPU is kept small: a handful of completions of a few tokens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from agent.artifacts import Layout, Registry
from agent.artifacts.shared import open_shared
from agent.store import Store, open_store
from tests.agent.serve.test_model import TinyVersions, tiny  # noqa: F401 (tiny is a fixture)
from tests.ops.test_haproxy import CFG, HAPROXY, needs_haproxy
from tests.support.postgres import PostgresServer
from tests.support.serve import complete, free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

READY_S = 300.0  # two processes import jax, load and compile the tiny model at once on a small, shared machine
SWAP_S = 180.0  # poll interval plus loading and warming the new version
MAX_TOKENS = 8


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    state_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def ready_version(self) -> str | None:
        """The version ``/readyz`` names (None while not ready or not answering)."""
        assert self.process.poll() is None, f"{self.name} exited:\n{self.output()}"
        try:
            reply = httpx.get(f"{self.url}/readyz", timeout=5)
        except httpx.TransportError:
            return None
        return reply.json().get("version") if reply.status_code == 200 else None

    def requests_served(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("qtha_serve_requests_total")
        )


@dataclass
class Replicas:
    store: Store
    registry: Registry
    replicas: list[Replica]

    def promote(self, version: str) -> None:
        seen = self.store.champion.get()
        self.registry.promote(version, expected_epoch=seen.epoch, actor="test", reason="replica test")


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2) -> float:
    """Seconds until ``check()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout:.0f} s: {what}"
        time.sleep(interval)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def replicas(
    tiny: TinyVersions,  # noqa: F811
    postgres: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replicas]:
    """Two ``qtha serve`` processes on one database, both ready on v1."""
    root = tmp_path_factory.mktemp("serve-replicas")
    url = postgres.fresh_url()
    store = open_store(url)
    # The daemon that published the versions (its own cache and the shared store); the replicas start empty.
    registry = Registry(store, Layout(root / "publisher"), shared=open_shared(root / "shared"))
    for version, path in tiny.adapters.items():
        registry.publish_candidate(version, path, base_fingerprint=tiny.fingerprint, adapter_kind="lora")
    group = Replicas(store, registry, [])
    group.promote("v1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTHA_")}
    env |= {
        "QTHA_DATABASE__URL": url,
        "QTHA_ARTIFACTS__ROOT": str(root / "shared"),
        "QTHA_MODEL__SOURCE": str(tiny.base_dir),
        "QTHA_SERVE__POLL_INTERVAL_S": "0.5",
        "QTHA_SERVE__MAX_BATCH": "2",
        "QTHA_SERVE__MAX_PROMPT_TOKENS": "64",
        "QTHA_SERVE__MAX_TOKENS": "16",
        "QTHA_SERVE__DEFAULT_MAX_TOKENS": str(MAX_TOKENS),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    try:
        for name in ("a", "b"):
            port, log = free_port(), root / f"serve-{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "agent.cli", "serve"],
                    env=env | {"QTHA_SERVE__PORT": str(port), "QTHA_STATE_DIR": str(root / f"host-{name}")},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            group.replicas.append(Replica(name, port, process, log, root / f"host-{name}"))
        for replica in group.replicas:
            wait_until(
                lambda r=replica: r.ready_version() == "v1", timeout=READY_S, interval=0.5,
                what=f"replica {replica.name} ready on v1\n{replica.output()}",
            )
        yield group
    finally:
        for replica in group.replicas:
            replica.process.send_signal(signal.SIGTERM)
        for replica in group.replicas:
            try:
                replica.process.wait(60)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait(10)
        store.close()


def ask(base_url: str, prompt: str, *, stream: bool = False) -> tuple[str, str, str]:
    """One greedy completion through the official client: ``(model, x-qtha-version header, text)``."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    models, header, text = complete(client, prompt, max_tokens=MAX_TOKENS, stream=stream)
    assert len(models) == 1, models
    return models.pop(), header, text


def test_two_replicas_follow_a_promotion_together(replicas: Replicas) -> None:
    a, b = replicas.replicas
    before = {r.name: ask(r.url, "Tom has 5 apples.") for r in (a, b)}
    assert [m for m, _, _ in before.values()] == ["v1", "v1"]
    assert before["a"] == before["b"]  # the same version answers the same greedy text on every replica
    replicas.promote("v2")
    promoted = time.monotonic()
    swapped: dict[str, float] = {}

    def both_swapped() -> bool:
        for r in (a, b):
            if r.name not in swapped and r.ready_version() == "v2":
                swapped[r.name] = time.monotonic() - promoted
        return len(swapped) == 2

    wait_until(both_swapped, timeout=SWAP_S, what=f"both replicas on v2 (swapped so far: {swapped})")
    print(f"replicas swapped to v2 {swapped['a']:.1f} s and {swapped['b']:.1f} s after the promotion")
    after = {r.name: ask(r.url, "Tom has 5 apples.") for r in (a, b)}
    assert after["a"] == after["b"] and after["a"][:2] == ("v2", "v2")
    assert after["a"][2] != before["a"][2]  # the adapters differ: so do the answers
    for r in (a, b):  # each fetched both versions into its own cache, verified
        assert sorted(p.name for p in (r.state_dir / "versions").iterdir()) == ["v1", "v2"]
        assert "fetched version v2 from the shared artifact store" in r.output()


# -- the sample load balancer in front of them --------------------------------------------------------------------


class _Unready(BaseHTTPRequestHandler):
    """A replica that is up but not ready: ``/readyz`` 503 (as while loading); counts what else reaches it."""

    hits: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self._answer()

    def _answer(self) -> None:
        self.hits.append(self.path)
        self.send_response(503)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def unready_replica() -> Iterator[tuple[int, list[str]]]:
    hits: list[str] = []
    handler = type("Unready", (_Unready,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def haproxy(replica1: int, replica2: int, log: Path) -> Iterator[str]:
    """The shipped config, unchanged, with the addresses given through its environment variables."""
    assert HAPROXY is not None
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTHA_LB_")} | {
        "QTHA_LB_LISTEN": f"127.0.0.1:{port}",
        "QTHA_LB_REPLICA1": f"127.0.0.1:{replica1}",
        "QTHA_LB_REPLICA2": f"127.0.0.1:{replica2}",
    }
    with log.open("wb") as out:
        process = subprocess.Popen([HAPROXY, "-f", str(CFG)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=30, what=f"haproxy answering\n{log.read_text()}")
        yield url
    finally:
        process.terminate()
        process.wait(30)


@needs_haproxy
def test_haproxy_spreads_requests_and_keeps_them_off_an_unready_replica(
    replicas: Replicas, tmp_path: Path
) -> None:
    a, b = replicas.replicas
    champion = replicas.store.champion.get().version_id
    # One real replica and one that answers /readyz with 503: after two failed checks no request reaches it.
    with unready_replica() as (stub, hits), haproxy(a.port, stub, tmp_path / "haproxy-1.log") as lb:
        wait_until(lambda: hits.count("/readyz") >= 2, timeout=30, what="two failed checks of the unready one")
        answers = [ask(lb, f"question {i}") for i in range(3)]
        assert all(m == h == champion for m, h, _ in answers), answers
        assert set(hits) == {"/readyz"}, hits
    # Both real replicas: requests go to each in turn (leastconn among equally idle replicas).
    served = {r.name: r.requests_served() for r in (a, b)}
    with haproxy(a.port, b.port, tmp_path / "haproxy-2.log") as lb:
        answers = [ask(lb, f"question {i}", stream=i == 0) for i in range(4)]
    assert all(m == h == champion for m, h, _ in answers), answers
    gained = {r.name: r.requests_served() - served[r.name] for r in (a, b)}
    assert sum(gained.values()) == 4 and min(gained.values()) >= 1, gained
