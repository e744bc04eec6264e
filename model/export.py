"""Export a model (adapters merged first) as a Hugging Face directory or a GGUF file that other tools load.

Both formats hold float32 weights, so :func:`model.load_checkpoint` reads them back to the same logits. GGUF
follows llama.cpp's conventions: Llama Q/K rows permuted for its adjacent-pair rotary layout (the inverse of
:func:`model.gguf_loader.unpermute_qk`), the tokenizer as ``tokenizer.ggml.*`` metadata, the chat template beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flax import nnx

from .adapters import adapted_modules
from .config import LMConfig
from .gguf_loader import _BLOCK_NAMES, _GLOBAL_NAMES, _PERMUTED_QK_ARCHS
from .merge import merge_adapters
from .tokenizer import _LLAMA3_SPLIT, _QWEN2_SPLIT, Tokenizer
from .weights import hf_name

__all__ = ["ExportError", "export_checkpoint", "gguf_pre_tokenizer", "hf_tensors", "permute_qk"]

ExportFormat = Literal["safetensors", "gguf"]

# GGUF token types (llama.cpp's llama_token_type): normal, control, user-defined, unused.
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


class ExportError(ValueError):
    """A model or tokenizer that cannot be written in the requested format, or an output path already taken."""


def hf_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's weights under Hugging Face names and layouts (``weight [out, in]``), float32, contiguous."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, transposed = hf_name(path)
        array = np.asarray(var.get_value(), dtype=np.float32)
        out[name] = np.ascontiguousarray(array.T if transposed else array)
    return out


def permute_qk(tensor: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's half-split Q/K rows → llama.cpp's interleaved pairs per head (the inverse of ``unpermute_qk``)."""
    rest = tensor.shape[1:]
    head_dim = tensor.shape[0] // n_heads
    return tensor.reshape(n_heads, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(tensor.shape)


def export_checkpoint(
    model: nnx.Module, tokenizer: Tokenizer, out: str | Path, *, format: ExportFormat = "safetensors"
) -> Path:
    """Write ``model`` (its LoRA / weight-mode QTHA adapters folded into the base weights) for other tools.

    ``"safetensors"``: an HF directory ``out`` with ``config.json``, ``model.safetensors``, ``tokenizer.json`` and
    ``tokenizer_config.json``. ``"gguf"``: one float32 GGUF file ``out`` (``.gguf`` appended if missing) that
    llama.cpp loads. Either is written under a temporary name and renamed, so ``out`` never holds half an export.

    Args:
        model: a :class:`model.CausalLM`, with or without adapters.
        tokenizer: its tokenizer (vocabulary, special tokens, chat template).
        out: the directory (safetensors) or file (gguf) to create; it must not exist.
        format: ``"safetensors"`` or ``"gguf"``.

    Returns:
        The path written.

    Raises:
        UnmergeableAdapterError: an activation-mode QTHA adapter (it has no weight delta to fold in).
        ExportError: an unknown format, ``out`` already exists, or a model or tokenizer GGUF cannot describe.

    Example:
        >>> export_checkpoint(adapted_lm, tok, "exports/v7.gguf", format="gguf")
        >>> load_checkpoint("exports/v7.gguf")      # same logits within 1e-4
    """
    if format not in ("safetensors", "gguf"):
        raise ExportError(f"export format {format!r} is unknown; use 'safetensors' or 'gguf'")
    out = Path(out)
    if format == "gguf" and out.suffix.lower() != ".gguf":
        out = out.with_name(out.name + ".gguf")
    if out.exists():
        raise ExportError(f"{out} already exists; choose a new path or remove it first")
    plain = merge_adapters(model) if adapted_modules(model) else model
    cfg: LMConfig = plain.config
    tensors = hf_tensors(plain)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "safetensors":
        _write_hf_dir(out, cfg, tensors, tokenizer)
    else:
        _write_gguf(out, cfg, tensors, tokenizer)
    return out


def _write_hf_dir(out: Path, cfg: LMConfig, tensors: dict[str, np.ndarray], tokenizer: Tokenizer) -> None:
    from safetensors.numpy import save_file

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_config(), indent=2), encoding="utf-8")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "tokenizer.json").write_text(tokenizer.backend.to_str(), encoding="utf-8")
        tokenizer_config = {
            "eos_token": tokenizer.eos_token,
            "bos_token": tokenizer.bos_token,
            "pad_token": tokenizer.pad_token,
            "chat_template": tokenizer.chat_template,
            "model_max_length": cfg.max_position_embeddings,
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
        for f in tmp.iterdir():
            _fsync(f)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def gguf_pre_tokenizer(tokenizer: Tokenizer) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for the tokenizer's pre-tokenizer.

    Raises:
        ExportError: a pre-tokenizer llama.cpp (and our GGUF reader) has no name for.
    """
    pre = json.loads(tokenizer.backend.to_str()).get("pre_tokenizer") or {}

    def is_byte_level(p: dict[str, Any]) -> bool:
        return p.get("type") == "ByteLevel"

    if is_byte_level(pre):
        return "gpt-2"  # llama.cpp's spelling; "gpt2" is refused as an unknown pre-tokenizer
    parts = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else []
    if len(parts) == 2 and is_byte_level(parts[1]):
        first = parts[0]
        if first.get("type") == "Digits" and first.get("individual_digits"):
            return "smollm"
        pattern = (first.get("pattern") or {}).get("Regex") if first.get("type") == "Split" else None
        if pattern == _QWEN2_SPLIT:
            return "qwen2"
        if pattern == _LLAMA3_SPLIT:
            return "llama-bpe"
    raise ExportError(
        f"the tokenizer's pre-tokenizer {json.dumps(pre)[:200]} has no llama.cpp name (known: gpt-2, smollm, qwen2, "
        "llama-bpe); export as safetensors instead"
    )


def _gguf_vocab(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[str], list[int]]:
    spec = json.loads(tokenizer.backend.to_str())
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise ExportError(f"the tokenizer has ids beyond the model's {vocab_size} embeddings")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # embedding rows no token uses (padded vocabularies)
    types = [_UNUSED] * vocab_size
    for token, i in vocab.items():
        tokens[i], types[i] = token, _NORMAL
    for added in spec.get("added_tokens", []):
        types[added["id"]] = _CONTROL if added.get("special") else _USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, merges, types


def _write_gguf(out: Path, cfg: LMConfig, tensors: dict[str, np.ndarray], tokenizer: Tokenizer) -> None:
    import gguf  # imported here: only GGUF export needs it

    if cfg.rope_scaling_dict() is not None and cfg.rope_scaling_dict()["rope_type"] != "linear":
        raise ExportError(
            f"RoPE scaling {cfg.rope_scaling_dict()['rope_type']!r} needs llama.cpp's rope_freqs tensor, which qtha "
            "does not write; export as safetensors instead"
        )
    arch = "qwen2" if cfg.model_type == "qwen2" else "llama"  # llama.cpp runs Mistral as its llama architecture
    tokens, merges, types = _gguf_vocab(tokenizer, cfg.vocab_size)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name("qtha-export")
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_theta)
        scaling = cfg.rope_scaling_dict()
        if scaling is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(gguf_pre_tokenizer(tokenizer))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        if tokenizer.eos_id is not None:
            writer.add_eos_token_id(tokenizer.eos_id)
        if tokenizer.bos_id is not None:
            writer.add_bos_token_id(tokenizer.bos_id)
        writer.add_pad_token_id(tokenizer.pad_id)
        writer.add_add_bos_token(False)  # qtha never prepends BOS; chat templates that want one write it
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)
        for name, array in tensors.items():
            if arch in _PERMUTED_QK_ARCHS and ".self_attn.q_proj." in name:
                array = permute_qk(array, cfg.num_attention_heads)
            elif arch in _PERMUTED_QK_ARCHS and ".self_attn.k_proj." in name:
                array = permute_qk(array, cfg.num_key_value_heads)
            writer.add_tensor(_gguf_name(name), np.ascontiguousarray(array))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        _fsync(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_GGUF_GLOBAL = {hf: gg for gg, hf in _GLOBAL_NAMES.items()}
_GGUF_BLOCK = {hf: gg for gg, hf in _BLOCK_NAMES.items()}


def _gguf_name(hf: str) -> str:
    if hf in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[hf]
    _, _, layer, rest = hf.split(".", 3)  # model.layers.<i>.<module>.<weight|bias>
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_BLOCK[module]}.{kind}"
