"""A continuous-batching decoding engine: requests from any thread share compiled forward passes over a slot KV
cache; new sequences join between decode chunks, finished ones leave.

One thread owns the model and the cache. ``submit`` (thread-safe) queues a request and returns a
:class:`RequestHandle`; the thread admits queued requests into free slots (one prefill per prompt, padded to a
length bucket; a request's other choices copy its cache rows), then decodes ``chunk_tokens`` tokens for all slots in
one compiled call, and hands each request its new tokens as :class:`StreamEvent`s and finally a
:class:`GenerationResult`.
"""

from __future__ import annotations

import queue
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import jax
import numpy as np
from flax import nnx

from ..tokenizer import Tokenizer
from .kernels import copy_slot, decode_chunk, empty_cache, prefill, sample_tokens, split_model
from .records import (
    Choice,
    EngineClosedError,
    EngineConfig,
    EngineError,
    GenerationResult,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    RequestCancelledError,
    SamplingParams,
    StreamEvent,
    Usage,
)
from .text import TextStream

__all__ = ["DecodeEngine", "RequestHandle"]

Listener = Callable[[StreamEvent | GenerationResult | BaseException], None]
_END = object()  # closes a handle's event queue
MAX_CHOICES = 16


class RequestHandle:
    """A submitted request: iterate it for its stream events, or wait for its result; cancel it any time.

    Thread-safe. Iteration and :meth:`result` block; an asyncio caller passes ``on_event`` to ``submit`` instead.
    """

    def __init__(self, request_id: str, listener: Listener | None) -> None:
        self.request_id = request_id
        self._listener = listener
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[StreamEvent]:
        """Stream events until every choice has finished; raises the request's error if it failed."""
        while True:
            item = self._events.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The final result (blocks).

        Raises:
            TimeoutError: not finished within ``timeout`` seconds (the request keeps running; cancel it if unwanted).
            RequestCancelledError, EngineClosedError, EngineError: how it ended instead.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stops the request at the engine's next step and frees its slots; :meth:`result` then raises
        :class:`RequestCancelledError`. No effect once finished."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # Engine side.
    def _emit(self, event: StreamEvent) -> None:
        self._events.put(event)
        self._notify(event)

    def _notify(self, item: StreamEvent | GenerationResult | BaseException) -> None:
        if self._listener is None:
            return
        try:
            self._listener(item)
        except Exception:  # a listener that fails has lost its consumer: stop generating for it
            self._cancel.set()

    def _finish(self, result: GenerationResult | None, error: BaseException | None) -> None:
        if self._done.is_set():
            return
        self._result, self._error = result, error
        self._done.set()
        self._events.put(_END)
        self._notify(result if error is None else error)


@dataclass(eq=False)  # identity semantics: requests are keys of dicts
class _Request:
    handle: RequestHandle
    prompt: list[int]
    params: SamplingParams
    n: int
    seed: int
    sequences: list[_Sequence] = field(default_factory=list)


@dataclass(eq=False)
class _Sequence:
    request: _Request
    index: int
    text: TextStream
    slot: int = -1
    generated: int = 0  # tokens generated so far (a final end-of-turn token included)
    finish_reason: str | None = None
    sent_ids: int = 0  # token ids already streamed
    reported: bool = False  # its final event has been sent


