"""Every input of the bad-input corpus (tests/support/bad_inputs.py) gives its documented exit status and a one-line
message, loses nothing (every line of a refused file is in the quarantine, next to a reason) and leaves the same
champion serving."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.artifacts.layout import Layout
from agent.artifacts.registry import Registry
from agent.child.check import ModelCheckError, check_model
from agent.child.entry import TaskContext, resolve
from agent.child.runner import ChildOutcome
from agent.cli.app import app
from agent.cli.common import exit_code_of
from agent.config import load_config
from agent.daemon.inbox import Inbox, read_examples
from agent.store import open_store
from tests.support.bad_inputs import CORPUS, BadInput

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    base: Path
    state: Path
    toml: Path
    champion: tuple[str | None, int]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("bad-inputs")
    state = base / "state"
    toml = base / "qtha.toml"
    toml.write_text(f'state_dir = "{state}"\n[daemon]\ncheck_model = false\n')
    store = open_store(f"sqlite:///{state / 'qtha.db'}")
    try:
        registry = Registry(store, Layout(state))
        source = base / "adapter"
        source.mkdir()
        (source / "adapter.safetensors").write_bytes(b"champion" * 64)
        registry.publish_candidate("v1", source, base_fingerprint="base", adapter_kind="qtha")
        champion = registry.promote("v1", expected_epoch=0, actor="test", reason="corpus champion")
    finally:
        store.close()
    yield Env(base, state, toml, (champion.version_id, champion.epoch))


class InProcessRunner:
    """The child runner's contract without the process: the model check runs here (fast), its error reported
    the way the child's error event is."""

    def run(self, entry: str, payload: dict[str, Any], work_dir: Path, **_: Any) -> ChildOutcome:
        try:
            result = resolve(entry)(payload, TaskContext(io.StringIO()))
        except Exception as exc:  # noqa: BLE001 - the child's own catch-all, reproduced
            return ChildOutcome("failed", error=f"{type(exc).__name__}: {exc}; stderr tail:\nTraceback ...")
        return ChildOutcome("done", result=result)


def _cli(args: list[str], env_vars: dict[str, str]) -> tuple[int, str]:
    if args and args[0] == "daemon":  # a start-up that wrongly succeeded must not hang the test: own process
        full = {k: v for k, v in os.environ.items() if not k.startswith("QTHA_")} | env_vars
        full["PYTHONPATH"] = str(ROOT)
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, env=full, timeout=120
        )
        # The daemon's own log lines (timestamped) come before the one line the operator reads.
        lines = (done.stdout + done.stderr).splitlines()
        return done.returncode, "\n".join(line for line in lines if not line[:4].isdigit())
    result = CliRunner().invoke(app, args, env=env_vars)
    return result.exit_code, result.output


def _with_config(args: tuple[str, ...], toml: Path) -> list[str]:
    out = [a.replace("{toml}", str(toml)) for a in args]
    if "--config" in out:
        return out
    at = out.index("--") if "--" in out else len(out)  # options go before `--` (e.g. `observe x -- -inf`)
    return [*out[:at], "--config", str(toml), *out[at:]]


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text[:2000]}"
    return lines[0]


