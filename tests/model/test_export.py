"""Exporting merged models as HF directories and GGUF files: read back to the same logits, GGUF laid out as
llama.cpp's converter lays it out, activation mode refused."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from model import ExportError, UnmergeableAdapterError, export_checkpoint, generate_ids, load_checkpoint
from model.adapters import LoraConfig, QthaAdapterConfig, inject_adapters
from tests.fixtures.tiny_model import write_tiny_gguf, write_tiny_hf
from tests.model.adapter_helpers import randomise_adapters, shared_qnn

PROMPT = [{"role": "user", "content": "Tom has 5 apples. What is 12 plus 7?"}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_hf(tmp_path_factory.mktemp("export") / "tiny")


@nnx.jit
def _forward(lm, tokens):
    return lm(tokens)


def _logits(loaded):
    tok = loaded.tokenizer
    return np.asarray(_forward(loaded.model, np.asarray([tok.encode(tok.apply_chat_template(PROMPT))])))


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_an_exported_adapted_model_loads_back_with_the_same_logits(tiny_dir, tmp_path_factory, fmt) -> None:
    loaded = load_checkpoint(tiny_dir)
    inject_adapters(loaded.model, LoraConfig(rank=4, targets=("q_proj", "k_proj", "v_proj", "down_proj")),
                    rngs=nnx.Rngs(3))
    randomise_adapters(loaded.model, scale=0.1)
    expected = _logits(loaded)
    out = export_checkpoint(loaded.model, loaded.tokenizer, tmp_path_factory.mktemp("out") / "merged", format=fmt)
    back = load_checkpoint(out)
    assert back.config == loaded.config
    np.testing.assert_allclose(_logits(back), expected, atol=1e-4, rtol=0)
    text = loaded.tokenizer.apply_chat_template(PROMPT)
    assert back.tokenizer.encode(text) == loaded.tokenizer.encode(text)
    assert back.tokenizer.stop_ids == loaded.tokenizer.stop_ids
    assert back.tokenizer.apply_chat_template(PROMPT) == text


def test_a_weight_mode_qtha_export_loads_back_with_the_same_logits(tiny_dir, tmp_path_factory) -> None:
    loaded = load_checkpoint(tiny_dir)
    inject_adapters(loaded.model, QthaAdapterConfig(n_qubits=4, n_layers=2), rngs=nnx.Rngs(3), qnn_factory=shared_qnn)
    randomise_adapters(loaded.model, scale=0.1)
    expected = _logits(loaded)
    out = export_checkpoint(loaded.model, loaded.tokenizer, tmp_path_factory.mktemp("out") / "q.gguf", format="gguf")
    np.testing.assert_allclose(_logits(load_checkpoint(out)), expected, atol=1e-4, rtol=0)


def test_gguf_export_of_the_base_matches_an_independent_llama_cpp_style_writer(tiny_dir, tmp_path_factory) -> None:
    import gguf

    tmp = tmp_path_factory.mktemp("ref")
    ours = export_checkpoint(load_checkpoint(tiny_dir).model, load_checkpoint(tiny_dir).tokenizer, tmp / "ours.gguf",
                             format="gguf")
    ref = write_tiny_gguf(tmp / "ref.gguf")  # the fixture permutes Q/K with its own copy of llama.cpp's code
    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(ref))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(ta) == set(tb)
    for name in tb:
        assert ta[name].tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(ta[name].data), np.asarray(tb[name].data), err_msg=name)
    assert a.fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # llama.cpp refuses the fixture's "gpt2"
    for key in ("general.architecture", "llama.block_count", "llama.attention.head_count_kv",
                "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        assert a.fields[key].contents() == b.fields[key].contents(), key


def test_activation_mode_and_taken_paths_are_refused(tiny_dir, tmp_path_factory) -> None:
    loaded = load_checkpoint(tiny_dir)
    out = tmp_path_factory.mktemp("refuse")
    with pytest.raises(ExportError, match="already exists"):
        export_checkpoint(loaded.model, loaded.tokenizer, out)
    with pytest.raises(ExportError, match="format 'onnx'"):
        export_checkpoint(loaded.model, loaded.tokenizer, out / "x", format="onnx")
    inject_adapters(loaded.model, QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="activation"),
                    rngs=nnx.Rngs(0), qnn_factory=shared_qnn)
    with pytest.raises(UnmergeableAdapterError, match="activation-mode"):
        export_checkpoint(loaded.model, loaded.tokenizer, out / "act.gguf", format="gguf")
    assert list(out.iterdir()) == []  # nothing half-written left behind


def test_llama_cpp_loads_the_exported_gguf_and_decodes_our_greedy_tokens(tiny_dir, tmp_path_factory) -> None:
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (an sdist that compiles; `pip install .[llama]`)")
    loaded = load_checkpoint(tiny_dir)
    inject_adapters(loaded.model, LoraConfig(rank=4), rngs=nnx.Rngs(5))
    randomise_adapters(loaded.model, scale=0.1)
    out = export_checkpoint(loaded.model, loaded.tokenizer, tmp_path_factory.mktemp("llama") / "m.gguf",
                            format="gguf")
    tok = loaded.tokenizer
    text = tok.apply_chat_template(PROMPT)
    ids = tok.encode(text)
    ours = generate_ids(loaded.model, [ids], max_new_tokens=8, stop_ids=[], pad_id=tok.pad_id)[0]
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=1, verbose=False)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # its tokenizer agrees with ours
        theirs = []
        for token in llm.generate(ids, temp=0.0, top_k=1):
            theirs.append(token)
            if len(theirs) == len(ours):
                break
    finally:
        llm.close()
    assert theirs == ours
