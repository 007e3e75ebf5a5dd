"""The benchmark's HTTP client: streamed ``/v1/completions`` requests from N concurrent clients.

One client code for both servers (lego-serve and ``transformers serve``): asyncio + httpx,
one connection per simulated client, each client sending its requests one after the other.
A request is streamed (server-sent events, ``stream_options.include_usage``); its time to
first token is the time from sending it to the first chunk that carries text, and its
token count is the ``completion_tokens`` of the final usage chunk.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["LevelRun", "Reply", "percentile", "post_completion", "run_level"]


@dataclass(frozen=True)
class Reply:
    """One streamed request, as the client saw it.

    Attributes:
        prompt_index: Which prompt it sent.
        ttft_s: Seconds from sending to the first chunk with text.
        total_s: Seconds from sending to the end of the stream.
        prompt_tokens: The server's ``usage.prompt_tokens``.
        tokens: The server's ``usage.completion_tokens``.
        text: The streamed text pieces joined.
    """

    prompt_index: int
    ttft_s: float
    total_s: float
    prompt_tokens: int
    tokens: int
    text: str


@dataclass(frozen=True)
class LevelRun:
    """Every request of one concurrency level, on one server.

    Attributes:
        concurrency: Clients sending at once.
        replies: One per request, in the order they finished.
        wall_s: Seconds from the first request sent to the last stream ended.
    """

    concurrency: int
    replies: list[Reply]
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        """Aggregate output tokens per second over the level's wall time."""
        return sum(r.tokens for r in self.replies) / self.wall_s

    @property
    def ttft_median_s(self) -> float:
        """Median time to first token, in seconds."""
        return statistics.median(r.ttft_s for r in self.replies)

    @property
    def ttft_p99_s(self) -> float:
        """99th percentile of the time to first token (linear interpolation), in seconds."""
        return percentile([r.ttft_s for r in self.replies], 0.99)

    @property
    def tpot_median_s(self) -> float:
        """Median time per output token after the first (the decode pace a client sees)."""
        return statistics.median(
            (r.total_s - r.ttft_s) / (r.tokens - 1) for r in self.replies if r.tokens > 1
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` by linear interpolation between closest ranks.

    Args:
        values: At least one value.
        q: The quantile, in ``[0, 1]``.

    Returns:
        The interpolated value (with few values, p99 is close to the largest).
    """
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _body(
    model: str, prompt: str, max_tokens: int, extra: Mapping[str, Any], stream: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        **extra,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def _stream_one(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    index: int,
) -> Reply:
    """Send one streamed request and read it to the end."""
    pieces: list[str] = []
    first: float | None = None
    usage: dict[str, Any] | None = None
    start = time.perf_counter()
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {text[:500]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"{url}: error in the stream: {chunk['error']}")
            for choice in chunk.get("choices") or ():
                text = choice.get("text") or ""
                if text:
                    if first is None:
                        first = time.perf_counter()
                    pieces.append(text)
            if chunk.get("usage"):
                usage = chunk["usage"]
    end = time.perf_counter()
    if usage is None:
        raise RuntimeError(f"{url}: the stream ended without a usage chunk")
    return Reply(
        prompt_index=index,
        ttft_s=(first if first is not None else end) - start,
        total_s=end - start,
        prompt_tokens=int(usage["prompt_tokens"]),
        tokens=int(usage["completion_tokens"]),
        text="".join(pieces),
    )


async def _level(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    concurrency: int,
    max_tokens: int,
    extra: Mapping[str, Any],
) -> LevelRun:
    url = f"{base_url}/v1/completions"
    pending: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(prompts)):
        pending.put_nowait(i)
    replies: list[Reply] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(900.0, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            while True:
                try:
                    i = pending.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = _body(model, prompts[i], max_tokens, extra, stream=True)
                replies.append(await _stream_one(client, url, body, i))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return LevelRun(concurrency=concurrency, replies=replies, wall_s=wall)


def run_level(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    *,
    concurrency: int,
    max_tokens: int,
    extra: Mapping[str, Any] | None = None,
) -> LevelRun:
    """Send every prompt once, streamed, from ``concurrency`` clients; greedy.

    Args:
        base_url: ``http://127.0.0.1:PORT``.
        model: The ``model`` field the server expects.
        prompts: The prompts, taken in order by whichever client is free.
        concurrency: Clients sending at once.
        max_tokens: Tokens per request.
        extra: More body fields (the peer's ``generation_config``).

    Returns:
        The replies and the level's wall time.
    """
    return asyncio.run(_level(base_url, model, prompts, concurrency, max_tokens, dict(extra or {})))


def post_completion(
    base_url: str,
    model: str,
    prompt: str,
    *,
    max_tokens: int,
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, int]:
    """One non-streamed greedy completion: ``(text, completion_tokens)``."""
    body = _body(model, prompt, max_tokens, dict(extra or {}), stream=False)
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=900.0)
    if response.status_code != 200:
        raise RuntimeError(f"{base_url}: HTTP {response.status_code}: {response.text[:500]}")
    data = response.json()
    return str(data["choices"][0]["text"]), int(data["usage"]["completion_tokens"])
