from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lego.layers import (
    CausalSelfAttention,
    RotaryEmbedding,
    StaticLayerKVCache,
    position_ids_from_padding,
)
from lego.layers.attention import BACKENDS, repeat_kv
from lego.protocols import Attention, CompatibilityError, ConfigError, DataError

FP32 = {"rtol": 1e-5, "atol": 1e-5}
BF16 = {"rtol": 2e-2, "atol": 2e-2}

# -- an independent reference: per-(row, head) einsum with an explicit mask loop ------------


def _rope_reference(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Half-split RoPE by complex multiplication. x: (B, T, H, hd), positions: (B, T)."""
    half = x.shape[-1] // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])  # (hd/2,)
    angle = positions.to(torch.float64)[:, :, None, None] * theta  # (B, T, 1, hd/2)
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_attention(
    attn: CausalSelfAttention,
    x: torch.Tensor,
    *,
    positions: torch.Tensor | None = None,
    padding: torch.Tensor | None = None,
    rope_base: float | None = None,
) -> torch.Tensor:
    """Attention of ``attn``'s weights on ``x`` (B, T, D), computed in float64 by loops."""
    p = {name: t.detach().to(torch.float64) for name, t in attn.state_dict().items()}
    x = x.detach().to(torch.float64)
    b_, t_, _ = x.shape
    h_, kv_, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    if "qkv_proj.weight" in p:
        sizes = [h_ * hd, kv_ * hd, kv_ * hd]
        wq, wk, wv = p["qkv_proj.weight"].split(sizes)
        bias = p.get("qkv_proj.bias")
        bq, bk, bv = bias.split(sizes) if bias is not None else (None, None, None)
    else:
        wq, wk, wv = p["q_proj.weight"], p["k_proj.weight"], p["v_proj.weight"]
        bq, bk, bv = p.get("q_proj.bias"), p.get("k_proj.bias"), p.get("v_proj.bias")

    def lin(w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = torch.einsum("btd,ed->bte", x, w)
        return out if bias is None else out + bias

    q = lin(wq, bq).view(b_, t_, h_, hd)
    k = lin(wk, bk).view(b_, t_, kv_, hd)
    v = lin(wv, bv).view(b_, t_, kv_, hd)
    if "q_norm.weight" in p:
        q = _rms(q, p["q_norm.weight"], 1e-6)
        k = _rms(k, p["k_norm.weight"], 1e-6)
    if rope_base is not None:
        pos = positions if positions is not None else torch.arange(t_).expand(b_, t_)
        q, k = _rope_reference(q, pos, rope_base), _rope_reference(k, pos, rope_base)
    window = attn.sliding_window
    out = torch.zeros(b_, t_, h_, hd, dtype=torch.float64)
    for b in range(b_):
        for h in range(h_):
            g = h // (h_ // kv_)
            scores = torch.einsum("id,jd->ij", q[b, :, h], k[b, :, g]) * attn.scale
            allowed = torch.zeros(t_, t_, dtype=torch.bool)
            for i in range(t_):
                for j in range(i + 1):
                    in_window = window is None or i - j < window
                    real = padding is None or bool(padding[b, j])
                    allowed[i, j] = in_window and real
                if not allowed[i].any():
                    allowed[i, i] = True  # the documented convention for padding queries
            probs = torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1)
            out[b, :, h] = torch.einsum("ij,jd->id", probs, v[b, :, g])
    merged = out.reshape(b_, t_, h_ * hd)
    res = torch.einsum("bte,de->btd", merged, p["out_proj.weight"])
    return res + p["out_proj.bias"] if "out_proj.bias" in p else res


def _randomize_norms(attn: CausalSelfAttention) -> None:
    with torch.no_grad():
        for norm in (attn.q_norm, attn.k_norm):
            if isinstance(norm, nn.Module):
                for param in norm.parameters():
                    param.uniform_(0.5, 1.5)


CONFIGS: dict[str, dict[str, Any]] = {
    "mha": {"d_model": 32, "n_heads": 4},
    "gqa": {"d_model": 32, "n_heads": 4, "n_kv_heads": 2},
    "mqa": {"d_model": 32, "n_heads": 4, "n_kv_heads": 1},
    "gpt2-fused-bias": {"d_model": 32, "n_heads": 4, "fused_qkv": True, "bias": True},
    "qwen2-bias": {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "bias": True, "out_bias": False},
    "qwen3-qknorm-headdim": {
        "d_model": 24,
        "n_heads": 4,
        "n_kv_heads": 2,
        "head_dim": 10,
        "qk_norm": True,
    },
    "window": {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "sliding_window": 3},
    "scale": {"d_model": 32, "n_heads": 2, "scale": 0.05},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_reference(name: str, backend: str) -> None:
    attn = CausalSelfAttention.build(**CONFIGS[name], backend=backend)
    _randomize_norms(attn)
    x = torch.randn(2, 7, attn.d_model or 0)
    torch.testing.assert_close(attn(x), reference_attention(attn, x).float(), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rope_and_qk_norm_match_reference(backend: str) -> None:
    attn = CausalSelfAttention.build(
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        qk_norm=True,
        backend=backend,
        rotary=RotaryEmbedding(head_dim=8, base=500.0),
    )
    _randomize_norms(attn)
    x = torch.randn(2, 9, 32)
    expected = reference_attention(attn, x, rope_base=500.0).float()
    torch.testing.assert_close(attn(x), expected, **FP32)
    # explicit per-row positions (shifted rows) are what the rotary embedding sees
    positions = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11], list(range(9))])
    expected = reference_attention(attn, x, positions=positions, rope_base=500.0).float()
    torch.testing.assert_close(attn(x, position_ids=positions), expected, **FP32)


