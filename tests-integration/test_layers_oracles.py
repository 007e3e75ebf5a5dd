"""Oracle tests: lego.layers' RMSNorm, RoPE (with scaling), MLPs and MoE against transformers.

Each test builds the transformers module from a tiny config, copies its weights into ours
and compares outputs (fp32, 1e-5 unless noted). The attention oracles are in
test_layers_attention_oracle.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, Qwen2MoeConfig, Qwen3MoeConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import (
    Qwen3MoeSparseMoeBlock,
    load_balancing_loss_func,
)

from lego.layers import (
    MLP,
    GatedExperts,
    GatedMLP,
    MoEFeedForward,
    RMSNorm,
    RotaryEmbedding,
    TopKRouter,
    rope_scaling_from_dict,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}

LLAMA31 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def llama_config(rope_scaling: dict[str, Any] | None, **kwargs: Any) -> LlamaConfig:
    # rope_scaling + rope_theta: understood by transformers 4.x and (as legacy keys) 5.x
    return LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=96,
        num_hidden_layers=1,
        vocab_size=32,
        max_position_embeddings=512,
        rope_theta=500000.0,
        rope_scaling=rope_scaling,
        **kwargs,
    )


def test_rms_norm_equals_llama_rms_norm() -> None:
    torch.manual_seed(0)
    theirs = LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        theirs.weight.copy_(torch.randn(48))
    ours = RMSNorm(dim=48, eps=1e-5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 7, 48) * 4
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    # bf16 model: same order of operations, bit-identical
    theirs, ours = theirs.to(torch.bfloat16), ours.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    assert torch.equal(ours(xb), theirs(xb))


@pytest.mark.parametrize(
    "scaling",
    [
        LLAMA31,
        {**LLAMA31, "factor": 32.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0},
        {"rope_type": "linear", "factor": 4.0},
    ],
    ids=["llama3.1", "llama3-other", "linear"],
)
def test_inverse_frequencies_equal_transformers(scaling: dict[str, Any]) -> None:
    config = llama_config(scaling)
    theirs, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, None)
    ours = RotaryEmbedding(
        head_dim=16, base=500000.0, scaling=rope_scaling_from_dict(scaling)
    ).inverse_frequencies()
    assert torch.equal(ours, theirs.float())


def test_dynamic_ntk_frequencies_equal_transformers() -> None:
    scaling = {"rope_type": "dynamic", "factor": 2.0}
    config = llama_config(scaling)
    ours = RotaryEmbedding(
        head_dim=16,
        base=500000.0,
        scaling=rope_scaling_from_dict({**scaling, "original_max_position_embeddings": 512}),
    )
    for seq_len in (100, 512, 900, 4000):
        theirs, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, None, seq_len=seq_len)
        torch.testing.assert_close(ours.inverse_frequencies(seq_len), theirs.float(), **TOL)


@pytest.mark.parametrize("scaling", [None, LLAMA31], ids=["plain", "llama3.1"])
def test_rotary_embedding_equals_llamas(scaling: dict[str, Any] | None) -> None:
    torch.manual_seed(0)
    config = llama_config(scaling)
    theirs = LlamaRotaryEmbedding(config)
    ours = RotaryEmbedding(
        head_dim=16, base=500000.0, max_seq_len=8, scaling=rope_scaling_from_dict(scaling)
    )
    q = torch.randn(2, 4, 6, 16)
    k = torch.randn(2, 4, 6, 16)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5], [300, 301, 302, 303, 304, 305]])
    cos, sin = theirs(q, position_ids)
    q_theirs, k_theirs = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(ours(q, position_ids=position_ids), q_theirs, **TOL)
    torch.testing.assert_close(ours(k, position_ids=position_ids), k_theirs, **TOL)


def test_mlp_equals_gpt2_mlp() -> None:
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_inner=128, activation_function="gelu_new", resid_pdrop=0.0)
    theirs = GPT2MLP(128, config).eval()
    ours = MLP.build(d_model=32, d_ff=128, activation=config.activation_function).eval()
    with torch.no_grad():  # GPT-2's Conv1D stores (in, out): transpose into nn.Linear
        ours.fc.weight.copy_(theirs.c_fc.weight.T)
        ours.fc.bias.copy_(theirs.c_fc.bias)
        ours.proj.weight.copy_(theirs.c_proj.weight.T)
        ours.proj.bias.copy_(theirs.c_proj.bias)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ours(x), theirs(x), **TOL)


def test_gated_mlp_equals_llama_mlp() -> None:
    torch.manual_seed(0)
    theirs = LlamaMLP(llama_config(None))
    ours = GatedMLP.build(d_model=64, d_ff=96, activation="silu")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(ours(x), theirs(x), **TOL)


def _copy_stacked_experts(block: torch.nn.Module, bank: GatedExperts, d_ff: int) -> None:
    """transformers >= 5 stacks gate_up_proj (E, 2 d_ff, d); 4.x keeps one MLP per expert."""
    experts = block.experts
    with torch.no_grad():
        if hasattr(experts, "gate_up_proj"):
            bank.gate_proj.copy_(experts.gate_up_proj[:, :d_ff])
            bank.up_proj.copy_(experts.gate_up_proj[:, d_ff:])
            bank.down_proj.copy_(experts.down_proj)
        else:
            for e, expert in enumerate(experts):
                bank.gate_proj[e].copy_(expert.gate_proj.weight)
                bank.up_proj[e].copy_(expert.up_proj.weight)
                bank.down_proj[e].copy_(expert.down_proj.weight)


def _init_block(block: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0.0, 0.2)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_moe_equals_qwen3_moe_block(norm_topk_prob: bool) -> None:
    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        hidden_size=32,
        moe_intermediate_size=24,
        num_experts=6,
        num_experts_per_tok=2,
        norm_topk_prob=norm_topk_prob,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=16,
    )
    theirs = Qwen3MoeSparseMoeBlock(config).eval()
    _init_block(theirs)
    ours = MoEFeedForward(
        router=TopKRouter(d_model=32, n_experts=6, top_k=2, norm_topk_prob=norm_topk_prob),
        experts=GatedExperts(n_experts=6, d_model=32, d_ff=24),
    )
    with torch.no_grad():
        ours.router.weight.copy_(theirs.gate.weight)
    _copy_stacked_experts(theirs, ours.experts, 24)
    x = torch.randn(3, 7, 32)
    out = theirs(x)
    theirs_y = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(ours(x), theirs_y, **TOL)
    # the auxiliary loss: transformers' load_balancing_loss_func for one layer
    assert ours.router_logits is not None
    assert ours.balance_loss is not None
    expected = load_balancing_loss_func((ours.router_logits,), 6, 2)
    torch.testing.assert_close(ours.balance_loss, expected, **TOL)


def test_shared_expert_equals_qwen2_moe_block() -> None:
    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        hidden_size=32,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=40,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=16,
    )
    theirs = Qwen2MoeSparseMoeBlock(config).eval()
    _init_block(theirs)
    shared = GatedMLP.build(d_model=32, d_ff=40)
    shared.load_state_dict(theirs.shared_expert.state_dict())
    gate = torch.nn.Linear(32, 1, bias=False)
    gate.load_state_dict(theirs.shared_expert_gate.state_dict())
    ours = MoEFeedForward(
        router=TopKRouter(d_model=32, n_experts=4, top_k=2, norm_topk_prob=False),
        experts=GatedExperts(n_experts=4, d_model=32, d_ff=16),
        shared_expert=shared,
        shared_expert_gate=gate,
    )
    with torch.no_grad():
        ours.router.weight.copy_(theirs.gate.weight)
    _copy_stacked_experts(theirs, ours.experts, 16)
    x = torch.randn(2, 5, 32)
    out = theirs(x)
    theirs_y = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(ours(x), theirs_y, **TOL)
