"""Tiny random transformers models for the oracle tests (one definition, many suites).

Each builder starts from the same small shape (vocabulary 97, width 32, 2 layers, 4 heads,
context 64, dropout off) and takes keyword overrides of the transformers config, so a suite
states only what it changes (llama3 RoPE scaling, biases, end-of-sequence ids...).
Weights are drawn from torch's global generator: seed it first for reproducible models.
"""

from __future__ import annotations

from typing import Any

from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

VOCAB = 97
"""The vocabulary of every tiny model (a prime, so no size coincides with it)."""

_DECODER = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def tiny_gpt2(**overrides: Any) -> PreTrainedModel:
    """A ``GPT2LMHeadModel``: 32 wide, 2 layers, 4 heads, dropout off."""
    settings: dict[str, Any] = {
        "vocab_size": VOCAB,
        "n_positions": 64,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }
    return GPT2LMHeadModel(GPT2Config(**{**settings, **overrides}))


def tiny_llama(**overrides: Any) -> PreTrainedModel:
    """A ``LlamaForCausalLM``: 32 wide, 2 layers, 4 query heads sharing 2 key/value heads."""
    return LlamaForCausalLM(LlamaConfig(**{**_DECODER, **overrides}))


def tiny_qwen3(**overrides: Any) -> PreTrainedModel:
    """A ``Qwen3ForCausalLM`` with ``head_dim`` 16 (independent of 32 / 4) and an untied head."""
    settings = {**_DECODER, "head_dim": 16, "tie_word_embeddings": False}
    return Qwen3ForCausalLM(Qwen3Config(**{**settings, **overrides}))


def tiny_qwen3_moe(**overrides: Any) -> PreTrainedModel:
    """A ``Qwen3MoeForCausalLM``: 4 experts of width 16, 2 per token, an untied head."""
    settings = {
        **_DECODER,
        "moe_intermediate_size": 16,
        "head_dim": 8,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "norm_topk_prob": True,
        "tie_word_embeddings": False,
    }
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(**{**settings, **overrides}))
