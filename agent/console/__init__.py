"""The operator's console: read-only pages of what the daemon did and why.

``/console`` (champion and lineage, a timeline of versions and cycles, live signals per version, cycles, versions,
serving history) and ``/console/cycles/<n>`` (a cycle's card: trigger, recipe, loss curve, validation evidence,
canary, decision) are served by the daemon beside ``/metrics`` (:class:`ConsoleApp`); each finished cycle's card
is also written to ``<state_dir>/cycles/<n>/report.html`` (:func:`write_cycle_report`). Everything here reads the
store and writes nothing to it.
"""

from agent.console.pages import CSP, render_console, render_cycle
from agent.console.report import report_path, write_cycle_report, write_report_quietly
from agent.console.signals import MetricSampleSignals, Series, SignalSource, UsageSignals
from agent.console.view import ConsoleView, CycleCard, load_console, load_cycle
from agent.console.web import ConsoleApp, ConsoleKeyError, is_loopback, read_key

__all__ = [
    "CSP",
    "ConsoleApp",
    "ConsoleKeyError",
    "ConsoleView",
    "CycleCard",
    "MetricSampleSignals",
    "Series",
    "SignalSource",
    "UsageSignals",
    "is_loopback",
    "load_console",
    "load_cycle",
    "read_key",
    "render_console",
    "render_cycle",
    "report_path",
    "write_cycle_report",
    "write_report_quietly",
]