def test_satisfies_protocol() -> None:
    assert isinstance(CausalSelfAttention.build(d_model=16, n_heads=2), Attention)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_and_dtypes(backend: str, dtype: torch.dtype) -> None:
    attn = CausalSelfAttention.build(
        d_model=48, n_heads=6, n_kv_heads=2, head_dim=16, backend=backend, dtype=dtype
    )
    x = torch.randn(3, 5, 48, dtype=dtype)
    out = attn(x)
    assert out.shape == (3, 5, 48)
    assert out.dtype == dtype
    out, weights = attn.forward_with_weights(x)
    assert out.dtype == dtype
    assert weights.shape == (3, 6, 5, 5)
    assert weights.dtype == dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [None, 2])
@given(position=st.integers(0, 9))
@settings(max_examples=10, deadline=None)
def test_causality(backend: str, window: int | None, position: int) -> None:
    torch.manual_seed(1)
    attn = CausalSelfAttention.build(
        d_model=16,
        n_heads=4,
        n_kv_heads=2,
        backend=backend,
        sliding_window=window,
        rotary=RotaryEmbedding(head_dim=4),
    )
    x = torch.randn(2, 10, 16)
    changed = x.clone()
    changed[:, position] = torch.randn(2, 16) * 5
    before, after = attn(x), attn(changed)
    torch.testing.assert_close(before[:, :position], after[:, :position], rtol=0, atol=0)
    assert not torch.allclose(before[:, position], after[:, position])


