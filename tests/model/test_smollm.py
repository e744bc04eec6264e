"""Smoke test on the real bundled SmolLM2-135M-Instruct (GGUF, Q4_1): loading, tokenizer, greedy answers."""

from __future__ import annotations

import numpy as np
import pytest

from model import generate_ids, load_checkpoint
from model.checkpoint import bundled_path
from tests.model.numpy_reference import reference_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_checkpoint("bundled:smollm2")


def _raw_gguf_tensors() -> dict[str, np.ndarray]:
    # Read straight from the file with gguf, named here independently of model.gguf_loader, Q/K left permuted.
    import gguf

    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    out = {}
    for t in gguf.GGUFReader(str(bundled_path("bundled:smollm2"))).tensors:
        array = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if t.name == "token_embd.weight":
            out["model.embed_tokens.weight"] = array
        elif t.name == "output_norm.weight":
            out["model.norm.weight"] = array
        else:
            _, layer, part, _ = t.name.split(".")
            out[f"model.layers.{layer}.{names[part]}.weight"] = array
    return out


def test_smollm_loads_with_its_architecture_and_chat_tokens(smollm) -> None:
    cfg = smollm.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert (cfg.vocab_size, cfg.tie_word_embeddings, cfg.rope_theta) == (49152, True, 100000.0)
    tok = smollm.tokenizer
    assert tok.encode("<|im_start|>user") [0] == tok.token_to_id("<|im_start|>") == 1
    assert tok.eos_id == tok.token_to_id("<|im_end|>") == 2


QUESTIONS = ["What is 12 plus 7?", "What is the capital of France?", "What is 10 plus 9?", "What is 2 plus 3?"]


@pytest.fixture(scope="module")
def greedy(smollm):
    """Prompt ids and greedy continuations for QUESTIONS, generated in one batch (one compile)."""
    tok = smollm.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]
    return prompts, generate_ids(smollm.model, prompts, max_new_tokens=24, stop_ids=sorted(tok.stop_ids),
                                 pad_id=tok.pad_id)


def test_smollm_greedy_answers(smollm, greedy) -> None:
    answers = [smollm.tokenizer.decode(ids) for ids in greedy[1]]
    # llama.cpp itself (llama-cpp-python 0.3, greedy, same file) answers "12 + 7 = 9\n\nThis is a classic example
    # of arithmetic ..." from the same prompt ids: this Q4_1 checkpoint gets this sum wrong, so we pin llama.cpp's
    # tokens instead of a "19" the file does not produce.
    assert answers[0].startswith("12 + 7 = 9\n\nThis is a classic example of")
    assert "Paris" in answers[1]
    assert "19" in answers[2]
    assert "5" in answers[3]


def test_smollm_greedy_tokens_match_a_llama_cpp_style_numpy_reference(smollm, greedy) -> None:
    # The acceptance prompt. Our float32 model and an independent numpy forward over the raw GGUF tensors (Q/K
    # still permuted, pairs rotated as llama.cpp does) must pick the same greedy tokens. Teacher forcing: one
    # reference pass over prompt + our tokens; greedy agrees iff every argmax matches.
    prompt, ours = greedy[0][0], greedy[1][0][:8]
    hf_config = {**smollm.config.to_hf_config(), "rms_norm_eps": smollm.config.rms_norm_eps}
    logits = reference_logits(hf_config, _raw_gguf_tensors(), prompt + ours[:-1], dtype=np.float32,
                              interleaved_rope=True, last=len(ours))
    assert [int(i) for i in logits.argmax(axis=-1)] == ours


# Token ids llama.cpp (llama-cpp-python 0.3, `tokenize(..., special=True)`) gives for the chat-templated acceptance
# prompt of this GGUF file: our tokenizer rebuilt from the GGUF metadata must agree exactly.
LLAMA_CPP_PROMPT_IDS = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2,
    198, 1, 4093, 198, 1780, 314, 216, 33, 34, 8055, 216, 39, 47, 2, 198, 1, 520, 9531, 198,
]


def test_smollm_prompt_ids_equal_llama_cpp(greedy) -> None:
    assert greedy[0][0] == LLAMA_CPP_PROMPT_IDS
