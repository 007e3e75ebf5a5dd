from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import lego.layers.block as block_module
from lego.layers import (
    CausalSelfAttention,
    GatedMLP,
    RMSNorm,
    RotaryEmbedding,
    StaticKVCache,
    TransformerBlock,
)
from lego.protocols import Attention, ConfigError, LayerKVCache

FP32 = {"rtol": 1e-5, "atol": 1e-5}

# -- tiny conforming pieces that are not lego.layers modules ---------------------------------


class PrefixMeanAttention(nn.Module):
    """A causal 'attention': a projection of the running mean of the previous tokens."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.calls: list[dict[str, Any]] = []

    def forward(
        self,
        x: torch.Tensor,
        /,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        self.calls.append(
            {"position_ids": position_ids, "attention_mask": attention_mask, "kv_cache": kv_cache}
        )
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        return self.proj(torch.tanh(x).cumsum(dim=1) / counts)


class ScaleNorm(nn.Module):
    """Normalize by the L2 norm, times a learned scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.tensor(1.7))

    def forward(self, x: torch.Tensor, /) -> torch.Tensor:
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class SquareFFN(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor, /) -> torch.Tensor:
        return self.down(self.up(x).pow(2))


class PlainFFN:
    """Not an nn.Module at all, but it has the FeedForward shape."""

    def __call__(self, x: torch.Tensor, /) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor, /) -> torch.Tensor:
        return torch.sin(x)


def _pieces(d: int = 8) -> tuple[PrefixMeanAttention, ScaleNorm, SquareFFN, ScaleNorm]:
    a_norm, f_norm = ScaleNorm(), ScaleNorm()
    with torch.no_grad():
        f_norm.g.fill_(0.6)
    return PrefixMeanAttention(d), a_norm, SquareFFN(d), f_norm


def test_pieces_conform() -> None:
    assert isinstance(PrefixMeanAttention(4), Attention)


def test_pre_norm() -> None:
    attn, n1, ffn, n2 = _pieces()
    block = TransformerBlock(attention=attn, attention_norm=n1, feed_forward=ffn, ffn_norm=n2)
    x = torch.randn(2, 5, 8)
    h = x + attn(n1(x))
    torch.testing.assert_close(block(x), h + ffn(n2(h)), **FP32)


def test_post_norm() -> None:
    attn, n1, ffn, n2 = _pieces()
    block = TransformerBlock(
        attention=attn, attention_norm=n1, feed_forward=ffn, ffn_norm=n2, norm_position="post"
    )
    x = torch.randn(2, 5, 8)
    h = n1(x + attn(x))
    torch.testing.assert_close(block(x), n2(h + ffn(h)), **FP32)


def test_parallel_residual_two_norms() -> None:
    attn, n1, ffn, n2 = _pieces()
    block = TransformerBlock(
        attention=attn, attention_norm=n1, feed_forward=ffn, ffn_norm=n2, parallel_residual=True
    )
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(block(x), x + attn(n1(x)) + ffn(n2(x)), **FP32)


def test_parallel_residual_shared_norm() -> None:
    attn, n1, ffn, _ = _pieces()
    block = TransformerBlock(
        attention=attn, attention_norm=n1, feed_forward=ffn, ffn_norm=None, parallel_residual=True
    )
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(block(x), x + attn(n1(x)) + ffn(n1(x)), **FP32)


def test_arguments_reach_the_attention() -> None:
    attn, n1, ffn, n2 = _pieces()
    block = TransformerBlock(attention=attn, attention_norm=n1, feed_forward=ffn, ffn_norm=n2)
    cache = StaticKVCache(n_layers=1, batch_size=2, max_seq_len=4, n_kv_heads=1, head_dim=2)
    pos, mask = torch.arange(3), torch.ones(2, 3)
    block(torch.randn(2, 3, 8), position_ids=pos, attention_mask=mask, kv_cache=cache[0])
    call = attn.calls[-1]
    assert call["position_ids"] is pos
    assert call["attention_mask"] is mask
    assert call["kv_cache"] is cache[0]


