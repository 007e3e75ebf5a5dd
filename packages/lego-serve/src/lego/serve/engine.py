"""The continuous-batching engine: one decode loop serves every request.

[`Engine`][lego.serve.engine.Engine] runs a background thread that owns the model and one
batch KV cache whose rows are slots ([`SlotCache`][lego.serve.slots.SlotCache]). Each
iteration of its loop:

1. drops cancelled requests (queued ones, and running ones: their slot is free at once);
2. admits waiting requests into free slots. Two or more waiting prompts that fit together
   are prefilled **packed**: one after the other in the row of a batch-1 cache, in one
   forward with ``document_ids`` (each prompt attends only to itself, at positions from 0),
   logits computed at each prompt's last position only; each prompt's positions are then
   copied right-aligned into a slot of its own and its first token sent. A lone request, a
   prompt that does not fit, or one that asks for prompt log-probabilities is prefilled
   **alone**, in chunks of ``prefill_chunk`` tokens (its prompt log-probabilities come
   from those forwards, its first token from the last logits). Into an empty batch, every
   free slot is filled at once (packs of up to ``max_seq_len`` tokens). While other rows
   run, prefill between two decode steps stops after ``prefill_budget`` prompt tokens (a
   pack within it, or at least one chunk), so running streams wait for at most that many
   tokens of prefill. On a quiet 2-core CPU, 16 prompts of 11 to 300 tokens (2,547 in
   all, GPT-2 124M shape) took 1.72 s in packs of up to 1,024 tokens against 2.31 s one
   by one (lego-layers runs each packed prompt's attention on its own slice); packs stay
   within ``max_seq_len``. An idle engine waits ``prefill_gather`` after a request
   arrives for the others sent with it, so that a burst starts as one pack.
   Models whose ``forward`` takes no ``document_ids`` (see
   [`accepts_document_ids()`][lego.protocols.accepts_document_ids]) and sliding-window
   models (which place a long prompt only into an empty batch) prefill one prompt at a
   time;
3. runs one decode step for every running row: one token per row, each row at its own
   position, with the attention mask hiding other rows' padding. Each row then picks its
   next token with its own settings (logit bias, penalties, temperature, top-p, its own
   seeded ``torch.Generator``; greedy rows without processors take one batched argmax),
   reports log-probabilities of the raw logits when asked, and finishes on its own
   end-of-sequence / stop ids, stop strings or ``max_tokens`` (``submit()`` checks that the
   prompt plus ``max_tokens`` fits the cache, so a row never runs out of room).

The batch cache comes in tiers of 1, 2, 4, ... ``max_batch`` rows: a decode step runs on
the smallest tier that holds the running requests (free rows of a tier carry a masked
dummy token), and the rows move to a bigger tier when a request joins a full one, and to a
smaller one when at most a quarter of the rows run; a lone request costs one row, not
``max_batch``. Decode steps of up to 16 rows run the linear layers on lego-generate's native
CPU kernels (``generate()`` stops at 8; at 9 to 16 rows they still read each weight once per
step, and a side-by-side check at 12 and 16 rows on the 0.43B Llama shape's sizes found them
as fast as PyTorch's fp32 products or faster, about 2x on the vocabulary head); they
compute every row the same way whatever the number of rows, so a tier change does not
change a request's numbers.

A request's tokens therefore never depend on the other rows: greedy output is the same
alone or among many (up to floating-point summation order, which a near-tie could
expose: a packed prefill computes each prompt's keys, values and logits with other
matrix shapes than a prefill alone), and a seeded request samples the same tokens
whatever else runs.

Requests reach the loop through a bounded queue (``max_queue``; a full queue raises
[`EngineFull`][lego.serve.engine_types.EngineFull]). Events go back through a thread-safe
queue per request, read with [`Request.events()`][lego.serve.engine.Request.events]
(blocking) or ``async for`` (an asyncio consumer is woken with
``loop.call_soon_threadsafe``). A failing forward finishes the rows it computed with reason
``"error"`` and the loop goes on; [`Engine.close()`][lego.serve.engine.Engine.close]
finishes everything left with ``"cancelled"``: no client is ever left waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import operator
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from lego.generate import chosen_logprobs, has_kv_cache
from lego.generate.linears import linear_kernels
from lego.generate.streaming import check_tokenizer
from lego.protocols import (
    CausalLM,
    ConfigError,
    DataError,
    KVCache,
    LegoError,
    Tokenizer,
    accepts_document_ids,
    check_int,
)
from lego.serve.engine_rows import Row, TokenScore
from lego.serve.engine_types import (
    EngineFull,
    Event,
    Finish,
    FinishReason,
    PromptLogprobs,
    SamplingParams,
    TokenOutput,
)
from lego.serve.slots import SlotCache
from lego.serve.threads import ThreadChooser

__all__ = [
    "Engine",
    "Request",
    "SamplingParams",
    "PromptLogprobs",
    "TokenOutput",
    "Finish",
    "FinishReason",
    "Event",
    "EngineFull",
]

logger = logging.getLogger(__name__)

NATIVE_ROWS = 16
"""Decode steps of up to this many rows run their linear layers on the native kernels."""


def _describe(error: BaseException) -> str:
    """One line for a client: a LegoError's own message, else the exception's type and text."""
    if isinstance(error, LegoError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class Request:
    """A submitted request: iterate it to receive its events; cancel it to stop it.

    Made by [`Engine.submit()`][lego.serve.engine.Engine.submit], never directly. Events
    arrive in order: ``PromptLogprobs`` (when asked), one ``TokenOutput`` per token, and one
    ``Finish``, after which the iteration ends. Leaving an iteration early (``break``, an
    exception, a closed generator) cancels the request.

    Attributes:
        prompt_ids: The prompt.
        params: Its sampling settings.
        arrival: When it was submitted (``time.monotonic()``).
    """

    def __init__(
        self,
        prompt_ids: tuple[int, ...],
        params: SamplingParams,
        *,
        wake: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self._wake = wake
        self._loop = loop
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._ready: asyncio.Event | None = None
        self._cancelled = False
        self._finished = False
        self._completion_tokens = 0
        self.arrival = time.monotonic()

    # -- state ----------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called (or the engine cancelled it)."""
        return self._cancelled

    @property
    def finished(self) -> bool:
        """Whether the engine has sent the ``Finish`` event."""
        return self._finished

    def cancel(self) -> None:
        """Stop the request: it leaves the queue or frees its slot at the next step.

        Its last event is ``Finish("cancelled")``. Calling it again, or after the request
        finished, does nothing.
        """
        if self._cancelled or self._finished:
            return
        self._cancelled = True
        self._wake()

    # -- the engine's side ----------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        """Queue one event for the consumer (called by the engine thread)."""
        if self._finished:
            return
        if isinstance(event, TokenOutput):
            self._completion_tokens += 1
        elif isinstance(event, Finish):
            self._finished = True
        self._events.put(event)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._notify)
            except RuntimeError:  # the consumer's event loop is closed: nobody reads
                self._cancelled = True

    def _notify(self) -> None:
        """Wake the asyncio consumer (runs in its event loop)."""
        if self._ready is not None:
            self._ready.set()

    # -- the consumer's side --------------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[Event]:
        """Yield the events as they come, in a running asyncio event loop.

        Yields:
            ``PromptLogprobs`` (when asked), ``TokenOutput``s, then one ``Finish``.
        """
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        done = False
        try:
            while True:
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    self._ready.clear()
                    try:  # an event put before the clear: never wait for a wake-up that came
                        event = self._events.get_nowait()
                    except queue.Empty:
                        await self._ready.wait()
                        continue
                done = isinstance(event, Finish)
                yield event
                if done:
                    return
        finally:
            if not done:
                self.cancel()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield the events as they come, blocking (for threads and plain scripts).

        Args:
            timeout: The longest wait for the next event, in seconds; None waits as long
                as it takes. When it passes, the request is cancelled and a
                ``Finish("cancelled")`` whose ``error`` says so ends the iteration.

        Yields:
            ``PromptLogprobs`` (when asked), ``TokenOutput``s, then one ``Finish``.
        """
        done = False
        try:
            while True:
                try:
                    event = self._events.get(timeout=timeout)
                except queue.Empty:
                    self.cancel()
                    done = True
                    yield Finish(
                        reason="cancelled",
                        text="",
                        prompt_tokens=len(self.prompt_ids),
                        completion_tokens=self._completion_tokens,
                        error=f"no event within {timeout} s: the request was cancelled",
                    )
                    return
                done = isinstance(event, Finish)
                yield event
                if done:
                    return
        finally:
            if not done:
                self.cancel()


class Engine:
    """Serves many generation requests at once from one model, on one decode loop.

    Args:
        model: A [`CachedCausalLM`][lego.protocols.CachedCausalLM] (a lego-arch model, a
            lego-peft ``CachedLoraModel``...): the engine decodes on the model's own KV
            cache. The engine puts it in eval mode when it starts.
        tokenizer: Decodes the generated ids into text (stop strings, streamed text). When
            the model has more ids than the tokenizer, the extra ids are never generated.
        max_batch: Requests decoded together (rows of the batch KV cache).
        max_queue: Requests waiting for a slot at most; one more raises ``EngineFull``.
        eos_token_ids: The ids that end a request (the model's / tokenizer's
            end-of-sequence and end-of-turn ids), unless it sets ``ignore_eos``.
        max_seq_len: Columns of the batch KV cache: the longest prompt plus ``max_tokens``
            a request may have. None means the model's ``context_length``; a smaller value
            saves memory (the cache holds ``max_batch * max_seq_len`` positions per layer).
        native_kernels: Run the decode steps' linear layers on lego-generate's native CPU
            kernels ([`lego.generate.native`][lego.generate.native]; fp32 and bf16, steps of
            up to 8 rows): None (default) where they can run, True to be warned where they
            cannot, False for PyTorch's kernels.
        prefill_chunk: Prompt tokens per prefill forward. A longer prompt is prefilled in
            chunks; every prompt is chunked the same way, alone or not.
        prefill_budget: Prompt tokens prefilled between two decode steps while requests
            run (a pack of whole prompts, or whole chunks, at least one chunk): how long
            running streams may stall for waiting requests. Larger gives a burst its first
            tokens sooner; ``prefill_chunk`` gives one chunk per step.
        prefill_gather: Seconds an idle engine waits after a request arrives for more to
            arrive (until ``max_batch`` wait), so that requests sent together are prefilled
            in one packed forward rather than the first alone; a lone request's first token
            comes this much later. 0 starts at once.

    Raises:
        ConfigError: The model has no KV cache, or a size or id is out of range.
        CompatibilityError: The tokenizer has more ids than the model.

    Example:
        >>> import lego.arch
        >>> class Bytes:  # any lego.protocols.Tokenizer
        ...     vocab_size, special_tokens = 1000, {}
        ...     def encode(self, text): return list(text.encode())
        ...     def decode(self, ids): return bytes(i % 256 for i in ids).decode(errors="replace")
        >>> _ = torch.manual_seed(0)
        >>> model = lego.arch.build("llama-tiny")
        >>> with Engine(model=model, tokenizer=Bytes(), max_batch=4) as engine:  # start()
        ...     request = engine.submit([1, 2, 3], SamplingParams(max_tokens=5, temperature=0))
        ...     events = list(request.events())  # or: async for event in request
        >>> len(events), events[-1].reason, events[-1].completion_tokens
        (6, 'length', 5)
    """

    def __init__(
        self,
        *,
        model: CausalLM,
        tokenizer: Tokenizer,
        max_batch: int = 8,
        max_queue: int = 64,
        eos_token_ids: Sequence[int] = (),
        max_seq_len: int | None = None,
        native_kernels: bool | None = None,
        prefill_chunk: int = 256,
        prefill_budget: int = 1024,
        prefill_gather: float = 0.005,
    ) -> None:
        if not has_kv_cache(model):
            raise ConfigError(
                f"the server needs a model with a KV cache (new_kv_cache()), got "
                f"{type(model).__name__}",
                key="model",
                hint="serve a lego.protocols.CachedCausalLM (lego-arch models and lego-peft's "
                "CachedLoraModel are)",
            )
        check_int("max_batch", max_batch, minimum=1, owner="Engine")
        check_int("max_queue", max_queue, minimum=1, owner="Engine")
        check_int("prefill_chunk", prefill_chunk, minimum=1, owner="Engine")
        check_int("prefill_budget", prefill_budget, minimum=1, owner="Engine")
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget
        if isinstance(prefill_gather, bool) or not 0 <= prefill_gather <= 1:
            raise ConfigError(
                f"Engine: prefill_gather must be a number of seconds in [0, 1], got "
                f"{prefill_gather!r}",
                key="prefill_gather",
                hint="e.g. 0.005 (5 ms), or 0 to start every prefill at once",
            )
        self.prefill_gather = float(prefill_gather)
        context = int(model.config.context_length)
        self.vocab_size = int(model.config.vocab_size)
        if max_seq_len is None:
            max_seq_len = context
        check_int("max_seq_len", max_seq_len, minimum=2, maximum=context, owner="Engine")
        self.eos_token_ids = tuple(
            check_int("eos_token_ids", i, minimum=0, maximum=self.vocab_size - 1, owner="Engine")
            for i in eos_token_ids
        )
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_seq_len = max_seq_len
        self.context_length = context
        self._native = native_kernels
        self._decodable = check_tokenizer(model, tokenizer)
        window = getattr(model.config, "sliding_window", None)
        self._window: int | None = (
            window if isinstance(window, int) and window < max_seq_len else None
        )
        self.device = _model_device(model)
        new_kv_cache: Callable[..., KVCache] = getattr(model, "new_kv_cache")  # noqa: B009
        self._new_kv_cache = new_kv_cache
        # Caches of 1, 2, 4, ... max_batch rows; the biggest now (a memory error shows at
        # once), the others when first needed. Decode steps run on the smallest that holds
        # the running requests.
        self._tiers = _tiers(max_batch)
        self._caches: dict[int, KVCache] = {max_batch: new_kv_cache(max_batch, max_seq_len)}
        self._slots = SlotCache(self._cache(1), device=self.device)
        self._prefill_cache: KVCache = new_kv_cache(1, max_seq_len)
        # Waiting prompts are prefilled packed in one row when the model keeps documents
        # apart; a sliding-window model places a long prompt only into an empty batch, so
        # it prefills one prompt at a time.
        self._packs = accepts_document_ids(model) and self._window is None
        self._prefilling: _Prefill | None = None
        self._cond = threading.Condition()
        self._close_lock = threading.Lock()
        self._queue: deque[Request] = deque()
        self._rows: dict[int, Row] = {}
        self._thread: threading.Thread | None = None
        self._threads = ThreadChooser(torch.get_num_threads())
        self._closed = False

    # -- the public API -------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode loop thread (and put the model in eval mode).

        Calling it again while it runs does nothing.

        Raises:
            ConfigError: The engine was closed.
        """
        with self._cond:
            if self._closed:
                raise ConfigError(
                    "the engine is closed and cannot start again",
                    key="engine",
                    hint="make a new Engine",
                )
            if self._thread is not None:
                return
            train = getattr(self.model, "train", None)
            if callable(train):
                train(False)
            self._thread = threading.Thread(target=self._run, name="lego-serve-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the decode loop; every unfinished request gets ``Finish("cancelled")``.

        Waits for the current step to end. Later ``submit()`` calls raise ``EngineFull``.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._close_lock:  # two threads closing at once: one finishes the requests
            with self._cond:
                waiting = list(self._queue)
                self._queue.clear()
            for request in waiting:
                request._emit(_finish_unstarted(request, "cancelled", "the engine was closed"))
            self._fail_running("cancelled", "the engine was closed")

    def __enter__(self) -> Engine:
        """``with Engine(...) as engine:`` starts the loop and closes it on the way out."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the engine (every unfinished request gets ``Finish("cancelled")``)."""
        self.close()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> Request:
        """Queue a request; it joins the running batch at the next step with a free slot.

        Thread-safe; works with or without a running asyncio event loop (when there is one,
        ``async for`` over the request is woken from it).

        Args:
            prompt_ids: The prompt's token ids (at least one).
            params: Its sampling settings.

        Returns:
            The [`Request`][lego.serve.engine.Request], to iterate for its events.

        Raises:
            DataError: An empty prompt, or ids outside the model's vocabulary.
            ConfigError: The prompt plus ``max_tokens`` does not fit the context (the message
                gives the numbers), or an id in ``logit_bias`` / ``stop_token_ids`` or a
                log-probability count beyond the vocabulary.
            EngineFull: ``max_queue`` requests are already waiting, or the engine is closed.
        """
        ids = self._check(prompt_ids, params)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        request = Request(ids, params, wake=self._poke, loop=loop)
        with self._cond:
            if self._closed:
                raise EngineFull(
                    "the engine is closed and takes no more requests",
                    key="engine",
                    hint="the server is shutting down: retry on another instance",
                )
            if len(self._queue) >= self.max_queue:
                raise EngineFull(
                    f"the engine's queue is full: {len(self._queue)} requests wait for "
                    f"{self.max_batch} slots",
                    key="max_queue",
                    hint="retry in a moment, or start the engine with a larger max_queue",
                )
            self._queue.append(request)
            self._cond.notify_all()
        return request

    def stats(self) -> dict[str, int]:
        """How busy the engine is.

        Returns:
            ``running`` (requests decoding or being prefilled), ``queued`` (waiting for a
            slot), ``max_batch``, ``max_queue``.
        """
        with self._cond:
            queued = len(self._queue)
        prefilling = 1 if self._prefilling is not None else 0
        return {
            "running": len(self._rows) + prefilling,
            "queued": queued,
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
        }

    # -- checks ---------------------------------------------------------------------------

    def _check(self, prompt_ids: Sequence[int], params: SamplingParams) -> tuple[int, ...]:
        """Validate a request against the model; return the prompt as a tuple of ints."""
        if not isinstance(params, SamplingParams):
            raise ConfigError(
                f"submit() takes SamplingParams, got {type(params).__name__}", key="params"
            )
        try:
            ids = tuple(operator.index(i) for i in prompt_ids)
        except TypeError as error:
            raise DataError(
                f"the prompt must be a sequence of int token ids ({error})",
                tensor="prompt_ids",
                hint="encode text with the tokenizer first",
            ) from None
        if not ids:
            raise DataError(
                "the prompt is empty", tensor="prompt_ids", hint="give at least one token id"
            )
        outside = [i for i in ids if not 0 <= i < self.vocab_size]
        if outside:
            raise DataError(
                f"the prompt holds token id {outside[0]}, outside the model's vocabulary of "
                f"{self.vocab_size} ids",
                tensor="prompt_ids",
                hint="encode the prompt with the model's own tokenizer",
            )
        limit = self.max_seq_len
        what = (
            f"the model's context of {limit} tokens"
            if limit == self.context_length
            else f"the engine's max_seq_len of {limit} tokens (the model's context is "
            f"{self.context_length})"
        )
        if len(ids) + params.max_tokens > limit:
            key = "prompt_ids" if len(ids) > limit else "max_tokens"
            raise ConfigError(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) is "
                f"{len(ids) + params.max_tokens} tokens, more than {what}",
                key=key,
                hint=f"shorten the prompt or ask for at most {max(limit - len(ids), 0)} tokens",
            )
        named = [("logit_bias", i) for i in params.logit_bias] + [
            ("stop_token_ids", i) for i in params.stop_token_ids
        ]
        for key, token in named:
            if token >= self.vocab_size:
                raise ConfigError(
                    f"{key} names token id {token}, outside the model's vocabulary of "
                    f"{self.vocab_size} ids",
                    key=key,
                    hint=f"use ids in [0, {self.vocab_size})",
                )
        for key in ("logprobs", "prompt_logprobs"):
            count = getattr(params, key)
            if count is not None and count > self.vocab_size:
                raise ConfigError(
                    f"{key}={count} asks for more alternatives than the {self.vocab_size} ids "
                    "of the vocabulary",
                    key=key,
                    hint=f"use {key} <= {self.vocab_size}",
                )
        return ids

    # -- the loop -------------------------------------------------------------------------

    def _poke(self) -> None:
        """Wake the loop (a request was cancelled)."""
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        """The engine's thread: the decode loop, inside inference mode and the kernel routing.

        Whatever ends it other than ``close()`` (a bug that escapes the per-step handling)
        closes the engine and finishes every request with ``"error"``: never a hanging client.
        """
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.inference_mode())
                try:
                    stack.enter_context(
                        linear_kernels(
                            self.model,
                            native=self._native,
                            pack=False,
                            rows=1,
                            max_rows=NATIVE_ROWS,
                        )
                    )
                except Exception:
                    logger.exception("lego-serve engine: no native decode kernels")
                self._loop()
        except BaseException as error:
            logger.exception("lego-serve engine: the decode loop stopped")
            with self._cond:
                self._closed = True
                waiting = list(self._queue)
                self._queue.clear()
            message = _describe(error)
            for request in waiting:
                request._emit(_finish_unstarted(request, "error", message))
            self._fail_running("error", message)
            raise

    def _loop(self) -> None:
        """Admit, step, repeat, until ``close()``."""
        while True:
            with self._cond:
                while (
                    not self._closed
                    and not self._queue
                    and not self._rows
                    and self._prefilling is None
                ):
                    self._cond.wait()
                if self._closed:
                    return
            try:
                self._drop_cancelled()
                self._gather()
                self._admit()
                if self._rows:
                    self._step()
            except Exception as error:  # a bug: fail the rows, keep serving
                logger.exception("lego-serve engine: the decode loop failed")
                self._fail_running("error", _describe(error))
                self._slots.reset()

    def _fail_running(self, reason: FinishReason, message: str) -> None:
        """Finish the running rows and the request being prefilled.

        Runs in inference mode whatever the thread (``close()`` calls it from the caller's):
        the slot bookkeeping updates tensors made in the loop's inference mode.
        """
        with torch.inference_mode():
            job, self._prefilling = self._prefilling, None
            if job is not None:
                job.end(reason, message)
            for slot, row in list(self._rows.items()):
                self._end(slot, row.finish(reason, message))

    def _end(self, slot: int, finish: Finish) -> None:
        """Send a running row's last event and free its slot."""
        row = self._rows.pop(slot)
        self._slots.free(slot)
        if not self._rows:
            self._resize(1)  # nothing to move: the next request starts alone
        row.request._emit(finish)

    def _drop_cancelled(self) -> None:
        with self._cond:
            gone = [request for request in self._queue if request.cancelled]
            for request in gone:
                self._queue.remove(request)
        for request in gone:
            request._emit(_finish_unstarted(request, "cancelled", None))
        for slot, row in list(self._rows.items()):
            if row.request.cancelled:
                self._end(slot, row.finish("cancelled"))

    def _gather(self) -> None:
        """In an idle engine, wait ``prefill_gather`` after the first request for others.

        Clients that send together reach the engine a few milliseconds apart; without the
        wait the first one is prefilled alone and the others packed after it, so every one
        of them waits for both forwards. Only when nothing runs or is being prefilled, and
        only for models that pack; the wait ends early once ``max_batch`` requests wait.
        """
        if self.prefill_gather <= 0 or self._rows or self._prefilling is not None:
            return
        if not self._packs:
            return
        with self._cond:
            if not self._queue:
                return
            deadline = self._queue[0].arrival + self.prefill_gather
            while not self._closed and len(self._queue) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _admit(self) -> None:
        """Prefill queued requests: ``prefill_budget`` tokens while rows run, else every slot."""
        budget: int | None = self.prefill_budget if self._rows else None  # None: no stall
        while budget is None or budget > 0:
            job = self._prefilling
            if job is None:
                pack = self._next_pack(budget)
                if pack:
                    if budget is not None:
                        budget -= sum(len(request.prompt_ids) for request in pack)
                    self._prefill_pack(pack)
                    continue
                job = self._next_prefill()
                if job is None:
                    return
                self._prefilling = job
            if job.request.cancelled:
                self._prefilling = None
                job.end("cancelled", None)
                continue
            if job.row is None:
                if budget is not None:
                    budget -= min(self.prefill_chunk, len(job.request.prompt_ids) - job.done)
                try:
                    complete = self._prefill_chunk(job)
                except Exception as error:
                    if not isinstance(error, LegoError):
                        logger.exception("lego-serve engine: a prefill failed")
                    self._prefilling = None
                    job.end("error", _describe(error))
                    continue
                if not complete:
                    continue
                if job.row is None:  # finished at its first token, or max_tokens=0
                    self._prefilling = None
                    continue
            if not self._place(job):
                return

    def _cache(self, rows: int) -> KVCache:
        """The batch cache of ``rows`` rows (a tier), allocated on first use."""
        cache = self._caches.get(rows)
        if cache is None:
            cache = self._new_kv_cache(rows, self.max_seq_len)
            self._caches[rows] = cache
        return cache

    def _resize(self, rows: int) -> None:
        """Continue on the cache tier of ``rows`` rows (the running rows move there)."""
        if rows == self._slots.batch_size:
            return
        mapping = self._slots.move_to(self._cache(rows))
        moved = {mapping[slot]: row for slot, row in self._rows.items()}
        for slot, row in moved.items():
            row.slot = slot
        self._rows = moved

    def _fit(self, running: int) -> int:
        """The smallest tier with room for ``running`` rows."""
        return next(size for size in self._tiers if size >= running)

    def _next_prefill(self) -> _Prefill | None:
        """The next queued request to prefill, when the batch has room for it."""
        if len(self._rows) >= self.max_batch:
            return None
        with self._cond:
            if not self._queue:
                return None
            request = self._queue.popleft()
        return _Prefill(request)

    def _next_pack(self, budget: int | None) -> list[Request]:
        """Two or more queued prompts to prefill together in one row, or none.

        Takes requests from the front of the queue, in order, while their prompts fit
        ``budget`` (None: the prefill cache's columns) and the batch has free slots; a
        request that asks for prompt log-probabilities, or whose prompt does not fit,
        ends the pack (it is prefilled alone, in chunks). One request alone is left to
        the chunked prefill too, so a lone request runs exactly as before.
        """
        if not self._packs:
            return []
        room = self.max_batch - len(self._rows)
        limit = self.max_seq_len if budget is None else min(budget, self.max_seq_len)
        with self._cond:
            taken = 0
            tokens = 0
            for request in self._queue:
                length = len(request.prompt_ids)
                if (
                    taken == room
                    or request.params.prompt_logprobs is not None
                    or tokens + length > limit
                ):
                    break
                taken += 1
                tokens += length
            if taken < 2:
                return []
            return [self._queue.popleft() for _ in range(taken)]

    def _prefill_pack(self, requests: list[Request]) -> None:
        """Prefill several prompts in one forward, packed in one row, and place them all.

        The prompts go one after the other into the batch-1 prefill cache with
        ``document_ids`` (each attends only to itself, at positions from 0), the logits are
        computed at each prompt's last position only, and each prompt's positions are then
        copied into a slot of its own. A failing forward finishes every request of the pack
        with ``"error"``.
        """
        lengths = [len(request.prompt_ids) for request in requests]
        ends = list(itertools.accumulate(lengths))
        ids = [token for request in requests for token in request.prompt_ids]
        device = self.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        documents = torch.repeat_interleave(
            torch.arange(len(requests), device=device),
            torch.tensor(lengths, device=device),
        )[None]  # (1, T)
        positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]  # (1, T)
        last = torch.tensor([end - 1 for end in ends], dtype=torch.long, device=device)  # (P,)
        # The model's forward takes document_ids (checked when the engine was made).
        packed_forward: Callable[..., Tensor] = self.model
        self._prefill_cache.reset()
        try:
            with _logits_at(self.model, last):
                logits = packed_forward(
                    input_ids,
                    position_ids=positions,
                    document_ids=documents,
                    kv_cache=self._prefill_cache,
                )[0]  # (P, V)
        except Exception as error:
            if not isinstance(error, LegoError):
                logger.exception("lego-serve engine: a packed prefill failed")
            for request in requests:
                request._emit(_finish_unstarted(request, "error", _describe(error)))
            return
        if logits.shape[0] != len(requests):  # a model without an lm_head: every position
            logits = logits[last]  # (P, V)
        started: list[tuple[int, Row, TokenOutput]] = []
        for index, request in enumerate(requests):
            try:
                begun = self._begin(request, logits[index : index + 1])
            except Exception as error:  # this request's settings: it alone fails
                if not isinstance(error, LegoError):
                    logger.exception("lego-serve engine: starting a request failed")
                request._emit(_finish_unstarted(request, "error", _describe(error)))
                continue
            if begun is not None:
                started.append((index, *begun))
        if not started:
            return
        self._resize(self._fit(len(self._rows) + len(started)))
        # Longest first: a shorter prompt then joins right-aligned, without gaps.
        for index, row, _ in sorted(started, key=lambda item: -lengths[item[0]]):
            slot = self._slots.free_slots()[0]
            self._slots.place(
                slot,
                self._prefill_cache,
                source_start=ends[index] - lengths[index],
                length=lengths[index],
            )
            row.slot = slot
            self._rows[slot] = row
        for _, row, output in started:
            row.request._emit(output)

    def _begin(self, request: Request, last: Tensor) -> tuple[Row, TokenOutput] | None:
        """Start a prefilled request: its first token from its prompt's last logits.

        Args:
            request: The request.
            last: The logits at its prompt's last position, ``(1, V)``.

        Returns:
            Its row and first token's event (sent when the row is placed), or None when the
            request already finished (``max_tokens=0``, or done at its first token: its
            events are sent).
        """
        params = request.params
        if params.max_tokens == 0:
            request._emit(_finish_unstarted(request, "length", None))
            return None
        row = Row(
            request,
            tokenizer=self.tokenizer,
            eos_ids=self.eos_token_ids,
            decodable=self._decodable,
            device=self.device,
        )
        token = row.choose(last)
        score = None
        if params.logprobs is not None:
            score = _scores(last, [token], [params.logprobs])[0]
        output, finish = row.accept(token, score)
        if finish is not None:
            request._emit(output)
            request._emit(finish)
            return None
        return row, output

    def _prefill_chunk(self, job: _Prefill) -> bool:
        """Feed the next ``prefill_chunk`` prompt tokens to the batch-1 prefill cache.

        After the last chunk: send the prompt log-probabilities, choose the first token
        (sent when the row is placed), or finish the request at once.

        Returns:
            Whether the prompt is complete.
        """
        request = job.request
        params = request.params
        prompt = request.prompt_ids
        if job.done == 0:
            self._prefill_cache.reset()
        end = min(len(prompt), job.done + self.prefill_chunk)
        ids = torch.tensor([prompt[job.done : end]], dtype=torch.long, device=self.device)
        if params.prompt_logprobs is None:  # only the last position's logits are read
            with _logits_at(self.model, None):
                logits = self.model(ids, kv_cache=self._prefill_cache)[0]  # (1 or T, V)
        else:
            logits = self.model(ids, kv_cache=self._prefill_cache)[0]  # (T, V)
        if params.prompt_logprobs is not None:
            targets = list(prompt[job.done + 1 : end + 1])  # the next prompt token of each
            if targets:
                count = [params.prompt_logprobs] * len(targets)
                job.scores.extend(_scores(logits[: len(targets)], targets, count))
        job.done = end
        if end < len(prompt):
            return False
        if params.prompt_logprobs is not None:
            request._emit(
                PromptLogprobs(
                    token_ids=prompt,
                    logprobs=(None, *(logprob for logprob, _ in job.scores)),
                    top_logprobs=(None, *(top for _, top in job.scores)),
                )
            )
        begun = self._begin(request, logits[-1:])  # the last position's logits, (1, V)
        if begun is not None:
            job.row, job.output = begun
        return True

    def _place(self, job: _Prefill) -> bool:
        """Copy a prefilled request into a free slot and send its first token.

        Returns:
            False when it must wait: a sliding-window model admits a prompt longer than the
            batch's columns only into an empty batch (see [`SlotCache`][lego.serve.slots]).
        """
        row, output = job.row, job.output
        if row is None or output is None:  # nothing to place
            self._prefilling = None
            return True
        if self._window is not None and self._rows and row.prompt_length > self._slots.seq_len:
            return False
        if not self._slots.free_slots():
            self._resize(self._fit(len(self._rows) + 1))
        slot = self._slots.free_slots()[0]
        self._slots.place(slot, self._prefill_cache)
        row.slot = slot
        self._rows[slot] = row
        self._prefilling = None
        job.output = None
        job.request._emit(output)
        return True

    def _make_room(self) -> None:
        """Make sure the next step has a column: trim padding, recompute rows with gaps.

        A full cache whose rows all begin after column 0 is trimmed. A row that begins at
        column 0 of a full cache has gaps (a longer prompt joined after it): it leaves the
        batch, is prefilled again alone (its prompt and the tokens it generated, so the
        same positions and values) and rejoins contiguous, right-aligned, after the
        others were trimmed. Its output is unchanged; it only costs one prefill.
        """
        slots = self._slots
        if slots.seq_len < slots.max_seq_len:
            slots.trim()
            return
        slots.trim(force=True)
        moved = [self._rows.pop(slot) for slot in slots.blocked()]
        for row in moved:
            slots.free(row.slot)
        if self._rows:
            slots.trim(force=True)
        for row in moved:
            try:
                self._recompute(row)
            except Exception as error:
                if not isinstance(error, LegoError):
                    logger.exception("lego-serve engine: recomputing a row failed")
                row.request._emit(row.finish("error", _describe(error)))

    def _recompute(self, row: Row) -> None:
        """Prefill a row's tokens again (all but the one the next step feeds) and place it.

        It gets a cache of its own: the prefill cache may hold a prompt half-way through.
        """
        ids = [*row.request.prompt_ids, *row.generated[:-1]]
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, L)
        cache = self._new_kv_cache(1, len(ids))
        self.model(tokens, kv_cache=cache)  # (1, L, V): only the cache is kept
        slot = self._slots.free_slots()[0]
        self._slots.place(slot, cache)
        row.slot = slot
        self._rows[slot] = row

    def _step(self) -> None:
        """One decode step for every running row."""
        self._make_room()
        rows = dict(self._rows)
        if not rows:
            return
        running = len(rows)
        if self._fit(running) <= self._slots.batch_size // 4:  # shrink, with some hysteresis
            self._resize(self._fit(running))
            rows = dict(self._rows)
        size = self._slots.batch_size
        tokens = [0] * size
        positions = [0] * size
        for slot, row in rows.items():
            tokens[slot] = row.generated[-1]
            positions[slot] = row.position
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # (B, 1)
        position_ids = torch.tensor(positions, dtype=torch.long, device=self.device)[:, None]
        mask = self._slots.advance()  # (B, S + 1)
        threads = self._threads.pick(size)
        default = torch.get_num_threads()
        try:
            if threads != default:
                torch.set_num_threads(threads)  # this thread's parallel regions only
            start = time.perf_counter()
            logits = self.model(
                input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                kv_cache=self._slots.cache,
            )[:, -1]  # (B, V)
            self._threads.record(size, threads, time.perf_counter() - start)
        except Exception as error:
            if not isinstance(error, LegoError):
                logger.exception("lego-serve engine: a decode step failed")
            message = _describe(error)
            for slot, row in rows.items():
                self._end(slot, row.finish("error", message))
            self._slots.reset()
            return
        finally:
            if threads != default:
                torch.set_num_threads(default)
        chosen, failed = self._choose(rows, logits)
        wanted = [slot for slot in chosen if rows[slot].params.logprobs is not None]
        scores: dict[int, TokenScore] = {}
        if wanted:
            index = torch.tensor(wanted, dtype=torch.long, device=logits.device)
            counts = [int(rows[slot].params.logprobs or 0) for slot in wanted]
            found = _scores(logits[index], [chosen[slot] for slot in wanted], counts)
            scores = dict(zip(wanted, found, strict=True))
        for slot, token in chosen.items():
            row = rows[slot]
            try:
                output, finish = row.accept(token, scores.get(slot))
            except Exception as error:
                failed[slot] = _describe(error)
                continue
            row.request._emit(output)
            if finish is not None:
                self._end(slot, finish)
        for slot, message in failed.items():
            self._end(slot, rows[slot].finish("error", message))

    def _choose(
        self, rows: dict[int, Row], logits: Tensor
    ) -> tuple[dict[int, int], dict[int, str]]:
        """Every row's next token: one argmax for plain greedy rows, each other row alone.

        Returns:
            The chosen token per slot, and an error message per slot that could not choose.
        """
        chosen: dict[int, int] = {}
        failed: dict[int, str] = {}
        alone = [slot for slot, row in rows.items() if not row.plain]
        plain = [slot for slot, row in rows.items() if row.plain]
        if plain:
            index = torch.tensor(plain, dtype=torch.long, device=logits.device)
            sub = logits[index]  # (n, V)
            finite = torch.isfinite(sub.amax(dim=-1)).tolist()
            picks = sub.argmax(dim=-1).tolist()
            for slot, ok, pick in zip(plain, finite, picks, strict=True):
                if ok:
                    chosen[slot] = int(pick)
                else:
                    alone.append(slot)  # choose() raises the precise error
        for slot in alone:
            try:
                chosen[slot] = rows[slot].choose(logits[slot : slot + 1])
            except Exception as error:
                failed[slot] = _describe(error)
        return chosen, failed


