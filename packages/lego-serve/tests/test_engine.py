"""The continuous-batching engine on tiny lego-arch models with random (seeded) weights.

Waits on engine events use generous time-outs only so that a broken engine fails a test
instead of hanging it; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import lego.arch
from lego.generate import generate
from lego.protocols import ConfigError, DataError, KVCache, ModelConfig
from lego.serve.engine import (
    Engine,
    EngineFull,
    Event,
    Finish,
    PromptLogprobs,
    Request,
    SamplingParams,
    TokenOutput,
)

WAIT = 120.0  # seconds: a hang guard, never a measured time


class Words:
    """A byte-level tokenizer for 1000 ids: ids below 256 are bytes, the others words."""

    vocab_size = 1000

    @property
    def special_tokens(self) -> dict[str, int]:
        return {}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return b"".join(bytes([i]) if i < 256 else f" w{i}".encode() for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _randomize(model: nn.Module) -> nn.Module:
    """Weights large enough that greedy decoding does not just repeat the last token."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, 0.3 if "embed" in name else 0.15)
    return model.eval()


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    torch.manual_seed(0)
    return _randomize(lego.arch.build("llama-tiny"))


@pytest.fixture(scope="module")
def qwen() -> nn.Module:
    torch.manual_seed(1)
    return _randomize(lego.arch.build("qwen3-tiny"))


