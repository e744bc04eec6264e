"""Chat templates (rendered without jinja2) and the tokenizer rebuilt from a GGUF-style vocabulary."""

from __future__ import annotations

import json

import pytest

from model import ChatTemplateError, Tokenizer, TokenizerError, render_chat, tokenizer_from_vocab
from tests.fixtures.tiny_model import CHAT_TEMPLATE, tiny_tokenizer

SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt "
    "%}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
USER = [{"role": "user", "content": "What is 12 plus 7?"}]


def test_chatml_template_with_default_system_prompt() -> None:
    assert render_chat(SMOLLM_TEMPLATE, USER, add_generation_prompt=True, use_jinja=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n<|im_start|>assistant\n"
    )
    # The fixture writes its template with escaped newlines, as JSON-stored templates are.
    assert render_chat(CHAT_TEMPLATE, USER, add_generation_prompt=False, use_jinja=False) == (
        "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n"
    )


def test_chatml_explicit_system_replaces_default_and_plain_chatml_has_none() -> None:
    messages = [{"role": "system", "content": "Be brief."}, *USER, {"role": "assistant", "content": "19"}]
    assert render_chat(SMOLLM_TEMPLATE, messages, add_generation_prompt=False, use_jinja=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n"
        "<|im_start|>assistant\n19<|im_end|>\n"
    )
    qwen_like = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}"
    assert render_chat(qwen_like, USER, add_generation_prompt=True, use_jinja=False) == (
        "<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_default_system_that_is_not_a_literal_needs_jinja() -> None:
    dynamic = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] }}"
               "{%- else %}{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{%- endif %}")
    with pytest.raises(ChatTemplateError, match="default system message.*pip install jinja2"):
        render_chat(dynamic, USER, add_generation_prompt=True, use_jinja=False)


def test_llama3_template_and_unknown_templates() -> None:
    llama3 = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>..."
    assert render_chat(llama3, USER, add_generation_prompt=True, bos_token="<|begin_of_text|>", use_jinja=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 12 plus 7?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    with pytest.raises(ChatTemplateError, match="pip install jinja2"):
        render_chat("[INST] {{ messages[0]['content'] }} [/INST]", USER, add_generation_prompt=True, use_jinja=False)
    with pytest.raises(ChatTemplateError, match="message 0"):
        render_chat(None, [{"role": "user"}], add_generation_prompt=True, use_jinja=False)
    with pytest.raises(ChatTemplateError, match="no messages"):
        render_chat(None, [], add_generation_prompt=True, use_jinja=False)


def _vocab():
    tok = tiny_tokenizer()
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.to_str())["model"]["merges"]]
    return tok, tokens, merges


def test_rebuilt_tokenizer_matches_the_original_and_keeps_control_tokens_whole() -> None:
    original, tokens, merges = _vocab()
    types = [3 if t.startswith("<|") else 1 for t in tokens]
    rebuilt = tokenizer_from_vocab(tokens, merges, types, eos_id=2, pad_id=2, chat_template=CHAT_TEMPLATE)
    text = "<|im_start|>user\nTom has 5 apples and buys 3 more. Ünïcode ✓<|im_end|>"
    assert rebuilt.encode(text) == original.encode(text, add_special_tokens=False).ids
    assert rebuilt.encode("<|im_start|>")== [1]
    assert rebuilt.decode(rebuilt.encode("Tom has 5 apples. Ünïcode ✓")) == "Tom has 5 apples. Ünïcode ✓"
    assert rebuilt.eos_id == 2 and 2 in rebuilt.stop_ids

    # Without the CONTROL type the marker is not special: it is split into many byte-level pieces.
    plain = tokenizer_from_vocab(tokens, merges, None, eos_id=2)
    assert len(plain.encode("<|im_start|>")) > 1


def test_rebuilding_rejects_malformed_vocabularies() -> None:
    _, tokens, merges = _vocab()
    with pytest.raises(TokenizerError, match="merge #1"):
        tokenizer_from_vocab(tokens, [merges[0], "nospace"], None, eos_id=2)
    with pytest.raises(TokenizerError, match="pre-tokenizer 'mystery'"):
        tokenizer_from_vocab(tokens, merges, None, eos_id=2, pre="mystery")
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer_from_vocab(tokens, merges, None, eos_id=10_000)
    with pytest.raises(TokenizerError, match="duplicate"):
        tokenizer_from_vocab([*tokens, tokens[5]], merges, None, eos_id=2)


def test_tokenizer_from_hf_dir_reads_special_tokens_and_template(tmp_path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "<|im_end|>"}, "chat_template": [{"name": "default", "template": CHAT_TEMPLATE}]}))
    backend = tiny_tokenizer()
    backend.enable_padding(pad_id=2, pad_token="<|im_end|>", length=64)
    backend.enable_truncation(max_length=3)
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_hf_dir(tmp_path)
    assert [len(ids) for ids in tok.encode_batch(["hi", "a longer sentence here"])] == [
        len(tok.encode("hi")), len(tok.encode("a longer sentence here"))] and len(tok.encode("hi")) < 64
    assert len(tok.encode("a longer sentence here")) > 3  # the file's padding and truncation are switched off
    assert tok.eos_id == 2 and tok.pad_id == 2 and tok.chat_template == CHAT_TEMPLATE
    assert tok.apply_chat_template(USER).endswith("<|im_start|>assistant\n")
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="cannot parse"):
        Tokenizer.from_hf_dir(tmp_path)