def test_gqa_with_all_heads_equals_mha() -> None:
    mha = CausalSelfAttention.build(d_model=32, n_heads=4)
    gqa = CausalSelfAttention.build(d_model=32, n_heads=4, n_kv_heads=4)
    gqa.load_state_dict(mha.state_dict())
    assert gqa.n_rep == 1
    x = torch.randn(2, 6, 32)
    for backend in BACKENDS:
        mha.backend = gqa.backend = backend  # type: ignore[assignment]
        torch.testing.assert_close(gqa(x), mha(x), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_weights(backend: str, n_kv_heads: int) -> None:
    n_heads, hd, d = 4, 8, 32
    gqa = CausalSelfAttention.build(
        d_model=d, n_heads=n_heads, n_kv_heads=n_kv_heads, bias=True, backend=backend
    )
    mha = CausalSelfAttention.build(d_model=d, n_heads=n_heads, bias=True, backend=backend)
    rep = n_heads // n_kv_heads
    state = gqa.state_dict()
    for name in ("k_proj", "v_proj"):
        w = state[f"{name}.weight"].view(n_kv_heads, hd, d)
        state[f"{name}.weight"] = w.repeat_interleave(rep, dim=0).reshape(n_heads * hd, d)
        bias = state[f"{name}.bias"].view(n_kv_heads, hd)
        state[f"{name}.bias"] = bias.repeat_interleave(rep, dim=0).reshape(n_heads * hd)
    mha.load_state_dict(state)
    x = torch.randn(2, 7, d)
    torch.testing.assert_close(gqa(x), mha(x), **FP32)


def test_repeat_kv_equals_repeat_interleave() -> None:
    k = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(repeat_kv(k, 4), k.repeat_interleave(4, dim=1))
    assert repeat_kv(k, 1) is k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_fused_equals_separate(backend: str, n_kv_heads: int) -> None:
    sep = CausalSelfAttention.build(
        d_model=32, n_heads=4, n_kv_heads=n_kv_heads, bias=True, backend=backend
    )
    fused = CausalSelfAttention.build(
        d_model=32, n_heads=4, n_kv_heads=n_kv_heads, bias=True, fused_qkv=True, backend=backend
    )
    assert fused.qkv_proj is not None
    s = sep.state_dict()
    fused.load_state_dict(
        {
            "qkv_proj.weight": torch.cat(
                [s["q_proj.weight"], s["k_proj.weight"], s["v_proj.weight"]]
            ),
            "qkv_proj.bias": torch.cat([s["q_proj.bias"], s["k_proj.bias"], s["v_proj.bias"]]),
            "out_proj.weight": s["out_proj.weight"],
            "out_proj.bias": s["out_proj.bias"],
        }
    )
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(fused(x), sep(x), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_as_long_as_sequence_changes_nothing(backend: str) -> None:
    full = CausalSelfAttention.build(d_model=16, n_heads=2, backend=backend)
    windowed = CausalSelfAttention.build(d_model=16, n_heads=2, backend=backend, sliding_window=6)
    windowed.load_state_dict(full.state_dict())
    x = torch.randn(1, 6, 16)
    torch.testing.assert_close(windowed(x), full(x), rtol=0, atol=1e-6)
    x = torch.randn(1, 9, 16)  # now the window bites: rows 6.. differ
    assert not torch.allclose(windowed(x)[:, 6:], full(x)[:, 6:])
    torch.testing.assert_close(windowed(x)[:, :6], full(x)[:, :6], rtol=0, atol=1e-6)


def _pair(**kwargs: Any) -> tuple[CausalSelfAttention, CausalSelfAttention]:
    sdpa = CausalSelfAttention.build(backend="sdpa", **kwargs)
    math_ = CausalSelfAttention.build(backend="math", **kwargs)
    _randomize_norms(sdpa)
    math_.load_state_dict(sdpa.state_dict())
    return sdpa, math_


@pytest.mark.parametrize(
    "kwargs",
    [
        {"d_model": 32, "n_heads": 4},
        {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "qk_norm": True},
        {"d_model": 32, "n_heads": 4, "n_kv_heads": 1, "sliding_window": 4},
    ],
    ids=["mha", "gqa-qknorm", "mqa-window"],
)
def test_backends_agree(kwargs: dict[str, Any], dtype: torch.dtype) -> None:
    sdpa, math_ = _pair(**kwargs, rotary=RotaryEmbedding(head_dim=8), dtype=dtype)
    tol = FP32 if dtype == torch.float32 else BF16
    x = torch.randn(2, 11, 32, dtype=dtype)
    torch.testing.assert_close(sdpa(x), math_(x), **tol)
    # with left padding
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :4] = 0
    pos = position_ids_from_padding(mask)
    torch.testing.assert_close(
        sdpa(x, attention_mask=mask, position_ids=pos),
        math_(x, attention_mask=mask, position_ids=pos),
        **tol,
    )
    # every SDPA branch with a cache: prefill (is_causal), a chunk (offset mask), one token
    caches = [
        StaticLayerKVCache(
            batch_size=2, max_seq_len=11, n_kv_heads=sdpa.n_kv_heads, head_dim=8, dtype=dtype
        )
        for _ in range(2)
    ]
    for start, stop in ((0, 6), (6, 10), (10, 11)):
        chunk = x[:, start:stop]
        torch.testing.assert_close(
            sdpa(chunk, kv_cache=caches[0]), math_(chunk, kv_cache=caches[1]), **tol
        )


def test_backends_agree_on_gradients() -> None:
    sdpa, math_ = _pair(d_model=16, n_heads=4, n_kv_heads=2)
    x = torch.randn(2, 6, 16, requires_grad=True)
    grads = []
    for attn in (sdpa, math_):
        x.grad = None
        attn(x).pow(2).sum().backward()
        grads.append((x.grad.clone(), attn.q_proj.weight.grad.clone()))  # type: ignore[union-attr]
    torch.testing.assert_close(grads[0][0], grads[1][0], **FP32)
    torch.testing.assert_close(grads[0][1], grads[1][1], **FP32)


def test_weights_sum_to_one_and_respect_masks() -> None:
    attn = CausalSelfAttention.build(d_model=16, n_heads=2, sliding_window=3, backend="sdpa")
    x = torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :2] = 0
    out, weights = attn.forward_with_weights(x, attention_mask=mask)
    torch.testing.assert_close(out, attn(x, attention_mask=mask), **FP32)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 7))
    i, j = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    assert (weights[..., j > i] == 0).all()  # nothing above the diagonal
    assert (weights[..., i - j >= 3] == 0).all()  # nothing outside the window
    assert (weights[0, :, 2:, :2] == 0).all()  # real queries never see padding keys
    assert (weights[0, :, 0, 0] == 1).all()  # a padding query attends to itself
    assert (weights[0, :, 1, 1] == 1).all()


