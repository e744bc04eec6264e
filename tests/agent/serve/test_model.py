"""The server on the real tiny model: greedy answers equal ``model.generate``, hot swap under load, a corrupt
champion refused, and ``qtha export`` writing a model that loads back with the version's answers.

Versions are LoRA adapters with randomised weights (so each version answers differently), published through the
registry exactly as the daemon publishes a candidate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from flax import nnx
from prometheus_client import CollectorRegistry

import model
from agent.artifacts import Layout, Registry
from agent.cli.app import main as qtha
from agent.config import QthaConfig, load_config
from agent.serve import ServeParts, build_parts
from agent.serve.loader import EngineLimits, ModelLoader
from agent.store import Store, open_store
from model.adapters import LoraConfig, QthaAdapterConfig, inject_adapters
from tests.agent.serve.test_hot_swap import drive_swaps
from tests.fixtures.tiny_model import write_tiny_hf
from tests.model.adapter_helpers import randomise_adapters
from tests.support.serve import free_port, running

pytestmark = pytest.mark.slow  # the tiny model loads, compiles and decodes for real: tens of seconds each

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
PROMPTS = ("What is 12 plus 7?", "Tom has 5 apples.", "Hello, how are you today?", "The cat sat on the mat.")
MAX_TOKENS = 24


@dataclass(frozen=True)
class TinyVersions:
    """The tiny base on disk, adapters of v1 and v2 (not yet published), and each version's greedy answers."""

    base_dir: Path
    adapters: dict[str, Path]
    fingerprint: str


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyVersions:
    root = tmp_path_factory.mktemp("serve-tiny")
    base_dir = write_tiny_hf(root / "tiny")
    adapters = {}
    fingerprint = ""
    for seed, version in enumerate(("v1", "v2"), start=1):
        loaded = model.load_checkpoint(base_dir)
        inject_adapters(loaded.model, LoraConfig(rank=4, targets=TARGETS), rngs=nnx.Rngs(seed))
        randomise_adapters(loaded.model, seed=seed, scale=0.5)
        adapters[version] = root / version
        model.save_adapter(loaded.model, adapters[version], base_fingerprint=loaded.fingerprint)
        fingerprint = loaded.fingerprint
    return TinyVersions(base_dir, adapters, fingerprint)


