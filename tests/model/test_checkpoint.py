"""Loading the tiny checkpoint from an HF directory and from GGUF, and the errors for bad checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from model import CheckpointError, TokenizerError, UnsupportedModelError, load_checkpoint
from model.gguf_loader import hf_tensor_name, unpermute_qk
from tests.fixtures.tiny_model import (
    permute_qk_like_llama_cpp,
    tiny_hf_config,
    tiny_tensors,
    write_tiny_gguf,
    write_tiny_hf,
)
from tests.model.numpy_reference import reference_logits

PROMPT = [{"role": "user", "content": "What is 12 plus 7?"}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_hf(tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def both(tiny_dir, tiny_gguf):
    return load_checkpoint(tiny_dir), load_checkpoint(tiny_gguf)


@nnx.jit
def _forward(lm, tokens):
    return lm(tokens)


def test_hf_and_gguf_copies_give_the_same_model_tokenizer_and_fingerprint(both) -> None:
    hf, gg = both
    assert hf.config == gg.config
    assert hf.fingerprint == gg.fingerprint and len(hf.fingerprint) == 64
    prompt = hf.tokenizer.apply_chat_template(PROMPT)
    assert prompt == gg.tokenizer.apply_chat_template(PROMPT)
    ids = hf.tokenizer.encode(prompt)
    assert ids == gg.tokenizer.encode(prompt)
    assert (hf.tokenizer.eos_id, hf.tokenizer.pad_id) == (gg.tokenizer.eos_id, gg.tokenizer.pad_id) == (2, 2)
    tokens = jnp.asarray([ids], jnp.int32)
    a, b = np.asarray(_forward(hf.model, tokens)), np.asarray(_forward(gg.model, tokens))
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a[0], reference_logits(tiny_hf_config(), tiny_tensors(), ids), atol=1e-4)


def test_gguf_logits_match_a_reference_that_rotates_permuted_weights_in_pairs(both) -> None:
    # llama.cpp keeps Q/K permuted and rotates adjacent pairs; we un-permute and rotate halves. Same logits.
    _, gg = both
    cfg = tiny_hf_config()
    permuted = {
        name: permute_qk_like_llama_cpp(w, cfg["num_attention_heads"]) if "q_proj" in name
        else permute_qk_like_llama_cpp(w, cfg["num_key_value_heads"]) if "k_proj" in name else w
        for name, w in tiny_tensors().items()
    }
    ids = [1, 85, 288, 86, 71, 79, 201, 59, 271, 259, 273]
    ref = reference_logits(cfg, permuted, ids, interleaved_rope=True)
    np.testing.assert_allclose(np.asarray(_forward(gg.model, jnp.asarray([ids])))[0], ref, atol=1e-4)
    wrong = reference_logits(cfg, permuted, ids)  # pairs rotated as halves: the permutation matters
    assert np.abs(wrong - ref).max() > 1e-2


def test_gguf_control_tokens_are_special(both) -> None:
    _, gg = both
    tok = gg.tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2  # one id each, not split into byte pieces
    assert tok.decode(ids) == "user\nhi"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"
    assert {2} <= tok.stop_ids


def test_fingerprint_depends_on_the_weights(tmp_path, both) -> None:
    other = load_checkpoint(write_tiny_hf(tmp_path / "seed1", seed=1))
    assert other.fingerprint != both[0].fingerprint


def test_sharded_safetensors_with_index_load_like_a_single_file(tmp_path, tiny_dir, both) -> None:
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_dir, sharded)
    tensors = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(sharded / file))
    index = {"weight_map": {n: f for f, part in halves.items() for n in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert load_checkpoint(sharded).fingerprint == both[0].fingerprint

    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors.*missing"):
        load_checkpoint(sharded)


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    rng = np.random.default_rng(0)
    for heads, head_dim, cols in [(4, 16, 64), (3, 64, 10), (9, 8, ())]:
        w = rng.standard_normal((heads * head_dim, *((cols,) if cols else ()))).astype(np.float32)
        permuted = permute_qk_like_llama_cpp(w, heads)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(unpermute_qk(permuted, heads), w)


def test_gguf_tensor_names_map_to_hf() -> None:
    assert hf_tensor_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.0.attn_k.bias") == "model.layers.0.self_attn.k_proj.bias"
    assert hf_tensor_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("blk.0.ssm_conv1d.weight") is None


def test_qwen2_gguf_with_qkv_biases_loads_unpermuted(tmp_path) -> None:
    hf = load_checkpoint(write_tiny_hf(tmp_path / "qwen", model_type="qwen2"))
    gg = load_checkpoint(write_tiny_gguf(tmp_path / "qwen.gguf", model_type="qwen2"))
    assert gg.config.model_type == "qwen2" and gg.config.attention_bias
    assert hf.config == gg.config and hf.fingerprint == gg.fingerprint


def test_tied_embeddings_gguf_has_no_output_tensor(tmp_path) -> None:
    hf = load_checkpoint(write_tiny_hf(tmp_path / "tied", tie_word_embeddings=True))
    gg = load_checkpoint(write_tiny_gguf(tmp_path / "tied.gguf", tie_word_embeddings=True))
    assert hf.config.tie_word_embeddings and gg.config.tie_word_embeddings
    assert hf.model.lm_head is None and hf.fingerprint == gg.fingerprint


@pytest.mark.parametrize("content", [b"", b"not a gguf file at all", b"GGUF\x03\x00\x00\x00\xff\xff"])
def test_corrupt_gguf_is_a_checkpoint_error_naming_the_file(tmp_path, content) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.gguf: not a readable GGUF file"):
        load_checkpoint(bad)


def test_truncated_gguf_is_a_checkpoint_error(tmp_path, tiny_gguf) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.gguf"):
        load_checkpoint(cut)


def test_pickled_weights_and_unknown_files_are_refused(tmp_path) -> None:
    pickle_file = tmp_path / "pytorch_model.bin"
    pickle_file.write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="unsupported checkpoint file"):
        load_checkpoint(pickle_file)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="unknown bundled checkpoint"):
        load_checkpoint("bundled:gpt5")
    only_bin = tmp_path / "bin_dir"
    only_bin.mkdir()
    (only_bin / "config.json").write_text(json.dumps(tiny_hf_config()))
    (only_bin / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="never loads pickled"):
        load_checkpoint(only_bin)


def _copy(tiny_dir: Path, dest: Path) -> Path:
    shutil.copytree(tiny_dir, dest)
    return dest


def test_missing_tensor_is_named(tmp_path, tiny_dir) -> None:
    broken = _copy(tiny_dir, tmp_path / "missing")
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        load_checkpoint(broken)


def test_config_that_disagrees_with_weights_is_reported(tmp_path, tiny_dir) -> None:
    broken = _copy(tiny_dir, tmp_path / "mismatch")
    (broken / "config.json").write_text(json.dumps({**tiny_hf_config(), "intermediate_size": 96}))
    with pytest.raises(CheckpointError, match=r"down_proj\.weight' has shape \(64, 128\).*implies \(64, 96\)"):
        load_checkpoint(broken)
    (broken / "config.json").write_text(json.dumps({**tiny_hf_config(), "num_hidden_layers": 1}))
    with pytest.raises(CheckpointError, match="does not use"):
        load_checkpoint(broken)


def test_unsupported_architecture_and_missing_tokenizer(tmp_path, tiny_dir) -> None:
    other = _copy(tiny_dir, tmp_path / "other")
    (other / "config.json").write_text(json.dumps({**tiny_hf_config(), "model_type": "mamba"}))
    with pytest.raises(UnsupportedModelError, match="model_type 'mamba'"):
        load_checkpoint(other)
    no_tok = _copy(tiny_dir, tmp_path / "no_tok")
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.json not found"):
        load_checkpoint(no_tok)
    corrupt = _copy(tiny_dir, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_checkpoint(corrupt)


@pytest.mark.parametrize(
    "shard", ["../outside.safetensors", "/etc/passwd", "../../../etc/passwd", "sub/../../x.safetensors", "", 7]
)
def test_an_index_naming_files_outside_the_checkpoint_is_refused(tmp_path, tiny_dir, shard) -> None:
    sharded = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, sharded)
    tensors = load_file(str(sharded / "model.safetensors"))
    (tmp_path / "outside.safetensors").write_bytes((sharded / "model.safetensors").read_bytes())
    (sharded / "model.safetensors").unlink()
    index = {"weight_map": {n: shard for n in tensors}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a file name inside"):
        load_checkpoint(sharded)


def test_a_shard_symlinked_outside_the_checkpoint_is_refused(tmp_path, tiny_dir) -> None:
    sharded = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, sharded)
    (sharded / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (sharded / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_checkpoint(sharded)
