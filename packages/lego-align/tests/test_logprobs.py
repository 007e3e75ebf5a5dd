from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from lego.align import (
    HeadInputs,
    SequenceLogprobs,
    build_completion_batch,
    build_preference_batch,
    sequence_logprobs,
    token_logprobs,
)
from lego.protocols import CausalLM, ConfigError, DataError

PAIRS = [
    {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
    {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11]},
]


# -- the batch ----------------------------------------------------------------------------


def test_trl_layout_right_padding() -> None:
    # The example of TRL's DataCollatorForPreference docstring (no EOS appended).
    batch = build_preference_batch(PAIRS, pad_id=0, eos_id=None)
    assert batch.input_ids.tolist() == [
        [1, 2, 3, 4, 5],
        [7, 8, 9, 0, 0],
        [1, 2, 3, 6, 0],
        [7, 8, 10, 11, 0],
    ]
    assert batch.attention_mask.tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
    ]
    assert batch.completion_mask.tolist() == [
        [0, 0, 0, 1, 1],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 1, 1, 0],
    ]
    assert batch.position_ids.tolist()[1] == [0, 1, 2, 2, 2]
    assert batch.kept == (0, 1)
    assert (batch.truncated, batch.dropped) == (0, 0)
    assert batch.input_ids.dtype == torch.long


def test_eos_appended_only_where_missing() -> None:
    pairs = [{"prompt_ids": [1], "chosen_ids": [4, 12], "rejected_ids": [6]}]
    batch = build_preference_batch(pairs, pad_id=0, eos_id=12)
    assert batch.input_ids.tolist() == [[1, 4, 12], [1, 6, 12]]
    assert batch.completion_mask.tolist() == [[0, 1, 1], [0, 1, 1]]


def test_left_padding_layout() -> None:
    batch = build_preference_batch(PAIRS, pad_id=0, eos_id=None, padding_side="left")
    assert batch.input_ids.tolist()[1] == [0, 0, 7, 8, 9]
    assert batch.attention_mask.tolist()[1] == [0, 0, 1, 1, 1]
    assert batch.completion_mask.tolist()[1] == [0, 0, 0, 0, 1]
    assert batch.position_ids.tolist()[1] == [0, 0, 0, 1, 2]
    assert batch.padding_side == "left"


def test_pad_to_multiple_of() -> None:
    batch = build_preference_batch(PAIRS, pad_id=0, eos_id=None, pad_to_multiple_of=4)
    assert batch.input_ids.shape == (4, 8)
    assert int(batch.attention_mask[:, 5:].sum()) == 0


def test_truncation_cuts_the_prompt_from_the_left_for_both_rows() -> None:
    pairs = [
        {"prompt_ids": [1, 2, 3, 4, 5], "chosen_ids": [6], "rejected_ids": [7, 8]},
        {"prompt_ids": [9], "chosen_ids": [6], "rejected_ids": [7]},
    ]
    batch = build_preference_batch(pairs, pad_id=0, eos_id=12, max_length=5)
    # The longest completion with EOS is [7, 8, 12]: the prompt keeps its last 2 tokens.
    assert batch.input_ids.tolist() == [
        [4, 5, 6, 12, 0],
        [9, 6, 12, 0, 0],
        [4, 5, 7, 8, 12],
        [9, 7, 12, 0, 0],
    ]
    assert batch.completion_mask.tolist()[2] == [0, 0, 1, 1, 1]
    assert (batch.truncated, batch.dropped, batch.kept) == (1, 0, (0, 1))
    assert batch.input_ids.shape[1] <= 5


