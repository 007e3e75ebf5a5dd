from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lego.layers import MLP, ExpertList, GatedExperts, GatedMLP, MoEFeedForward, SwiGLU, TopKRouter
from lego.protocols import ConfigError, DataError, FeedForward


def make_moe(
    *,
    d_model: int = 8,
    d_ff: int = 12,
    n_experts: int = 4,
    top_k: int = 2,
    norm: bool = True,
    shared: bool = False,
    coef: float = 0.01,
) -> MoEFeedForward:
    return MoEFeedForward(
        router=TopKRouter(d_model=d_model, n_experts=n_experts, top_k=top_k, norm_topk_prob=norm),
        experts=GatedExperts(n_experts=n_experts, d_model=d_model, d_ff=d_ff),
        shared_expert=SwiGLU.build(d_model=d_model, d_ff=d_ff) if shared else None,
        aux_loss_coef=coef,
    )


def per_token_reference(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The definition, one token at a time, in float64."""
    experts = moe.experts
    assert isinstance(experts, GatedExperts)
    w_router = moe.router.weight.double()
    flat = x.reshape(-1, x.shape[-1]).double()
    rows = []
    for token in flat:
        probs = torch.softmax(w_router @ token, dim=-1)
        top, idx = torch.topk(probs, moe.top_k)
        if moe.router.norm_topk_prob:
            top = top / top.sum()
        y = torch.zeros_like(token)
        for weight, e in zip(top.tolist(), idx.tolist(), strict=True):
            gate = experts.gate_proj[e].double() @ token
            up = experts.up_proj[e].double() @ token
            y = y + weight * (experts.down_proj[e].double() @ (torch.nn.functional.silu(gate) * up))
        rows.append(y)
    return torch.stack(rows).view(x.shape)


def test_moe_satisfies_the_protocol() -> None:
    assert isinstance(make_moe(), FeedForward)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize(("n_experts", "top_k"), [(4, 2), (5, 1), (3, 3), (8, 3)])
def test_moe_equals_a_per_token_loop(norm: bool, n_experts: int, top_k: int) -> None:
    moe = make_moe(n_experts=n_experts, top_k=top_k, norm=norm)
    x = torch.randn(3, 7, 8)
    y = moe(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.double(), per_token_reference(moe, x), rtol=1e-5, atol=1e-5)


def test_moe_dtypes(dtype: torch.dtype) -> None:
    moe = make_moe()
    x = torch.randn(2, 5, 8)
    reference = per_token_reference(moe, x)
    moe = moe.to(dtype)
    y = moe(x.to(dtype))
    assert y.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(y.double(), reference, rtol=1e-5, atol=1e-5)
    else:  # bf16 can flip near-tied routing choices; compare where the routing agrees
        assert torch.isfinite(y).all()
        close = torch.isclose(y.double(), reference, rtol=5e-2, atol=5e-2).all(dim=-1)
        assert close.float().mean() > 0.8


def test_every_token_reaches_exactly_k_experts() -> None:
    moe = make_moe(n_experts=6, top_k=2)
    x = torch.randn(4, 9, 8)
    moe(x)
    assert moe.expert_counts is not None
    assert int(moe.expert_counts.sum()) == 4 * 9 * 2
    # zeroing one expert's output changes exactly the tokens routed to it
    route = moe.router(x.reshape(-1, 8))
    expert = int(route.indices[0, 0])
    before = moe(x).reshape(-1, 8)
    assert isinstance(moe.experts, GatedExperts)
    with torch.no_grad():
        moe.experts.down_proj[expert].zero_()
    after = moe(x).reshape(-1, 8)
    changed = ~torch.isclose(before, after).all(dim=-1)
    routed = (route.indices == expert).any(dim=-1)
    assert torch.equal(changed, routed)


def test_shared_expert_adds_its_output() -> None:
    moe = make_moe(shared=True)
    x = torch.randn(2, 4, 8)
    routed_only = MoEFeedForward(router=moe.router, experts=moe.experts)
    assert moe.shared_expert is not None
    torch.testing.assert_close(moe(x), routed_only(x) + moe.shared_expert(x))


def test_shared_expert_gate_scales_by_sigmoid() -> None:
    router = TopKRouter(d_model=8, n_experts=4, top_k=2, norm_topk_prob=False)
    experts = GatedExperts(n_experts=4, d_model=8, d_ff=12)
    shared = SwiGLU.build(d_model=8, d_ff=6)
    gate = torch.nn.Linear(8, 1, bias=False)
    moe = MoEFeedForward(
        router=router, experts=experts, shared_expert=shared, shared_expert_gate=gate
    )
    x = torch.randn(2, 3, 8)
    expected = MoEFeedForward(router=router, experts=experts)(x) + torch.sigmoid(gate(x)) * shared(
        x
    )
    torch.testing.assert_close(moe(x), expected)


def test_aux_loss_is_minimal_for_uniform_routing() -> None:
    moe = make_moe(n_experts=4, top_k=2, coef=0.5)
    with torch.no_grad():
        moe.router.weight.zero_()  # every token: uniform probabilities
    moe(torch.randn(3, 5, 8))
    assert moe.balance_loss is not None
    assert moe.aux_loss is not None
    assert moe.balance_loss.item() == pytest.approx(2.0)  # its minimum, top_k
    assert moe.aux_loss.item() == pytest.approx(1.0)


def test_aux_loss_grows_when_routing_collapses_and_has_a_gradient() -> None:
    moe = make_moe(n_experts=4, top_k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 10.0  # positive inputs all prefer expert 0
    moe(torch.rand(2, 6, 8) + 0.1)
    assert moe.balance_loss is not None
    assert moe.balance_loss.item() > 3.5  # close to n_experts * 1 * 1
    assert moe.aux_loss is not None
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None
    assert moe.router.weight.grad.abs().sum() > 0


def test_router_logits_are_kept() -> None:
    moe = make_moe()
    x = torch.randn(2, 3, 8)
    moe(x)
    assert moe.router_logits is not None
    torch.testing.assert_close(moe.router_logits, x.reshape(-1, 8) @ moe.router.weight.T)


def test_expert_list_equals_stacked_experts_with_the_same_weights() -> None:
    stacked = make_moe(n_experts=3, top_k=2)
    assert isinstance(stacked.experts, GatedExperts)
    mlps = []
    for e in range(3):
        mlp = GatedMLP.build(d_model=8, d_ff=12)
        with torch.no_grad():
            mlp.gate_proj.weight.copy_(stacked.experts.gate_proj[e])
            mlp.up_proj.weight.copy_(stacked.experts.up_proj[e])
            mlp.down_proj.weight.copy_(stacked.experts.down_proj[e])
        mlps.append(mlp)
    listed = MoEFeedForward(router=stacked.router, experts=ExpertList(experts=mlps))
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(listed(x), stacked(x))


def test_heterogeneous_experts_work() -> None:
    experts = ExpertList(experts=[MLP.build(d_model=8, d_ff=4), SwiGLU.build(d_model=8, d_ff=16)])
    moe = MoEFeedForward(
        router=TopKRouter(d_model=8, n_experts=2, top_k=1, norm_topk_prob=True), experts=experts
    )
    assert moe(torch.randn(1, 5, 8)).shape == (1, 5, 8)


def test_gradients_reach_router_and_experts() -> None:
    moe = make_moe(norm=False)
    moe(torch.randn(2, 5, 8)).square().sum().backward()
    assert isinstance(moe.experts, GatedExperts)
    for param in (
        moe.router.weight,
        moe.experts.gate_proj,
        moe.experts.up_proj,
        moe.experts.down_proj,
    ):
        assert param.grad is not None
        assert param.grad.abs().sum() > 0


def test_gradcheck() -> None:
    moe = make_moe(d_model=4, d_ff=5, n_experts=3, top_k=2, norm=True).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: moe(t), (x,))
    params = (moe.router.weight,)
    assert torch.autograd.gradcheck(
        lambda w: torch.func.functional_call(moe, {"router.weight": w}, (x.detach(),)), params
    )


def test_empty_input() -> None:
    moe = make_moe()
    y = moe(torch.randn(2, 0, 8))
    assert y.shape == (2, 0, 8)


def test_bad_config() -> None:
    router = TopKRouter(d_model=8, n_experts=4, top_k=2, norm_topk_prob=True)
    with pytest.raises(ConfigError, match="router has 4 experts but the expert bank has 3") as info:
        MoEFeedForward(router=router, experts=GatedExperts(n_experts=3, d_model=8, d_ff=4))
    assert info.value.key == "experts"
    experts = GatedExperts(n_experts=4, d_model=8, d_ff=4)
    with pytest.raises(ConfigError, match="aux_loss_coef") as info:
        MoEFeedForward(router=router, experts=experts, aux_loss_coef=-0.1)
    with pytest.raises(ConfigError, match="without a shared_expert"):
        MoEFeedForward(router=router, experts=experts, shared_expert_gate=torch.nn.Linear(8, 1))


def test_wrong_width_is_a_data_error(assert_close: Callable[..., None]) -> None:
    with pytest.raises(DataError, match="last dimension 8"):
        make_moe()(torch.randn(1, 2, 6))
