"""What a recipe costs before it runs: CPU-seconds, shots, money and expected queue time.

The per-step CPU model is calibrated on facts.md (SmolLM2-135M, 60 adapted projections, batch 4x128 tokens):
LoRA ~1.4 s/step; weight-mode QTHA ~1.1x LoRA. Activation-mode QTHA with a 10-qubit, 10-layer circuit per token
costs 2.4-2.9x weight mode's step with the simulator's native kernels (README, "Simulator and activation-mode
performance"; ~8.6x with XLA's kernels), hence ``circuit_cpu_s`` = 8e-5 s: 1.54 + 30,720 x 8e-5 = 4.0 s, 2.6x.
A simulated circuit evaluation (forward + backward) scales with ``2**qubits * layers``.

On a sampling backend every circuit of a step runs with parameter-shift gradients: one unshifted evaluation plus
two per RY parameter and four per CRZ parameter (the paper's ansatz has 2n RY and 2n CRZ per layer), so
``1 + 12 * qubits * layers`` circuits per circuit instance, each with ``shots`` shots.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, Literal

from .decision import PolicyInputError
from .records import Spend

__all__ = ["BackendOption", "CostEstimate", "CostModel", "Recipe", "calibrate_cpu", "estimate_cost"]

AdapterKind = Literal["qtha", "lora"]
QnnMode = Literal["weight", "activation"]
Method = Literal["supervised", "self-improve"]


# The hand-written worked examples the sampler can show (``model.WORKED_EXAMPLES``; a test keeps the two equal).
MAX_WORKED_EXAMPLES = 3


@dataclass(frozen=True)
class Recipe:
    """How to train one cycle.

    Attributes:
        adapter: ``"qtha"`` or ``"lora"``.
        qnn_mode: QTHA only: ``"weight"`` (one circuit per module per step) or ``"activation"`` (per token).
        qubits: QTHA circuit width (0 for LoRA).
        layers: QTHA circuit depth (0 for LoRA).
        bond_dim: QTHA MPO bond dimension (0 for LoRA).
        rank: LoRA rank (0 for QTHA).
        learning_rate: peak AdamW learning rate.
        steps: optimizer steps.
        backend: the name of a :class:`BackendOption` the circuits run on (a simulator for LoRA).
        targets: module-name patterns that receive adapters.
        batch_size: sequences per optimizer step.
        seq_len: tokens per sequence (longer examples are cut).
        seed: the training run's root seed (adapter init, data order).
        method: ``"supervised"`` (train on the data's reference responses) or ``"self-improve"`` (the champion
            samples answers to prompts alone; only verified samples are trained on — STaR / ReST-EM).
        samples_k: self-improve: samples drawn per prompt.
        temperature, top_p: self-improve: the sampling settings.
        agreement: self-improve: where no answer is known, the majority answer's share of the k samples needed to
            accept it as a pseudo-label, in (0, 1].
        replay_share: self-improve: share of the training set drawn from earlier cycles' verified samples (and,
            unless ``from_base``, the reference solutions of earlier supervised cycles), [0, 1).
        from_base: self-improve: train a fresh adapter from the base model (ReST-EM) instead of continuing the
            champion's.
        pool_prompts: self-improve: prompts sampled per cycle.
        max_paths: self-improve: distinct reasoning paths kept per prompt.
        worked_examples: self-improve: how many hand-written worked examples are shown before each sampled prompt
            (STaR's few-shot prompt; 0 to :data:`MAX_WORKED_EXAMPLES`). They are never trained on: the kept samples
            keep the bare prompt.

    A recipe is the whole "how" of a cycle: it travels from the planner through the store to the training child
    as :meth:`to_dict` and comes back with :meth:`from_dict`, which refuses unknown fields and wrong types.
    """

    adapter: AdapterKind
    qnn_mode: QnnMode | None
    qubits: int
    layers: int
    bond_dim: int
    rank: int
    learning_rate: float
    steps: int
    backend: str
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    batch_size: int = 4
    seq_len: int = 128
    seed: int = 0
    method: Method = "supervised"
    samples_k: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    agreement: float = 0.6
    replay_share: float = 0.2
    from_base: bool = False
    pool_prompts: int = 32
    max_paths: int = 4
    worked_examples: int = 0

    def __post_init__(self) -> None:
        self._check_self_improve()
        if self.adapter == "qtha":
            if (
                self.qnn_mode not in ("weight", "activation")
                or min(self.qubits, self.layers, self.bond_dim) < 1
            ):
                raise PolicyInputError(
                    f"QTHA recipe needs qnn_mode in ('weight', 'activation') and qubits, layers, bond_dim >= 1; "
                    f"got {self.qnn_mode!r}, {self.qubits}, {self.layers}, {self.bond_dim}"
                )
        elif self.adapter == "lora":
            if self.rank < 1:
                raise PolicyInputError(f"LoRA recipe needs rank >= 1; got {self.rank}")
        else:
            raise PolicyInputError(f"Recipe.adapter = {self.adapter!r}; use 'qtha' or 'lora'")
        if self.steps < 1 or not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise PolicyInputError(
                f"Recipe steps = {self.steps} must be >= 1 and learning_rate = {self.learning_rate!r} > 0"
            )
        if self.adapter == "qtha" and self.qnn_mode == "weight" and self.qubits % 2:
            raise PolicyInputError(
                f"Recipe qubits = {self.qubits}: weight mode reshapes the 2^n probabilities into a square core, so "
                "qubits must be even; use an even number or qnn_mode=activation"
            )
        for name, low in (("batch_size", 1), ("seq_len", 8), ("seed", 0)):
            if getattr(self, name) < low:
                raise PolicyInputError(f"Recipe {name} = {getattr(self, name)} must be >= {low}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise PolicyInputError(f"Recipe targets = {self.targets!r} must be non-empty module names")
        if not self.backend:
            raise PolicyInputError("Recipe backend is empty; name a backend (e.g. jax)")

    def _check_self_improve(self) -> None:
        if self.method not in ("supervised", "self-improve"):
            raise PolicyInputError(f"Recipe.method = {_shown(self.method)}; use 'supervised' or 'self-improve'")
        for name, low in (("samples_k", 1), ("pool_prompts", 1), ("max_paths", 1)):
            if getattr(self, name) < low:
                raise PolicyInputError(f"Recipe {name} = {getattr(self, name)} must be >= {low}")
        if not 0 <= self.worked_examples <= MAX_WORKED_EXAMPLES:
            raise PolicyInputError(f"Recipe worked_examples = {self.worked_examples} must lie in "
                                   f"[0, {MAX_WORKED_EXAMPLES}] (the hand-written examples there are)")
        if self.samples_k > 16:
            raise PolicyInputError(f"Recipe samples_k = {self.samples_k} must be <= 16 (the engine's slots)")
        checks = (
            ("temperature", 0.0 <= self.temperature <= 2.0, "[0, 2]"),
            ("top_p", 0.0 < self.top_p <= 1.0, "(0, 1]"),
            ("agreement", 0.0 < self.agreement <= 1.0, "(0, 1]"),
            ("replay_share", 0.0 <= self.replay_share < 1.0, "[0, 1)"),
        )
        for name, ok, interval in checks:
            if not ok:  # NaN fails every comparison, so it lands here too
                raise PolicyInputError(f"Recipe {name} = {_shown(getattr(self, name))} must lie in {interval}")
        if not isinstance(self.from_base, bool):
            raise PolicyInputError(f"Recipe from_base = {_shown(self.from_base)} must be true or false")

    @property
    def kind(self) -> str:
        """``"qtha-weight"``, ``"qtha-activation"`` or ``"lora"`` (the search space's adapter choices)."""
        return f"qtha-{self.qnn_mode}" if self.adapter == "qtha" else "lora"

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "qnn_mode": self.qnn_mode,
            "qubits": self.qubits,
            "layers": self.layers,
            "bond_dim": self.bond_dim,
            "rank": self.rank,
            "learning_rate": self.learning_rate,
            "steps": self.steps,
            "backend": self.backend,
            "targets": list(self.targets),
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "seed": self.seed,
        } | (self._self_improve_dict() if self.method == "self-improve" else {})

    def _self_improve_dict(self) -> dict[str, Any]:
        """The self-improvement fields; a supervised recipe's dict leaves them out (it is what it always was)."""
        return {
            "method": self.method,
            "samples_k": self.samples_k,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "agreement": self.agreement,
            "replay_share": self.replay_share,
            "from_base": self.from_base,
            "pool_prompts": self.pool_prompts,
            "max_paths": self.max_paths,
        } | ({"worked_examples": self.worked_examples} if self.worked_examples else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Parses :meth:`to_dict`'s output (JSON from the store, a payload, an override).

        Fields with defaults may be missing; every present field must have its type (an integer field refuses
        ``2.5`` and ``True``; a float field takes integers).

        Raises:
            PolicyInputError: an unknown field, a missing required one, a wrong type or an invalid value; the
                message names the field.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PolicyInputError(
                f"recipe field {unknown[0]!r} is unknown; known fields: {', '.join(known)}"
            )
        values: dict[str, Any] = {}
        for name, value in data.items():
            values[name] = _parse_field(name, value)
        missing = [n for n, f in known.items() if n not in values and f.default is MISSING]
        if missing:
            raise PolicyInputError(f"recipe field {missing[0]!r} is missing")
        return cls(**values)


_INT_FIELDS = ("qubits", "layers", "bond_dim", "rank", "steps", "batch_size", "seq_len", "seed", "samples_k",
               "pool_prompts", "max_paths", "worked_examples")
_FLOAT_FIELDS = ("learning_rate", "temperature", "top_p", "agreement", "replay_share")


def _shown(value: Any) -> str:
    """A value as an error message shows it: its repr, cut to 40 characters (a 5000-digit number is not read)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _parse_field(name: str, value: Any) -> Any:
    """One recipe field from JSON, type-checked (``bool`` is not a number here)."""
    wrong = PolicyInputError(f"recipe field {name!r} = {_shown(value)} has the wrong type")
    if name in _INT_FIELDS:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise PolicyInputError(f"recipe field {name!r} = {_shown(value)} must be an integer")
        return int(value)
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyInputError(f"recipe field {name!r} = {_shown(value)} must be a number")
        return float(value)
    if name == "from_base":
        if not isinstance(value, bool):
            raise PolicyInputError(f"recipe field 'from_base' = {_shown(value)} must be true or false")
        return value
    if name == "targets":
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise PolicyInputError(f"recipe field 'targets' = {_shown(value)} must be a list of module names")
        return tuple(value)
    if name == "qnn_mode":
        if value is not None and not isinstance(value, str):
            raise wrong
        return value
    if not isinstance(value, str):
        raise wrong
    return value


@dataclass(frozen=True)
class BackendOption:
    """A place circuits can run, with its prices.

    Attributes:
        name: the agent's backend name (``"jax"``, ``"qsim"``, ``"emulator"``, a vendor).
        kind: ``"simulator"`` (exact, differentiable, CPU only) or ``"sampler"`` (shots, parameter shift).
        shots: shots per circuit on a sampler.
        money_per_shot: price of one shot.
        money_per_circuit: price of one circuit (task) whatever its shots.
        batch_size: circuits per submitted batch (Origin's cloud takes ~200).
        queue_s_per_batch: expected queue wait of one batch.
    """

    name: str
    kind: Literal["simulator", "sampler"] = "simulator"
    shots: int = 1000
    money_per_shot: float = 0.0
    money_per_circuit: float = 0.0
    batch_size: int = 200
    queue_s_per_batch: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("simulator", "sampler"):
            raise PolicyInputError(f"BackendOption.kind = {self.kind!r}; use 'simulator' or 'sampler'")
        if self.shots < 1 or self.batch_size < 1 or min(self.money_per_shot, self.money_per_circuit) < 0:
            raise PolicyInputError(f"BackendOption {self.name!r}: shots and batch_size >= 1, prices >= 0")


@dataclass(frozen=True)
class CostModel:
    """Per-step cost coefficients (see the module docstring for the calibration).

    Attributes:
        base_step_cpu_s: one step of the frozen base with LoRA on the target modules.
        qtha_overhead: extra fraction of ``base_step_cpu_s`` for the MPO projections of QTHA.
        circuit_cpu_s: one simulated evaluation (forward + backward) of the reference circuit.
        reference_qubits: width of the reference circuit.
        reference_layers: depth of the reference circuit.
        modules: adapted modules (SmolLM2: 30 blocks x q/v = 60).
        tokens_per_step: tokens per batch (4 x 128).
        sampler_cpu_s_per_circuit: local CPU to build, submit and read back one circuit on a sampler.
        sample_cpu_s_per_token: self-improvement: CPU per sampled token through the batched decoding engine.
        sample_tokens: self-improvement: tokens budgeted per sample (the sampling budget, max_tokens).
    """

    base_step_cpu_s: float = 1.4
    qtha_overhead: float = 0.1
    circuit_cpu_s: float = 8e-5
    reference_qubits: int = 10
    reference_layers: int = 10
    modules: int = 60
    tokens_per_step: int = 512
    sampler_cpu_s_per_circuit: float = 1e-4
    sample_cpu_s_per_token: float = 0.01
    sample_tokens: int = 96


@dataclass(frozen=True)
class CostEstimate:
    """A recipe's estimated cost: the budgeted spend plus the expected queue wait (not budgeted, but priced)."""

    spend: Spend
    queue_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"spend": self.spend.to_dict(), "queue_seconds": self.queue_seconds}


def circuit_instances_per_step(recipe: Recipe, model: CostModel) -> int:
    """Circuits one forward pass needs: one per module (weight mode) or per module per token (activation)."""
    if recipe.adapter != "qtha":
        return 0
    per_module = model.tokens_per_step if recipe.qnn_mode == "activation" else 1
    return model.modules * per_module


def estimate_cost(recipe: Recipe, backend: BackendOption, model: CostModel = CostModel()) -> CostEstimate:
    """Estimates a recipe's cost as ``steps x`` the per-step cost on ``backend``.

    Raises:
        PolicyInputError: ``backend`` is not the one the recipe names.
    """
    if backend.name != recipe.backend:
        raise PolicyInputError(f"recipe runs on {recipe.backend!r} but backend {backend.name!r} was given")
    base = model.base_step_cpu_s * (1.0 + (model.qtha_overhead if recipe.adapter == "qtha" else 0.0))
    # Self-improvement first samples k answers per prompt: CPU the cycle spends whatever the steps (a fixed charge).
    sampling = (
        recipe.pool_prompts * recipe.samples_k * model.sample_tokens * model.sample_cpu_s_per_token
        if recipe.method == "self-improve" else 0.0
    )
    instances = circuit_instances_per_step(recipe, model)
    if instances == 0 or backend.kind == "simulator":
        scale = 2.0 ** (recipe.qubits - model.reference_qubits) * recipe.layers / model.reference_layers
        cpu = recipe.steps * (base + instances * model.circuit_cpu_s * scale) + sampling
        return CostEstimate(Spend(cpu_seconds=cpu))
    circuits = recipe.steps * instances * (1 + 12 * recipe.qubits * recipe.layers)
    shots = circuits * backend.shots
    money = circuits * backend.money_per_circuit + shots * backend.money_per_shot
    queue = math.ceil(circuits / backend.batch_size) * backend.queue_s_per_batch
    cpu = recipe.steps * base + circuits * model.sampler_cpu_s_per_circuit + sampling
    return CostEstimate(Spend(cpu_seconds=cpu, shots=shots, money=money), queue_seconds=queue)


def calibrate_cpu(
    model: CostModel,
    history: Sequence[tuple[float, float]],
    *,
    window: int = 8,
    bounds: tuple[float, float] = (0.1, 20.0),
) -> tuple[CostModel, float]:
    """The model with its CPU coefficients scaled to match what recent cycles measured.

    The coefficients are calibrated on one machine; the daemon runs on another, and a cycle also spends CPU on
    loading, compiling and evaluating that the per-step model leaves out. The factor is the median ratio of
    measured to estimated CPU-seconds over the last ``window`` cycles (the median: one cycle slowed by a noisy
    neighbour does not move it), clamped to ``bounds``.

    Args:
        model: the uncalibrated model.
        history: (estimated by ``model``, measured) CPU-seconds of finished cycles, oldest first; pairs with a
            non-positive or non-finite side are ignored.
        window: how many of the latest pairs count.
        bounds: the smallest and largest factor applied.

    Returns:
        The scaled model and the factor (1.0, and ``model`` itself, without usable history).
    """
    ratios = [m / e for e, m in history if e > 0 and m > 0 and math.isfinite(e) and math.isfinite(m)][-window:]
    if not ratios:
        return model, 1.0
    factor = min(max(statistics.median(ratios), bounds[0]), bounds[1])
    return (
        replace(
            model,
            base_step_cpu_s=model.base_step_cpu_s * factor,
            circuit_cpu_s=model.circuit_cpu_s * factor,
            sampler_cpu_s_per_circuit=model.sampler_cpu_s_per_circuit * factor,
            sample_cpu_s_per_token=model.sample_cpu_s_per_token * factor,
        ),
        factor,
    )
