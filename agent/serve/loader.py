"""Loading a version into a decoding engine: verify its artifact, base + adapter, merge, start, warm.

With :mod:`agent.serve.export`, the only module of the server that imports ``model`` (and so jax). It
translates the model's exceptions into the server's (:mod:`agent.serve.errors`) and its events into
:mod:`agent.serve.engine`'s, so nothing above it depends on ``model``'s types.

LoRA and weight-mode QTHA adapters are input-independent: they are folded into the base weights once at load
(ΔW computed once), and the engine runs a plain model. Activation-mode QTHA keeps its per-token circuit (on the
JAX simulator, or qsim when ``quantum.backend = "qsim"``) and is served unmerged.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.artifacts import ArtifactCorruptError, ArtifactMissingError, DirectoryStore, Layout, SharedStore
from agent.artifacts.layout import Artifact, verify
from agent.serve.engine import Delta, Event, Finished, Handle, Sampling, Served
from agent.serve.errors import BadRequest, EngineUnavailable, PayloadTooLarge, QueueFull
from agent.serve.follower import BASE_VERSION
from agent.store import ModelVersion

__all__ = ["EngineLimits", "Fetch", "ModelLoader", "fetch_from"]

log = logging.getLogger(__name__)


# Copies a version this host lacks into its cache, verified: ``(version_id, sha256) -> Artifact``.
Fetch = Callable[[str, str], Artifact]


def fetch_from(shared: SharedStore | Layout, cache: Layout) -> Fetch:
    """A :data:`Fetch` from the shared artifact store (``[artifacts] root``, a directory or an object-store URL:
    :func:`agent.artifacts.open_shared`): a serving replica on a host of its own copies the champion into
    ``<state_dir>/versions`` once, every file checked against the manifest before the copy is renamed into place
    (another process of this host installing it first is fine). It only reads the shared copy and never judges it:
    a bad one is refused like any version that does not load (the leader judges it)."""
    store = DirectoryStore(shared) if isinstance(shared, Layout) else shared

    def fetch(version_id: str, sha256: str) -> Artifact:
        return store.fetch(version_id, cache, expected_sha256=sha256)

    return fetch


class EngineLimits:
    """Sizes of one engine: decoding slots, queue, and KV capacity per sequence (prompt + completion)."""

    def __init__(self, *, max_batch: int, max_queue: int, max_prompt_tokens: int, max_tokens: int) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_prompt_tokens = max_prompt_tokens
        self.max_tokens = max_tokens


class _EngineAdapter:
    """``model.DecodeEngine`` seen through :class:`agent.serve.engine.Engine`."""

    def __init__(self, engine: Any) -> None:
        import model

        self._engine = engine
        self._m = model

    @property
    def max_prompt_tokens(self) -> int:
        return int(self._engine.max_prompt_tokens)

    @property
    def queue_depth(self) -> int:
        return int(self._engine.queue_depth)

    def prompt_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        try:
            return list(self._engine.chat_prompt(messages))
        except self._m.ChatTemplateError as exc:
            raise BadRequest(f"the messages do not fit the model's chat template: {exc}", param="messages") from None

    def submit(
        self,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        *,
        n: int,
        request_id: str,
        on_event: Callable[[Event], None],
    ) -> Handle:
        m = self._m
        try:
            params = m.SamplingParams(
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                stop=sampling.stop,
                seed=sampling.seed,
            )
            return self._engine.submit(
                prompt_ids, params, n=n, request_id=request_id, on_event=lambda e: on_event(self._event(e))
            )
        except m.PromptTooLongError as exc:
            raise PayloadTooLarge(str(exc), param=exc.param or "messages") from None
        except m.InvalidRequestError as exc:
            raise BadRequest(str(exc), param=exc.param) from None
        except m.QueueFullError as exc:
            raise QueueFull(f"every decoding slot is busy and the queue is full ({exc}); retry shortly") from None
        except m.EngineClosedError:
            raise EngineUnavailable("this model version is shutting down; retry") from None

    def _event(self, event: Any) -> Event:
        m = self._m
        if isinstance(event, m.StreamEvent):
            return Delta(event.index, event.text, len(event.token_ids), event.finish_reason)
        if isinstance(event, m.GenerationResult):
            return Finished(
                texts=tuple(c.text for c in event.choices),
                finish_reasons=tuple(c.finish_reason for c in event.choices),
                prompt_tokens=event.usage.prompt_tokens,
                completion_tokens=event.usage.completion_tokens,
            )
        if isinstance(event, m.EngineClosedError):
            return EngineUnavailable("the model version serving this request was stopped; retry")
        if isinstance(event, m.RequestCancelledError):
            return EngineUnavailable("the request was cancelled")
        return event  # another exception: the app answers 503 with its message

    def drain(self, timeout: float | None = None) -> bool:
        return bool(self._engine.drain(timeout))

    def stop(self) -> None:
        self._engine.stop()


class ModelLoader:
    """Builds a warmed engine for a version (the :data:`agent.serve.follower.Loader` of ``qtha serve``).

    Args:
        model_source: the base checkpoint (``model.source``).
        layout: where version artifacts live.
        version_row: ``store.versions.get``; the artifact's digest must equal the row's sha256.
        limits: engine sizes.
        simulator: where QTHA circuits run (``quantum.backend``): ``qsim``, or the JAX simulator for anything
            else; serving never sends per-token circuits to a device (cost and latency per token).
        fetch: fetches a version missing from ``layout`` (a replica on a host of its own; :func:`fetch_from`).
    """

    def __init__(
        self,
        *,
        model_source: str,
        layout: Layout,
        version_row: Callable[[str], ModelVersion],
        limits: EngineLimits,
        simulator: str = "jax",
        fetch: Fetch | None = None,
    ) -> None:
        self._source = model_source
        self._fetch = fetch
        self._layout = layout
        self._row = version_row
        self._limits = limits
        self._simulator = simulator
        self._base: Any = None
        self._base_lock = threading.Lock()

    def base(self) -> Any:
        """The base checkpoint, loaded once (every version starts from a copy of it)."""
        from model import load_checkpoint

        with self._base_lock:
            if self._base is None:
                self._base = load_checkpoint(self._source)
            return self._base

    def adapted(self, version_id: str | None) -> tuple[Any, Any]:
        """``(model, tokenizer)`` of a version: a copy of the base with the version's adapter (not merged).

        Raises:
            NotFoundError: no such version row.
            ArtifactCorruptError, ArtifactMissingError: the artifact fails verification (nothing is loaded).
            model.AdapterArtifactError: the adapter does not fit the base.
        """
        if version_id is None:
            base = self.base()
            return base.model, base.tokenizer
        # The version is checked before the base loads: a bad one costs no model load.
        row = self._row(version_id)
        try:
            artifact = verify(self._layout, version_id)
        except ArtifactMissingError:
            if self._fetch is None:
                raise
            artifact = self._fetch(version_id, row.sha256)
            log.info("fetched version %s from the shared artifact store", version_id)
        if artifact.sha256 != row.sha256:
            raise ArtifactCorruptError(
                f"version {version_id!r}: artifact digest {artifact.sha256[:12]}… differs from the registered "
                f"{row.sha256[:12]}…"
            )
        from flax import nnx

        from model import load_adapter

        base = self.base()
        adapted = nnx.clone(base.model)  # the cached base stays adapter-free for the next version
        load_adapter(adapted, artifact.path, base_fingerprint=base.fingerprint, qnn_factory=self._qnn_factory())
        return adapted, base.tokenizer

    def _qnn_factory(self) -> Callable[..., Any] | None:
        if self._simulator != "qsim":
            return None  # the JAX statevector simulator, load_adapter's default
        import quantum

        return functools.partial(quantum.make_qnn, backend=quantum.QsimBackend())

    def serving_model(self, version_id: str | None) -> tuple[Any, Any]:
        """:meth:`adapted` with LoRA and weight-mode QTHA folded into the weights (activation mode as it is)."""
        from model import is_mergeable, merge_adapters

        adapted, tokenizer = self.adapted(version_id)
        return (merge_adapters(adapted) if is_mergeable(adapted) else adapted), tokenizer

    def __call__(self, version_id: str | None, epoch: int) -> Served:
        from model import DecodeEngine, EngineConfig

        started = time.monotonic()
        name = version_id or BASE_VERSION
        model, tokenizer = self.serving_model(version_id)
        context = int(self.base().config.max_position_embeddings)
        capacity = min(context, self._limits.max_prompt_tokens + self._limits.max_tokens)
        engine = DecodeEngine(
            model,
            tokenizer,
            EngineConfig(max_slots=self._limits.max_batch, capacity=capacity, max_queue=self._limits.max_queue),
            name=name,
        )
        engine.warmup()  # compiles every shape before the engine thread takes the cache over
        engine.start()
        log.info("loaded and warmed version %s in %.1f s", name, time.monotonic() - started)
        return Served(name, epoch, _EngineAdapter(engine))
