"""Tokenizer: a ``tokenizers`` BPE tokenizer plus the checkpoint's special tokens and chat template.

Built from an HF ``tokenizer.json`` + ``tokenizer_config.json``, or rebuilt from a GGUF file's vocabulary,
merges and token types (see :func:`tokenizer_from_vocab`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _BackendTokenizer

from .chat_template import render_chat

# Tokens that end an assistant turn in the chat formats we meet; generation stops at any that exist.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "</s>")

# GGUF token types (llama.cpp's llama_token_type).
GGUF_TOKEN_NORMAL, GGUF_TOKEN_CONTROL, GGUF_TOKEN_USER_DEFINED = 1, 3, 4

# Pre-tokenizer split patterns of the BPE families llama.cpp names in `tokenizer.ggml.pre`.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


class TokenizerError(ValueError):
    """A tokenizer file or vocabulary that cannot be used."""


class Tokenizer:
    """Text ↔ token ids, special tokens and the chat template of one checkpoint.

    Example:
        >>> tok.decode(tok.encode("hello"))
        'hello'
        >>> tok.apply_chat_template([{"role": "user", "content": "hi"}])   # ends with the assistant header
    """

    def __init__(
        self,
        backend: _BackendTokenizer,
        *,
        chat_template: str | None,
        eos_token: str | None,
        bos_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        """Wrap a ``tokenizers.Tokenizer``.

        Args:
            backend: the tokenizer, with its special tokens registered as special added tokens.
            chat_template: the Jinja chat template, or ``None`` (plain ChatML is used).
            eos_token: the end-of-sequence token's text; must be in the vocabulary.
            bos_token: the beginning-of-sequence token, if the model has one.
            pad_token: the padding token; defaults to ``eos_token``.

        Raises:
            TokenizerError: a named special token is not in the vocabulary.
        """
        # A tokenizer.json may carry padding/truncation settings; batch encoding would then pad or cut silently.
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.chat_template = chat_template
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.pad_token = pad_token or eos_token
        for name in (eos_token, bos_token, self.pad_token):
            if name is not None and backend.token_to_id(name) is None:
                raise TokenizerError(f"special token {name!r} is not in the tokenizer's vocabulary")
        self.eos_id: int | None = None if eos_token is None else backend.token_to_id(eos_token)
        self.bos_id: int | None = None if bos_token is None else backend.token_to_id(bos_token)
        self.pad_id: int = 0 if self.pad_token is None else backend.token_to_id(self.pad_token)
        stops = {self.eos_id} if self.eos_id is not None else set()
        stops |= {backend.token_to_id(t) for t in END_OF_TURN_TOKENS if backend.token_to_id(t) is not None}
        self.stop_ids: frozenset[int] = frozenset(stops)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text (``<|im_start|>``) become their single ids.

        No BOS is prepended: chat templates that want one write it themselves.
        """
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts (parallel in the Rust backend)."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped unless ``skip_special_tokens=False``."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary token, or ``None``."""
        return self.backend.token_to_id(token)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """Render a conversation with the checkpoint's chat template (see :func:`model.chat_template.render_chat`)."""
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def fingerprint_source(self) -> str:
        """The backend's JSON serialisation (stable for equal tokenizers)."""
        return self.backend.to_str()

    @classmethod
    def from_hf_dir(cls, directory: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` and (if present) ``tokenizer_config.json`` / ``chat_template.jinja``.

        Raises:
            TokenizerError: ``tokenizer.json`` missing or unreadable.
        """
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path} not found; qtha reads the fast-tokenizer file tokenizer.json")
        try:
            backend = _BackendTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust backend raises a bare Exception on malformed files
            raise TokenizerError(f"{path}: cannot parse the tokenizer ({exc})") from exc
        config: dict[str, Any] = {}
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise TokenizerError(f"{config_path}: invalid JSON ({exc})") from exc
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates; the default one is what generation uses
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        jinja_path = directory / "chat_template.jinja"
        if template is None and jinja_path.is_file():
            template = jinja_path.read_text(encoding="utf-8")
        eos = _token_text(config.get("eos_token"))
        if eos is None:
            eos = next((t for t in END_OF_TURN_TOKENS if backend.token_to_id(t) is not None), None)
        return cls(
            backend,
            chat_template=template,
            eos_token=eos,
            bos_token=_token_text(config.get("bos_token")),
            pad_token=_token_text(config.get("pad_token")),
        )


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens either as strings or as AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("default", "gpt2", "gpt-2"):
        return byte_level
    if pre == "smollm":
        # SmolLM's tokenizer splits digits one by one before GPT-2's byte-level split.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    split = {"qwen2": _QWEN2_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT}.get(pre)
    if split is None:
        raise TokenizerError(
            f"GGUF pre-tokenizer {pre!r} is not supported (known: default, gpt2, smollm, qwen2, llama-bpe); "
            "use the model's Hugging Face directory with its tokenizer.json instead"
        )
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def tokenizer_from_vocab(
    tokens: Sequence[str],
    merges: Sequence[str],
    token_types: Sequence[int] | None,
    *,
    pre: str = "gpt2",
    eos_id: int | None,
    bos_id: int | None = None,
    pad_id: int | None = None,
    chat_template: str | None = None,
) -> Tokenizer:
    """Rebuild a byte-level BPE tokenizer from a GGUF-style vocabulary.

    Control tokens (``token_types[i] == 3``, e.g. ``<|im_start|>``) are registered as *special* added tokens:
    otherwise chat prompts are split into byte pieces and the model never sees its real turn markers.

    Args:
        tokens: the vocabulary in id order (byte-level unicode strings).
        merges: BPE merges as ``"left right"`` strings, highest priority first.
        token_types: llama.cpp token types per id (1 normal, 3 control, 4 user-defined, 6 byte); ``None``: all
            normal.
        pre: llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``).
        eos_id, bos_id, pad_id: special token ids.
        chat_template: the Jinja chat template.

    Raises:
        TokenizerError: malformed merges, duplicate tokens, ids out of range, or an unknown pre-tokenizer.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise TokenizerError(f"the vocabulary has {len(tokens) - len(vocab)} duplicate token(s)")
    pairs = []
    for n, merge in enumerate(merges):
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right:
            raise TokenizerError(f"BPE merge #{n} is {merge!r}; expected 'left right'")
        pairs.append((left, right))
    backend = _BackendTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    types = list(token_types) if token_types is not None else [GGUF_TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise TokenizerError(f"{len(types)} token types for {len(tokens)} tokens")
    special = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types)
               if t == GGUF_TOKEN_CONTROL]
    user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types)
            if t == GGUF_TOKEN_USER_DEFINED]
    backend.add_special_tokens(special)
    backend.add_tokens(user)

    def name(i: int | None) -> str | None:
        if i is None:
            return None
        if not 0 <= i < len(tokens):
            raise TokenizerError(f"special token id {i} is outside the vocabulary of {len(tokens)}")
        return tokens[i]

    return Tokenizer(
        backend, chat_template=chat_template, eos_token=name(eos_id), bos_token=name(bos_id), pad_token=name(pad_id)
    )
