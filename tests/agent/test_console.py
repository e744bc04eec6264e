"""The console without a browser: what the pages show from a store written by hand (fake clock), that every
database string is escaped, that reading changes nothing, the key beyond loopback, the report file and
``qtha report``, the live-signal hooks, and the charts' numbers."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select
from typer.testing import CliRunner

from agent.cli.app import app
from agent.clock import FakeClock
from agent.console import (
    ConsoleApp,
    ConsoleKeyError,
    UsageSignals,
    load_console,
    load_cycle,
    read_key,
    render_console,
    render_cycle,
    report_path,
    write_cycle_report,
)
from agent.console.svg import histogram, nice_ticks
from agent.cycle.machine import _clear_finished
from agent.daemon.metrics import QthaMetrics, new_registry, serve
from agent.store import CycleState, Store, open_store

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'
KEY = "k" * 24


def _finish(store: Store, cycle_id: int, to: CycleState, **fields: Any) -> None:
    store.cycles.advance(cycle_id, from_state=CycleState.OBSERVE, to_state=to, owner="t", **fields)


def _history(store: Store, clock: FakeClock) -> None:
    """Two cycles: 1 promoted (per-example evidence, loss curve, an evil trigger reason), 2 failed; a rollback-free
    serving history; eval samples per version; a canary decision and candidate samples during cycle 2."""
    store.decisions.record(
        "trigger", "run", reasons=[{"code": "run_now", "kind": "fired", "message": EVIL}], evidence={}
    )
    clock.advance(1)
    first = store.cycles.begin(
        owner="t", trigger_reasons=["run_now", EVIL], recipe={"steps": 3, "note": EVIL}
    )
    for step, loss in ((1, 1.0), (2, 0.5), (3, 0.25)):
        store.metrics.record(
            "train_loss", loss, source="trainer", labels={"cycle": "1", "step": str(step), "of": "3"}
        )
        clock.advance(1)
    store.versions.add(
        "c000001", base_fingerprint="b", adapter_kind="qtha", artifact_path="/a", sha256="0" * 64, cycle_id=1
    )
    store.cycles.advance(
        first.id,
        from_state=CycleState.OBSERVE,
        to_state=CycleState.PROMOTE,
        owner="t",
        candidate_id="c000001",
    )
    store.decisions.record(
        "promotion",
        "promote",
        reasons=[
            {"code": "smoke_test", "kind": "fired", "message": "passed"},
            {"code": "bootstrap_lcb", "kind": "fired", "message": EVIL},
            {"code": "slice_too_small", "kind": "note", "message": f"slice {EVIL!r}: 6 paired examples < 20"},
        ],
        evidence={
            "candidate_mean": -0.1,
            "champion_mean": -0.9,
            "compared_with": "base",
            "mean_gain": 0.8,
            "lcb": 0.5,
            "confidence": 0.95,
            "paired_examples": 6,
            "differences": {f"s/{i}": d for i, d in enumerate((0.2, 0.4, 0.6, 0.9, 1.1, 1.6))},
            "slices": {EVIL: {"n": 6, "mean_difference": 0.8}},
        },
        cycle_id=1,
    )
    store.champion.promote("c000001", expected_epoch=0, actor="cycle 1", reason=EVIL, cycle_id=1)
    clock.advance(60)
    store.metrics.record("eval_mean", -0.1, source="daemon", labels={"version": "c000001"})
    clock.advance(5)
    second = store.cycles.begin(owner="t", trigger_reasons=["drift"], recipe={"steps": 5})
    clock.advance(30)
    store.metrics.record("live_error_rate", 0.02, source="loop", labels={"version": "c000001"})
    store.metrics.record("live_error_rate", 0.5, source="loop", labels={"version": "c000002"})
    store.decisions.record("canary", "abort", reasons=["canary worse"], evidence={"share": 0.1}, cycle_id=2)
    store.cycles.advance(
        second.id,
        from_state=CycleState.OBSERVE,
        to_state=CycleState.FAILED,
        owner="t",
        error=EVIL,
        candidate_id="c000002",
        parent_id="c000001",
    )
    clock.advance(10)


@pytest.fixture
def filled(sqlite_store: Store, fake_clock: FakeClock) -> Store:
    _history(sqlite_store, fake_clock)
    return sqlite_store


def _dump(store: Store) -> dict[str, list[tuple]]:
    meta = MetaData()
    meta.reflect(store.engine)
    with store.engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(select(t))] for name, t in sorted(meta.tables.items())}


def _assert_safe(html: str) -> None:
    assert "<script" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;" in html
    for chart in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        ET.fromstring(chart)  # well-formed: a stray unescaped string would break it


def test_front_page_shows_champion_lineage_cycles_and_signals(filled: Store) -> None:
    view = load_console(filled)
    assert view.champion.version_id == "c000001" and view.lineage == ("c000001", "base")
    html = render_console(view)
    _assert_safe(html)
    assert 'class="big">c000001<' in html
    assert 'href="/console/cycles/1"' in html and 'href="/console/cycles/2"' in html
    assert "live_error_rate" in html and "eval_mean" in html
    assert 'class="event canary"' in html  # the canary decision on the timeline
    assert "train_loss" not in {s.name for s in view.series}  # a cycle's curve, not a version's live signal


def test_cycle_card_shows_trigger_recipe_loss_evidence_and_decision(filled: Store) -> None:
    card = load_cycle(filled, 1)
    assert card.losses == ((1, 1.0), (2, 0.5), (3, 0.25))
    assert card.evidence is not None and card.evidence.differences == (0.2, 0.4, 0.6, 0.9, 1.1, 1.6)
    assert card.evidence.smoke_ok is True and card.evidence.lcb == 0.5
    assert card.evidence.slices == ((EVIL, 6, 0.8, "too small to judge"),)
    assert card.trigger is not None and card.trigger.action == "run"
    html = render_cycle(card)
    _assert_safe(html)
    assert "Cycle 1" in html and "95% bootstrap lower bound of the gain" in html
    assert "train loss 1 at step 1" in html and "<b>0.25</b> at step 3" in html
    assert "95% interval of the mean: ≥ +0.5" in html
    # The six differences are all in the histogram's bars.
    counts = [int(n) for n in re.findall(r'<rect class="bar"[^>]*><title>(\d+)</title>', html)]
    assert sum(counts) == 6


def test_a_failed_cycle_with_a_canary_and_no_evidence(filled: Store) -> None:
    card = load_cycle(filled, 2)
    assert card.evidence is None and card.losses == ()
    assert {(s.name, s.version) for s in card.canary} == {
        ("live_error_rate", "c000001"),
        ("live_error_rate", "c000002"),
    }
    assert [d.action for d in card.canary_decisions] == ["abort"]
    html = render_cycle(card)
    _assert_safe(html)
    assert "no training loss recorded" in html and "did not reach validation" in html
    assert "canary worse" in html and "live_error_rate" in html


def test_an_empty_store_renders(sqlite_store: Store) -> None:
    html = render_console(load_console(sqlite_store))
    assert "base model" in html and "no cycles yet" in html and "nothing has happened yet" in html


def test_reading_changes_nothing(filled: Store, state_dir: Path) -> None:
    before = _dump(filled)
    app_ = ConsoleApp(filled, daemon_status=lambda: {"replica": "r1", "status": EVIL})
    for path in ("/console", "/console/cycles/1", "/console/cycles/2", "/console/cycles/99", "/nope"):
        _get(app_, path)
    _get(app_, "/console", method="POST")
    assert _dump(filled) == before


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    body: str


def _get(app_: ConsoleApp, path: str, *, method: str = "GET", authorization: str | None = None) -> _Answer:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)

    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "wsgi.input": io.BytesIO()}
    if authorization:
        environ["HTTP_AUTHORIZATION"] = authorization
    body = b"".join(app_(environ, start_response)).decode()
    return _Answer(seen["status"], seen["headers"], body)


def test_pages_forbid_scripts_and_fetches(filled: Store) -> None:
    answer = _get(ConsoleApp(filled), "/console")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    assert "script-src" not in answer.headers["Content-Security-Policy"]
    assert _get(ConsoleApp(filled), "/console/cycles/99").status == 404
    assert _get(ConsoleApp(filled), "/console", method="POST").status == 405


def test_beyond_loopback_the_key_is_needed(filled: Store) -> None:
    assert _get(ConsoleApp(filled, host="127.0.0.1"), "/console").status == 200
    closed = _get(ConsoleApp(filled, host="0.0.0.0"), "/console")  # no key: refuse everyone
    assert closed.status == 401 and "no key is configured" in closed.body
    keyed = ConsoleApp(filled, host="192.0.2.7", key=KEY)
    wrong = _get(keyed, "/console", authorization="Bearer " + "x" * 24)
    assert wrong.status == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
    assert _get(keyed, "/console").status == 401
    assert _get(keyed, "/console", authorization=f"Bearer {KEY}").status == 200
    basic = base64.b64encode(f"operator:{KEY}".encode()).decode()
    assert _get(keyed, "/console", authorization=f"Basic {basic}").status == 200
    assert _get(keyed, "/console", authorization="Basic !!!").status == 401


def test_the_key_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    assert read_key(None, "QTHA_SERVE_KEY", {}) is None
    assert read_key(None, "QTHA_SERVE_KEY", {"QTHA_SERVE_KEY": KEY}) == KEY
    path = tmp_path / "key"
    path.write_text(KEY + "\nignored\n")
    assert read_key(path, "QTHA_SERVE_KEY", {}) == KEY
    path.write_text("short\n")
    with pytest.raises(ConsoleKeyError, match="at least 16"):
        read_key(path, "QTHA_SERVE_KEY", {})
    with pytest.raises(ConsoleKeyError, match="cannot be read"):
        read_key(tmp_path / "missing", "QTHA_SERVE_KEY", {})


def test_console_and_metrics_share_the_port(filled: Store) -> None:
    import urllib.error
    import urllib.request

    metrics = QthaMetrics(new_registry(), version="test")
    server = serve(metrics.registry, host="127.0.0.1", port=0, extra=ConsoleApp(filled))
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert b"qtha_build_info" in urllib.request.urlopen(f"{base}/metrics", timeout=5).read()
        page = urllib.request.urlopen(f"{base}/console", timeout=5).read().decode()
        assert "c000001" in page
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/console/cycles/7", timeout=5)
        assert missing.value.code == 404
    finally:
        server.close()


def test_report_file_and_housekeeping_keeps_it(filled: Store, state_dir: Path) -> None:
    path = write_cycle_report(filled, state_dir, 1)
    assert path == report_path(state_dir, 1) == state_dir / "cycles" / "1" / "report.html"
    html = path.read_text(encoding="utf-8")
    _assert_safe(html)
    assert 'http-equiv="Content-Security-Policy"' in html and 'href="/console' not in html
    (path.parent / "step-00000003").mkdir()
    (path.parent / "recipe.json").write_text("{}")
    _clear_finished(path.parent)
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
    path.unlink()
    _clear_finished(path.parent)
    assert not path.parent.exists()


@pytest.fixture
def cli_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    for name in ("QTHA_CONFIG", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "qtha.toml"
    config.write_text(f'state_dir = "{state}"\n')
    store = open_store(f"sqlite:///{state / 'qtha.db'}", clock=FakeClock())
    _history(store, store.clock)  # type: ignore[arg-type]
    store.cycles.begin(owner="t", trigger_reasons=["stale"])  # cycle 3, still running
    store.close()
    yield config, state


def test_qtha_report_prints_the_path_and_writes_a_missing_report(cli_config: tuple[Path, Path]) -> None:
    config, state = cli_config
    runner = CliRunner()
    result = runner.invoke(app, ["report", "1", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(report_path(state, 1).resolve())
    assert "Cycle 1" in report_path(state, 1).read_text(encoding="utf-8")
    running = runner.invoke(app, ["report", "3", "--config", str(config)])
    assert running.exit_code == 1 and "still running" in running.output
    unknown = runner.invoke(app, ["report", "42", "--config", str(config)])
    assert unknown.exit_code == 2 and "cycle 42 does not exist" in unknown.output


@dataclass(frozen=True)
class _Usage:
    version_id: str
    at: datetime
    status: int
    latency_s: float


@dataclass(frozen=True)
class _Feedback:
    version_id: str
    at: datetime
    score: float | None


class _UsageTable:
    def __init__(self, start: datetime) -> None:
        self.records = [
            _Usage("c1", start, 200, 0.1),
            _Usage("c1", start + timedelta(seconds=10), 200, 0.3),
            _Usage("c1", start + timedelta(seconds=20), 500, 9.0),
            _Usage("c2", start + timedelta(minutes=7), 200, 0.2),
        ]

    def list(self, *, since: datetime | None = None, limit: int | None = None) -> list[_Usage]:
        return [r for r in self.records if since is None or r.at >= since]

    def feedback(self, *, since: datetime | None = None) -> list[_Feedback]:
        return [_Feedback("c1", self.records[0].at, 1.0), _Feedback("c1", self.records[1].at, 0.0)]


def test_usage_signals_summarise_the_usage_log_per_version(sqlite_store: Store) -> None:
    assert UsageSignals().series(sqlite_store, since=None) == []  # no usage table: silent

    class WithUsage:
        usage = _UsageTable(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC))

    found = {
        (s.name, s.version): [v for _, v in s.points] for s in UsageSignals().series(WithUsage(), since=None)
    }  # type: ignore[arg-type]
    assert found[("serve_requests", "c1")] == [3.0]
    assert found[("serve_error_rate", "c1")] == [pytest.approx(1 / 3)]
    assert found[("serve_latency_p50_s", "c1")] == [pytest.approx(0.2)]  # answered requests only
    assert found[("serve_feedback_score", "c1")] == [0.5]
    assert found[("serve_requests", "c2")] == [1.0]  # another 5-minute bucket, another version


def test_histogram_counts_and_ticks() -> None:
    values = [0.0, 0.1, 0.1, 0.5, 0.9, 1.0]
    svg = histogram(values, bins=5, markers=[(0.0, "zero")])
    counts = [int(n) for n in re.findall(r"<title>(\d+)</title>", svg)]
    assert sum(counts) == len(values) and max(counts) == 3  # [0, 0.2) holds 0.0, 0.1, 0.1
    assert nice_ticks(0, 1, 5) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.6, -0.05, 5) == [-0.6, -0.4, -0.2]  # -0.6 / 0.2 is -2.9999…96 in floats
    assert histogram([], bins=5) == '<p class="empty">no data</p>'


def test_the_gate_keeps_the_differences_it_compared() -> None:
    from agent.cycle.trainer import EvalOutcome
    from agent.daemon.gate import paired_differences

    candidate = EvalOutcome("c2", {"a": 0.5, "b": 0.25, "only-candidate": 1.0}, {})
    champion = EvalOutcome("c1", {"a": 0.25, "b": 0.5, "only-champion": 0.0}, {})
    assert paired_differences(candidate, champion) == {"a": 0.25, "b": -0.25}
