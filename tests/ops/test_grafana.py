"""The Grafana dashboard is valid JSON and queries only metrics the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.daemon.metrics import QthaMetrics, new_registry, sample_names

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "qtha-dashboard.json"


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = sample_names(QthaMetrics(new_registry(), version="0").registry)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bqtha_[a-z_]+\b", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)
            used |= names
    # The headline series are on the dashboard.
    assert {"qtha_champion_info", "qtha_champion_metric", "qtha_cycles_total",
            "qtha_backend_errors_total", "qtha_budget_remaining"} <= used