def test_a_completion_that_cannot_fit_is_dropped_and_counted() -> None:
    pairs = [
        {"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5, 6], "rejected_ids": [7]},
        {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [7]},
    ]
    batch = build_preference_batch(pairs, pad_id=0, eos_id=12, max_length=5)
    # 4 tokens + EOS = 5: no room for a prompt token, the EOS is never cut instead.
    assert batch.kept == (1,)
    assert (batch.truncated, batch.dropped) == (0, 1)
    assert batch.input_ids.tolist() == [[1, 2, 3, 12], [1, 2, 7, 12]]
    with pytest.raises(DataError, match="max_length - 1 = 4") as info:
        build_preference_batch(pairs, pad_id=0, eos_id=12, max_length=5, on_overflow="error")
    assert info.value.key == "chosen_ids"
    with pytest.raises(DataError, match="none of the 1 examples"):
        build_preference_batch(pairs[:1], pad_id=0, eos_id=12, max_length=5)


def test_completion_batch_truncates_and_keeps_eos() -> None:
    batch = build_completion_batch(
        [
            {"prompt_ids": [1, 2, 3, 4], "completion_ids": [5, 6]},
            {"prompt_ids": [1], "completion_ids": [5]},
        ],
        pad_id=0,
        eos_id=9,
        max_length=4,
    )
    assert batch.input_ids.tolist() == [[4, 5, 6, 9], [1, 5, 9, 0]]
    assert batch.truncated == 1


@pytest.mark.parametrize(
    ("example", "key", "message"),
    [
        ({"prompt_ids": [], "chosen_ids": [1], "rejected_ids": [2]}, "prompt_ids", "empty prompt"),
        (
            {"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [2]},
            "chosen_ids",
            "empty completion",
        ),
        ({"prompt_ids": [1], "chosen_ids": [2]}, "rejected_ids", "has no 'rejected_ids'"),
        ({"prompt_ids": [1], "chosen_ids": [-2], "rejected_ids": [2]}, "chosen_ids", "negative"),
        ({"prompt_ids": [1], "chosen_ids": ["x"], "rejected_ids": [2]}, "chosen_ids", "token ids"),
    ],
)
def test_bad_examples(example: dict[str, list[int]], key: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        build_preference_batch([example], pad_id=0, eos_id=12)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"padding_side": "middle"}, "padding_side"),
        ({"max_length": 1}, "max_length"),
        ({"pad_id": -1}, "pad_id"),
        ({"eos_id": -3}, "eos_id"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"),
        ({"on_overflow": "skip"}, "on_overflow"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], key: str) -> None:
    args: dict[str, object] = {"pad_id": 0, "eos_id": 12, **kwargs}
    with pytest.raises(ConfigError) as info:
        build_preference_batch(PAIRS, **args)  # type: ignore[arg-type]
    assert info.value.key == key


def test_no_examples() -> None:
    with pytest.raises(DataError, match="no examples"):
        build_preference_batch([], pad_id=0, eos_id=1)


# -- log-probabilities ----------------------------------------------------------------------


def naive(logits: Tensor, input_ids: Tensor, scored: Tensor) -> Tensor:
    """The unchunked computation: the full float log-softmax, gathered and masked."""
    logp = torch.log_softmax(logits.double(), dim=-1)[:, :-1]  # (B, T-1, V)
    picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return torch.nn.functional.pad(picked * scored[:, 1:], (1, 0))


def test_hand_computed_values() -> None:
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]])
    logits = torch.log(probs) + 3.0  # a shift changes nothing
    ids = torch.tensor([[0, 1, 2]])
    lp = sequence_logprobs(
        lambda _ids, **_: logits, ids, torch.ones(1, 3), torch.tensor([[0, 1, 1]])
    )
    expected = math.log(0.25) + math.log(0.8)
    assert lp.sum.item() == pytest.approx(expected, abs=1e-6)
    assert lp.count.tolist() == [2]
    assert lp.mean.item() == pytest.approx(expected / 2, abs=1e-6)
    assert lp.token_logps[0, 0].item() == 0.0
    assert lp.token_logps[0, 2].item() == pytest.approx(math.log(0.8), abs=1e-6)


def test_tiny_model_is_a_causal_lm(tiny: Any) -> None:
    assert isinstance(tiny, CausalLM)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 64])