def test_weights_without_mask_are_lower_triangular() -> None:
    attn = CausalSelfAttention.build(d_model=16, n_heads=2)
    _, weights = attn.forward_with_weights(torch.randn(1, 5, 16))
    assert torch.equal(weights[0, 0] > 0, torch.ones(5, 5, dtype=torch.bool).tril())


# -- cached decoding -------------------------------------------------------------------------


def _decoder(backend: str, **kwargs: Any) -> CausalSelfAttention:
    attn = CausalSelfAttention.build(
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        qk_norm=True,
        backend=backend,
        rotary=RotaryEmbedding(head_dim=8),
        **kwargs,
    )
    _randomize_norms(attn)
    return attn.eval()


def _cache(attn: CausalSelfAttention, batch: int = 2, length: int = 16) -> StaticLayerKVCache:
    return StaticLayerKVCache(
        batch_size=batch, max_seq_len=length, n_kv_heads=attn.n_kv_heads, head_dim=attn.head_dim
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize(
    "chunks",
    [(10,), (6, 1, 1, 1, 1), (1,) * 10, (3, 4, 3), (2, 1, 5, 2)],
    ids=["one", "prefill-then-tokens", "token-by-token", "chunked", "mixed"],
)
def test_cached_decoding_equals_full_forward(
    backend: str, window: int | None, chunks: tuple[int, ...]
) -> None:
    attn = _decoder(backend, sliding_window=window)
    x = torch.randn(2, 10, 32)
    full = attn(x)
    cache = _cache(attn)
    outs, start = [], 0
    for size in chunks:
        outs.append(attn(x[:, start : start + size], kv_cache=cache))
        start += size
        assert cache.seq_len == start
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **FP32)


