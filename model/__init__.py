"""The language model, its checkpoints, LoRA/QTHA adapters, training and evaluation. May import quantum/."""

from .chat_template import ChatTemplateError, render_chat
from .chatterbot import CorpusError, CorpusReport, DialoguePair, load_chatterbot, split_chatterbot, to_jsonl
from .checkpoint import LoadedModel, bundled_path, load_checkpoint
from .config import LMConfig, UnsupportedModelError
from .data import (
    ChatExample,
    DataReport,
    Example,
    RowError,
    TextExample,
    TokenizedData,
    encode_example,
    iterate_batches,
    parse_jsonl,
    read_jsonl,
    tokenize_examples,
)
from .generate import generate, generate_ids
from .lm import CausalLM, KVCache, causal_lm_loss, token_nll
from .math_problems import MathProblem, check_answer, extract_answer, generate_math_problems
from .tokenizer import Tokenizer, TokenizerError, tokenizer_from_vocab
from .weights import CheckpointError, model_from_hf_tensors, weights_fingerprint

__all__ = [
    "CausalLM",
    "ChatExample",
    "ChatTemplateError",
    "CheckpointError",
    "CorpusError",
    "CorpusReport",
    "DataReport",
    "DialoguePair",
    "Example",
    "KVCache",
    "LMConfig",
    "LoadedModel",
    "MathProblem",
    "RowError",
    "TextExample",
    "TokenizedData",
    "Tokenizer",
    "TokenizerError",
    "UnsupportedModelError",
    "bundled_path",
    "causal_lm_loss",
    "check_answer",
    "encode_example",
    "extract_answer",
    "generate",
    "generate_ids",
    "generate_math_problems",
    "iterate_batches",
    "load_chatterbot",
    "load_checkpoint",
    "model_from_hf_tensors",
    "parse_jsonl",
    "read_jsonl",
    "render_chat",
    "split_chatterbot",
    "to_jsonl",
    "token_nll",
    "tokenize_examples",
    "tokenizer_from_vocab",
    "weights_fingerprint",
]
