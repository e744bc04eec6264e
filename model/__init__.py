"""The language model, its checkpoints, LoRA/QTHA adapters, training and evaluation. May import quantum/."""

from .adapters import (
    AdapterConfig,
    AdapterError,
    AdapterParam,
    LoraConfig,
    ParamCounts,
    QthaAdapterConfig,
    adapted_modules,
    adapter_config,
    adapter_param_counts,
    count_adapter_params,
    inject_adapters,
    resolve_bond_dim,
    target_shapes,
)
from .artifacts import (
    AdapterArtifactError,
    AdapterFingerprintError,
    load_adapter,
    read_adapter_manifest,
    save_adapter,
)
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
from .evaluate import EvalExample, EvalResult, ExampleResult, SliceSummary, evaluate
from .export import ExportError, export_checkpoint
from .generate import generate, generate_ids
from .lm import CausalLM, KVCache, causal_lm_loss, token_nll
from .math_problems import MathProblem, check_answer, extract_answer, generate_math_problems
from .merge import UnmergeableAdapterError, is_mergeable, merge_adapters
from .tokenizer import Tokenizer, TokenizerError, tokenizer_from_vocab
from .train import Batch, TrainConfig, TrainProgress, TrainResult, batch_schedule, train
from .train_state import TrainCheckpointError
from .weights import CheckpointError, model_from_hf_tensors, weights_fingerprint

__all__ = [
    "ExportError",
    "export_checkpoint",
    "adapted_modules",
    "merge_adapters",
    "is_mergeable",
    "UnmergeableAdapterError",
    "AdapterArtifactError",
    "AdapterConfig",
    "AdapterError",
    "AdapterFingerprintError",
    "AdapterParam",
    "Batch",
    "CausalLM",
    "ChatExample",
    "ChatTemplateError",
    "CheckpointError",
    "CorpusError",
    "CorpusReport",
    "DataReport",
    "DialoguePair",
    "EvalExample",
    "EvalResult",
    "Example",
    "ExampleResult",
    "KVCache",
    "LMConfig",
    "LoadedModel",
    "LoraConfig",
    "MathProblem",
    "ParamCounts",
    "QthaAdapterConfig",
    "RowError",
    "SliceSummary",
    "TextExample",
    "TokenizedData",
    "Tokenizer",
    "TokenizerError",
    "TrainCheckpointError",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "UnsupportedModelError",
    "adapter_config",
    "adapter_param_counts",
    "batch_schedule",
    "bundled_path",
    "causal_lm_loss",
    "check_answer",
    "count_adapter_params",
    "encode_example",
    "evaluate",
    "extract_answer",
    "generate",
    "generate_ids",
    "generate_math_problems",
    "inject_adapters",
    "iterate_batches",
    "load_adapter",
    "load_chatterbot",
    "load_checkpoint",
    "model_from_hf_tensors",
    "parse_jsonl",
    "read_adapter_manifest",
    "read_jsonl",
    "render_chat",
    "resolve_bond_dim",
    "save_adapter",
    "split_chatterbot",
    "target_shapes",
    "to_jsonl",
    "token_nll",
    "tokenize_examples",
    "tokenizer_from_vocab",
    "train",
    "weights_fingerprint",
]
