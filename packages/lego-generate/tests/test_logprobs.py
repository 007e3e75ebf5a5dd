from __future__ import annotations

import pytest
import torch

from lego.generate import TokenLogprobs, chosen_logprobs
from lego.protocols import ConfigError


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_equals_log_softmax_in_float64(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 50, generator=gen) * 3).to(dtype)
    tokens = torch.randint(0, 50, (4,), generator=gen)
    out = chosen_logprobs(logits, tokens, top=5)
    assert isinstance(out, TokenLogprobs)
    reference = torch.log_softmax(logits.double(), dim=-1)  # the same (rounded) logits
    assert out.logprob.dtype == out.top_logprobs.dtype == torch.float32
    assert out.logprob.shape == (4,)
    torch.testing.assert_close(
        out.logprob.double(), reference[torch.arange(4), tokens], rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        out.top_logprobs.double(), reference.gather(-1, out.top_ids), rtol=0, atol=1e-6
    )


def test_top_is_ordered_most_likely_first() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 4.0, 6.0, -1.0]])
    out = chosen_logprobs(logits, torch.tensor([0, 3]), top=3)
    assert out.top_ids.dtype == torch.long
    assert out.top_ids.tolist() == [[1, 3, 2], [2, 0, 1]]
    assert bool((out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all())
    # every top log-prob is at least the chosen token's when the chosen one is not in the top
    assert bool((out.top_logprobs[:, -1] >= out.logprob).all())
    full = chosen_logprobs(logits, torch.tensor([0, 3]), top=4)
    torch.testing.assert_close(full.top_logprobs.exp().sum(-1), torch.ones(2))


def test_top_zero_has_shape_b_by_0() -> None:
    out = chosen_logprobs(torch.randn(3, 7), torch.tensor([0, 1, 6]))
    assert out.top_ids.shape == (3, 0)
    assert out.top_ids.dtype == torch.long
    assert out.top_logprobs.shape == (3, 0)
    assert out.top_logprobs.dtype == torch.float32
    assert out.logprob.shape == (3,)


def test_masked_tokens_get_minus_infinity() -> None:
    logits = torch.tensor([[0.0, float("-inf"), 0.0]])
    out = chosen_logprobs(logits, torch.tensor([1]), top=2)
    assert out.logprob.item() == float("-inf")
    assert set(out.top_ids[0].tolist()) == {0, 2}
    torch.testing.assert_close(out.top_logprobs, torch.full((1, 2), -0.6931472))


@pytest.mark.parametrize(
    ("logits", "tokens", "top", "key"),
    [
        (torch.randn(2, 3, 5), torch.tensor([0, 1]), 0, "logits"),  # 3-D
        (torch.randn(5), torch.tensor([0]), 0, "logits"),  # 1-D
        (torch.arange(10).view(2, 5), torch.tensor([0, 1]), 0, "logits"),  # integers
        ([[0.0, 1.0]], torch.tensor([0]), 0, "logits"),  # not a tensor
        (torch.randn(2, 5), torch.tensor([0]), 0, "tokens"),  # one row short
        (torch.randn(2, 5), torch.tensor([[0], [1]]), 0, "tokens"),  # 2-D
        (torch.randn(2, 5), torch.tensor([0.0, 1.0]), 0, "tokens"),  # float
        (torch.randn(2, 5), torch.tensor([0, 5]), 0, "tokens"),  # out of range
        (torch.randn(2, 5), torch.tensor([-1, 0]), 0, "tokens"),  # negative
        (torch.randn(2, 5), torch.tensor([0, 1]), 6, "top"),  # more than V
        (torch.randn(2, 5), torch.tensor([0, 1]), -1, "top"),
    ],
)
def test_bad_input(logits: object, tokens: object, top: int, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        chosen_logprobs(logits, tokens, top=top)  # type: ignore[arg-type]
    assert info.value.key == key
