"""The classical stand-ins for QTHA's circuit: same signature and parameter vector as the circuit they replace,
and gradients that reach both their weights and the adapter's down-projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.adapters import (
    AdapterParam,
    QthaAdapterConfig,
    count_adapter_params,
    inject_adapters,
    qtha_circuit_spec,
    refresh_qnn_cores,
    token_mlp_layout,
    token_mlp_qnn,
    weight_softmax_factory,
)
from quantum import CircuitSpec
from tests.model.adapter_helpers import randomise_adapters, shared_qnn, tiny_lm, tokens

ACTIVATION = QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="activation", bond_dim=3)


def test_token_mlp_has_the_circuits_inputs_outputs_and_range() -> None:
    spec = qtha_circuit_spec(ACTIVATION)
    circuit, mlp = shared_qnn(spec), token_mlp_qnn(spec)
    h = jax.random.normal(jax.random.key(0), (5, spec.n_inputs)) * 3
    w = jax.random.uniform(jax.random.key(1), (spec.n_weights,), minval=-1.0, maxval=1.0)
    assert mlp(h, w).shape == circuit(h, w).shape == (5, spec.n_outputs)
    assert float(jnp.max(jnp.abs(mlp(h, w)))) <= 1.0  # ⟨Z_i⟩'s range
    rows = mlp(h, w)
    assert np.allclose(mlp(h[2:3], w), rows[2:3], atol=1e-6)  # per token: one row never sees another


@pytest.mark.parametrize(("qubits", "layers", "hidden", "used"), [(4, 2, 3, 31), (10, 10, 18, 388), (2, 1, 1, 7)])
def test_token_mlp_uses_all_but_a_few_of_the_circuits_weights(qubits: int, layers: int, hidden: int,
                                                               used: int) -> None:
    spec = CircuitSpec(n_qubits=qubits, n_layers=layers)
    layout = token_mlp_layout(spec)
    assert (layout.hidden, layout.used, layout.n_weights) == (hidden, used, spec.n_weights)
    assert spec.n_weights - layout.used <= 2 * qubits  # fewer spare entries than one more hidden unit needs
    # The gradient says which entries the MLP reads: exactly the first `used`.
    grad = jax.grad(lambda w: token_mlp_qnn(spec)(jnp.ones((3, qubits)), w).sum())(jnp.full(spec.n_weights, 0.3))
    assert np.count_nonzero(np.asarray(grad)) == used and not np.asarray(grad)[used:].any()


def test_stand_ins_refuse_the_other_modes_circuit() -> None:
    with pytest.raises(ValueError, match="activation mode"):
        token_mlp_qnn(CircuitSpec(n_qubits=4, n_layers=2, encoding="none", readout="probs"))
    with pytest.raises(ValueError, match="weight mode"):
        weight_softmax_factory(0)(CircuitSpec(n_qubits=4, n_layers=2))


def _adapted(config: QthaAdapterConfig, qnn_factory: object) -> nnx.Module:
    lm = tiny_lm(layers=1)
    inject_adapters(lm, config, rngs=nnx.Rngs(0), qnn_factory=qnn_factory)
    return lm


@pytest.mark.parametrize(("config", "factory"), [(ACTIVATION, token_mlp_qnn),
                                                 (QthaAdapterConfig(n_qubits=4, n_layers=2, bond_dim=3),
                                                  weight_softmax_factory(0))])
def test_stand_in_adapter_has_the_circuit_adapters_parameters_and_gradients_reach_them(config, factory) -> None:
    circuit, stand_in = _adapted(config, shared_qnn), _adapted(config, factory)
    assert count_adapter_params(stand_in) == count_adapter_params(circuit)
    randomise_adapters(stand_in, scale=0.3)  # a fresh adapter's up-projection is zero: no gradient upstream of it
    ids = tokens()

    def loss(model: nnx.Module) -> jax.Array:
        refresh_qnn_cores(model)  # weight mode: θ reaches the forward pass through P(θ), as in training
        return jnp.mean(model(ids) ** 2)

    grads = dict(nnx.to_flat_state(nnx.grad(loss, argnums=nnx.DiffState(0, AdapterParam))(stand_in)))
    learned = {path: g for path, g in grads.items() if path[-1] == "theta" or "cores" in path}
    assert len(learned) == 2 * (1 + 3 + 3)  # q_proj and v_proj: the stand-in's weights and both MPOs' cores
    for path, g in learned.items():
        assert float(jnp.abs(g[...]).max()) > 0, path