def test_chunked_equals_unchunked(tiny: Any, chunk_size: int) -> None:
    batch = build_preference_batch(
        [
            {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5, 6, 7], "rejected_ids": [8]},
            {"prompt_ids": [2], "chosen_ids": [9, 10], "rejected_ids": [11, 3, 4, 5, 6]},
            {"prompt_ids": [5, 6, 7, 8, 9], "chosen_ids": [1], "rejected_ids": [2]},
        ],
        pad_id=0,
        eos_id=12,
    )
    args = (batch.input_ids, batch.attention_mask, batch.completion_mask)
    ours = sequence_logprobs(tiny, *args, chunk_size=chunk_size)
    ours.sum.sum().backward()
    grads = [p.grad.clone() for p in tiny.parameters()]  # type: ignore[union-attr]
    tiny.zero_grad()

    logits = tiny(batch.input_ids, attention_mask=batch.attention_mask)
    scored = (batch.completion_mask * batch.attention_mask).bool()
    reference = naive(logits, batch.input_ids, scored)
    reference.sum().backward()
    torch.testing.assert_close(ours.token_logps.double(), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.sum.double(), reference.sum(dim=1), atol=1e-6, rtol=0)
    assert ours.count.tolist() == scored.sum(dim=1).tolist()
    for ours_grad, p in zip(grads, tiny.parameters(), strict=True):
        torch.testing.assert_close(ours_grad, p.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_head_inputs_equal_logits(tiny: Any, chunk_size: int) -> None:
    batch = build_preference_batch(PAIRS, pad_id=0, eos_id=12)
    args = (batch.input_ids, batch.attention_mask, batch.completion_mask)

    def head_fn(ids: Tensor, *, attention_mask: Tensor, position_ids: Tensor | None) -> HeadInputs:
        hidden = tiny.hidden(ids, attention_mask, position_ids)
        return HeadInputs(hidden, tiny.lm_head.weight, tiny.lm_head.bias)

    by_head = sequence_logprobs(head_fn, *args, chunk_size=chunk_size)
    by_head.sum.sum().backward()
    grads = [p.grad.clone() for p in tiny.parameters()]  # type: ignore[union-attr]
    tiny.zero_grad()
    by_logits = sequence_logprobs(tiny, *args, chunk_size=chunk_size)
    by_logits.sum.sum().backward()
    torch.testing.assert_close(by_head.token_logps, by_logits.token_logps, atol=1e-6, rtol=0)
    for head_grad, p in zip(grads, tiny.parameters(), strict=True):
        torch.testing.assert_close(head_grad, p.grad, atol=1e-6, rtol=0)


def test_gradcheck_logits_path() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    ids = torch.randint(0, 5, (2, 6), generator=gen)
    scored = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 0, 1, 1, 1]], dtype=torch.bool)
    for chunk in (1, 2, 4):
        assert torch.autograd.gradcheck(
            lambda x, c=chunk: token_logprobs(x, ids, scored, chunk_size=c), (logits,)
        )


def test_gradcheck_head_path() -> None:
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)
    ids = torch.randint(0, 7, (2, 5), generator=gen)
    scored = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(
        lambda h, w, b: token_logprobs(HeadInputs(h, w, b), ids, scored, chunk_size=2),
        (hidden, weight, bias),
    )


def test_left_and_right_padding_agree(tiny: Any) -> None:
    right = build_preference_batch(PAIRS, pad_id=0, eos_id=12)
    left = build_preference_batch(PAIRS, pad_id=0, eos_id=12, padding_side="left")
    assert not torch.equal(right.input_ids, left.input_ids)
    lps = [
        sequence_logprobs(
            tiny,
            b.input_ids,
            b.attention_mask,
            b.completion_mask,
            position_ids=b.position_ids,
            chunk_size=2,
        )
        for b in (right, left)
    ]
    torch.testing.assert_close(lps[0].sum, lps[1].sum, atol=1e-6, rtol=0)
    assert lps[0].count.tolist() == lps[1].count.tolist() == [3, 2, 2, 3]


def test_nan_logits_on_padding_do_not_leak() -> None:
    # Left padding: a fully masked query row may come out NaN from the attention.
    batch = build_preference_batch(PAIRS, pad_id=0, eos_id=12, padding_side="left")
    pad = ~batch.attention_mask.bool()  # (B, T)
    logits = torch.randn(*batch.input_ids.shape, 13)
    logits = torch.where(pad[..., None], torch.nan, logits).requires_grad_()
    lp = sequence_logprobs(
        lambda _ids, **_: logits,
        batch.input_ids,
        batch.attention_mask,
        batch.completion_mask,
        chunk_size=2,
    )
    assert bool(torch.isfinite(lp.sum).all())
    lp.sum.sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    assert float(logits.grad[pad].abs().sum()) == 0.0
    assert float(logits.grad.abs().sum()) > 0.0


def test_nan_hidden_states_on_padding_do_not_leak(tiny: Any) -> None:
    batch = build_preference_batch(PAIRS, pad_id=0, eos_id=12, padding_side="left")
    pad = ~batch.attention_mask.bool()  # (B, T)

    def fn(ids: Tensor, *, attention_mask: Tensor, position_ids: Tensor | None) -> HeadInputs:
        hidden = tiny.hidden(ids, attention_mask, position_ids)
        hidden = torch.where(pad[..., None], torch.nan, hidden)
        return HeadInputs(hidden, tiny.lm_head.weight, tiny.lm_head.bias)

    lp = sequence_logprobs(
        fn, batch.input_ids, batch.attention_mask, batch.completion_mask, chunk_size=2
    )
    assert bool(torch.isfinite(lp.sum).all())
    lp.sum.sum().backward()
    for p in tiny.parameters():
        assert bool(torch.isfinite(p.grad).all())
    assert float(tiny.lm_head.weight.grad.abs().sum()) > 0


