"""The language model, its checkpoints, LoRA/QTHA adapters, training and evaluation. May import quantum/."""

from .chat_template import ChatTemplateError, render_chat
from .checkpoint import LoadedModel, bundled_path, load_checkpoint
from .config import LMConfig, UnsupportedModelError
from .generate import generate, generate_ids
from .lm import CausalLM, KVCache, causal_lm_loss, token_nll
from .tokenizer import Tokenizer, TokenizerError, tokenizer_from_vocab
from .weights import CheckpointError, model_from_hf_tensors, weights_fingerprint

__all__ = [
    "CausalLM",
    "ChatTemplateError",
    "CheckpointError",
    "KVCache",
    "LMConfig",
    "LoadedModel",
    "Tokenizer",
    "TokenizerError",
    "UnsupportedModelError",
    "bundled_path",
    "causal_lm_loss",
    "generate",
    "generate_ids",
    "load_checkpoint",
    "model_from_hf_tensors",
    "render_chat",
    "token_nll",
    "tokenizer_from_vocab",
    "weights_fingerprint",
]
