"""Property tests: cooldown, pause, budget, never promoting a uniformly worse candidate, determinism."""

from __future__ import annotations

import json
from datetime import timedelta

import optuna
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    Action,
    BackendOption,
    CycleRecord,
    MetricSample,
    PromotionConfig,
    PromotionRecord,
    RecipeConfig,
    RecipeOutcome,
    RollbackConfig,
    SearchSpace,
    Spend,
    TriggerConfig,
    TriggerHistory,
    decide_promotion,
    decide_rollback,
    decide_trigger,
    propose_recipe,
    record_recipe_outcome,
)
from tests.policies.helpers import at, evaluation

NOW_H = 100.0
PROPS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def cycles(draw) -> tuple[CycleRecord, ...]:
    """Up to six cycles laid out backwards from now (so the last one often ends within a cooldown of now),
    possibly with one still running."""
    out, end = [], NOW_H - draw(st.floats(0.0, 6.0))
    running = draw(st.booleans())
    for _ in range(draw(st.integers(0, 6))):
        start = end - draw(st.floats(0.0, 3.0))
        outcome = draw(st.sampled_from(["promoted", "rejected", "held", "failed"]))
        out.append(CycleRecord(at(start), at(end), outcome, Spend(cpu_seconds=draw(st.floats(0.0, 3000.0)))))
        end = start - draw(st.floats(0.0, 8.0))
    out.reverse()
    if running and out:
        out.append(CycleRecord(out[-1].finished_at, None, "running"))
    return tuple(out)


@st.composite
def histories(draw) -> TriggerHistory:
    values = draw(st.lists(st.floats(0.0, 1.0), max_size=12))
    since = draw(st.none() | st.floats(0.0, 400.0))
    return TriggerHistory(
        metrics=tuple(MetricSample(at(NOW_H - 30 + i), v) for i, v in enumerate(values)),
        cycles=draw(cycles()),
        new_examples=draw(st.integers(0, 400)),
        champion_since=None if since is None else at(NOW_H - since),
        paused=draw(st.booleans()),
        run_now=draw(st.booleans()),
    )


@st.composite
def trigger_configs(draw) -> TriggerConfig:
    quiet = draw(st.none() | st.tuples(st.integers(0, 23), st.integers(0, 23)).filter(lambda q: q[0] != q[1]))
    return TriggerConfig(
        min_new_examples=draw(st.integers(1, 300)),
        staleness=timedelta(hours=draw(st.floats(1.0, 300.0))),
        cooldown=timedelta(hours=draw(st.floats(0.0, 12.0))),
        quiet_hours=quiet,
    )


NOWS = st.floats(0.0, 23.99).map(lambda h: at(NOW_H + h))


@PROPS
@given(histories(), trigger_configs(), NOWS)
def test_cooldown_is_never_violated(history: TriggerHistory, config: TriggerConfig, now) -> None:
    decision = decide_trigger(history, now, config)
    if decision.action == Action.RUN:
        assert all(c.finished_at is not None for c in history.cycles)  # one cycle at a time
        if not history.run_now:  # run-now is the documented override of the cooldown
            assert all(c.finished_at + config.cooldown <= now for c in history.cycles)


@PROPS
@given(st.floats(0.0, 12.0), st.floats(0.0, 12.0), st.floats(0.0, 5.0))
def test_cooldown_decides_exactly_when_nothing_else_blocks(
    cooldown_h: float, since_end_h: float, length_h: float
) -> None:
    # A firing condition (no champion), no pause, no failures, no spend: only the cooldown can hold it back.
    now = at(NOW_H)
    last = CycleRecord(
        now - timedelta(hours=since_end_h + length_h), now - timedelta(hours=since_end_h), "rejected"
    )
    config = TriggerConfig(cooldown=timedelta(hours=cooldown_h))
    decision = decide_trigger(TriggerHistory(cycles=(last,)), now, config)
    assert (decision.action == Action.RUN) == (last.finished_at + config.cooldown <= now)
    assert ("cooldown" in decision.codes()) == (decision.action == Action.WAIT)