class DecodeEngine:
    """Serves generation requests for one model with continuous batching.

    Args:
        model: a :class:`model.CausalLM` (merged) or an adapted model (activation-mode QTHA keeps its per-token
            branch); only its call structure is used, its weights are passed to the compiled steps as arguments.
        tokenizer: its tokenizer (chat template, stop tokens, decoding).
        config: shapes and limits.
        rng_seed: seeds the generator that picks seeds for sampled requests that give none.
        name: names the engine's thread.

    Example:
        >>> engine = DecodeEngine(lm, tok, EngineConfig(max_slots=4, capacity=256))
        >>> engine.warmup(); engine.start()
        >>> handle = engine.submit(engine.chat_prompt([{"role": "user", "content": "hi"}]), SamplingParams())
        >>> for event in handle: print(event.text, end="")
        >>> engine.drain(); engine.stop()
    """

    def __init__(
        self,
        model: nnx.Module,
        tokenizer: Tokenizer,
        config: EngineConfig | None = None,
        *,
        rng_seed: int = 0,
        name: str = "decode-engine",
    ) -> None:
        self.config = config or EngineConfig()
        self.tokenizer = tokenizer
        self._parts, self._weights = split_model(model, scan=self.config.scan_layers)
        self._model_config = model.config
        self._cache = empty_cache(model.config, self.config.max_slots, self.config.capacity)
        self._stop_ids = frozenset(tokenizer.stop_ids)
        self._seeds = random.Random(rng_seed)
        self._name = name
        self._lock = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._active: list[_Sequence | None] = [None] * self.config.max_slots
        self._running: set[int] = set()  # ids of requests admitted and not finished
        self._requests: dict[int, _Request] = {}
        b = self.config.max_slots
        self._tokens = np.zeros(b, np.int32)
        self._pos = np.zeros(b, np.int32)
        self._keys = np.zeros((b, 2), np.uint32)
        self._index = np.zeros(b, np.int32)
        self._temperature = np.zeros(b, np.float32)
        self._top_p = np.ones(b, np.float32)

    # ---- prompts -------------------------------------------------------------------------------------------
    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of a conversation rendered with the chat template and the assistant header."""
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages))

    def text_prompt(self, text: str) -> list[int]:
        """Token ids of raw text (no template)."""
        return self.tokenizer.encode(text)

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt accepted (one position is left for the first generated token)."""
        return self.config.capacity - 1

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def warmup(self) -> None:
        """Compiles every shape the engine will run (each prefill bucket, the slot copy, each decode span, the
        sampler), so no request waits for a compilation. Call before :meth:`start`; blocks.

        Raises:
            RuntimeError: the engine is already started.
        """
        if self._thread is not None:
            raise RuntimeError("warmup() must run before start(): the engine thread owns the cache once started")
        for size in self.config.prefill_sizes():
            tokens = np.zeros((1, size), np.int32)
            logits, self._cache = prefill(self._parts, self._weights, self._cache, tokens, np.int32(1), np.int32(0))
            self._sample_first(logits, np.zeros(2, np.uint32), 0.0, 1.0)
            self._sample_first(logits, np.zeros(2, np.uint32), 1.0, 1.0)
        self._cache = copy_slot(self._cache, np.int32(0), np.int32(self.config.max_slots - 1))
        for rows in self.config.slot_sizes():
            for span in self.config.span_sizes():
                out, self._cache = self._decode(rows, span)
        jax.block_until_ready(out)

    def start(self) -> None:
        """Starts the decoding thread (idempotent)."""
        with self._lock:
            if self._stopping:
                raise EngineClosedError("this engine was stopped; build a new one")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def drain(self, timeout: float | None = None) -> bool:
        """Refuses new requests and waits until every queued and running one has finished.

        Returns:
            True when drained, False when ``timeout`` seconds passed first.
        """
        with self._lock:
            self._accepting = False
            self._lock.notify_all()
            return self._lock.wait_for(lambda: not self._queue and not self._running, timeout)

    def stop(self) -> None:
        """Stops the thread; unfinished requests end with :class:`EngineClosedError`. Idempotent."""
        with self._lock:
            self._accepting = False
            self._stopping = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            leftovers = list(self._queue) + list(self._requests.values())
            self._queue.clear()
            self._requests.clear()
            self._running.clear()
            self._lock.notify_all()
        for req in leftovers:
            req.handle._finish(None, EngineClosedError(f"the engine stopped before request {req.handle.request_id} "
                                                       "finished; retry it"))

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a slot."""
        with self._lock:
            return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Sequences decoding now (a request with ``n`` choices counts ``n``)."""
        return sum(s is not None for s in self._active)

    # ---- submitting ----------------------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        n: int = 1,
        request_id: str | None = None,
        on_event: Listener | None = None,
    ) -> RequestHandle:
        """Queues a request (thread-safe) and returns its handle at once.

        Args:
            prompt_ids: the prompt's token ids (see :meth:`chat_prompt`).
            params: sampling settings.
            n: completions to generate (each takes a slot; choice ``i`` of a seeded request uses the seed's
                ``i``-th stream, so choices differ and each is reproducible).
            request_id: names the request in events and results (default: a fresh id).
            on_event: called on the engine thread (keep it quick, never block) with each :class:`StreamEvent`,
                then once with the :class:`GenerationResult` or the exception that ended the request. If it
                raises, the request is cancelled (its consumer is gone).

        Raises:
            InvalidRequestError: an empty prompt, a token id outside the vocabulary, or ``n`` out of range.
            PromptTooLongError: the prompt exceeds :attr:`max_prompt_tokens`.
            QueueFullError: ``config.max_queue`` requests are already waiting.
            EngineClosedError: the engine is draining or stopped.
        """
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise InvalidRequestError("the prompt encodes to no tokens; give it some text", param="messages")
        if len(prompt) > self.max_prompt_tokens:
            raise PromptTooLongError(
                f"the prompt has {len(prompt)} tokens; this model serves at most {self.max_prompt_tokens}",
                param="messages",
            )
        vocab = self._model_config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="messages")
        if not 1 <= n <= min(MAX_CHOICES, self.config.max_slots):
            raise InvalidRequestError(
                f"n={n}; it must be between 1 and {min(MAX_CHOICES, self.config.max_slots)}", param="n"
            )
        handle = RequestHandle(request_id or f"req-{uuid.uuid4().hex[:16]}", on_event)
        with self._lock:
            if not self._accepting:
                raise EngineClosedError("the engine is draining or stopped and takes no new requests")
            if len(self._queue) >= self.config.max_queue:
                raise QueueFullError(
                    f"{len(self._queue)} requests are already waiting (max_queue={self.config.max_queue}); retry later"
                )
            seed = params.seed if params.seed is not None else self._seeds.getrandbits(63)
            self._queue.append(_Request(handle, prompt, params, n, seed))
            self._lock.notify_all()
        return handle

    # ---- the engine thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._stopping or self._queue or self._running)
                if self._stopping:
                    return
                admitted = self._take_admissible()
            try:
                for req in admitted:
                    self._admit(req)
                self._reap_cancelled()
                if any(s is not None for s in self._active):
                    self._step()
            except Exception as exc:  # a failed step fails its batch; the engine keeps serving later requests
                self._fail_all_running(EngineError(f"decoding failed: {type(exc).__name__}: {exc}"))

    def _take_admissible(self) -> list[_Request]:
        # First come, first served: a request waits until enough slots are free for all its choices.
        for req in [r for r in self._queue if r.handle.cancelled]:
            self._queue.remove(req)
            req.handle._finish(None, RequestCancelledError(f"request {req.handle.request_id} was cancelled"))
        free = sum(s is None for s in self._active)
        taken = []
        while self._queue:
            req = self._queue[0]
            if req.n > free:
                break
            free -= req.n
            taken.append(self._queue.popleft())
            self._running.add(id(req))
            self._requests[id(req)] = req
        return taken

    def _admit(self, req: _Request) -> None:
        size = next(b for b in self.config.prefill_sizes() if b >= len(req.prompt))
        tokens = np.full((1, size), self.tokenizer.pad_id, np.int32)
        tokens[0, : len(req.prompt)] = req.prompt
        free = [i for i, s in enumerate(self._active) if s is None]
        # Any integer seed (negative, beyond 64 bits) maps onto threefry's two 32-bit key words.
        word = req.seed % 2**64
        base_key = jax.random.wrap_key_data(np.asarray([word >> 32, word & 0xFFFFFFFF], np.uint32))
        logits = None
        for index in range(req.n):
            slot = free[index]
            if index == 0:
                logits, self._cache = prefill(
                    self._parts, self._weights, self._cache, tokens, np.int32(len(req.prompt)), np.int32(slot)
                )
            else:  # the same prompt again: its keys and values are already in the first choice's slot
                self._cache = copy_slot(self._cache, np.int32(free[0]), np.int32(slot))
            key = np.asarray(jax.random.key_data(jax.random.fold_in(base_key, index)), np.uint32)
            seq = _Sequence(req, index, TextStream(self.tokenizer.decode, req.params.stop), slot=slot)
            req.sequences.append(seq)
            self._active[slot] = seq
            self._keys[slot] = key
            self._temperature[slot] = req.params.temperature
            self._top_p[slot] = req.params.top_p
            self._pos[slot] = len(req.prompt)
            self._index[slot] = 0
            first = self._sample_first(logits, key, req.params.temperature, req.params.top_p)
            self._tokens[slot] = first
            self._accept(seq, [first])
        self._publish(req)

    def _sample_first(self, logits, key, temperature: float, top_p: float) -> int:
        out = sample_tokens(
            logits, key[None], np.zeros(1, np.int32), np.full(1, temperature, np.float32),
            np.full(1, top_p, np.float32), top_k=self.config.sample_top_k,
        )
        return int(out[0])

    def _decode(self, rows: int, span: int):
        return decode_chunk(
            self._parts, self._weights, self._cache, self._tokens[:rows], self._pos[:rows], self._keys[:rows],
            self._index[:rows], self._temperature[:rows], self._top_p[:rows],
            span=span, steps=self.config.chunk_tokens, top_k=self.config.sample_top_k,
        )

    def _step(self) -> None:
        steps = self.config.chunk_tokens
        live = [i for i, s in enumerate(self._active) if s is not None]
        need = int(self._pos[live].max()) + steps
        span = next((b for b in self.config.span_sizes() if b >= need), self.config.capacity)
        rows = next(b for b in self.config.slot_sizes() if b > max(live))
        out, self._cache = self._decode(rows, span)
        out = np.asarray(out)
        touched = []
        for slot in live:
            seq = self._active[slot]
            start = int(self._pos[slot])
            # Token i follows input position start + i; inputs beyond the cache were never written.
            usable = max(0, min(steps, self.config.capacity - start))
            self._accept(seq, [int(t) for t in out[slot, :usable]])
            if seq.finish_reason is None and usable < steps:
                seq.finish_reason = "length"
            self._tokens[slot] = out[slot, -1]
            self._pos[slot] = start + steps
            self._index[slot] += steps
            touched.append(seq.request)
        for req in dict.fromkeys(touched):
            self._publish(req)

    def _accept(self, seq: _Sequence, new: list[int]) -> None:
        for token in new:
            if seq.finish_reason is not None:
                return
            seq.generated += 1
            if token in self._stop_ids and not seq.request.params.ignore_eos:
                seq.finish_reason = "stop"
                return
            seq.text.push(token)
            if seq.text.stopped:
                seq.finish_reason = "stop"
            elif seq.generated >= seq.request.params.max_tokens:
                seq.finish_reason = "length"
            elif len(seq.request.prompt) + seq.generated >= self.config.capacity:
                seq.finish_reason = "length"  # the cache is full (prompt + completion = capacity)

    def _publish(self, req: _Request) -> None:
        for seq in req.sequences:
            if seq.reported:
                continue
            final = seq.finish_reason is not None
            ids = seq.text.ids[seq.sent_ids:]
            piece = seq.text.release(final=final)
            if ids or piece or final:
                req.handle._emit(StreamEvent(req.handle.request_id, seq.index, piece, tuple(ids), seq.finish_reason))
            seq.sent_ids = len(seq.text.ids)
            if final:
                self._free(seq)
                seq.reported = True
        if all(s.finish_reason is not None for s in req.sequences):
            choices = tuple(
                Choice(s.index, s.text.text, tuple(s.text.ids), s.finish_reason) for s in req.sequences
            )
            completion = sum(s.generated for s in req.sequences)
            usage = Usage(len(req.prompt), completion, len(req.prompt) + completion)
            self._retire(req)
            req.handle._finish(GenerationResult(req.handle.request_id, choices, usage), None)

    def _free(self, seq: _Sequence) -> None:
        if seq.slot >= 0 and self._active[seq.slot] is seq:
            self._active[seq.slot] = None
            # An idle slot decodes greedily at position 0 of its own row: harmless, and never out of bounds.
            self._pos[seq.slot] = 0
            self._tokens[seq.slot] = 0
            self._temperature[seq.slot] = 0
        seq.slot = -1

    def _retire(self, req: _Request) -> None:
        with self._lock:
            self._running.discard(id(req))
            self._requests.pop(id(req), None)
            self._lock.notify_all()

    def _reap_cancelled(self) -> None:
        for req in {id(s.request): s.request for s in self._active if s is not None}.values():
            if req.handle.cancelled:
                for seq in req.sequences:
                    self._free(seq)
                self._retire(req)
                req.handle._finish(None, RequestCancelledError(f"request {req.handle.request_id} was cancelled"))

    def _fail_all_running(self, error: BaseException) -> None:
        with self._lock:
            failed = list(self._requests.values())
        for req in failed:
            for seq in req.sequences:
                self._free(seq)
            self._retire(req)
            req.handle._finish(None, error)
        # The cache may have been donated to the failed call; start from a fresh one.
        self._cache = empty_cache(self._model_config, self.config.max_slots, self.config.capacity)