@given(cuts=st.lists(st.integers(1, 4), min_size=1, max_size=6))
@settings(max_examples=15, deadline=None)
def test_cached_decoding_any_split(cuts: list[int]) -> None:
    torch.manual_seed(2)
    attn = _decoder("sdpa", sliding_window=4)
    total = sum(cuts)
    x = torch.randn(1, total, 32)
    cache = _cache(attn, batch=1, length=total)
    outs, start = [], 0
    for size in cuts:
        outs.append(attn(x[:, start : start + size], kv_cache=cache))
        start += size
    torch.testing.assert_close(torch.cat(outs, dim=1), attn(x), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_padded_batch_decodes_like_unpadded_rows(backend: str) -> None:
    attn = _decoder(backend)
    lengths, pad_to, new = [7, 4], 7, 3
    seqs = [torch.randn(1, n + new, 32) for n in lengths]
    # unpadded, one row at a time, no cache: the truth
    alone = [attn(s) for s in seqs]
    # left-padded prompt, then cached decoding of `new` tokens, one at a time
    prompt = torch.zeros(2, pad_to, 32)
    mask = torch.zeros(2, pad_to + new, dtype=torch.long)
    for row, (n, s) in enumerate(zip(lengths, seqs, strict=True)):
        prompt[row, pad_to - n :] = s[0, :n]
        mask[row, pad_to - n :] = 1
    positions = position_ids_from_padding(mask)
    cache = _cache(attn)
    out = attn(
        prompt, attention_mask=mask[:, :pad_to], position_ids=positions[:, :pad_to], kv_cache=cache
    )
    assert torch.isfinite(out).all()  # padding queries give finite outputs
    steps = [out]
    for i in range(new):
        token = torch.stack([s[0, n + i] for n, s in zip(lengths, seqs, strict=True)])[:, None]
        slot = pad_to + i
        steps.append(
            attn(
                token,
                attention_mask=mask[:, : slot + 1],
                position_ids=positions[:, slot : slot + 1],
                kv_cache=cache,
            )
        )
    decoded = torch.cat(steps, dim=1)  # (2, pad_to + new, 32)
    for row, n in enumerate(lengths):
        torch.testing.assert_close(decoded[row, pad_to - n :], alone[row][0], **FP32)
    # and the same padded batch in one uncached forward
    full_input = torch.zeros(2, pad_to + new, 32)
    for row, (n, s) in enumerate(zip(lengths, seqs, strict=True)):
        full_input[row, pad_to - n :] = s[0]
    full = attn(full_input, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(decoded, full, **FP32)


def test_cached_decoding_in_bf16() -> None:
    attn = _decoder("sdpa").to(torch.bfloat16)
    x = torch.randn(2, 8, 32, dtype=torch.bfloat16)
    cache = StaticLayerKVCache(
        batch_size=2, max_seq_len=8, n_kv_heads=2, head_dim=8, dtype=torch.bfloat16
    )
    steps = [attn(x[:, :5], kv_cache=cache)]
    steps += [attn(x[:, i : i + 1], kv_cache=cache) for i in range(5, 8)]
    out = torch.cat(steps, dim=1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, attn(x), **BF16)


def test_default_positions_follow_the_cache() -> None:
    attn = _decoder("sdpa")
    x = torch.randn(1, 5, 32)
    cache = _cache(attn, batch=1)
    attn(x[:, :3], kv_cache=cache)
    implicit = attn(x[:, 3:], kv_cache=cache)
    cache.crop(3)
    explicit = attn(x[:, 3:], kv_cache=cache, position_ids=torch.tensor([3, 4]))
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)


def test_crop_then_redecode_equals_uncropped() -> None:
    attn = _decoder("sdpa")
    prefix, a, b = torch.randn(2, 5, 32), torch.randn(2, 3, 32), torch.randn(2, 2, 32)
    cache = _cache(attn)
    attn(prefix, kv_cache=cache)
    attn(a, kv_cache=cache)  # speculative tokens, rejected
    cache.crop(5)
    assert cache.seq_len == 5
    redone = attn(b, kv_cache=cache)
    expected = attn(torch.cat([prefix, b], dim=1))[:, 5:]
    torch.testing.assert_close(redone, expected, **FP32)


def test_reorder_follows_rows() -> None:
    attn = _decoder("sdpa")
    prefix, token = torch.randn(3, 4, 32), torch.randn(3, 1, 32)
    cache = _cache(attn, batch=3)
    attn(prefix, kv_cache=cache)
    order = torch.tensor([2, 0, 0])  # beam search: rows move and repeat
    cache.reorder(order)
    out = attn(token, kv_cache=cache)
    expected = attn(torch.cat([prefix[order], token], dim=1))[:, -1:]
    torch.testing.assert_close(out, expected, **FP32)


def test_cache_in_another_dtype_is_cast_back() -> None:
    attn = _decoder("sdpa")
    x = torch.randn(1, 4, 32)
    cache = StaticLayerKVCache(
        batch_size=1, max_seq_len=4, n_kv_heads=2, head_dim=8, dtype=torch.float64
    )
    out = torch.cat([attn(x[:, :2], kv_cache=cache), attn(x[:, 2:], kv_cache=cache)], dim=1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, attn(x), **FP32)


def test_cache_that_does_not_fit_is_a_compatibility_error() -> None:
    attn = _decoder("sdpa")
    cache = StaticLayerKVCache(batch_size=2, max_seq_len=8, n_kv_heads=4, head_dim=8)
    with pytest.raises(CompatibilityError) as info:
        attn(torch.randn(2, 3, 32), kv_cache=cache)
    assert info.value.tensor == "k"


# -- dropout, gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_only_in_training(backend: str) -> None:
    attn = CausalSelfAttention.build(d_model=16, n_heads=2, dropout=0.5, backend=backend)
    x = torch.randn(2, 8, 16)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x), rtol=0, atol=0)
    evaluated = attn(x)
    attn.train()
    assert not torch.allclose(attn(x), evaluated)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_gradcheck(backend: str, n_kv_heads: int) -> None:
    attn = CausalSelfAttention.build(
        d_model=8,
        n_heads=2,
        n_kv_heads=n_kv_heads,
        bias=True,
        backend=backend,
        sliding_window=2,
        dtype=torch.float64,
    )
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 1]])
    assert torch.autograd.gradcheck(lambda t: attn(t, attention_mask=mask), (x,))