@PROPS
@given(histories(), trigger_configs(), NOWS)
def test_a_paused_agent_never_fires(history: TriggerHistory, config: TriggerConfig, now) -> None:
    paused = TriggerHistory(**{**history.__dict__, "paused": True})
    decision = decide_trigger(paused, now, config)
    assert decision.action == Action.WAIT
    assert ("paused", "suppressed") in [(r.code, str(r.kind)) for r in decision.reasons]


@PROPS
@given(histories(), trigger_configs(), NOWS)
def test_identical_inputs_give_identical_decisions(
    history: TriggerHistory, config: TriggerConfig, now
) -> None:
    first, second = decide_trigger(history, now, config), decide_trigger(history, now, config)
    assert first == second
    assert json.dumps(first.to_dict(), sort_keys=True) == json.dumps(second.to_dict(), sort_keys=True)
    # Every decision explains itself: at least one reason, and RUN only with a fired one.
    assert first.reasons
    assert first.action == Action.WAIT or any(str(r.kind) == "fired" for r in first.reasons)


SPACE = SearchSpace(
    qubits=(2, 10),
    layers=(1, 10),
    steps=(10, 300),
    backends=(
        BackendOption("jax"),
        BackendOption("qpu", kind="sampler", shots=200, money_per_shot=1e-6, queue_s_per_batch=5.0),
    ),
)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    st.floats(0.0, 4000.0),
    st.integers(0, 10**8),
    st.floats(0.0, 50.0),
    st.integers(0, 2**16),
)
def test_a_planned_cycle_never_exceeds_the_budget(cpu: float, shots: int, money: float, seed: int) -> None:
    budget = Spend(cpu_seconds=cpu, shots=shots, money=money)
    storage = optuna.storages.InMemoryStorage()
    config = RecipeConfig(space=SPACE, max_asks=4)
    for _ in range(4):
        proposal = propose_recipe(budget, now=at(NOW_H), storage=storage, config=config, seed=seed)
        if proposal.decision.action == Action.SKIP:
            assert proposal.recipe is None
            continue
        assert proposal.estimate.spend.fits_within(budget)
        record_recipe_outcome(
            proposal.trial_number,
            RecipeOutcome(0.01, proposal.estimate.spend),
            storage=storage,
            config=config,
        )


@PROPS
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(1e-3, 1.0), st.sampled_from(["a", "b", "c"])),
        min_size=1,
        max_size=80,
    ),
    st.floats(0.0, 0.5),
    st.floats(0.0, 0.2),
    st.sampled_from(["hold", "report"]),
    st.integers(0, 1000),
)
def test_a_candidate_worse_on_every_example_is_never_promoted(rows, floor, min_gain, small, seed) -> None:
    champion = evaluation("champ", [r[0] for r in rows], slices=[r[2] for r in rows])
    candidate = evaluation("cand", [r[0] - r[1] for r in rows], slices=[r[2] for r in rows])
    config = PromotionConfig(
        floor=floor, min_gain=min_gain, small_slice_action=small, n_resamples=200, min_slice_examples=5
    )
    decision = decide_promotion(candidate, champion, at(NOW_H), config, seed=seed)
    assert decision.action == Action.REJECT
    assert decision == decide_promotion(candidate, champion, at(NOW_H), config, seed=seed)


@PROPS
@given(st.lists(st.floats(0.0, 1.0), max_size=10), st.floats(0.0, 1.0), st.floats(0.0, 48.0))
def test_rollback_is_deterministic_and_only_within_the_bake_period(values, previous, now_h) -> None:
    promotion = PromotionRecord("v2", "v1", at(0), previous)
    live = [MetricSample(at(i * 0.5), v, "v2") for i, v in enumerate(values)]
    config = RollbackConfig(bake_period=timedelta(hours=24))
    decision = decide_rollback(promotion, live, at(now_h), config)
    assert decision == decide_rollback(promotion, live, at(now_h), config)
    if now_h > 24:
        assert decision.action == Action.KEEP