class _Prefill:
    """A request being prefilled (in chunks) in the engine's batch-1 cache.

    Attributes:
        request: The request.
        done: Prompt tokens already in the prefill cache.
        scores: Prompt log-probabilities of the chunks so far (when asked).
        row: Its row once the prompt is complete and the first token chosen.
        output: That first token's event, sent when the row is placed.
    """

    def __init__(self, request: Request) -> None:
        self.request = request
        self.done = 0
        self.scores: list[TokenScore] = []
        self.row: Row | None = None
        self.output: TokenOutput | None = None

    def end(self, reason: FinishReason, error: str | None) -> None:
        """Send the request's last events: a first token not sent yet, then ``Finish``."""
        if self.row is None:
            self.request._emit(_finish_unstarted(self.request, reason, error))
            return
        if self.output is not None:
            self.request._emit(self.output)
            self.output = None
        self.request._emit(self.row.finish(reason, error))


@contextlib.contextmanager
def _logits_at(model: CausalLM, positions: Tensor | None) -> Iterator[None]:
    """Inside the block, a model with an ``lm_head`` module computes some positions' logits.

    A prefill reads the logits of a prompt's last position only (of each prompt's last
    position, in a packed prefill); the others cost a ``(T, d_model) x (d_model, vocab)``
    product for nothing (a tenth to a third of a small model's prefill). A forward pre-hook
    on the head keeps ``positions`` (``(P,)`` indices into the ``T`` positions; None: the
    last one) of its ``(B, T, d)`` input, so the logits are ``(B, P, V)``; it is removed on
    the way out, and applies to the calling thread only. A model without an ``lm_head``
    module computes every position, as before (the caller reads the ones it needs).

    Args:
        model: The model.
        positions: The positions to keep, or None for the last.
    """
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        yield
        return

    owner = threading.get_ident()  # another thread using the model meanwhile is left alone

    def keep(module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...] | None:
        if threading.get_ident() != owner:
            return None
        if args and isinstance(args[0], Tensor) and args[0].ndim == 3:
            hidden = args[0]  # (B, T, d)
            kept = hidden[:, -1:] if positions is None else hidden[:, positions]  # (B, P, d)
            return (kept, *args[1:])
        return None

    handle = head.register_forward_pre_hook(keep)
    try:
        yield
    finally:
        handle.remove()


