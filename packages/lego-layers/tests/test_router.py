from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.layers import TopKRouter, load_balancing_loss
from lego.protocols import ConfigError, DataError


@settings(max_examples=20, deadline=None)
@given(n_experts=st.integers(1, 9), data=st.data(), norm=st.booleans())
def test_each_token_gets_k_distinct_experts(
    n_experts: int, data: st.DataObject, norm: bool
) -> None:
    top_k = data.draw(st.integers(1, n_experts))
    router = TopKRouter(d_model=6, n_experts=n_experts, top_k=top_k, norm_topk_prob=norm)
    out = router(torch.randn(2, 7, 6))
    assert out.indices.shape == (14, top_k)
    assert out.weights.shape == (14, top_k)
    for row in out.indices.tolist():
        assert len(set(row)) == top_k
        assert all(0 <= e < n_experts for e in row)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(14))
    if norm:
        torch.testing.assert_close(out.weights.sum(-1), torch.ones(14))
    else:
        mass = torch.topk(out.probs, top_k, dim=-1).values.sum(-1)
        torch.testing.assert_close(out.weights.sum(-1), mass)


def test_router_matches_softmax_topk_reference() -> None:
    router = TopKRouter(d_model=5, n_experts=6, top_k=2, norm_topk_prob=False)
    x = torch.randn(10, 5)
    out = router(x)
    logits = x @ router.weight.T
    probs = torch.softmax(logits.double(), dim=-1)
    top, idx = torch.topk(probs, 2, dim=-1)
    torch.testing.assert_close(out.logits, logits)
    assert out.probs.dtype == torch.float32
    torch.testing.assert_close(out.probs, probs.float())
    assert torch.equal(out.indices, idx)
    torch.testing.assert_close(out.weights, top.float())


def test_router_weights_in_input_dtype_probs_in_fp32() -> None:
    router = TopKRouter(d_model=4, n_experts=4, top_k=2, norm_topk_prob=True).to(torch.bfloat16)
    out = router(torch.randn(3, 4).to(torch.bfloat16))
    assert out.weights.dtype == torch.bfloat16
    assert out.probs.dtype == torch.float32
    assert out.logits.dtype == torch.bfloat16


def test_router_bad_config() -> None:
    with pytest.raises(ConfigError, match=r"top_k \(5\) cannot exceed n_experts \(4\)") as info:
        TopKRouter(d_model=4, n_experts=4, top_k=5, norm_topk_prob=True)
    assert info.value.key == "top_k"
    with pytest.raises(ConfigError, match="top_k must be at least 1"):
        TopKRouter(d_model=4, n_experts=4, top_k=0, norm_topk_prob=True)
    with pytest.raises(ConfigError, match="n_experts"):
        TopKRouter(d_model=4, n_experts=0, top_k=1, norm_topk_prob=True)


def lb_reference(probs: torch.Tensor, indices: torch.Tensor, n_experts: int) -> float:
    n = probs.shape[0]
    total = 0.0
    for e in range(n_experts):
        f = sum(1 for row in indices.tolist() if e in row) / n
        p = probs[:, e].double().mean().item()
        total += f * p
    return n_experts * total


def test_balance_loss_equals_the_formula() -> None:
    probs = torch.softmax(torch.randn(12, 5), dim=-1)
    indices = torch.topk(probs, 2, dim=-1).indices
    loss = load_balancing_loss(probs, indices, n_experts=5)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(lb_reference(probs, indices, 5), rel=1e-6)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_balance_loss_is_top_k_for_uniform_routing(top_k: int) -> None:
    n_experts, n_tokens = 8, 16
    probs = torch.full((n_tokens, n_experts), 1 / n_experts)
    # balanced assignment: token t goes to experts t, t+1, ... (mod E)
    indices = (torch.arange(n_tokens)[:, None] + torch.arange(top_k)[None, :]) % n_experts
    loss = load_balancing_loss(probs, indices, n_experts=n_experts)
    assert loss.item() == pytest.approx(top_k)
    # every token on the same experts but uniform probabilities: still the minimum
    same = torch.arange(top_k).expand(n_tokens, top_k)
    assert load_balancing_loss(probs, same, n_experts=n_experts).item() == pytest.approx(top_k)


def test_balance_loss_penalizes_collapse() -> None:
    n_experts = 4
    probs = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).expand(8, 4)
    indices = torch.zeros(8, 1, dtype=torch.long)
    assert load_balancing_loss(probs, indices, n_experts=n_experts).item() == pytest.approx(
        4 * 0.97
    )


def test_balance_loss_mask_drops_padding() -> None:
    probs = torch.softmax(torch.randn(6, 3), dim=-1)
    indices = torch.topk(probs, 1, dim=-1).indices
    mask = torch.tensor([1, 1, 0, 1, 0, 1])
    keep = mask.bool()
    masked = load_balancing_loss(probs, indices, n_experts=3, token_mask=mask)
    direct = load_balancing_loss(probs[keep], indices[keep], n_experts=3)
    torch.testing.assert_close(masked, direct)


def test_balance_loss_gradient_flows_to_probs_only() -> None:
    logits = torch.randn(5, 4, requires_grad=True)
    probs = torch.softmax(logits, dim=-1)
    indices = torch.topk(probs, 2, dim=-1).indices
    load_balancing_loss(probs, indices, n_experts=4).backward()
    assert logits.grad is not None
    assert logits.grad.abs().sum() > 0


def test_balance_loss_bad_inputs() -> None:
    with pytest.raises(DataError, match="expected probs"):
        load_balancing_loss(torch.rand(3, 4), torch.zeros(3, 1, dtype=torch.long), n_experts=5)
    with pytest.raises(DataError, match="tokens"):
        load_balancing_loss(torch.rand(3, 4), torch.zeros(2, 1, dtype=torch.long), n_experts=4)
    with pytest.raises(DataError, match="selects no token"):
        load_balancing_loss(
            torch.rand(2, 4),
            torch.zeros(2, 1, dtype=torch.long),
            n_experts=4,
            token_mask=torch.zeros(2),
        )
    with pytest.raises(DataError, match="token_mask must have shape"):
        load_balancing_loss(
            torch.rand(2, 4),
            torch.zeros(2, 1, dtype=torch.long),
            n_experts=4,
            token_mask=torch.ones(3),
        )
