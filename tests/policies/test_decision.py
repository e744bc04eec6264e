"""Decisions are JSON: evidence is converted at construction, and refuses what JSON cannot say."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from policies import Action, Decision, PolicyInputError, Reason, ReasonKind, Spend
from tests.policies.helpers import T0, at


def test_evidence_becomes_plain_json() -> None:
    evidence = {
        "n": np.int64(3),
        "x": np.float64(0.1) + np.float64(0.2),
        "nan": float("nan"),
        "when": at(1),
        "wait": timedelta(minutes=2),
        "spend": Spend(cpu_seconds=1.5),
        "list": (1, "a", None, True),
        "kind": ReasonKind.NOTE,
    }
    decision = Decision("test", Action.WAIT, T0, (Reason("r", ReasonKind.NOTE, "m"),), evidence)
    assert decision.evidence == {
        "n": 3,
        "x": 0.3,  # 0.30000000000000004 rounded to 12 significant digits
        "nan": None,
        "when": "2026-03-02T01:00:00+00:00",
        "wait": 120.0,
        "spend": {"cpu_seconds": 1.5, "shots": 0, "money": 0.0},
        "list": [1, "a", None, True],
        "kind": "note",
    }
    assert type(decision.evidence["n"]) is int and type(decision.evidence["kind"]) is str
    text = json.dumps(decision.to_dict(), sort_keys=True)
    assert json.loads(text)["reasons"] == [{"code": "r", "kind": "note", "message": "m"}]
    assert decision.codes(ReasonKind.FIRED) == () and decision.codes() == ("r",)


def test_unserialisable_evidence_and_naive_times_are_refused() -> None:
    with pytest.raises(PolicyInputError, match="object"):
        Decision("test", Action.WAIT, T0, (), {"bad": object()})
    with pytest.raises(PolicyInputError, match="naive"):
        Decision("test", Action.WAIT, T0.replace(tzinfo=None), ())
