"""Acceptance: the console in a real browser after end-to-end cycles of the in-process daemon.

The daemon (stand-in trainer, its loss reported through the daemon's own training observer) runs two cycles
(the first promoted against nothing, the second against the first, with per-example evidence), evaluates both
versions, and rolls back. Headless Chromium then loads ``/console``, a cycle's card over HTTP and the card's file
(``cycles/<n>/report.html``): each loads with status 200, without console errors or CSP violations, fetches
nothing but itself, and shows the champion, the cycle and its decision. Screenshots go to ``tmp_path``, or to
``$QTHA_CONSOLE_SCREENSHOTS`` (how reports/console/ was made).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agent.daemon.runtime import Runtime
from agent.daemon.training_observer import DaemonTrainingObserver
from agent.store import CycleState
from tests.agent.test_daemon import Running, run_daemon, wait_for
from tests.support.browser import Chromium, assert_clean_load, find_chromium
from tests.support.standin_trainer import StandinTrainer
from tests.support.tools import needs_tool

pytestmark = needs_tool("chromium", available=find_chromium() is not None, how="apt-get install chromium")


@pytest.fixture
def daemon_with_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    def observed(rt: Runtime) -> StandinTrainer:  # reports its loss through the daemon's own observer
        return StandinTrainer(observer=DaemonTrainingObserver(rt.store, rt.metrics, rt.set_status))

    daemon = run_daemon(tmp_path, monkeypatch, observed)
    running = next(daemon)
    try:
        _make_history(running)
        yield running
    finally:
        daemon.close()


def _finished(running: Running, cycle_id: int) -> object:
    return wait_for(
        lambda: [c for c in running.rt.store.cycles.list() if c.id == cycle_id and c.state.terminal],
        what=f"cycle {cycle_id} finished",
    )


def _make_history(running: Running) -> None:
    running.applied(running.resume_and_cycle({"steps": 6, "learning_rate": 0.02}))
    _finished(running, 1)
    running.applied(running.submit("cycle", {"recipe": {"steps": 40, "learning_rate": 0.05}}))
    _finished(running, 2)
    for version in ("c000001", "c000002"):
        running.applied(running.submit("eval", {"version": version}))
    wait_for(lambda: len(running.rt.store.metrics.samples("eval_mean")) >= 2, what="evaluations recorded")
    running.applied(running.submit("pause"))
    running.applied(running.submit("rollback"))


def test_console_and_cycle_card_render_in_chromium(daemon_with_history: Running, tmp_path: Path) -> None:
    rt = daemon_with_history.rt
    cycles = {c.id: c for c in rt.store.cycles.list()}
    assert cycles[1].state is CycleState.PROMOTED
    second = cycles[2]
    champion = rt.store.champion.get().version_id
    assert champion == "c000001"  # rolled back from the second cycle's candidate (or it was never promoted)
    out = Path(os.environ.get("QTHA_CONSOLE_SCREENSHOTS") or tmp_path / "shots")
    base = f"http://127.0.0.1:{daemon_with_history.daemon.metrics_port}"
    report = rt.config.state_dir / "cycles" / "2" / "report.html"
    assert report.is_file(), "the driver writes each finished cycle's report"

    with Chromium(width=1280, height=900) as browser:
        front = browser.open(f"{base}/console")
        assert_clean_load(front, base)
        assert f"champion\n{champion}" in front.text or champion in front.text.split("lineage")[0]
        assert "Cycle" in front.text or "cycle" in front.text
        assert "#2" in front.text and "#1" in front.text
        assert str(second.state) in front.text
        assert browser.evaluate("document.querySelectorAll('svg.chart').length") >= 2  # timeline + signals
        browser.screenshot(out / "console.png")

        card = browser.open(f"{base}/console/cycles/2")
        assert_clean_load(card, base)
        assert "Cycle 2" in card.text
        promotion = next(d for d in rt.store.decisions.list(cycle_id=2) if d.kind == "promotion")
        assert "Decision" in card.text and promotion.action in card.text
        assert "train loss" in card.text and "bootstrap lower bound" in card.text
        assert (
            browser.evaluate("document.querySelectorAll('svg.chart').length") >= 2
        )  # loss curve + differences
        assert browser.evaluate("document.querySelectorAll('svg rect.bar').length") >= 3  # the distribution
        browser.screenshot(out / "cycle-2.png")

        saved = browser.open(report.resolve().as_uri())
        assert saved.errors == [] and saved.failed == []
        assert [u for u in saved.requests if urlsplit(u).scheme not in ("file", "data")] == []
        assert "Cycle 2" in saved.text and promotion.action in saved.text
    assert (out / "console.png").stat().st_size > 10_000
    assert (out / "cycle-2.png").stat().st_size > 10_000
