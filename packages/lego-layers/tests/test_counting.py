from __future__ import annotations

import pytest
import torch
from torch import nn

from lego.layers import MLP, LearnedPositionalEmbedding, TokenEmbedding
from lego.layers.counting import count_parameters, flops_per_token, parameter_breakdown
from lego.protocols import ConfigError


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = TokenEmbedding(vocab_size=100, d_model=16)
        self.wpe = LearnedPositionalEmbedding(max_seq_len=32, d_model=16)
        self.mlp = MLP.build(d_model=16, d_ff=64)
        self.lm_head = nn.Linear(16, 100, bias=False)
        self.lm_head.weight = self.wte.weight  # tied


def test_count_parameters_counts_tied_tensors_once() -> None:
    model = TiedLM()
    mlp = 16 * 64 + 64 + 64 * 16 + 16
    assert count_parameters(model) == 100 * 16 + 32 * 16 + mlp
    assert count_parameters(model, exclude_embeddings=True) == mlp


def test_trainable_only() -> None:
    model = TiedLM()
    model.wpe.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 32 * 16


def test_breakdown_sums_to_the_total() -> None:
    model = TiedLM()
    breakdown = parameter_breakdown(model)
    assert list(breakdown) == ["wte", "wpe", "mlp", "lm_head"]
    assert breakdown["lm_head"] == 0  # its weight is wte's
    assert breakdown["mlp"] == 16 * 64 + 64 + 64 * 16 + 16
    assert sum(breakdown.values()) == count_parameters(model)


def test_breakdown_own_parameters() -> None:
    module = nn.Module()
    module.scale = nn.Parameter(torch.ones(3))
    module.child = nn.Linear(3, 2)
    assert parameter_breakdown(module) == {"(own)": 3, "child": 8}


def test_flops_per_token_gpt2_small() -> None:
    # nanoGPT's estimate_mfu: 6N + 12 * L * H * Q * T
    n, layers, heads, head_dim, seq = 124_000_000, 12, 12, 64, 1024
    expected = 6 * n + 12 * layers * heads * head_dim * seq
    assert (
        flops_per_token(n_params=n, n_layers=layers, n_heads=heads, head_dim=head_dim, seq_len=seq)
        == expected
    )
    forward = flops_per_token(
        n_params=n, n_layers=layers, n_heads=heads, head_dim=head_dim, seq_len=seq, training=False
    )
    assert forward == 2 * n + 4 * layers * heads * head_dim * seq
    assert 3 * forward == expected


def test_flops_per_token_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="seq_len must be at least 1") as info:
        flops_per_token(n_params=10, n_layers=1, n_heads=1, head_dim=1, seq_len=0)
    assert info.value.key == "seq_len"
    with pytest.raises(ConfigError, match="n_params"):
        flops_per_token(n_params=-1, n_layers=1, n_heads=1, head_dim=1, seq_len=1)
