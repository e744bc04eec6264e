"""Suite-wide hooks."""

from __future__ import annotations

import pytest

from tests.support.counts import COUNTS
from tests.support.tools import MISSING_TOOL, strict


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", default=False, help="more rounds: chaos kills (tests/agent/test_chaos.py), replica takeovers (tests/agent/test_replicas.py)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    # Under CI a skip because a real tool is missing is a failure: the install step broke, the test did not pass.
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and strict()
        and isinstance(report.longrepr, tuple)
        and MISSING_TOOL in report.longrepr[2]
    ):
        report.outcome = "failed"
        report.longrepr = f"CI=true: {report.longrepr[2]} (.ci/tools should have installed it)"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    # What a long test measured is worth seeing on a green run too (tests/support/counts.py).
    lines = [
        f"{report.nodeid}: {value}"
        for key in ("passed", "failed")
        for report in terminalreporter.stats.get(key, [])
        if report.when == "call"
        for name, value in report.user_properties
        if name == COUNTS
    ]
    if lines:
        terminalreporter.section("counts")
        for line in lines:
            terminalreporter.write_line(line)
