"""Hardware in the loop: QNN weights refined on a device through the executor, classical parts held fixed.

A :class:`DeviceQnn` is a drop-in QNN function (same signature as ``quantum.make_qnn``'s) whose forward pass is
shot estimates from the executor and whose backward pass is the quantum package's parameter-shift (or SPSA) rule,
so a model built around ``make_qnn`` trains on hardware by swapping the function. :func:`refine_on_device` runs
a few optimiser steps on the QNN weights and stops cleanly, with a status the policy can act on, when the
spend limit is reached or the device goes offline (keeping the last completed step's weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from quantum.circuits import QnnCircuit
from quantum.executor import ExecutionStats, Executor
from quantum.gradients import GradientRule, ParameterShift, callback_qnn
from quantum.hardware.shots import ExecutorBackend
from quantum.qnn import feature_map
from quantum.qpu.errors import DeviceOfflineError, SpendLimitError

Stopped = Literal["completed", "spend_limit", "device_offline"]


class _Guarded:
    """A backend that remembers the first hardware error: JAX callbacks re-raise errors as a generic type."""

    def __init__(self, backend: ExecutorBackend) -> None:
        self.backend = backend
        self.name = backend.name
        self.error: BaseException | None = None

    def evaluate(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
        try:
            return self.backend.evaluate(qc, values)
        except BaseException as err:
            if self.error is None:
                self.error = err
            raise


class DeviceQnn:
    """``qnn(inputs[B, n_inputs], weights[P]) -> float32[B, n_outputs]`` evaluated on a device.

    Example:
        >>> backend = ExecutorBackend(Executor(emulator, clock=clock), repetitions=2000)  # doctest: +SKIP
        >>> adapter.qnn = DeviceQnn(build_circuit(adapter.spec), backend)  # doctest: +SKIP
    """

    def __init__(self, qc: QnnCircuit, backend: ExecutorBackend, rule: GradientRule | None = None) -> None:
        """Args:
        qc: the circuit (inputs are feature-mapped as ``make_qnn`` does).
        backend: runs forward and shifted circuits through an executor.
        rule: gradient rule; exact parameter shift by default, ``quantum.Spsa`` for two circuits per step.
        """
        self.qc = qc
        self._guarded = _Guarded(backend)
        self._simulate = callback_qnn(qc, self._guarded, rule or ParameterShift())

    @property
    def error(self) -> BaseException | None:
        """The first error a device call raised since the last :meth:`clear_error`."""
        return self._guarded.error

    def clear_error(self) -> None:
        """Forget the remembered error (done at the start of every refinement step)."""
        self._guarded.error = None

    def __call__(self, inputs: jax.Array, weights: jax.Array) -> jax.Array:
        return self._simulate(feature_map(self.qc, jnp.asarray(inputs)), weights)


@dataclass(frozen=True)
class RefineConfig:
    """Optimiser settings of the on-device refinement.

    Attributes:
        steps: optimiser steps (each one forward pass and one gradient on the device).
        learning_rate: Adam step size on the QNN angles.
        beta1: Adam first-moment decay.
        beta2: Adam second-moment decay.
    """

    steps: int = 5
    learning_rate: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999


@dataclass(frozen=True)
class RefineStep:
    """One step's device loss (before the update) and the executor's cumulative shots and cost after it."""

    step: int
    loss: float
    shots: int
    cost: float


@dataclass(frozen=True)
class RefineResult:
    """What the refinement did.

    Attributes:
        params: the refined parameters (those of the last completed step).
        history: per completed step.
        validation_loss: the device loss of ``params`` on the validation function, if one was given and ran.
        stopped: ``completed``, or why it stopped early (``spend_limit``, ``device_offline``): the policy
            falls back to the simulator's weights or retries later.
        reason: the error message when stopped early.
        stats: the executor's counters (shots, cost, jobs, errors) at the end.
    """

    params: Any
    history: tuple[RefineStep, ...]
    validation_loss: float | None
    stopped: Stopped
    reason: str
    stats: ExecutionStats


def _hardware_error(qnns: Sequence[DeviceQnn]) -> BaseException | None:
    for qnn in qnns:
        if isinstance(qnn.error, SpendLimitError | DeviceOfflineError):
            return qnn.error
    return None


def _adam_step(params: Any, m: Any, v: Any, size: float) -> Any:
    return jax.tree.map(lambda p, a, b: p - size * a / (jnp.sqrt(b) + 1e-8), params, m, v)


def refine_on_device(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    *,
    qnns: Sequence[DeviceQnn],
    executor: Executor,
    config: RefineConfig | None = None,
    validate_fn: Callable[[Any], jax.Array] | None = None,
) -> RefineResult:
    """Adam on ``params`` with gradients from the device, then an optional validation on the device.

    Args:
        loss_fn: ``params -> scalar``; its QNN evaluations go through ``qnns`` (and so through ``executor``).
        params: a pytree of the QNN weights to refine (classical parts stay closed over, fixed).
        qnns: the device QNNs used by ``loss_fn``, watched for spend-limit and offline errors.
        executor: the executor behind them (for shots and cost).
        config: steps and learning rate.
        validate_fn: ``params -> scalar`` evaluated once on the device after the last step.

    Returns:
        The refined parameters, per-step history and a stop status (never raises for the spend limit or offline).
    """
    config = config or RefineConfig()
    # Jitted once: the device calls are callbacks inside the compiled step, the rest runs at XLA speed.
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    history: list[RefineStep] = []

    def guarded(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
        for qnn in qnns:
            qnn.clear_error()
        try:
            return jax.block_until_ready(call()), None
        except Exception:  # JAX wraps callback errors; recover the hardware one if there was one
            hardware = _hardware_error(qnns)
            if hardware is None:
                raise
            return None, hardware

    def stop(err: BaseException, validation: float | None = None) -> RefineResult:
        status: Stopped = "spend_limit" if isinstance(err, SpendLimitError) else "device_offline"
        return RefineResult(params, tuple(history), validation, status, str(err), executor.stats())

    for step in range(1, config.steps + 1):
        out, err = guarded(lambda: value_and_grad(params))  # noqa: B023 - called immediately
        if err is not None:
            return stop(err)
        loss, grads = out
        m = jax.tree.map(lambda a, g: config.beta1 * a + (1 - config.beta1) * g, m, grads)
        v = jax.tree.map(lambda a, g: config.beta2 * a + (1 - config.beta2) * g**2, v, grads)
        size = config.learning_rate * np.sqrt(1 - config.beta2**step) / (1 - config.beta1**step)
        params = _adam_step(params, m, v, size)
        stats = executor.stats()
        history.append(RefineStep(step, float(loss), stats.shots, stats.cost))
    validation = None
    if validate_fn is not None:
        out, err = guarded(lambda: jax.jit(validate_fn)(params))
        if err is not None:
            return stop(err)
        validation = float(out)
    return RefineResult(params, tuple(history), validation, "completed", "", executor.stats())
