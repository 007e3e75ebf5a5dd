"""The engine requests of one HTTP request, submitted together and followed as one stream.

An HTTP request asks for several sequences at once (``n`` choices, several prompts): a
[`Job`][lego.serve.jobs.Job] submits one engine request per choice, merges their events
into one stream of ``(choice index, event)`` pairs, and cancels every request still running
when the HTTP side stops listening: the client went away, the time limit passed, or an
error. Submission is all or nothing: when the engine refuses the third choice, the first
two are cancelled.

Time-outs: when ``timeout_s`` passes, every request still running is cancelled and gets a
``Finish`` with reason ``"length"`` and the text generated so far, so the client receives
a normal response (or the end of its stream) cut short, as by ``max_tokens``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from lego.protocols import LegoError
from lego.serve.engine import EngineFull, Finish, SamplingParams, TokenOutput
from lego.serve.errors import SERVER_ERROR, APIError

if TYPE_CHECKING:
    from lego.serve.engine import Engine, Event, Request

__all__ = ["Job", "RETRY_AFTER_S"]

RETRY_AFTER_S = 1
"""The ``Retry-After`` header (seconds) of a 503 when the engine's queue is full."""


class Job:
    """The engine requests of one HTTP request.

    Args:
        engine: The engine.
        prompts: One prompt per choice (the same prompt repeated for ``n`` choices).
        params: One ``SamplingParams`` per choice.
        timeout_s: Seconds from now after which the unfinished choices are cancelled and
            finish with reason ``"length"``; None for no limit.

    Raises:
        APIError: 503 (``Retry-After``) when the engine's queue is full; 400 when the engine
            refuses a request (e.g. a prompt longer than the context).
    """

    def __init__(
        self,
        engine: Engine,
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        *,
        timeout_s: float | None,
    ) -> None:
        self.prompt_lengths = [len(p) for p in prompts]
        self.requests: list[Request] = []
        self._timeout_s = timeout_s
        self._tasks: list[asyncio.Task[None]] = []
        self._finished: set[int] = set()
        self._generated = [0] * len(prompts)
        try:
            for prompt, setting in zip(prompts, params, strict=True):
                self.requests.append(engine.submit(list(prompt), setting))
        except EngineFull as err:
            self.cancel()
            raise APIError(
                503,
                f"the server is busy ({err.message}); retry in a moment",
                type=SERVER_ERROR,
                code="engine_overloaded",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from err
        except LegoError as err:
            self.cancel()
            raise APIError(400, err.message, param=err.key) from err
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Cancel every engine request that has not finished, and stop following them."""
        for index, request in enumerate(self.requests):
            if index not in self._finished:
                request.cancel()
        for task in self._tasks:
            task.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Yield ``(choice index, event)`` pairs as the engine produces them.

        Each choice ends with exactly one ``Finish``; the iterator ends after the last one.
        Closing the iterator early (or cancelling the task that reads it) cancels the
        unfinished engine requests.

        Yields:
            The choice's index and its next event.
        """
        queue: asyncio.Queue[tuple[int, Event | BaseException | None]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        # The time limit puts a marker in the queue (index -1), so the wait below is a
        # plain queue read.
        timer = (
            None
            if self._timeout_s is None
            else loop.call_later(self._timeout_s, queue.put_nowait, (-1, None))
        )
        self._tasks = [
            asyncio.create_task(_follow(index, request, queue))
            for index, request in enumerate(self.requests)
        ]
        try:
            while len(self._finished) < len(self.requests):
                index, event = await queue.get()
                if event is None:  # the time limit passed
                    for expired in self._expire():
                        yield expired
                    return
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, Finish):
                    self._finished.add(index)
                elif isinstance(event, TokenOutput):
                    self._generated[index] += 1
                yield index, event
        finally:
            if timer is not None:
                timer.cancel()
            self.cancel()

    def _expire(self) -> list[tuple[int, Finish]]:
        """Finish every unfinished choice as cut by the time limit."""
        out = []
        for index in range(len(self.requests)):
            if index not in self._finished:
                self.requests[index].cancel()
                self._finished.add(index)
                out.append(
                    (
                        index,
                        Finish(
                            reason="length",
                            text="",
                            prompt_tokens=self.prompt_lengths[index],
                            completion_tokens=self._generated[index],
                            error="the request's time limit passed",
                        ),
                    )
                )
        return out


async def _follow(
    index: int, request: Request, queue: asyncio.Queue[tuple[int, Event | BaseException | None]]
) -> None:
    """Copy one engine request's events into the job's queue."""
    try:
        async for event in request:
            await queue.put((index, event))
    except asyncio.CancelledError:
        raise
    except Exception as err:  # handed to the reader, which fails the HTTP request
        await queue.put((index, err))
