"""LoRA and QTHA adapters against dense numpy references, no-op initialisation, injection and parameter counts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from model.adapters import (
    MPO,
    AdaptedLinear,
    AdapterError,
    AdapterParam,
    LoraConfig,
    QthaAdapterConfig,
    adapted_modules,
    adapter_param_counts,
    balanced_factors,
    count_adapter_params,
    inject_adapters,
    mpo_bond_dims,
    mpo_param_count,
    resolve_bond_dim,
    target_shapes,
)
from tests.model.adapter_helpers import randomise_adapters, shared_qnn, tiny_lm, tokens

QTHA_CONFIGS = [
    QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="weight", bond_dim=3),
    QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="activation", fusion="linear", bond_dim=3),
    QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="activation", fusion="elementwise", bond_dim=3),
]
ALL_CONFIGS = [LoraConfig(rank=4), *QTHA_CONFIGS]


def numpy_dense(cores: list[np.ndarray]) -> np.ndarray:
    """The MPO's matrix entry by entry: W[(i_1..i_K), (j_1..j_K)] = C_1[0,i_1,j_1,:] C_2[:,i_2,j_2,:] ⋯ C_K[:,…,0]."""
    in_f = [c.shape[1] for c in cores]
    out_f = [c.shape[2] for c in cores]
    dense = np.zeros((math.prod(in_f), math.prod(out_f)))
    for row, i_idx in enumerate(np.ndindex(*in_f)):
        for col, j_idx in enumerate(np.ndindex(*out_f)):
            chain = np.ones((1,))
            for core, i, j in zip(cores, i_idx, j_idx, strict=True):
                chain = chain @ core[:, i, j, :].astype(np.float64)
            dense[row, col] = chain[0]
    return dense


@pytest.mark.parametrize(
    ("in_f", "out_f", "bond"),
    [((4, 3, 2), (2, 5, 1), 3), ((6, 4), (3, 2), 2), ((3, 2, 2, 2), (2, 2, 1, 3), 4), ((8,), (5,), 7)],
)
def test_mpo_contraction_equals_numpy_dense_matrix(in_f, out_f, bond) -> None:
    mpo = MPO(in_f, out_f, bond, rngs=nnx.Rngs(0), init_std=0.5)
    cores = [np.asarray(c[...]) for c in mpo.cores]
    dense = numpy_dense(cores)
    x = np.random.default_rng(0).normal(size=(5, math.prod(in_f)))
    np.testing.assert_allclose(np.asarray(mpo.dense()), dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mpo(jnp.asarray(x, jnp.float32))), x @ dense, rtol=1e-4, atol=1e-5)
    assert sum(c.size for c in cores) == mpo_param_count(in_f, out_f, bond)


def test_mpo_bond_dimensions_are_capped_by_the_rank_across_each_cut() -> None:
    assert mpo_bond_dims((4, 3, 2), (2, 5, 1), 100) == (1, 8, 2, 1)  # left 4·2 = 8, right 2·1 = 2
    assert mpo_bond_dims((9, 8, 8), (4, 4, 2), 3) == (1, 3, 3, 1)
    mpo = MPO((2, 2), (2, 2), 3, rngs=nnx.Rngs(0), init_std=1.0, zero_last=True)
    assert [tuple(c[...].shape) for c in mpo.cores] == [(1, 2, 2, 3), (3, 2, 2, 1)]
    assert not np.any(np.asarray(mpo.cores[1][...]))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 4))
def test_balanced_factors_property(n: int, k: int) -> None:
    factors = balanced_factors(n, k)
    assert len(factors) == k and math.prod(factors) == n and list(factors) == sorted(factors, reverse=True)
    assert factors[0] ** k >= n  # the largest factor is at least the k-th root


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4), st.integers(1, 40))
def test_mpo_param_count_and_bonds_property(dims: list[tuple[int, int]], bond: int) -> None:
    in_f, out_f = [i for i, _ in dims], [j for _, j in dims]
    bonds = mpo_bond_dims(in_f, out_f, bond)
    assert bonds[0] == bonds[-1] == 1 and max(bonds) <= bond
    for k in range(1, len(dims)):  # never more than the rank across the cut
        assert bonds[k] <= min(math.prod(i * j for i, j in dims[:k]), math.prod(i * j for i, j in dims[k:]))
    assert mpo_param_count(in_f, out_f, bond) == sum(
        bonds[k] * i * j * bonds[k + 1] for k, (i, j) in enumerate(dims))


