"""Build a :class:`CausalLM` from Hugging Face-named tensors, and fingerprint a model's base weights."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import LMConfig
from .lm import CausalLM

# Tensors some checkpoints carry that the model recomputes rather than stores.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, or does not match its config."""


def hf_name(path: tuple) -> tuple[str, bool]:
    """The Hugging Face tensor name of one of our parameters, and whether its layout is transposed.

    ``("layers", 3, "self_attn", "q_proj", "kernel")`` → ``("model.layers.3.self_attn.q_proj.weight", True)``:
    ``nnx.Linear`` keeps ``kernel [in, out]`` where PyTorch keeps ``weight [out, in]``.
    """
    *modules, leaf = [str(p) for p in path]
    suffix = "bias" if leaf == "bias" else "weight"
    if modules == ["lm_head"]:
        return f"lm_head.{suffix}", leaf == "kernel"
    return "model." + ".".join([*modules, suffix]), leaf == "kernel"


def model_from_hf_tensors(cfg: LMConfig, tensors: Mapping[str, np.ndarray], *, source: str) -> CausalLM:
    """A model holding ``tensors`` (HF names and layouts), converted to float32.

    The model is built abstractly first (``nnx.eval_shape``) so no random initialisation is paid for.

    Args:
        cfg: the architecture.
        tensors: e.g. ``{"model.embed_tokens.weight": [V, D], ...}``.
        source: the file or directory, named in errors.

    Raises:
        CheckpointError: a missing tensor, a shape that disagrees with the config, or tensors the architecture
            does not use (a sign the config and the weights do not belong together).
    """
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    used: set[str] = set()
    flat = []
    for path, var in nnx.to_flat_state(abstract_state):
        name, transposed = hf_name(path)
        if name not in tensors:
            raise CheckpointError(f"{source}: tensor {name!r} is missing (needed for {cfg.model_type} with this config)")
        array = np.asarray(tensors[name])
        array = array.T if transposed else array
        expected = tuple(var.get_value().shape)
        if array.shape != expected:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {array.shape if not transposed else array.T.shape}, but the "
                f"config implies {expected if not transposed else expected[::-1]}; the config and weights disagree"
            )
        used.add(name)
        flat.append((path, var.replace(jnp.asarray(array, dtype=jnp.float32))))
    unused = sorted(
        n for n in tensors
        if n not in used and not n.endswith(_IGNORED_SUFFIXES) and not (cfg.tie_word_embeddings and n == "lm_head.weight")
    )
    if unused:
        raise CheckpointError(
            f"{source}: {len(unused)} tensor(s) the architecture does not use, e.g. {unused[:3]}; "
            "check that config.json belongs to these weights"
        )
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def weights_fingerprint(model: nnx.Module) -> str:
    """A sha256 hex digest over every parameter's path, shape and float32 value.

    Equal for the same weights however they were loaded (HF directory or float32 GGUF). Take it on the base model
    before adapters are injected: adapters add parameters and would change it.
    """
    digest = hashlib.sha256()
    for path, var in sorted(nnx.to_flat_state(nnx.state(model, nnx.Param)), key=lambda kv: tuple(map(str, kv[0]))):
        value = np.ascontiguousarray(np.asarray(var.get_value(), dtype=np.float32))
        digest.update("/".join(map(str, path)).encode())
        digest.update(repr(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