def test_any_conforming_piece_is_accepted() -> None:
    attn = PrefixMeanAttention(8)
    block = TransformerBlock(
        attention=attn, attention_norm=nn.Identity(), feed_forward=PlainFFN(), ffn_norm=ScaleNorm()
    )
    x = torch.randn(1, 4, 8)
    h = x + attn(x)
    torch.testing.assert_close(block(x), h + torch.sin(block.ffn_norm(h)), **FP32)  # type: ignore[misc]
    assert {name for name, _ in block.named_children()} == {
        "attention",
        "attention_norm",
        "ffn_norm",
    }


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"norm_position": "pree"}, ["'pree'", "'pre'"]),
        ({"ffn_norm": None}, ["ffn_norm", "Identity"]),
        ({"parallel_residual": True, "norm_position": "post"}, ["parallel_residual"]),
        ({"dropout": -0.1}, ["dropout"]),
    ],
)
def test_bad_configs(kwargs: dict[str, Any], words: list[str]) -> None:
    attn, n1, ffn, n2 = _pieces()
    arguments: dict[str, Any] = {
        "attention": attn,
        "attention_norm": n1,
        "feed_forward": ffn,
        "ffn_norm": n2,
    }
    arguments.update(kwargs)
    with pytest.raises(ConfigError) as info:
        TransformerBlock(**arguments)
    for word in words:
        assert word in str(info.value)


def test_residual_dropout_only_in_training() -> None:
    attn, n1, ffn, n2 = _pieces()
    block = TransformerBlock(
        attention=attn, attention_norm=n1, feed_forward=ffn, ffn_norm=n2, dropout=0.5
    )
    x = torch.randn(2, 5, 8)
    block.eval()
    h = x + attn(n1(x))
    torch.testing.assert_close(block(x), h + ffn(n2(h)), **FP32)
    block.train()
    assert not torch.allclose(block(x), h + ffn(n2(h)))


# -- activation checkpointing -------------------------------------------------------------------


def _llama_block(checkpointing: bool, dropout: float = 0.0) -> TransformerBlock:
    return TransformerBlock(
        attention=CausalSelfAttention.build(
            d_model=16, n_heads=4, n_kv_heads=2, rotary=RotaryEmbedding(head_dim=4), dropout=dropout
        ),
        attention_norm=RMSNorm(dim=16),
        feed_forward=GatedMLP.build(d_model=16, d_ff=32),
        ffn_norm=RMSNorm(dim=16),
        dropout=dropout,
        activation_checkpointing=checkpointing,
    )


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpointing_gives_identical_outputs_and_gradients(dropout: float) -> None:
    plain = _llama_block(False, dropout)
    ckpt = _llama_block(True, dropout)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 16)
    results = []
    for block in (plain, ckpt):
        block.train()
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(123)  # the same dropout masks on both sides
        out = block(xi)
        out.pow(2).sum().backward()
        grads = {name: p.grad.clone() for name, p in block.named_parameters()}  # type: ignore[union-attr]
        results.append((out.detach(), xi.grad.clone(), grads))  # type: ignore[union-attr]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-6)
    for name, grad in results[0][2].items():
        torch.testing.assert_close(results[1][2][name], grad, rtol=1e-6, atol=1e-6)


def test_checkpointing_only_when_training_without_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = block_module.checkpoint

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        assert kwargs["use_reentrant"] is False
        return real(*args, **kwargs)

    monkeypatch.setattr(block_module, "checkpoint", spy)
    block = _llama_block(True)
    x = torch.randn(1, 3, 16)
    block.train()
    block(x)
    assert len(calls) == 1
    with torch.no_grad():
        block(x)
    assert len(calls) == 1  # no gradients: nothing to save memory for
    cache = StaticKVCache(n_layers=1, batch_size=1, max_seq_len=4, n_kv_heads=2, head_dim=4)
    block(x, kv_cache=cache[0])
    assert len(calls) == 1  # never with a cache (it would write the cache twice)
    assert cache.seq_len == 3
    block.eval()
    block(x)
    assert len(calls) == 1


# -- stacked blocks with a model-level cache ------------------------------------------------------


def test_stacked_blocks_decode_with_a_model_cache() -> None:
    blocks = [_llama_block(False).eval() for _ in range(3)]
    x = torch.randn(2, 7, 16)

    def run(h: torch.Tensor, cache: StaticKVCache | None = None) -> torch.Tensor:
        for i, block in enumerate(blocks):
            h = block(h, kv_cache=None if cache is None else cache[i])
        return h

    full = run(x)
    cache = StaticKVCache(n_layers=3, batch_size=2, max_seq_len=8, n_kv_heads=2, head_dim=4)
    outs = [run(x[:, :4], cache)]
    assert cache.seq_len == 4
    for t in range(4, 7):
        outs.append(run(x[:, t : t + 1], cache))
        assert cache.seq_len == t + 1
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **FP32)


def test_repr() -> None:
    attn, n1, ffn, n2 = _pieces()
    text = repr(TransformerBlock(attention=attn, attention_norm=n1, feed_forward=ffn, ffn_norm=n2))
    assert "norm_position='pre'" in text


def test_block_shapes_and_dtypes(dtype: torch.dtype) -> None:
    block = _llama_block(False).to(dtype)
    out = block(torch.randn(2, 5, 16, dtype=dtype))
    assert out.shape == (2, 5, 16)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