def _tiers(max_batch: int) -> list[int]:
    """The batch cache sizes: powers of two below ``max_batch``, then ``max_batch``."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


def _model_device(model: CausalLM) -> torch.device:
    """The device of the model's first parameter (the CPU when it has none)."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return first.device if isinstance(first, Tensor) else torch.device("cpu")


def _finish_unstarted(request: Request, reason: FinishReason, error: str | None) -> Finish:
    """The ``Finish`` of a request that never generated a token."""
    return Finish(
        reason=reason,
        text="",
        prompt_tokens=len(request.prompt_ids),
        completion_tokens=0,
        error=error,
    )


def _scores(logits: Tensor, tokens: list[int], counts: list[int]) -> list[TokenScore]:
    """Log-probabilities of chosen tokens and each row's top alternatives.

    Args:
        logits: Raw logits of the rows, ``(n, V)``.
        tokens: The chosen token of each row.
        counts: How many alternatives each row wants.

    Returns:
        ``(logprob, ((id, logprob), ...))`` per row.
    """
    index = torch.tensor(tokens, dtype=torch.long, device=logits.device)  # (n,)
    out = chosen_logprobs(logits, index, top=max(counts))
    logprobs = out.logprob.tolist()
    ids = out.top_ids.tolist()
    values = out.top_logprobs.tolist()
    return [
        (float(logprobs[i]), tuple(zip(ids[i][:k], values[i][:k], strict=True)))
        for i, k in enumerate(counts)
    ]