def greedy(tiny: TinyVersions, version: str, prompts: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``model.generate``'s greedy answers of ``version`` (the unmerged adapter, as trained)."""
    loaded = model.load_checkpoint(tiny.base_dir)
    if version != "base":
        model.load_adapter(loaded.model, tiny.adapters[version], base_fingerprint=loaded.fingerprint)
    texts = model.generate(loaded.model, loaded.tokenizer, list(prompts), max_new_tokens=MAX_TOKENS)
    return dict(zip(prompts, texts, strict=True))


@pytest.fixture
def setup(tiny: TinyVersions, tmp_path: Path) -> Iterator[tuple[QthaConfig, Store, Registry]]:
    config = load_config(
        None,
        state_dir=tmp_path / "state",
        model={"source": str(tiny.base_dir)},
        serve={"poll_interval_s": 0.1, "max_batch": 4, "max_prompt_tokens": 64, "max_tokens": 32, "default_max_tokens": 16},
    )
    store = open_store(config.database_url)
    registry = Registry(store, Layout(config.state_dir))
    for version, path in tiny.adapters.items():
        registry.publish_candidate(version, path, base_fingerprint=tiny.fingerprint, adapter_kind="lora")
    yield config, store, registry
    store.close()


def _parts(config: QthaConfig, store: Store) -> ServeParts:
    limits = config.serve
    loader = ModelLoader(
        model_source=config.model.source,
        layout=Layout(config.state_dir),
        version_row=store.versions.get,
        limits=EngineLimits(
            max_batch=limits.max_batch, max_queue=limits.max_queue,
            max_prompt_tokens=limits.max_prompt_tokens, max_tokens=limits.max_tokens,
        ),
    )
    return build_parts(config, store=store, load=loader, registry=CollectorRegistry(), environ={})


def _promote(registry: Registry, version: str) -> None:
    seen = registry.store.champion.get()
    registry.promote(version, expected_epoch=seen.epoch, actor="test", reason="test")


def test_greedy_answers_equal_model_generate_plain_and_streamed(tiny: TinyVersions, setup) -> None:  # noqa: ANN001
    config, store, registry = setup
    expected = {"base": greedy(tiny, "base", PROMPTS), "v1": greedy(tiny, "v1", PROMPTS)}
    assert expected["base"] != expected["v1"]  # the adapter changes the answers
    parts = _parts(config, store)
    with running(parts) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        for version in ("base", "v1"):
            if version == "v1":
                _promote(registry, "v1")
                while parts.follower.version != "v1":
                    parts.follower.poll_once()
            for prompt in PROMPTS:
                messages = [{"role": "user", "content": prompt}]
                reply = client.chat.completions.create(
                    model="qtha", messages=messages, max_tokens=MAX_TOKENS, temperature=0
                )
                assert (reply.model, reply.choices[0].message.content) == (version, expected[version][prompt])
                chunks = client.chat.completions.create(
                    model="qtha", messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True
                )
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                assert text == expected[version][prompt]
        # A seeded sampled answer is reproducible.
        sampled = [
            client.chat.completions.create(
                model="qtha", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=MAX_TOKENS,
                temperature=1.0, seed=11,
            ).choices[0].message.content
            for _ in range(2)
        ]
        assert sampled[0] == sampled[1]


def test_hot_swap_under_load_on_the_real_model(tiny: TinyVersions, setup) -> None:  # noqa: ANN001
    config, store, registry = setup
    _promote(registry, "v1")
    parts = _parts(config, store)
    with running(parts) as url:
        answers, failures = drive_swaps(url, store, parts, clients=4, max_tokens=MAX_TOKENS, settle_s=0.5)
    assert failures == []
    assert {a.version for a in answers} == {"v1", "v2"} and all(a.header == a.version for a in answers)
    for version in ("v1", "v2"):
        mine = [a for a in answers if a.version == version]
        expected = greedy(tiny, version, sorted({a.prompt for a in mine}))
        assert [a.text for a in mine] == [expected[a.prompt] for a in mine]


def test_a_corrupt_new_champion_is_refused_and_the_old_keeps_serving(tiny: TinyVersions, setup) -> None:  # noqa: ANN001
    config, store, registry = setup
    _promote(registry, "v1")
    parts = _parts(config, store)
    with running(parts) as url:
        weights = config.state_dir / "versions" / "v2" / "adapter.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
        seen = store.champion.get()  # promote in the database directly: the registry would refuse it
        store.champion.promote("v2", expected_epoch=seen.epoch, actor="test", reason="corrupt on purpose")
        parts.follower.poll_once()
        reply = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200 and reply.headers["x-qtha-version"] == "v1"
        metrics = httpx.get(f"{url}/metrics").text
    assert 'qtha_serve_load_failures_total{version="v2"} 1.0' in metrics


def test_export_writes_a_model_that_answers_like_its_version(
    tiny: TinyVersions, setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    config, store, registry = setup
    monkeypatch.setenv("QTHA_STATE_DIR", str(config.state_dir))
    monkeypatch.setenv("QTHA_MODEL__SOURCE", config.model.source)
    expected = greedy(tiny, "v1", PROMPTS)
    for fmt, out in (("safetensors", tmp_path / "hf"), ("gguf", tmp_path / "v1.gguf")):
        assert qtha(["export", "v1", "--out", str(out), "--format", fmt]) == 0
        loaded = model.load_checkpoint(out)
        texts = model.generate(loaded.model, loaded.tokenizer, list(PROMPTS), max_new_tokens=MAX_TOKENS)
        assert dict(zip(PROMPTS, texts, strict=True)) == expected, fmt
    assert qtha(["export", "nope", "--out", str(tmp_path / "x")]) == 2


def test_export_refuses_activation_mode(tiny: TinyVersions, setup, tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    config, store, registry = setup
    loaded = model.load_checkpoint(tiny.base_dir)
    inject_adapters(
        loaded.model, QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="activation", targets=("q_proj",)),
        rngs=nnx.Rngs(0),
    )
    model.save_adapter(loaded.model, tmp_path / "act", base_fingerprint=loaded.fingerprint)
    registry.publish_candidate("act", tmp_path / "act", base_fingerprint=loaded.fingerprint, adapter_kind="qtha")
    monkeypatch.setenv("QTHA_STATE_DIR", str(config.state_dir))
    monkeypatch.setenv("QTHA_MODEL__SOURCE", config.model.source)
    assert qtha(["export", "act", "--out", str(tmp_path / "out")]) == 3
    assert "activation" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_qtha_serve_process_answers_and_stops_cleanly_on_sigterm(tiny: TinyVersions, setup) -> None:  # noqa: ANN001
    config, store, registry = setup
    _promote(registry, "v1")
    port = free_port()
    env = {
        **os.environ,
        "QTHA_STATE_DIR": str(config.state_dir),
        "QTHA_MODEL__SOURCE": config.model.source,
        "QTHA_SERVE__PORT": str(port),
        "QTHA_SERVE__MAX_PROMPT_TOKENS": "64",
        "QTHA_SERVE__MAX_TOKENS": "32",
        "QTHA_SERVE__DEFAULT_MAX_TOKENS": "16",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, process.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "qtha serve was not ready in time"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        prompt = PROMPTS[0]
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "qtha", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
                  "temperature": 0},
            timeout=60,
        )
        assert reply.json()["model"] == "v1"
        assert reply.json()["choices"][0]["message"]["content"] == greedy(tiny, "v1", [prompt])[prompt]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0, output[-3000:]
    assert store.usage.get(reply.json()["id"]).version_id == "v1"  # the usage log was flushed on the way out


def test_export_refuses_to_overwrite(tiny: TinyVersions, setup, tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    config, store, registry = setup
    monkeypatch.setenv("QTHA_STATE_DIR", str(config.state_dir))
    monkeypatch.setenv("QTHA_MODEL__SOURCE", config.model.source)
    (tmp_path / "taken").mkdir()
    assert qtha(["export", "base", "--out", str(tmp_path / "taken")]) == 2
    assert "cannot export base" in capsys.readouterr().err