def test_low_precision_logits_give_float32_logprobs() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 9, generator=gen).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, 9, (2, 4), generator=gen)
    scored = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    out = token_logprobs(logits, ids, scored, chunk_size=1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), naive(logits.float(), ids, scored), atol=1e-6, rtol=0)
    out.sum().backward()
    assert logits.grad is not None
    assert logits.grad.dtype == torch.bfloat16


def saved_bytes(fn: Any) -> tuple[Tensor, int]:
    """Run ``fn()`` and total the bytes autograd saves for the backward pass."""
    seen: dict[int, int] = {}

    def pack(x: Tensor) -> Tensor:
        seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fn()
    return out, sum(seen.values())


def test_the_logits_path_saves_no_float32_copy() -> None:
    b, t, v = 2, 64, 1000
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(b, t, v, generator=gen).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, v, (b, t), generator=gen)
    scored = torch.ones(b, t, dtype=torch.bool)
    _, ours = saved_bytes(lambda: token_logprobs(logits, ids, scored, chunk_size=8))
    _, plain = saved_bytes(lambda: naive(logits.float(), ids, scored))
    logits_bytes = b * t * v * 2  # the bf16 logits themselves
    small = b * t * 8 * 4  # per-position tensors: targets, mask, log-sum-exp
    assert ours <= logits_bytes + small
    assert plain >= b * (t - 1) * v * 4  # a float32 (B, T-1, V) log-softmax at least


def test_no_grad_for_the_reference(tiny: Any) -> None:
    batch = build_preference_batch(PAIRS, pad_id=0, eos_id=12)
    with torch.no_grad():
        lp = sequence_logprobs(tiny, batch.input_ids, batch.attention_mask, batch.completion_mask)
    assert not lp.sum.requires_grad


def test_nothing_scored_still_backpropagates(tiny: Any) -> None:
    ids = torch.tensor([[1, 2, 3]])
    mask = torch.ones_like(ids)
    lp = sequence_logprobs(tiny, ids, mask, torch.zeros_like(ids))
    assert lp.sum.tolist() == [0.0]
    assert lp.mean.tolist() == [0.0]
    lp.sum.sum().backward()  # no error: connected to the graph, zero gradient
    assert float(tiny.lm_head.weight.grad.abs().sum()) == 0.0  # type: ignore[union-attr]


def test_chunk_splits_chosen_and_rejected(tiny: Any) -> None:
    batch = build_preference_batch(PAIRS, pad_id=0, eos_id=12)
    lp = sequence_logprobs(tiny, batch.input_ids, batch.attention_mask, batch.completion_mask)
    chosen, rejected = lp.chunk()
    assert isinstance(chosen, SequenceLogprobs)
    assert chosen.count.tolist() == [3, 2]
    assert rejected.count.tolist() == [2, 3]
    torch.testing.assert_close(torch.cat([chosen.sum, rejected.sum]), lp.sum)
    with pytest.raises(ConfigError, match="do not split"):
        lp.chunk(3)


def test_completion_at_position_zero_is_refused(tiny: Any) -> None:
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(DataError, match="no context") as info:
        sequence_logprobs(tiny, ids, torch.ones_like(ids), torch.ones_like(ids))
    assert info.value.tensor == "completion_mask"


def test_shape_errors(tiny: Any) -> None:
    ids = torch.tensor([[1, 2, 3]])
    ones = torch.ones_like(ids)
    with pytest.raises(ConfigError) as info:
        sequence_logprobs(tiny, ids, torch.ones(1, 4), ones)
    assert info.value.key == "attention_mask"
    with pytest.raises(ConfigError) as info:
        sequence_logprobs(tiny, ids, ones, ones[:, :2])
    assert info.value.key == "completion_mask"
    with pytest.raises(ConfigError) as info:
        sequence_logprobs(tiny, ids, ones, ones, chunk_size=0)
    assert info.value.key == "chunk_size"
    with pytest.raises(ConfigError, match="logits of shape"):
        sequence_logprobs(lambda x, **_: torch.zeros(1, 2, 13), ids, ones, ones * 0)
    with pytest.raises(ConfigError, match="not logits or HeadInputs"):
        sequence_logprobs(lambda x, **_: (torch.zeros(1, 3, 13),), ids, ones, ones * 0)