def _data(case: BadInput, env: Env, tmp: Path) -> tuple[int, str]:
    assert case.make is not None
    # 1. `qtha ingest FILE` refuses it with one line.
    scratch = tmp / "scratch"
    scratch.mkdir()
    code, out = _cli(_with_config(("ingest", str(case.make(scratch))), env.toml), {})
    # 2. Dropped into the inbox, the daemon's ingest quarantines it with a reason and loses no line, and a good
    # file dropped beside it still goes through.
    inbox = Inbox(tmp / "in", tmp / "data", tmp / "q", max_bytes=64 * 2**20, max_chars=8192, settle_s=0)
    inbox.ensure_dirs()
    entry = case.make(inbox.inbox_dir)
    before = entry.read_bytes() if entry.is_file() and not entry.is_symlink() else None
    (inbox.inbox_dir / "good.jsonl").write_text('{"prompt": "1+1?", "answer": "2"}\n')
    results = inbox.ingest_all(now=NOW)
    assert Counter(r.quarantined for r in results) == Counter({True: 1, False: 1}), results
    [bad] = [r for r in results if r.quarantined]
    moved = [p for p in inbox.quarantine_dir.iterdir() if not p.name.endswith(".reason")]
    reasons = list(inbox.quarantine_dir.glob("*.reason"))
    assert len(moved) == 1 and len(reasons) == 1 and bad.reason and bad.reason in reasons[0].read_text()
    if before is not None:  # every line of the refused file is in the quarantine, byte for byte
        assert moved[0].read_bytes() == before
    assert [e.prompt for e in read_examples(inbox.dataset_dir)] == ["1+1?"]
    assert list(inbox.inbox_dir.iterdir()) == []
    return code, _one_line(out)


def _checkpoint(case: BadInput, env: Env, tmp: Path) -> tuple[int, str]:
    assert case.make is not None
    source = case.make(tmp)
    config = load_config(env.toml, model={"source": str(source)})
    with pytest.raises(ModelCheckError) as info:
        check_model(config, InProcessRunner())  # type: ignore[arg-type]
    return exit_code_of(info.value), _one_line(str(info.value))


def _command(case: BadInput, env: Env, tmp: Path) -> tuple[int, str]:
    args: tuple[str, ...] = case.args or ("config", "show", "--config", "{toml}")
    toml = env.toml
    if case.toml:
        toml = tmp / "qtha.toml"
        toml.write_text(f'state_dir = "{env.state}"\n' + case.toml)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    (tmp / "a-file").write_text("not a directory")
    values = {"{file}": str(tmp / "a-file"), "{busy_port}": str(busy.getsockname()[1])}
    env_vars = {k: values.get(v, v) for k, v in case.env}
    store = None
    if case.stored_override is not None:
        store = open_store(f"sqlite:///{env.state / 'qtha.db'}")
        store.overrides.set(case.stored_override[0], case.stored_override[1], actor="legacy", reason="corpus")
    try:
        code, out = _cli(_with_config(args, toml), env_vars)
    finally:
        busy.close()
        if store is not None:
            store.overrides.clear(case.stored_override[0], actor="test", reason="corpus")  # type: ignore[index]
            store.close()
    if code == 0:  # a stored override that no longer validates: shown, with one warning line
        warnings = [line for line in out.splitlines() if line.startswith("warning:")]
        return code, _one_line("\n".join(warnings))
    return code, _one_line(out)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", CORPUS, ids=[f"{c.area}-{c.id}" for c in CORPUS])
def test_bad_input(case: BadInput, env: Env, tmp_path: Path) -> None:
    if case.area == "data":
        code, message = _data(case, env, tmp_path)
    elif case.area == "checkpoints":
        code, message = _checkpoint(case, env, tmp_path)
    else:
        code, message = _command(case, env, tmp_path)
    assert code == case.exit_code, message
    assert case.needle in message, message
    assert len(message) <= 600, message
    assert "Traceback" not in message and "secret" not in message
    store = open_store(f"sqlite:///{env.state / 'qtha.db'}")
    try:
        champion = store.champion.get()
        assert (champion.version_id, champion.epoch) == env.champion
        serving = Registry(store, Layout(env.state)).serving()
        assert serving is not None and serving.version_id == env.champion[0]
    finally:
        store.close()


def test_the_corpus_covers_every_area_with_at_least_60_inputs() -> None:
    areas = Counter(c.area for c in CORPUS)
    assert len(CORPUS) >= 60 and set(areas) == {"data", "configuration", "overrides", "metrics", "checkpoints", "cli"}
    assert len({c.id for c in CORPUS}) == len(CORPUS)