# -- configuration and input errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"d_model": 30, "n_heads": 4}, ConfigError, ["d_model=30", "n_heads=4"]),
        (
            {"d_model": 32, "n_heads": 4, "n_kv_heads": 3},
            ConfigError,
            ["n_heads=4", "n_kv_heads=3"],
        ),
        ({"d_model": 32, "n_heads": 4, "sliding_window": 0}, ConfigError, ["sliding_window", "0"]),
        ({"d_model": 32, "n_heads": 4, "backend": "spda"}, ConfigError, ["'spda'", "'sdpa'"]),
        ({"d_model": 32, "n_heads": 0}, ConfigError, ["n_heads", "0"]),
        ({"d_model": 32, "n_heads": 4, "dropout": 1.0}, ConfigError, ["dropout"]),
        ({"d_model": 32, "n_heads": 4, "scale": -1.0}, ConfigError, ["scale"]),
    ],
)
def test_bad_build_configs(
    kwargs: dict[str, Any], error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as info:
        CausalSelfAttention.build(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_head_dim_need_not_divide_d_model() -> None:
    attn = CausalSelfAttention.build(d_model=30, n_heads=4, head_dim=8)
    assert attn(torch.randn(1, 3, 30)).shape == (1, 3, 30)


def test_bad_constructor_arguments() -> None:
    def lin(i: int, o: int) -> nn.Linear:
        return nn.Linear(i, o)

    with pytest.raises(ConfigError, match="both qkv_proj and"):
        CausalSelfAttention(
            out_proj=lin(16, 16), n_heads=2, head_dim=8, qkv_proj=lin(16, 48), q_proj=lin(16, 16)
        )
    with pytest.raises(ConfigError, match="k_proj, v_proj") as info:
        CausalSelfAttention(out_proj=lin(16, 16), n_heads=2, head_dim=8, q_proj=lin(16, 16))
    assert info.value.key == "k_proj"
    with pytest.raises(ConfigError, match="k_proj has out_features=16"):
        CausalSelfAttention(
            out_proj=lin(16, 16),
            n_heads=2,
            n_kv_heads=1,
            head_dim=8,
            q_proj=lin(16, 16),
            k_proj=lin(16, 16),
            v_proj=lin(16, 8),
        )
    with pytest.raises(ConfigError, match="out_proj has in_features=12"):
        CausalSelfAttention(
            out_proj=lin(12, 16),
            n_heads=2,
            head_dim=8,
            q_proj=lin(16, 16),
            k_proj=lin(16, 16),
            v_proj=lin(16, 16),
        )
    with pytest.raises(ConfigError, match="different input sizes"):
        CausalSelfAttention(
            out_proj=lin(16, 16),
            n_heads=2,
            head_dim=8,
            q_proj=lin(16, 16),
            k_proj=lin(12, 16),
            v_proj=lin(16, 16),
        )
    with pytest.raises(ConfigError, match="out_proj maps to 12"):
        CausalSelfAttention(
            out_proj=lin(16, 12),
            n_heads=2,
            head_dim=8,
            q_proj=lin(16, 16),
            k_proj=lin(16, 16),
            v_proj=lin(16, 16),
        )


def test_projections_without_feature_sizes_are_accepted() -> None:
    class Project(nn.Module):  # e.g. an adapter-wrapped linear without in/out_features
        def __init__(self, i: int, o: int) -> None:
            super().__init__()
            self.inner = nn.Linear(i, o)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    attn = CausalSelfAttention(
        out_proj=Project(16, 16), n_heads=2, head_dim=8, qkv_proj=Project(16, 48)
    )
    assert attn.d_model is None
    assert attn(torch.randn(1, 4, 16)).shape == (1, 4, 16)


@pytest.mark.parametrize(
    ("call", "tensor"),
    [
        (lambda a: a(torch.randn(4, 32)), "x"),
        (lambda a: a(torch.randn(1, 4, 31)), "x"),
        (lambda a: a(torch.randn(2, 4, 32), attention_mask=torch.ones(2, 5)), "attention_mask"),
        (lambda a: a(torch.randn(2, 4, 32), attention_mask=torch.ones(1, 4)), "attention_mask"),
        (lambda a: a(torch.randn(2, 4, 32), position_ids=torch.arange(5)), "position_ids"),
        (lambda a: a(torch.randn(2, 4, 32), position_ids=torch.zeros(3, 4).long()), "position_ids"),
    ],
)
def test_bad_inputs_name_the_tensor(call: Any, tensor: str) -> None:
    attn = CausalSelfAttention.build(d_model=32, n_heads=4)
    with pytest.raises(DataError) as info:
        call(attn)
    assert info.value.tensor == tensor


def test_mask_must_cover_the_cache() -> None:
    attn = _decoder("sdpa")
    cache = _cache(attn)
    attn(torch.randn(2, 3, 32), kv_cache=cache)
    with pytest.raises(DataError, match=r"\(2, 4\)"):
        attn(torch.randn(2, 1, 32), kv_cache=cache, attention_mask=torch.ones(2, 1))


def test_repr_names_the_configuration() -> None:
    text = repr(CausalSelfAttention.build(d_model=32, n_heads=4, n_kv_heads=2, sliding_window=5))
    assert "n_kv_heads=2" in text
    assert "sliding_window=5" in text


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("padded", [False, True], ids=["plain", "padded"])
def test_a_compiled_decode_step_equals_the_eager_one(padded: bool) -> None:
    """Under torch.compile one new CPU token takes the math path: the same output as SDPA's."""
    torch.manual_seed(3)
    attn = CausalSelfAttention.build(d_model=32, n_heads=4, n_kv_heads=2, backend="sdpa").eval()
    x = torch.randn(2, 6, 32)
    mask = torch.ones(2, 6, dtype=torch.long)
    if padded:
        mask[1, :2] = 0
    given = mask if padded else None
    eager_cache, compiled_cache = _cache(attn), _cache(attn)
    step = torch.compile(
        lambda t, m, c: attn(t, attention_mask=m, kv_cache=c), fullgraph=True, dynamic=False
    )
    with torch.no_grad():
        for cache in (eager_cache, compiled_cache):
            attn(x[:, :5], attention_mask=None if given is None else given[:, :5], kv_cache=cache)
        expected = attn(x[:, 5:], attention_mask=given, kv_cache=eager_cache)
        got = step(x[:, 5:], given, compiled_cache)
    assert compiled_cache.seq_len == 6
    torch.testing.assert_close(got, expected, **FP32)
