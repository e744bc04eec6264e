"""Adapter artifacts: save → load reproduces the outputs exactly; the manifest carries what it promises; another
base or a corrupt file fails with a message that says so."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import cirq
import numpy as np
import pytest
from flax import nnx

from model import load_checkpoint
from model.adapters import LoraConfig, QthaAdapterConfig, count_adapter_params, inject_adapters
from model.artifacts import AdapterArtifactError, AdapterFingerprintError, load_adapter, save_adapter
from quantum import build_circuit
from tests.fixtures.tiny_model import write_tiny_hf
from tests.model.adapter_helpers import randomise_adapters, shared_qnn, tokens


@pytest.fixture(scope="module")
def checkpoints():
    with tempfile.TemporaryDirectory() as tmp:
        yield write_tiny_hf(Path(tmp) / "a", seed=0), write_tiny_hf(Path(tmp) / "b", seed=1)


@pytest.mark.parametrize(
    "config",
    [LoraConfig(rank=4), QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="weight"),
     QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="activation", fusion="elementwise")],
    ids=["lora", "qtha-weight", "qtha-activation"],
)
def test_save_then_load_gives_identical_outputs_and_a_complete_manifest(checkpoints, config) -> None:
    loaded = load_checkpoint(checkpoints[0])
    used = inject_adapters(loaded.model, config, rngs=nnx.Rngs(1), qnn_factory=shared_qnn)
    randomise_adapters(loaded.model)
    x = tokens(length=9)
    expected = np.asarray(loaded.model(x))
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(loaded.model, tmp, base_fingerprint=loaded.fingerprint)
        manifest = json.loads((Path(tmp) / "adapter.json").read_text())
        fresh = load_checkpoint(checkpoints[0])
        assert load_adapter(fresh.model, tmp, base_fingerprint=fresh.fingerprint, qnn_factory=shared_qnn) == used
    np.testing.assert_array_equal(np.asarray(fresh.model(x)), expected)

    assert manifest["format_version"] == 1 and manifest["kind"] == config.kind
    assert manifest["base_fingerprint"] == loaded.fingerprint
    assert manifest["targets"] == {f"layers.{i}.self_attn.{p}": s for i in range(2)
                                   for p, s in (("q_proj", [64, 64]), ("v_proj", [64, 32]))}
    assert manifest["param_counts"]["total"] == count_adapter_params(fresh.model).total
    assert sum(int(np.prod(s)) for s in manifest["shapes"].values()) == manifest["param_counts"]["total"]
    if config.kind == "qtha":
        assert manifest["config"]["bond_dim"] == used.bond_dim  # the resolved value, not None
        circuit = cirq.read_json(json_text=manifest["circuit"]["cirq_json"])
        spec = fresh.model.layers[0].self_attn.q_proj.delta.spec
        assert circuit == build_circuit(spec).circuit
    else:
        assert manifest["circuit"] is None


def test_loading_onto_another_base_names_both_fingerprints(checkpoints) -> None:
    a, b = load_checkpoint(checkpoints[0]), load_checkpoint(checkpoints[1])
    assert a.fingerprint != b.fingerprint
    inject_adapters(a.model, LoraConfig(rank=2), rngs=nnx.Rngs(0))
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(a.model, tmp, base_fingerprint=a.fingerprint)
        with pytest.raises(AdapterFingerprintError, match=f"{a.fingerprint}.*{b.fingerprint}"):
            load_adapter(b.model, tmp, base_fingerprint=b.fingerprint)


def test_corrupt_or_missing_artifacts_fail_clearly(checkpoints) -> None:
    a = load_checkpoint(checkpoints[0])
    inject_adapters(a.model, LoraConfig(rank=2), rngs=nnx.Rngs(0))

    def fresh():
        return load_checkpoint(checkpoints[0]).model

    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(AdapterArtifactError, match="adapter.json is missing"):
            load_adapter(fresh(), tmp, base_fingerprint=a.fingerprint)
        save_adapter(a.model, tmp, base_fingerprint=a.fingerprint)
        weights, manifest = Path(tmp) / "adapter.safetensors", Path(tmp) / "adapter.json"
        good_weights, good_manifest = weights.read_bytes(), manifest.read_text()

        weights.write_bytes(good_weights[:-16] + bytes(b ^ 0xFF for b in good_weights[-16:]))
        with pytest.raises(AdapterArtifactError, match="adapter.safetensors does not match the sha256"):
            load_adapter(fresh(), tmp, base_fingerprint=a.fingerprint)

        weights.write_bytes(good_weights)
        manifest.write_text(good_manifest[: len(good_manifest) // 2])
        with pytest.raises(AdapterArtifactError, match="adapter.json is not valid JSON"):
            load_adapter(fresh(), tmp, base_fingerprint=a.fingerprint)

        manifest.write_text(good_manifest.replace('"format_version": 1', '"format_version": 99'))
        with pytest.raises(AdapterArtifactError, match="format_version 99"):
            load_adapter(fresh(), tmp, base_fingerprint=a.fingerprint)

        # A consistent but truncated safetensors file (its sha256 updated to match) is still refused.
        weights.write_bytes(good_weights[:40])
        manifest.write_text(good_manifest.replace(json.loads(good_manifest)["weights_sha256"],
                                                  hashlib.sha256(good_weights[:40]).hexdigest()))
        with pytest.raises(AdapterArtifactError, match="not a readable safetensors file"):
            load_adapter(fresh(), tmp, base_fingerprint=a.fingerprint)
