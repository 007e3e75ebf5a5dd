"""Oracle tests: lego.layers attention against transformers' attention with the same weights.

transformers' eager attention modules get an additive mask built here by hand (causal,
plus padding keys); ours builds its own. Rotary positions come from transformers' rotary
embedding on their side and from lego.layers.RotaryEmbedding on ours.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, Qwen3Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3RotaryEmbedding

from lego.layers import (
    CausalSelfAttention,
    RotaryEmbedding,
    StaticLayerKVCache,
    position_ids_from_padding,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _additive_mask(padding: torch.Tensor, q_len: int) -> torch.Tensor:
    """(B, 1, T, S) float mask: 0 where allowed, -inf on future and padding keys."""
    s = padding.shape[1]
    rows = torch.arange(s - q_len, s)[:, None]
    cols = torch.arange(s)[None, :]
    allowed = (cols <= rows)[None, None] & padding.bool()[:, None, None, :]
    return torch.zeros(allowed.shape).masked_fill(~allowed, -math.inf)


def _left_padded(batch: int, length: int, pads: list[int]) -> torch.Tensor:
    padding = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate(pads):
        padding[row, :pad] = 0
    return padding


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_llama_attention(backend: str) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=2,
        attention_bias=True,
        intermediate_size=128,
        num_hidden_layers=1,
        vocab_size=16,
    )
    config._attn_implementation = "eager"
    theirs = LlamaAttention(config, layer_idx=0).eval()
    ours = CausalSelfAttention.build(
        d_model=64,
        n_heads=8,
        n_kv_heads=2,
        bias=True,
        rotary=RotaryEmbedding(head_dim=8, base=10000.0),
        backend=backend,
    ).eval()
    state = {k.replace("o_proj", "out_proj"): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state)
    rope = LlamaRotaryEmbedding(config)

    b, t = 2, 9
    x = torch.randn(b, t, 64)
    padding = _left_padded(b, t, [0, 3])
    positions = position_ids_from_padding(padding)
    with torch.no_grad():
        expected, _ = theirs(
            x,
            position_embeddings=rope(x, positions),
            attention_mask=_additive_mask(padding, t),
        )
        got = ours(x, attention_mask=padding, position_ids=positions)
        real = padding.bool()  # their padding queries are NaN (fully masked rows)
        torch.testing.assert_close(got[real], expected[real], **TOL)

        # the same through our KV cache: a prompt of 6, then one token at a time
        cache = StaticLayerKVCache(batch_size=b, max_seq_len=t, n_kv_heads=2, head_dim=8)
        steps = [
            ours(
                x[:, :6],
                attention_mask=padding[:, :6],
                position_ids=positions[:, :6],
                kv_cache=cache,
            )
        ]
        for i in range(6, t):
            steps.append(
                ours(
                    x[:, i : i + 1],
                    attention_mask=padding[:, : i + 1],
                    position_ids=positions[:, i : i + 1],
                    kv_cache=cache,
                )
            )
        torch.testing.assert_close(torch.cat(steps, dim=1)[real], expected[real], **TOL)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_qwen3_attention_with_qk_norm(backend: str) -> None:
    torch.manual_seed(1)
    config = Qwen3Config(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        num_hidden_layers=1,
        vocab_size=16,
    )
    config._attn_implementation = "eager"
    theirs = Qwen3Attention(config, layer_idx=0).eval()
    with torch.no_grad():
        theirs.q_norm.weight.uniform_(0.5, 1.5)
        theirs.k_norm.weight.uniform_(0.5, 1.5)
    ours = CausalSelfAttention.build(
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        qk_norm=True,
        qk_norm_eps=config.rms_norm_eps,
        rotary=RotaryEmbedding(head_dim=16, base=10000.0),
        backend=backend,
    ).eval()
    ours.load_state_dict(
        {k.replace("o_proj", "out_proj"): v for k, v in theirs.state_dict().items()}
    )
    rope = Qwen3RotaryEmbedding(config)
    x = torch.randn(2, 7, 32)
    positions = torch.arange(7).expand(2, 7)
    with torch.no_grad():
        expected, _ = theirs(
            x,
            position_embeddings=rope(x, positions),
            attention_mask=_additive_mask(torch.ones(2, 7), 7),
        )
        torch.testing.assert_close(ours(x), expected, **TOL)


def test_gpt2_attention_fused_qkv() -> None:
    torch.manual_seed(2)
    config = GPT2Config(n_embd=32, n_head=4, n_layer=1, vocab_size=16, n_positions=16)
    config._attn_implementation = "eager"
    theirs = GPT2Attention(config, layer_idx=0).eval()
    ours = CausalSelfAttention.build(d_model=32, n_heads=4, fused_qkv=True, bias=True).eval()
    with torch.no_grad():
        # GPT-2's Conv1D stores weights as (in, out): transpose into nn.Linear's (out, in)
        ours.qkv_proj.weight.copy_(theirs.c_attn.weight.T)  # type: ignore[union-attr]
        ours.qkv_proj.bias.copy_(theirs.c_attn.bias)  # type: ignore[union-attr]
        ours.out_proj.weight.copy_(theirs.c_proj.weight.T)  # type: ignore[operator]
        ours.out_proj.bias.copy_(theirs.c_proj.bias)  # type: ignore[operator]
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        expected = theirs(x, attention_mask=_additive_mask(torch.ones(2, 6), 6))[0]
        torch.testing.assert_close(ours(x), expected, **TOL)
