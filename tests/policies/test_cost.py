"""The cost model, hand-computed with the defaults (1.4 s base step, 60 modules, 512 tokens, 8e-5 s circuit)."""

from __future__ import annotations

import pytest

from policies import BackendOption, CostModel, PolicyInputError, Recipe, Spend, calibrate_cpu, estimate_cost

JAX = BackendOption("jax")
QPU = BackendOption(
    "qpu",
    kind="sampler",
    shots=1000,
    money_per_shot=1e-5,
    money_per_circuit=0.01,
    batch_size=200,
    queue_s_per_batch=30.0,
)


def qtha(mode: str, qubits: int, layers: int, steps: int, backend: str = "jax") -> Recipe:
    return Recipe("qtha", mode, qubits, layers, 2, 0, 1e-3, steps, backend)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("recipe", "backend", "spend", "queue"),
    [
        # LoRA: 10 steps x 1.4 s.
        (Recipe("lora", None, 0, 0, 0, 8, 1e-3, 10, "jax"), JAX, Spend(cpu_seconds=14.0), 0.0),
        # Weight mode, 10 qubits x 10 layers: 1.54 + 60 x 8e-5 = 1.5448 s a step.
        (qtha("weight", 10, 10, 10), JAX, Spend(cpu_seconds=15.448), 0.0),
        # Activation mode: 1.54 + 60 x 512 x 8e-5 = 3.9976 s a step, 2.6x weight mode (README: 2.4-2.9x measured).
        (qtha("activation", 10, 10, 1), JAX, Spend(cpu_seconds=3.9976), 0.0),
        # 8 qubits, 5 layers: circuit cost x 2**-2 x 0.5 = 1e-5 s: 1.54 + 30720 x 1e-5 = 1.8472 s.
        (qtha("activation", 8, 5, 2), JAX, Spend(cpu_seconds=3.6944), 0.0),
        # Sampler, weight mode, 2 qubits x 1 layer, 3 steps: 60 circuits x (1 + 12 x 2) = 1500 a step, 4500 in all;
        # shots 4.5e6; money 4500 x 0.01 + 4.5e6 x 1e-5 = 90; queue ceil(4500 / 200) = 23 batches x 30 s;
        # CPU 3 x 1.54 + 4500 x 1e-4 = 5.07.
        (qtha("weight", 2, 1, 3, "qpu"), QPU, Spend(cpu_seconds=5.07, shots=4_500_000, money=90.0), 690.0),
    ],
)
def test_estimates(recipe: Recipe, backend: BackendOption, spend: Spend, queue: float) -> None:
    estimate = estimate_cost(recipe, backend, CostModel())
    assert estimate.spend.cpu_seconds == pytest.approx(spend.cpu_seconds)
    assert estimate.spend.shots == spend.shots
    assert estimate.spend.money == pytest.approx(spend.money)
    assert estimate.queue_seconds == pytest.approx(queue)


def test_cost_is_linear_in_steps() -> None:
    one = estimate_cost(qtha("weight", 4, 2, 1, "qpu"), QPU).spend
    ten = estimate_cost(qtha("weight", 4, 2, 10, "qpu"), QPU).spend
    assert (ten.shots, ten.money) == (10 * one.shots, pytest.approx(10 * one.money))


def test_backend_must_match_the_recipe() -> None:
    with pytest.raises(PolicyInputError, match="'qpu'"):
        estimate_cost(qtha("weight", 4, 2, 1, "qpu"), JAX)


def test_cpu_calibration_scales_estimates_by_the_median_measured_ratio() -> None:
    model = CostModel()
    assert calibrate_cpu(model, []) == (model, 1.0)
    # Ratios 4, 5 and 100 (a cycle slowed by a neighbour): the median, 5, is the factor.
    scaled, factor = calibrate_cpu(model, [(100.0, 400.0), (100.0, 500.0), (10.0, 1000.0)])
    assert factor == 5.0 and scaled.base_step_cpu_s == pytest.approx(5 * model.base_step_cpu_s)
    lora = Recipe("lora", None, 0, 0, 0, 8, 1e-3, 60, "jax")
    qtha = Recipe("qtha", "weight", 10, 10, 4, 0, 1e-2, 60, "jax")
    jax = BackendOption("jax")
    for recipe in (lora, qtha):
        assert estimate_cost(recipe, jax, scaled).spend.cpu_seconds == pytest.approx(
            5 * estimate_cost(recipe, jax, model).spend.cpu_seconds
        )
    # Only the latest `window` pairs count; unusable pairs are skipped; the factor is clamped.
    assert calibrate_cpu(model, [(1.0, 50.0)] * 3 + [(1.0, 2.0)] * 2, window=2)[1] == 2.0
    assert calibrate_cpu(model, [(0.0, 5.0), (1.0, float("nan")), (-1.0, 3.0)])[1] == 1.0
    assert calibrate_cpu(model, [(1.0, 1000.0)])[1] == 20.0 and calibrate_cpu(model, [(1.0, 1e-4)])[1] == 0.1