class Gated(nn.Module):
    """A model wrapper whose forward calls can be held, or made to fail, by the test."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.allowed = threading.Semaphore(10**6)
        self.calls = 0
        self.shapes: list[tuple[int, int]] = []  # (B, T) of every forward call
        self.fail_at: int | None = None
        self.arrived = 0  # forward calls that reached the gate
        self._arrival = threading.Condition()

    @property
    def config(self) -> Any:
        return self.inner.config

    def new_kv_cache(self, batch_size: int, max_seq_len: int, **kwargs: Any) -> KVCache:
        cache: KVCache = self.inner.new_kv_cache(batch_size, max_seq_len, **kwargs)  # type: ignore[operator]
        return cache

    def hold_after(self, calls: int) -> None:
        """Let ``calls`` more forward calls through, then block the next ones."""
        self.allowed = threading.Semaphore(calls)

    def allow(self, calls: int) -> None:
        """Let ``calls`` more forward calls through the held gate."""
        self.allowed.release(calls)

    def release(self) -> None:
        self.allowed.release(10**6)

    def wait_arrivals(self, count: int) -> None:
        """Wait until ``count`` forward calls in all reached the gate."""
        with self._arrival:
            assert self._arrival.wait_for(lambda: self.arrived >= count, timeout=WAIT)

    def forward(self, input_ids: Tensor, **kwargs: Any) -> Tensor:
        with self._arrival:
            self.arrived += 1
            self._arrival.notify_all()
        assert self.allowed.acquire(timeout=WAIT), "the test never released the model"
        self.calls += 1
        self.shapes.append((int(input_ids.shape[0]), int(input_ids.shape[1])))
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        out: Tensor = self.inner(input_ids, **kwargs)
        return out


def collect(request: Request) -> list[Event]:
    events = list(request.events(timeout=WAIT))
    assert isinstance(events[-1], Finish)
    return events


def tokens_of(events: Sequence[Event]) -> list[int]:
    return [e.token_id for e in events if isinstance(e, TokenOutput)]


def text_of(events: Sequence[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, (TokenOutput, Finish)))


def finish_of(events: Sequence[Event]) -> Finish:
    last = events[-1]
    assert isinstance(last, Finish)
    return last


@pytest.fixture
def make_engine() -> Iterator[Any]:
    engines: list[Engine] = []

    def make(model: nn.Module, *, start: bool = True, **kwargs: Any) -> Engine:
        engine = Engine(model=model, tokenizer=Words(), **kwargs)  # type: ignore[arg-type]
        engines.append(engine)
        if start:
            engine.start()
        return engine

    yield make
    for engine in engines:
        engine.close()


def run_alone(
    model: nn.Module, prompt: list[int], params: SamplingParams, **kwargs: Any
) -> list[Event]:
    with Engine(model=model, tokenizer=Words(), **kwargs) as engine:  # type: ignore[arg-type]
        return collect(engine.submit(prompt, params))


def prompt_of(length: int, offset: int = 0) -> list[int]:
    return [(7 * i + 3 * offset + 1) % 1000 for i in range(length)]


# -- the property ----------------------------------------------------------------------------


OTHERS: list[tuple[int, SamplingParams]] = [
    (3, SamplingParams(max_tokens=5, temperature=0)),
    (40, SamplingParams(max_tokens=30, temperature=0.8, seed=1)),
    (9, SamplingParams(max_tokens=12, temperature=1.3, top_p=0.9, seed=2)),
    (1, SamplingParams(max_tokens=25, temperature=0, presence_penalty=1.5)),
    (60, SamplingParams(max_tokens=8, temperature=0, frequency_penalty=0.7)),
    (17, SamplingParams(max_tokens=40, temperature=0.6, seed=3, logit_bias={5: 4.0})),
    (5, SamplingParams(max_tokens=3, temperature=0, logprobs=3)),
    (90, SamplingParams(max_tokens=20, temperature=1.0, seed=4, stop=(" w9",))),
    (2, SamplingParams(max_tokens=33, temperature=0, stop_token_ids=(7,))),
    (25, SamplingParams(max_tokens=2, temperature=0.9, seed=5, prompt_logprobs=2)),
    (11, SamplingParams(max_tokens=18, temperature=0)),
    (70, SamplingParams(max_tokens=14, temperature=0.7, top_p=0.5, seed=6)),
    (4, SamplingParams(max_tokens=45, temperature=0, logit_bias={900: -100.0})),
    (33, SamplingParams(max_tokens=6, temperature=1.1, seed=7, frequency_penalty=0.3)),
    (8, SamplingParams(max_tokens=27, temperature=0, logprobs=0)),
    (50, SamplingParams(max_tokens=10, temperature=0.5, seed=8, presence_penalty=-0.5)),
]
"""16 other requests: prompt lengths (some longer than the target's, so rows get gaps),
max_tokens and sampling settings all different."""


@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_greedy_output_is_the_same_alone_and_among_16_others(
    family: str, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(family)
    target_prompt = prompt_of(21, offset=5)
    target_params = SamplingParams(max_tokens=60, temperature=0)
    alone = run_alone(model, target_prompt, target_params, max_batch=6)

    engine = Engine(model=model, tokenizer=Words(), max_batch=6, max_queue=32)
    engine.start()
    try:
        others: list[Request] = []
        # 5 others first, then the target, then one more other each time it gets a token.
        for length, params in OTHERS[:5]:
            others.append(engine.submit(prompt_of(length, offset=length), params))
        target = engine.submit(target_prompt, target_params)
        events: list[Event] = []
        pending = list(OTHERS[5:])
        for event in target.events(timeout=WAIT):
            events.append(event)
            if pending and isinstance(event, TokenOutput) and len(events) % 3 == 0:
                length, params = pending.pop(0)
                others.append(engine.submit(prompt_of(length, offset=length), params))
        for length, params in pending:
            others.append(engine.submit(prompt_of(length, offset=length), params))
        other_events = [collect(r) for r in others]
    finally:
        engine.close()

    assert tokens_of(events) == tokens_of(alone)
    assert text_of(events) == text_of(alone)
    assert finish_of(events) == finish_of(alone)
    # The others too: greedy ones and seeded sampled ones give what they give alone.
    for (length, params), got in zip(OTHERS, other_events, strict=True):
        expected = run_alone(model, prompt_of(length, offset=length), params, max_batch=2)
        assert tokens_of(got) == tokens_of(expected), (length, params)
        assert finish_of(got) == finish_of(expected)


def test_greedy_equals_lego_generate(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama, max_batch=3)
    prompts = [prompt_of(n, offset=n) for n in (1, 6, 30, 13)]
    requests = [engine.submit(p, SamplingParams(max_tokens=25, temperature=0)) for p in prompts]
    for prompt, request in zip(prompts, requests, strict=True):
        expected = generate(llama, torch.tensor([prompt]), max_new_tokens=25)[0, len(prompt) :]  # type: ignore[arg-type]
        events = collect(request)
        assert tokens_of(events) == expected.tolist()
        assert text_of(events) == Words().decode(expected.tolist())
        finish = finish_of(events)
        assert (finish.reason, finish.prompt_tokens, finish.completion_tokens) == (
            "length",
            len(prompt),
            25,
        )


def test_seeded_sampling_is_reproducible_and_depends_on_the_seed(
    llama: nn.Module, make_engine: Any
) -> None:
    engine = make_engine(llama, max_batch=4)
    prompt = prompt_of(10)
    runs = {
        seed: [
            engine.submit(prompt, SamplingParams(max_tokens=30, temperature=1.2, seed=seed))
            for _ in range(2)
        ]
        for seed in (11, 12)
    }
    got = {seed: [tokens_of(collect(r)) for r in requests] for seed, requests in runs.items()}
    assert got[11][0] == got[11][1]
    assert got[12][0] == got[12][1]
    assert got[11][0] != got[12][0]


# -- log-probabilities -----------------------------------------------------------------------


def test_prompt_and_token_logprobs_equal_a_full_forward(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama, max_batch=2)
    prompt = prompt_of(12, offset=3)
    params = SamplingParams(max_tokens=15, temperature=0.9, seed=3, logprobs=4, prompt_logprobs=2)
    # Another request shares the batch, so the decode steps run padded.
    other = engine.submit(prompt_of(30), SamplingParams(max_tokens=20, temperature=0))
    events = collect(engine.submit(prompt, params))
    collect(other)
    first = events[0]
    assert isinstance(first, PromptLogprobs)
    generated = tokens_of(events)
    assert len(generated) == 15
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        reference = torch.log_softmax(llama(ids)[0].double(), dim=-1)  # (P + N, V)
    assert first.token_ids == tuple(prompt)
    assert first.logprobs[0] is None
    assert first.top_logprobs[0] is None
    for i in range(1, len(prompt)):
        logprob = first.logprobs[i]
        top = first.top_logprobs[i]
        assert logprob is not None
        assert top is not None
        assert logprob == pytest.approx(float(reference[i - 1, prompt[i]]), abs=1e-5)
        values, order = reference[i - 1].topk(2)
        assert [t for t, _ in top] == order.tolist()
        assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-5)
    outputs = [e for e in events if isinstance(e, TokenOutput)]
    for j, output in enumerate(outputs):
        row = reference[len(prompt) - 1 + j]
        assert output.logprob == pytest.approx(float(row[output.token_id]), abs=1e-5)
        assert output.top_logprobs is not None
        assert len(output.top_logprobs) == 4
        values, order = row.topk(4)
        assert [t for t, _ in output.top_logprobs] == order.tolist()
        assert [v for _, v in output.top_logprobs] == pytest.approx(values.tolist(), abs=1e-5)


def test_no_logprobs_unless_asked(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama)
    events = collect(engine.submit([1, 2], SamplingParams(max_tokens=3, temperature=0)))
    assert not any(isinstance(e, PromptLogprobs) for e in events)
    assert all(e.logprob is None and e.top_logprobs is None for e in events[:-1])  # type: ignore[union-attr]


def test_max_tokens_zero_scores_the_prompt(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama)
    events = collect(engine.submit([4, 5, 6], SamplingParams(max_tokens=0, prompt_logprobs=0)))
    assert len(events) == 2
    first, last = events
    assert isinstance(first, PromptLogprobs)
    assert first.top_logprobs[1] == ()
    assert last == Finish(reason="length", text="", prompt_tokens=3, completion_tokens=0)
    one = collect(engine.submit([4], SamplingParams(max_tokens=0, prompt_logprobs=1)))
    assert one[0] == PromptLogprobs(token_ids=(4,), logprobs=(None,), top_logprobs=(None,))


@pytest.mark.parametrize(
    ("budget", "between_steps"),
    [
        (7, [[(1, 7)]] * 4 + [[(1, 2)]]),  # one chunk between two decode steps
        (14, [[(1, 7)] * 2] * 2 + [[(1, 2)]]),  # two chunks (14 tokens), then the rest
        (9, [[(1, 7)] * 2] * 2 + [[(1, 2)]]),  # whole chunks: the second one overshoots 9
        (1024, [[(1, 7)] * 4 + [(1, 2)]]),  # the whole prompt at once
    ],
)
def test_chunked_prefill_interleaves_with_decoding_and_changes_nothing(
    llama: nn.Module, make_engine: Any, budget: int, between_steps: list[list[tuple[int, int]]]
) -> None:
    model = Gated(llama)
    engine = make_engine(model, max_batch=2, prefill_chunk=7, prefill_budget=budget)
    model.hold_after(1)
    short_params = SamplingParams(max_tokens=20, temperature=0)
    short = engine.submit([1, 2, 3], short_params)
    stream = short.events(timeout=WAIT)
    first = next(stream)
    model.wait_arrivals(2)  # the loop holds in its first decode step
    prompt = prompt_of(30, offset=4)
    long = engine.submit(prompt, SamplingParams(max_tokens=10, temperature=0, prompt_logprobs=1))
    model.release()
    events = collect(long)
    short_events = [first, *stream]
    # Chunks of the long prompt (prefill_budget tokens of them) between two decode steps of
    # the running row (one row: the 1-row cache), then both rows decode together in the
    # 2-row cache.
    expected_shapes = [(1, 3)]
    for chunks in between_steps:
        expected_shapes += [(1, 1), *chunks]
    expected_shapes.append((2, 1))
    assert model.shapes[: len(expected_shapes)] == expected_shapes
    expected = generate(llama, torch.tensor([prompt]), max_new_tokens=10)[0, 30:]  # type: ignore[arg-type]
    assert tokens_of(events) == expected.tolist()
    short_alone = generate(llama, torch.tensor([[1, 2, 3]]), max_new_tokens=20)[0, 3:]  # type: ignore[arg-type]
    assert tokens_of(short_events) == short_alone.tolist()
    scored = events[0]
    assert isinstance(scored, PromptLogprobs)
    with torch.no_grad():
        reference = torch.log_softmax(llama(torch.tensor([prompt]))[0].double(), dim=-1)
    expected_logprobs = [float(reference[i - 1, prompt[i]]) for i in range(1, 30)]
    assert scored.logprobs[1:] == pytest.approx(expected_logprobs, abs=1e-5)
    assert len(scored.top_logprobs) == 30


def test_a_prefill_computes_the_last_logits_only_unless_prompt_logprobs(
    llama: nn.Module, make_engine: Any
) -> None:
    head = llama.lm_head
    shapes: list[tuple[int, ...]] = []
    handle = head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    try:
        engine = make_engine(llama)
        plain = SamplingParams(max_tokens=1, temperature=0)
        scored = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        got = tokens_of(collect(engine.submit(prompt_of(6), plain)))
        got_scored = tokens_of(collect(engine.submit(prompt_of(6), scored)))
    finally:
        handle.remove()
    vocab = int(llama.config.vocab_size)
    assert shapes == [(1, 1, vocab), (1, 6, vocab)]  # one prefill forward each, no decode step
    assert not head._forward_pre_hooks  # the engine's pre-hook is gone
    expected = generate(llama, torch.tensor([prompt_of(6)]), max_new_tokens=1)[0, 6:]  # type: ignore[arg-type]
    assert got == got_scored == expected.tolist()


def test_a_smaller_tokenizer_never_gets_ids_it_cannot_decode(
    llama: nn.Module, make_engine: Any
) -> None:
    class Bytes(Words):
        vocab_size = 256

    engine = Engine(model=llama, tokenizer=Bytes(), max_batch=2)  # type: ignore[arg-type]
    engine.start()
    try:
        greedy = collect(engine.submit([1, 2], SamplingParams(max_tokens=30, temperature=0)))
        sampled = collect(engine.submit([1, 2], SamplingParams(max_tokens=30, seed=0)))
    finally:
        engine.close()
    unrestricted = tokens_of(
        collect(make_engine(llama).submit([1, 2], SamplingParams(max_tokens=30, temperature=0)))
    )
    assert any(t >= 256 for t in unrestricted)  # the model alone does produce such ids
    assert all(t < 256 for t in tokens_of(greedy) + tokens_of(sampled))
    assert len(tokens_of(greedy)) == len(tokens_of(sampled)) == 30


# -- stopping --------------------------------------------------------------------------------


def test_stop_strings_are_never_sent(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama, max_batch=2)
    prompt = prompt_of(9, offset=2)
    full = collect(engine.submit(prompt, SamplingParams(max_tokens=30, temperature=0)))
    text = text_of(full)
    stop = text[12:16]  # a piece from the middle of the greedy text
    cut = text[: text.find(stop)]
    events = collect(
        engine.submit(prompt, SamplingParams(max_tokens=30, temperature=0, stop=("zzz", stop)))
    )
    assert text_of(events) == cut
    assert all(stop not in e.text for e in events if isinstance(e, (TokenOutput, Finish)))
    finish = finish_of(events)
    assert finish.reason == "stop"
    assert finish.completion_tokens < 30
    assert tokens_of(events) == tokens_of(full)[: finish.completion_tokens]


def test_eos_ignore_eos_and_stop_token_ids(llama: nn.Module, make_engine: Any) -> None:
    prompt = prompt_of(7, offset=1)
    free = make_engine(llama)
    full = tokens_of(collect(free.submit(prompt, SamplingParams(max_tokens=20, temperature=0))))
    eos = full[4]
    at = full.index(eos)
    engine = make_engine(llama, eos_token_ids=[eos])
    stopped = collect(engine.submit(prompt, SamplingParams(max_tokens=20, temperature=0)))
    assert tokens_of(stopped) == full[: at + 1]
    assert finish_of(stopped).reason == "stop"
    assert finish_of(stopped).completion_tokens == at + 1
    assert text_of(stopped) == Words().decode(full[:at])  # the eos id is not text

    ignored = collect(
        engine.submit(prompt, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    )
    assert tokens_of(ignored) == full
    assert finish_of(ignored).reason == "length"

    by_id = collect(
        free.submit(prompt, SamplingParams(max_tokens=20, temperature=0, stop_token_ids=(eos,)))
    )
    assert tokens_of(by_id) == full[: at + 1]
    assert finish_of(by_id).reason == "stop"


# -- the queue, cancelling, closing ----------------------------------------------------------


def test_cancel_frees_the_slot_for_a_queued_request(llama: nn.Module, make_engine: Any) -> None:
    model = Gated(llama)
    engine = make_engine(model, max_batch=1)
    model.hold_after(1)  # the first prefill, then every decode step waits
    first = engine.submit([1, 2, 3], SamplingParams(max_tokens=200, temperature=0))
    events = first.events(timeout=WAIT)
    assert isinstance(next(events), TokenOutput)  # running: it holds the only slot
    model.wait_arrivals(2)  # the loop holds in its first decode step
    second = engine.submit([4, 5], SamplingParams(max_tokens=4, temperature=0))
    assert engine.stats() == {"running": 1, "queued": 1, "max_batch": 1, "max_queue": 64}
    first.cancel()
    model.release()
    rest = list(events)
    assert finish_of(rest).reason == "cancelled"
    assert finish_of(rest).completion_tokens <= 2
    done = collect(second)
    assert finish_of(done).reason == "length"
    assert len(tokens_of(done)) == 4
    assert engine.stats()["running"] == 0


def test_cancelling_a_request_half_way_through_its_prefill(
    llama: nn.Module, make_engine: Any
) -> None:
    model = Gated(llama)
    engine = make_engine(model, max_batch=2, prefill_chunk=4, prefill_budget=4)
    model.hold_after(1)
    short_params = SamplingParams(max_tokens=12, temperature=0)
    short = engine.submit([1, 2, 3], short_params)
    stream = short.events(timeout=WAIT)
    first = next(stream)
    model.wait_arrivals(2)  # the loop holds in its first decode step
    long = engine.submit(prompt_of(20), SamplingParams(max_tokens=5))
    model.allow(3)  # the held decode step, the first chunk, one more step; the 2nd chunk waits
    model.wait_arrivals(5)
    long.cancel()
    model.release()
    assert collect(long) == [
        Finish(reason="cancelled", text="", prompt_tokens=20, completion_tokens=0)
    ]
    assert [t for _, t in model.shapes if t > 1] == [3, 4, 4]  # 2 of its 5 chunks ran
    expected = run_alone(llama, [1, 2, 3], short_params)
    assert tokens_of([first, *stream]) == tokens_of(expected)


def test_cancelling_a_queued_request(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama, start=False)
    request = engine.submit([1], SamplingParams(max_tokens=3))
    request.cancel()
    engine.start()
    events = collect(request)
    assert events == [Finish(reason="cancelled", text="", prompt_tokens=1, completion_tokens=0)]


def test_engine_full_when_the_queue_is_full(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama, start=False, max_queue=2)
    waiting = [engine.submit([1, 2], SamplingParams(max_tokens=2)) for _ in range(2)]
    with pytest.raises(EngineFull, match="queue is full"):
        engine.submit([1, 2], SamplingParams(max_tokens=2))
    assert engine.stats()["queued"] == 2
    engine.close()
    for request in waiting:
        assert finish_of(collect(request)).reason == "cancelled"
    with pytest.raises(EngineFull, match="closed"):
        engine.submit([1, 2], SamplingParams(max_tokens=2))


def test_close_with_requests_in_flight(llama: nn.Module, make_engine: Any) -> None:
    model = Gated(llama)
    engine = make_engine(model, start=False, max_batch=2)
    model.hold_after(2)  # two prefills, then the first decode step waits
    running = [
        engine.submit(prompt_of(5, offset=i), SamplingParams(max_tokens=100, temperature=0))
        for i in range(2)
    ]
    engine.start()  # both wait in the queue: the first iteration prefills both
    streams = [r.events(timeout=WAIT) for r in running]
    for stream in streams:
        assert isinstance(next(stream), TokenOutput)
    queued = engine.submit([3], SamplingParams(max_tokens=5))
    closer = threading.Thread(target=engine.close)
    closer.start()  # waits for the held step
    model.release()
    closer.join(WAIT)
    assert not closer.is_alive()
    for stream in streams:
        finish = finish_of(list(stream))
        assert finish.reason == "cancelled"
        assert finish.error == "the engine was closed"
    assert finish_of(collect(queued)).reason == "cancelled"


def test_a_failing_step_finishes_its_rows_with_error_and_the_engine_goes_on(
    llama: nn.Module, make_engine: Any
) -> None:
    model = Gated(llama)
    model.fail_at = 2  # the first decode step
    engine = make_engine(model)
    events = collect(engine.submit([1, 2, 3], SamplingParams(max_tokens=5, temperature=0)))
    finish = finish_of(events)
    assert finish.reason == "error"
    assert finish.error == "RuntimeError: injected failure"
    assert len(tokens_of(events)) == 1
    again = collect(engine.submit([1, 2, 3], SamplingParams(max_tokens=5, temperature=0)))
    assert finish_of(again).reason == "length"
    assert len(tokens_of(again)) == 5


def test_a_request_that_bans_every_token_fails_alone(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama, max_batch=2)
    good = engine.submit([1, 2], SamplingParams(max_tokens=8, temperature=0))
    ban = {i: float("-inf") for i in range(1000)}
    bad = collect(
        engine.submit([1, 2], SamplingParams(max_tokens=8, temperature=0, logit_bias=ban))
    )
    assert finish_of(bad).reason == "error"
    assert "no token can be chosen" in str(finish_of(bad).error)
    assert finish_of(collect(good)).reason == "length"


# -- validation ------------------------------------------------------------------------------


def test_submit_checks_the_request(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama, start=False)
    with pytest.raises(ConfigError, match=r"\(250 tokens\) plus max_tokens \(10\) is 260"):
        engine.submit([1] * 250, SamplingParams(max_tokens=10))
    with pytest.raises(ConfigError, match="max_seq_len of 64"):
        make_engine(llama, start=False, max_seq_len=64).submit(
            [1] * 60, SamplingParams(max_tokens=5)
        )
    with pytest.raises(DataError, match="empty"):
        engine.submit([], SamplingParams(max_tokens=1))
    with pytest.raises(DataError, match="token id 1000"):
        engine.submit([1, 1000], SamplingParams(max_tokens=1))
    with pytest.raises(ConfigError, match="stop_token_ids names token id 5000"):
        engine.submit([1], SamplingParams(max_tokens=1, stop_token_ids=(5000,)))
    with pytest.raises(ConfigError, match="logprobs=2000"):
        engine.submit([1], SamplingParams(max_tokens=1, logprobs=2000))
    assert engine.stats()["queued"] == 0


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1, "temperature": -0.1}, "temperature"),
        ({"max_tokens": 1, "top_p": 0.0}, "top_p"),
        ({"max_tokens": 1, "seed": -3}, "seed"),
        ({"max_tokens": 1, "stop": ("",)}, "stop"),
        ({"max_tokens": 1, "logprobs": -1}, "logprobs"),
        ({"max_tokens": 1, "logit_bias": {3: float("inf")}}, "logit_bias[3]"),
    ],
)
def test_sampling_params_are_validated(fields: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SamplingParams(**fields)
    assert caught.value.key == key


def test_a_model_without_a_kv_cache_is_declined() -> None:
    class NoCache(nn.Module):
        config = ModelConfig(vocab_size=10, context_length=8)

        def forward(self, ids: Tensor, **kwargs: Any) -> Tensor:
            return torch.zeros(ids.shape[0], ids.shape[1], 10)

    with pytest.raises(ConfigError, match="needs a model with a KV cache"):
        Engine(model=NoCache(), tokenizer=Words())


# -- the cache's edges -----------------------------------------------------------------------


def test_a_row_with_gaps_at_the_end_of_the_cache_is_recomputed(
    llama: nn.Module, make_engine: Any
) -> None:
    model = Gated(llama)
    engine = make_engine(model, max_batch=2, max_seq_len=32)
    model.hold_after(1)
    short_params = SamplingParams(max_tokens=29, temperature=0, logprobs=2)
    short = engine.submit([1, 2], short_params)
    stream = short.events(timeout=WAIT)
    first = next(stream)
    model.wait_arrivals(2)  # the loop holds in its first decode step
    assert isinstance(first, TokenOutput)
    # A longer prompt joins while the short row has 3 columns: it is written at column 0,
    # the short row gets a gap of 17 columns and reaches the cache's end long before its
    # 29 tokens: it is prefilled again and goes on, contiguous.
    long_params = SamplingParams(max_tokens=12, temperature=0)
    long = engine.submit(prompt_of(20), long_params)
    model.release()
    got = [first, *stream]
    alone = run_alone(llama, [1, 2], short_params)
    assert finish_of(got) == finish_of(alone)
    assert finish_of(got).completion_tokens == 29
    assert tokens_of(got) == tokens_of(alone)
    for mine, theirs in zip(got[:-1], alone[:-1], strict=True):
        assert isinstance(mine, TokenOutput)
        assert isinstance(theirs, TokenOutput)
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-5)
    assert tokens_of(collect(long)) == tokens_of(run_alone(llama, prompt_of(20), long_params))
    prefills = [t for _, t in model.shapes if t > 1]
    assert prefills[:2] == [2, 20]
    # The short row recomputed once, when the long one finished (its 11 steps took the
    # cache to 31 columns) and one more step filled it: 2 prompt + 13 generated tokens.
    assert prefills[2:] == [15]


def test_a_sliding_window_model_admits_a_longer_prompt_into_an_empty_batch(
    make_engine: Any,
) -> None:
    torch.manual_seed(2)
    windowed = _randomize(lego.arch.build("qwen3-tiny", sliding_window=16))
    model = Gated(windowed)
    engine = make_engine(model, max_batch=2)
    model.hold_after(1)
    short_params = SamplingParams(max_tokens=10, temperature=0)
    short = engine.submit([1, 2], short_params)
    stream = short.events(timeout=WAIT)
    first = next(stream)
    model.wait_arrivals(2)  # the loop holds in its first decode step
    long_params = SamplingParams(max_tokens=30, temperature=0)
    long = engine.submit(prompt_of(20), long_params)
    model.release()
    assert tokens_of([first, *stream]) == tokens_of(run_alone(windowed, [1, 2], short_params))
    assert tokens_of(collect(long)) == tokens_of(run_alone(windowed, prompt_of(20), long_params))
    # The long prompt was prefilled at once but joined only after the short row's 9 decode
    # steps: none of its 29 steps ran beside them.
    assert model.shapes[:3] == [(1, 2), (1, 1), (1, 20)]
    assert model.shapes.count((1, 1)) == 9 + 29
    assert (2, 1) not in model.shapes  # never two rows at once


def test_a_full_cache_is_trimmed_without_changing_any_output(
    qwen: nn.Module, make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lego.serve.slots import SlotCache

    trims: list[tuple[bool, int]] = []  # (was the cache full, columns dropped)
    trim = SlotCache.trim

    def recording(self: SlotCache, *, force: bool = False) -> int:
        full = self.seq_len >= self.max_seq_len
        dropped = trim(self, force=force)
        trims.append((full, dropped))
        return dropped

    monkeypatch.setattr(SlotCache, "trim", recording)
    engine = make_engine(qwen, start=False, max_batch=3, max_seq_len=32)
    specs = [(2 + (7 * i) % 17, 3 + (11 * i) % 13) for i in range(14)]  # (prompt, max_tokens)
    requests = [
        engine.submit(prompt_of(n, offset=i), SamplingParams(max_tokens=m, temperature=0))
        for i, (n, m) in enumerate(specs)
    ]
    engine.start()  # all queued first: the schedule is the same on every run
    got = [tokens_of(collect(request)) for request in requests]
    assert any(full and dropped for full, dropped in trims)  # the cache did fill up
    monkeypatch.undo()
    for i, ((n, m), tokens) in enumerate(zip(specs, got, strict=True)):
        expected = run_alone(
            qwen, prompt_of(n, offset=i), SamplingParams(max_tokens=m, temperature=0)
        )
        assert tokens == tokens_of(expected)


def test_rows_move_between_cache_tiers_without_changing_any_output(llama: nn.Module) -> None:
    model = Gated(llama)
    engine = Engine(model=model, tokenizer=Words(), max_batch=8)
    specs = [(3 + i, 2 + 3 * i) for i in range(8)]  # (prompt, max_tokens): they leave in turn
    requests = [
        engine.submit(prompt_of(n, offset=i), SamplingParams(max_tokens=m, temperature=0))
        for i, (n, m) in enumerate(specs)
    ]
    with engine:  # all queued first: one schedule on every run
        got = [tokens_of(collect(request)) for request in requests]
    steps = [b for b, t in model.shapes if t == 1]
    # 8 prefills fill the 8-row cache; at 2 running rows they move to the 2-row cache.
    assert steps[0] == 8
    assert 2 in steps
    assert steps == sorted(steps, reverse=True)
    for i, ((n, m), tokens) in enumerate(zip(specs, got, strict=True)):
        expected = generate(llama, torch.tensor([prompt_of(n, offset=i)]), max_new_tokens=m)  # type: ignore[arg-type]
        assert tokens == expected[0, n:].tolist()


def test_a_busy_random_mix_keeps_every_contract(llama: nn.Module) -> None:
    """24 requests: random prompts, settings, arrival steps and cancellations, 4 slots,
    a 64-column cache and 5-token prefill chunks (tiers, chunks, gaps, trims, recomputes,
    cancels all at once); every stream is well formed and greedy ones equal generate()."""
    import random

    rng = random.Random(0)
    engine = Engine(
        model=llama,  # type: ignore[arg-type]
        tokenizer=Words(),
        max_batch=4,
        max_seq_len=64,
        prefill_chunk=5,
        prefill_budget=12,
    )
    specs: list[tuple[list[int], SamplingParams, int | None]] = []
    for i in range(24):
        length = rng.randint(1, 40)
        params = SamplingParams(
            max_tokens=rng.randint(1, 64 - length),
            temperature=rng.choice([0.0, 0.0, 0.8, 1.2]),
            top_p=rng.choice([1.0, 0.9]),
            seed=i,
            logprobs=rng.choice([None, 0, 2]),
            prompt_logprobs=rng.choice([None, 1]),
            stop=rng.choice([(), (" w5",)]),
        )
        cancel_after = rng.choice([None, None, None, rng.randint(0, 5)])
        specs.append((prompt_of(length, offset=i), params, cancel_after))
    results: list[list[Event]] = [[] for _ in specs]

    def consume(index: int, request: Request, cancel_after: int | None) -> None:
        for event in request.events(timeout=WAIT):
            results[index].append(event)
            if cancel_after is not None and len(results[index]) > cancel_after:
                request.cancel()

    threads: list[threading.Thread] = []
    with engine:
        for index, (prompt, params, cancel_after) in enumerate(specs):
            request = engine.submit(prompt, params)
            thread = threading.Thread(target=consume, args=(index, request, cancel_after))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(WAIT)
    for (prompt, params, cancel_after), events in zip(specs, results, strict=True):
        finishes = [e for e in events if isinstance(e, Finish)]
        assert len(finishes) == 1
        assert events[-1] is finishes[0]
        finish = finishes[0]
        assert finish.error is None or finish.reason == "cancelled"
        assert finish.prompt_tokens == len(prompt)
        tokens = tokens_of(events)
        assert len(tokens) == finish.completion_tokens <= params.max_tokens
        if params.prompt_logprobs is not None and tokens:
            assert isinstance(events[0], PromptLogprobs)
        for event in events:
            if isinstance(event, TokenOutput):
                assert (event.logprob is None) == (params.logprobs is None)
        if params.stop:
            assert params.stop[0] not in text_of(events)
        if cancel_after is None:
            assert finish.reason in ("stop", "length")
            if finish.reason == "length":
                assert len(tokens) == params.max_tokens
            if params.temperature == 0 and not params.stop:
                expected = generate(llama, torch.tensor([prompt]), max_new_tokens=len(tokens))  # type: ignore[arg-type]
                assert tokens == expected[0, len(prompt) :].tolist()


def test_slot_cache_places_right_aligned_with_gaps_and_trims() -> None:
    from lego.layers import StaticKVCache
    from lego.serve.slots import SlotCache

    def cache(rows: int) -> StaticKVCache:
        return StaticKVCache(n_layers=2, batch_size=rows, max_seq_len=8, n_kv_heads=1, head_dim=1)

    def prompt(values: list[float]) -> StaticKVCache:
        one = cache(1)
        k = torch.tensor(values).view(1, 1, -1, 1)
        for layer in range(2):
            one[layer].update(k, -k)
        return one

    batch = cache(3)
    slots = SlotCache(batch, device=torch.device("cpu"))
    slots.place(1, prompt([1, 2]))
    assert slots.advance().tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]
    for layer in range(2):  # what a decode step writes
        slots.cache[layer].update(torch.full((3, 1, 1, 1), 9.0), torch.zeros(3, 1, 1, 1))
    slots.place(0, prompt([5]))  # right-aligned: column 2
    assert slots.first == [2, 0, 0]
    slots.place(2, prompt([6, 7, 8, 4]))  # longer than the batch: column 0, a gap for the rest
    assert slots.seq_len == 4
    assert slots.mask[:, :4].tolist() == [[0, 0, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch[1].k_cache[:, 0, :4, 0].tolist() == [
        [0, 0, 5, 0],
        [1, 2, 9, 0],
        [6, 7, 8, 4],
    ]
    assert slots.trim(force=True) == 0  # rows 1 and 2 begin at column 0
    slots.free(1)
    slots.free(2)
    assert slots.leading_padding() == 2
    assert slots.trim() == 2
    assert slots.seq_len == 2
    assert slots.first == [0, 0, 0]
    assert slots.mask[0, :2].tolist() == [1, 0]
    assert batch[0].k_cache[0, 0, :1, 0].tolist() == [5]
    assert slots.free_slots() == [1, 2]
    assert slots.running() == 1
    for _ in range(6):
        slots.advance()
        for layer in range(2):
            slots.cache[layer].update(torch.zeros(3, 1, 1, 1), torch.zeros(3, 1, 1, 1))
    assert slots.seq_len == 8
    assert slots.blocked() == [0]
    mapping = slots.move_to(cache(1))  # to a 1-row cache: the running row goes to row 0
    assert mapping == {0: 0}
    assert slots.batch_size == 1
    assert slots.seq_len == 8
    assert slots.mask.tolist() == [[1, 0, 1, 1, 1, 1, 1, 1]]
    bigger = cache(4)
    assert slots.move_to(bigger) == {0: 0}
    assert bigger[0].k_cache[0, 0, :1, 0].tolist() == [5]
    slots.free(0)
    assert slots.seq_len == 0
    assert not slots.mask.any()


# -- consumers -------------------------------------------------------------------------------


def test_async_consumption_matches_sync(llama: nn.Module, make_engine: Any) -> None:
    engine = make_engine(llama, max_batch=3)
    prompts = [prompt_of(n, offset=n) for n in (4, 15, 8, 2)]
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=9, logprobs=1)

    async def main() -> list[list[Event]]:
        requests = [engine.submit(p, params) for p in prompts]

        async def drain(request: Request) -> list[Event]:
            return [event async for event in request]

        return list(await asyncio.gather(*(drain(r) for r in requests)))

    got = asyncio.run(main())
    for prompt, events in zip(prompts, got, strict=True):
        assert isinstance(events[-1], Finish)
        again = collect(engine.submit(prompt, params))  # sync, in another batch
        assert tokens_of(events) == tokens_of(again)
        assert text_of(events) == text_of(again)
        assert events[-1] == again[-1]
        for mine, theirs in zip(events[:-1], again[:-1], strict=True):  # padding: float noise
            assert isinstance(mine, TokenOutput)
            assert isinstance(theirs, TokenOutput)
            assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-5)


def test_a_sync_timeout_cancels_the_request(llama: nn.Module, make_engine: Any) -> None:
    model = Gated(llama)
    engine = make_engine(model)
    model.hold_after(0)
    request = engine.submit([1, 2], SamplingParams(max_tokens=3))
    events = list(request.events(timeout=0.05))
    assert request.cancelled
    model.release()
    finish = finish_of(events)
    assert finish.reason == "cancelled"
    assert "no event within 0.05 s" in str(finish.error)


# -- packed prefill ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "qwen"])
def test_a_burst_is_prefilled_packed_and_each_request_decodes_as_alone(
    name: str, request: pytest.FixtureRequest, make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = request.getfixturevalue(name)
    engine = make_engine(model, max_batch=8, start=False, prefill_chunk=16)
    packs: list[list[int]] = []
    original = engine._prefill_pack

    def spy(requests: list[Request]) -> None:
        packs.append([len(r.prompt_ids) for r in requests])
        original(requests)

    monkeypatch.setattr(engine, "_prefill_pack", spy)
    prompts = [prompt_of(n, offset=n) for n in (5, 30, 1, 12, 7)]  # 30: longer than a chunk
    params = SamplingParams(max_tokens=12, temperature=0, logprobs=2)
    requests = [engine.submit(p, params) for p in prompts]
    engine.start()
    got = [collect(r) for r in requests]
    assert packs == [[5, 30, 1, 12, 7]]  # one forward for the whole burst
    for prompt, events in zip(prompts, got, strict=True):
        alone = run_alone(model, prompt, params)
        assert tokens_of(events) == tokens_of(alone)
        expected = generate(model, torch.tensor([prompt]), max_new_tokens=12)[0, len(prompt) :]
        assert tokens_of(events) == expected.tolist()
        first, first_alone = events[0], alone[0]
        assert isinstance(first, TokenOutput)
        assert isinstance(first_alone, TokenOutput)
        assert first.logprob == pytest.approx(first_alone.logprob, abs=1e-4)


def test_packs_take_queued_prompts_in_order_within_the_budget(
    llama: nn.Module, make_engine: Any
) -> None:
    engine = make_engine(llama, max_batch=4, start=False)
    plain = SamplingParams(max_tokens=4, temperature=0)
    scored = SamplingParams(max_tokens=4, temperature=0, prompt_logprobs=1)
    queued = [
        engine.submit(prompt_of(8), plain),
        engine.submit(prompt_of(8), plain),
        engine.submit(prompt_of(8), plain),
        engine.submit(prompt_of(3), plain),
        engine.submit(prompt_of(2), scored),
        engine.submit(prompt_of(2), plain),
    ]
    assert engine._next_pack(20) == queued[:2]  # a third prompt of 8 would pass 20 tokens
    assert engine._next_pack(10) == []  # 8 + 3 > 10: one request is prefilled alone
    assert engine._next_pack(None) == queued[2:4]  # prompt log-probabilities end a pack
    assert engine._next_pack(None) == []  # the scored request goes alone
    engine._queue.popleft()
    assert engine._next_pack(None) == []  # one request left: alone, in chunks
    full = make_engine(llama, max_batch=2, start=False)
    three = [full.submit(prompt_of(4), plain) for _ in range(3)]
    assert full._next_pack(None) == three[:2]  # no more than the free slots


def test_a_model_without_document_ids_prefills_one_prompt_at_a_time(
    llama: nn.Module, make_engine: Any
) -> None:
    engine = make_engine(Gated(llama), max_batch=4, start=False)
    for n in (3, 4):
        engine.submit(prompt_of(n), SamplingParams(max_tokens=2, temperature=0))
    assert engine._next_pack(None) == []


def test_an_idle_engine_gathers_requests_sent_together_into_one_pack(
    llama: nn.Module, make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a long gathering window: the wait ends when max_batch requests wait, not on a clock
    engine = make_engine(llama, max_batch=3, prefill_gather=1.0)
    packs: list[int] = []
    original = engine._prefill_pack

    def spy(requests: list[Request]) -> None:
        packs.append(len(requests))
        original(requests)

    monkeypatch.setattr(engine, "_prefill_pack", spy)
    params = SamplingParams(max_tokens=3, temperature=0)
    requests = [engine.submit(prompt_of(4 + i), params) for i in range(3)]
    assert all(finish_of(collect(r)).reason == "length" for r in requests)
    assert packs == [3]


@pytest.mark.parametrize("value", [-0.1, 2.0, True])
def test_prefill_gather_out_of_range_is_refused(llama: nn.Module, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Engine(model=llama, tokenizer=Words(), prefill_gather=value)  # type: ignore[arg-type]
    assert info.value.key == "prefill_gather"