@pytest.mark.parametrize("n", [1, 7, 10, 32, 192, 576, 4096, 8960])
def test_balanced_factors_multiply_back_and_are_as_even_as_any_split(n: int) -> None:
    factors = balanced_factors(n, 3)
    assert math.prod(factors) == n and list(factors) == sorted(factors, reverse=True)
    best_max = min(max(a, b, n // (a * b)) for a in range(1, n + 1) if n % a == 0
                   for b in range(1, n // a + 1) if (n // a) % b == 0)
    assert factors[0] == best_max
    assert balanced_factors(576, 3) == (9, 8, 8)


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda c: f"{c.kind}-{getattr(c, 'qnn_mode', '')}"
                         f"-{getattr(c, 'fusion', '')}")
def test_a_fresh_adapter_leaves_the_logits_unchanged(config) -> None:
    lm = tiny_lm()
    x = tokens()
    before = np.asarray(lm(x))
    inject_adapters(lm, config, rngs=nnx.Rngs(1))  # the default QNN factory, quantum.make_qnn
    assert len(adapted_modules(lm)) == 4
    np.testing.assert_array_equal(np.asarray(lm(x)), before)


def test_lora_matches_its_dense_formula() -> None:
    lm = tiny_lm()
    inject_adapters(lm, LoraConfig(rank=4, alpha=8.0), rngs=nnx.Rngs(1))
    randomise_adapters(lm)
    layer = lm.layers[1].self_attn.v_proj
    assert isinstance(layer, AdaptedLinear)
    x = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    w, b = np.asarray(layer.base.kernel[...]), np.asarray(layer.base.bias[...]) if layer.base.bias is not None else 0
    a, bb = np.asarray(layer.delta.lora_a[...]), np.asarray(layer.delta.lora_b[...])
    expected = x @ w + b + (8.0 / 4) * (x @ a @ bb)
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", QTHA_CONFIGS, ids=lambda c: f"{c.qnn_mode}-{c.fusion}")
def test_qtha_matches_its_dense_formula(config: QthaAdapterConfig) -> None:
    lm = tiny_lm()
    inject_adapters(lm, config, rngs=nnx.Rngs(1), qnn_factory=shared_qnn)
    randomise_adapters(lm)
    layer = lm.layers[0].self_attn.q_proj
    delta = layer.delta
    x = np.random.default_rng(0).normal(size=(2, 3, 32)).astype(np.float32)
    a_dense = numpy_dense([np.asarray(c[...]) for c in delta.mpo_a.cores])
    b_dense = numpy_dense([np.asarray(c[...]) for c in delta.mpo_b.cores])
    theta = delta.theta[...]
    h = x.reshape(-1, 32) @ a_dense
    if config.qnn_mode == "weight":
        probs = np.asarray(delta.qnn(jnp.zeros((1, 0)), theta))[0]
        assert probs.shape == (16,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
        f = h @ (float(delta.core_scale[...]) * probs.reshape(4, 4))  # r = 2^(4/2) = 4
    else:
        q = np.asarray(delta.qnn(jnp.asarray(h, jnp.float32), theta))
        assert q.shape == (6, 4) and np.all(np.abs(q) <= 1 + 1e-6)
        f = float(delta.fuse_alpha[...]) * h + float(delta.fuse_beta[...]) * q if config.fusion == "linear" else h * q
    expected_delta = (config.alpha / 4) * (f @ b_dense)
    base = x @ np.asarray(layer.base.kernel[...])
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), base + expected_delta.reshape(2, 3, 32),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda c: f"{c.kind}-{getattr(c, 'qnn_mode', '')}"
                         f"-{getattr(c, 'fusion', '')}")
def test_only_adapter_weights_are_adapter_params_and_counts_agree(config) -> None:
    lm = tiny_lm()
    base_before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(lm, nnx.Param)))
    shapes = target_shapes(lm, config.targets)
    assert shapes == {f"layers.{i}.self_attn.{p}": s for i in range(2) for p, s in
                      (("q_proj", (32, 32)), ("v_proj", (32, 16)))}
    inject_adapters(lm, config, rngs=nnx.Rngs(1), qnn_factory=shared_qnn)
    # The frozen weights are all still nnx.Param with their values; nothing else is.
    base_after = nnx.state(lm, nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(base_after)) == sum(x.size for x in jax.tree.leaves(base_before))
    for path, var in nnx.to_flat_state(base_after):
        ours = [p for p in path if p not in ("base",)]
        expected = base_before
        for p in ours:
            expected = expected[p]
        np.testing.assert_array_equal(np.asarray(var[...]), expected)
    measured = count_adapter_params(lm)
    assert measured == adapter_param_counts(config if config.kind == "lora" else
                                            config.with_bond_dim(resolve_bond_dim(config, shapes)), shapes)
    assert measured.total == sum(x.size for x in jax.tree.leaves(nnx.state(lm, AdapterParam)))
    if config.kind == "lora":
        assert measured.per_module["layers.0.self_attn.q_proj"] == 4 * (32 + 32)
        assert measured.per_module["layers.0.self_attn.v_proj"] == 4 * (32 + 16)


