from __future__ import annotations

import pytest
import torch

from lego.layers import MLP, ExpertList, GatedExperts, GatedMLP
from lego.protocols import ConfigError, DataError


def test_each_stacked_expert_is_a_gated_mlp() -> None:
    bank = GatedExperts(n_experts=3, d_model=6, d_ff=10, activation="gelu_tanh")
    x = torch.randn(5, 6)
    for e in range(3):
        mlp = GatedMLP.build(d_model=6, d_ff=10, activation="gelu_tanh")
        with torch.no_grad():
            mlp.gate_proj.weight.copy_(bank.gate_proj[e])
            mlp.up_proj.weight.copy_(bank.up_proj[e])
            mlp.down_proj.weight.copy_(bank.down_proj[e])
        torch.testing.assert_close(bank.expert(e, x), mlp(x))
    assert bank.gate_proj.shape == (3, 10, 6)
    assert bank.down_proj.shape == (3, 6, 10)


def test_forward_runs_each_expert_on_its_slice() -> None:
    bank = GatedExperts(n_experts=4, d_model=5, d_ff=7)
    counts = [2, 0, 3, 1]
    x = torch.randn(6, 5)
    out = bank(x, counts)
    starts = [0, 2, 2, 5]
    for e, (start, count) in enumerate(zip(starts, counts, strict=True)):
        if count:
            torch.testing.assert_close(
                out[start : start + count], bank.expert(e, x[start : start + count])
            )


def test_expert_list_takes_any_feedforward() -> None:
    experts = [MLP.build(d_model=4, d_ff=8), GatedMLP.build(d_model=4, d_ff=6)]
    bank = ExpertList(experts=experts)
    assert bank.n_experts == 2
    x = torch.randn(5, 4)
    out = bank(x, [3, 2])
    torch.testing.assert_close(out[:3], experts[0](x[:3]))
    torch.testing.assert_close(out[3:], experts[1](x[3:]))


def test_counts_must_match() -> None:
    bank = GatedExperts(n_experts=2, d_model=4, d_ff=4)
    with pytest.raises(DataError, match="summing to the 3 rows"):
        bank(torch.randn(3, 4), [1, 1])
    with pytest.raises(DataError, match="one size per expert"):
        ExpertList(experts=[MLP.build(d_model=4, d_ff=4)])(torch.randn(3, 4), [1, 2])


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="n_experts must be at least 1"):
        GatedExperts(n_experts=0, d_model=4, d_ff=4)
    with pytest.raises(ConfigError, match="unknown activation"):
        GatedExperts(n_experts=2, d_model=4, d_ff=4, activation="swish2")
    with pytest.raises(ConfigError, match="at least one expert"):
        ExpertList(experts=[])
    with pytest.raises(ConfigError, match=r"expert 1 .* is not a FeedForward") as info:
        ExpertList(experts=[MLP.build(d_model=4, d_ff=4), lambda t: t])  # type: ignore[list-item]
    assert info.value.key == "experts[1]"
