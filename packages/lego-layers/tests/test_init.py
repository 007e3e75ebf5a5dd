from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lego.layers import MLP, GatedExperts, GatedMLP, LayerNorm, RMSNorm, TokenEmbedding
from lego.layers.init import (
    init_gpt2_,
    init_normal_,
    is_residual_projection,
    scale_residual_projections_,
)
from lego.protocols import ConfigError


class TinyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = LayerNorm(dim=64)
        self.attention = nn.Module()
        self.attention.qkv_proj = nn.Linear(64, 192)
        self.attention.out_proj = nn.Linear(64, 64)
        self.mlp = MLP.build(d_model=64, d_ff=256)


class TinyModel(nn.Module):
    def __init__(self, n_layers: int = 4) -> None:
        super().__init__()
        self.embed = TokenEmbedding(vocab_size=300, d_model=64, padding_idx=1)
        self.blocks = nn.ModuleList(TinyBlock() for _ in range(n_layers))
        self.final_norm = RMSNorm(dim=64)
        self.lm_head = nn.Linear(64, 300, bias=False)


def test_init_normal_draws_matrices_zeroes_biases_keeps_norms() -> None:
    model = TinyModel()
    with torch.no_grad():
        for block in model.blocks:
            block.norm.weight.fill_(3.0)
            assert block.norm.bias is not None
            block.norm.bias.fill_(2.0)
    init_normal_(model, std=0.02)
    block = model.blocks[0]
    assert block.attention.qkv_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(block.attention.qkv_proj.bias, torch.zeros(192))
    assert torch.equal(block.mlp.fc.bias, torch.zeros(256))
    assert torch.equal(block.norm.weight, torch.full((64,), 3.0))  # norm scale untouched
    assert torch.equal(block.norm.bias, torch.zeros(64))  # but a norm bias is a bias
    assert torch.equal(model.embed.weight[1], torch.zeros(64))  # padding row
    assert torch.equal(model.final_norm.weight, torch.ones(64))


def test_init_normal_select_predicate() -> None:
    model = TinyModel(n_layers=1)
    before = model.lm_head.weight.clone()
    init_normal_(model, std=0.5, select=lambda name, p: not name.startswith("lm_head"))
    assert torch.equal(model.lm_head.weight, before)
    assert model.embed.weight.std().item() == pytest.approx(0.5, rel=0.1)


def test_scaled_residual_projections_are_gpt2s() -> None:
    n_layers = 8
    model = TinyModel(n_layers=n_layers)
    done = scale_residual_projections_(model, n_layers=n_layers, std=0.02)
    assert sorted(done) == sorted(
        [f"blocks.{i}.attention.out_proj.weight" for i in range(n_layers)]
        + [f"blocks.{i}.mlp.proj.weight" for i in range(n_layers)]
    )
    weights = torch.cat([model.blocks[i].mlp.proj.weight.flatten() for i in range(n_layers)])
    assert weights.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layers), rel=0.05)


def test_residual_projection_names() -> None:
    assert is_residual_projection("blocks.0.attention.out_proj.weight")
    assert is_residual_projection("h.3.mlp.c_proj.weight")
    assert is_residual_projection("layers.1.mlp.down_proj.weight")
    assert is_residual_projection("layers.1.mlp.experts.down_proj")
    assert not is_residual_projection("layers.1.mlp.down_proj.bias")
    assert not is_residual_projection("blocks.0.attention.q_proj.weight")
    assert not is_residual_projection("layers.1.mlp.gate_proj.weight")
    assert not is_residual_projection("weight")


def test_stacked_experts_are_initialized_and_scaled() -> None:
    model = nn.Module()
    model.experts = GatedExperts(n_experts=4, d_model=32, d_ff=64)
    model.ffn = GatedMLP.build(d_model=32, d_ff=64)
    init_gpt2_(model, n_layers=2, std=0.1)
    assert model.experts.gate_proj.std().item() == pytest.approx(0.1, rel=0.1)
    assert model.experts.down_proj.std().item() == pytest.approx(0.05, rel=0.1)
    assert model.ffn.down_proj.weight.std().item() == pytest.approx(0.05, rel=0.1)


def test_custom_predicate() -> None:
    model = TinyModel(n_layers=2)
    done = scale_residual_projections_(
        model, n_layers=2, select=lambda name, p: name == "lm_head.weight"
    )
    assert done == ["lm_head.weight"]


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="std"):
        init_normal_(nn.Linear(2, 2), std=0.0)
    with pytest.raises(ConfigError, match="n_layers must be at least 1"):
        scale_residual_projections_(nn.Linear(2, 2), n_layers=0)