def test_default_bond_dimension_meets_the_papers_parameter_ratio_on_smollm2_shapes() -> None:
    # SmolLM2-135M: 30 layers, q_proj 576→576, v_proj 576→192 (3 KV heads of 64).
    shapes = {f"layers.{i}.self_attn.{p}": s for i in range(30)
              for p, s in (("q_proj", (576, 576)), ("v_proj", (576, 192)))}
    lora = adapter_param_counts(LoraConfig(rank=8), shapes).total
    assert lora == 460_800  # the figure measured in facts.md
    for mode in ("weight", "activation"):
        config = QthaAdapterConfig(qnn_mode=mode)
        bond = resolve_bond_dim(config, shapes)
        total = adapter_param_counts(config, shapes).total
        assert total <= 0.24 * lora
        bigger = adapter_param_counts(config.with_bond_dim(bond + 1), shapes).total
        assert bigger > 0.24 * lora  # the largest bond dimension within the budget
        assert total > 0.15 * lora  # and close to the budget, not far under it


def test_target_patterns_select_by_name_or_dotted_glob() -> None:
    lm = tiny_lm()
    inject_adapters(lm, LoraConfig(rank=2, targets=("layers.1.self_attn.q_proj", "o_proj")), rngs=nnx.Rngs(0))
    assert sorted(adapted_modules(lm)) == [
        "layers.0.self_attn.o_proj", "layers.1.self_attn.o_proj", "layers.1.self_attn.q_proj"]


def test_injection_errors_name_the_offending_value() -> None:
    lm = tiny_lm()
    with pytest.raises(AdapterError, match="'qkv_proj'.*q_proj"):
        inject_adapters(lm, LoraConfig(targets=("qkv_proj",)), rngs=nnx.Rngs(0))
    with pytest.raises(AdapterError, match="in_factors \\(4, 4, 4\\).*64.*q_proj.*32"):
        inject_adapters(lm, QthaAdapterConfig(n_qubits=4, n_layers=1, in_factors=(4, 4, 4)), rngs=nnx.Rngs(0))
    with pytest.raises(AdapterError, match="n_qubits must be even; got 5"):
        QthaAdapterConfig(n_qubits=5, qnn_mode="weight")
    with pytest.raises(AdapterError, match="'sideways'"):
        QthaAdapterConfig(qnn_mode="sideways")  # type: ignore[arg-type]
    inject_adapters(lm, LoraConfig(rank=2), rngs=nnx.Rngs(0))
    with pytest.raises(AdapterError, match="already has adapters"):
        inject_adapters(lm, LoraConfig(rank=2), rngs=nnx.Rngs(0))
