"""The documented metric series: every sample the store keeps has one of these names and only their labels.

A sample that fits no series is refused with :class:`UnknownSeriesError` (the message names the offending name
or label and lists what is allowed) rather than stored where nothing reads it. :func:`series_table` prints the
table the README's "What the daemon watches" shows.

The ``live_*`` series describe how a version does on real traffic. The daemon computes them from the server's
usage log and feedback (:mod:`agent.daemon.live`); an operator may push them with ``qtha observe`` or have
them read from Prometheus (``[observe] queries``, aggregated ``by (version)``). The drift detector, the canary
and automatic rollback read them per ``version``.

Example:
    >>> check_sample("live_error_rate", {"version": "c000002"}).higher_is_better
    False
    >>> check_sample("live_accuracy", {"version": "v"})
    Traceback (most recent call last):
    ...
    agent.series.UnknownSeriesError: unknown metric series 'live_accuracy'; documented series: ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["SERIES", "Series", "UnknownSeriesError", "check_sample", "series_table"]


class UnknownSeriesError(ValueError):
    """A metric sample fits no documented series (unknown name, a missing or an unknown label)."""


@dataclass(frozen=True, slots=True)
class Series:
    """One documented series.

    Attributes:
        name: the sample name (a name ending in ``*`` is a family: ``eval_*`` covers ``eval_loss``, …).
        required: labels every sample must carry.
        optional: labels a sample may carry besides.
        higher_is_better: the direction drift and rollback read it in (None: not a quality signal).
        source: who writes it.
        meaning: one line for the README.
    """

    name: str
    required: frozenset[str]
    optional: frozenset[str]
    higher_is_better: bool | None
    source: str
    meaning: str

    def matches(self, name: str) -> bool:
        return name.startswith(self.name[:-1]) if self.name.endswith("*") else name == self.name


def _s(
    name: str, required: tuple[str, ...], optional: tuple[str, ...], better: bool | None, source: str, meaning: str
) -> Series:
    return Series(name, frozenset(required), frozenset(optional), better, source, meaning)


_LIVE = "daemon (usage log + feedback), `qtha observe`, Prometheus"
_LIVE_LABELS = ("window",)

SERIES: tuple[Series, ...] = (
    _s("eval_mean", ("version",), ("window",), True, "daemon evaluation",
       "mean per-example held-out score of a version (the gate's score); the scheduled evaluation of the "
       "champion draws a fresh sample of the held-out pool per time window (label window)"),
    _s("eval_*", ("version",), ("window",), None, "daemon evaluation",
       "other held-out metrics of the same evaluation (eval_loss, eval_accuracy, …)"),
    _s("live_error_rate", ("version",), _LIVE_LABELS, False, _LIVE,
       "share of chat requests answered with a non-200 status"),
    _s("live_latency_s", ("version",), _LIVE_LABELS, False, _LIVE,
       "mean request latency (arrival to last byte), seconds"),
    _s("live_verified_rate", ("version",), _LIVE_LABELS, True, _LIVE,
       "share of answers with a known correct answer (feedback's correct_answer) that check out (maths: the "
       "final integer matches)"),
    _s("live_feedback_score", ("version",), _LIVE_LABELS, True, _LIVE, "mean feedback score (0..1)"),
    _s("live_degenerate_rate", ("version",), _LIVE_LABELS, False, _LIVE,
       "share of answers that are empty or degenerate repetition"),
    _s("live_requests", ("version",), _LIVE_LABELS, None, _LIVE, "requests the live figures above are based on"),
    _s("ingested_examples", ("file",), ("duplicates",), None, "daemon inbox", "examples accepted from one inbox file"),
    _s("train_loss", ("cycle", "step", "of"), (), None, "training child", "training loss at a step of a cycle"),
)


def check_sample(name: str, labels: Mapping[str, str]) -> Series:
    """The series ``name`` belongs to, after checking its labels.

    Raises:
        UnknownSeriesError: ``name`` is not documented, a required label is missing, or a label is unknown.
    """
    found = next((s for s in SERIES if s.matches(name)), None)
    if found is None:
        raise UnknownSeriesError(
            f"unknown metric series {name!r}; documented series: {', '.join(s.name for s in SERIES)} "
            "(see README, 'What the daemon watches')"
        )
    missing = sorted(found.required - set(labels))
    if missing:
        raise UnknownSeriesError(f"metric {name!r} needs label(s) {', '.join(missing)} (e.g. --label version=c000002)")
    unknown = sorted(set(labels) - found.required - found.optional)
    if unknown:
        allowed = ", ".join(sorted(found.required | found.optional))
        raise UnknownSeriesError(
            f"metric {name!r} does not take label(s) {', '.join(unknown)}; its labels: {allowed} "
            "(aggregate a PromQL query `by (version)`)"
        )
    return found


def series_table() -> str:
    """The Markdown table of :data:`SERIES` (README and ``qtha observe --help``)."""
    rows = ["| series | labels | source | meaning |", "|---|---|---|---|"]
    for s in SERIES:
        labels = ", ".join([f"`{k}`" for k in sorted(s.required)] + [f"`{k}`?" for k in sorted(s.optional)])
        rows.append(f"| `{s.name}` | {labels} | {s.source} | {s.meaning} |")
    return "\n".join(rows)
