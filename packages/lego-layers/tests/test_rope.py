from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.layers import DynamicNTKScaling, LinearScaling, RotaryEmbedding, apply_rotary
from lego.layers.rope_scaling import rope_inverse_frequencies
from lego.protocols import ConfigError, DataError, PositionalEncoding


def rope_reference(
    x: torch.Tensor,
    positions: torch.Tensor,
    theta: torch.Tensor,
    *,
    rotary_dim: int,
    interleaved: bool,
) -> torch.Tensor:
    """RoPE by complex multiplication, in float64: z_i * exp(1j * p * theta_i)."""
    x64 = x.double()
    rot, rest = x64[..., :rotary_dim], x64[..., rotary_dim:]
    half = rotary_dim // 2
    if interleaved:
        z = torch.complex(rot[..., 0::2], rot[..., 1::2])
    else:
        z = torch.complex(rot[..., :half], rot[..., half:])
    angles = positions.double()[..., None] * theta.double()  # (..., T, r/2)
    if angles.ndim == 3:  # (B, T, r/2) -> broadcast over heads
        angles = angles[:, None]
    z = z * torch.polar(torch.ones_like(angles), angles)
    if interleaved:
        out = torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    else:
        out = torch.cat((z.real, z.imag), dim=-1)
    return torch.cat((out, rest), dim=-1)


def test_rotary_satisfies_the_protocol() -> None:
    assert isinstance(RotaryEmbedding(head_dim=8), PositionalEncoding)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [None, 4])
def test_rotary_matches_complex_multiplication(interleaved: bool, rotary_dim: int | None) -> None:
    rope = RotaryEmbedding(head_dim=8, rotary_dim=rotary_dim, base=100.0, interleaved=interleaved)
    x = torch.randn(2, 3, 7, 8)
    r = 8 if rotary_dim is None else rotary_dim
    expected = rope_reference(
        x, torch.arange(7), rope.inverse_frequencies(), rotary_dim=r, interleaved=interleaved
    )
    torch.testing.assert_close(rope(x), expected.float(), rtol=1e-5, atol=1e-5)


def test_partial_rotary_passes_the_tail_through() -> None:
    rope = RotaryEmbedding(head_dim=10, rotary_dim=4)
    x = torch.randn(1, 2, 5, 10)
    y = rope(x)
    assert torch.equal(y[..., 4:], x[..., 4:])
    assert not torch.equal(y[..., :4], x[..., :4])


def test_position_zero_is_the_identity() -> None:
    rope = RotaryEmbedding(head_dim=6)
    x = torch.randn(1, 1, 1, 6)
    torch.testing.assert_close(rope(x), x)


def test_interleaved_is_half_split_on_permuted_dimensions() -> None:
    d = 8
    half_split = RotaryEmbedding(head_dim=d)
    interleaved = RotaryEmbedding(head_dim=d, interleaved=True)
    x = torch.randn(2, 2, 5, d)
    to_half = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))  # [0,2,4,6,1,3,5,7]
    back = torch.argsort(to_half)
    torch.testing.assert_close(interleaved(x), half_split(x[..., to_half])[..., back])


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(0, 1000))
def test_dot_product_depends_only_on_relative_position(m: int, n: int, shift: int) -> None:
    rope = RotaryEmbedding(head_dim=16, max_seq_len=8)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 1, 1, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, generator=gen, dtype=torch.float64)

    def score(pq: int, pk: int) -> float:
        rq = rope(q, position_ids=torch.tensor([pq]))
        rk = rope(k, position_ids=torch.tensor([pk]))
        return float((rq * rk).sum())

    # the tables are fp32 (as in transformers): angles up to ~1500 rad carry ~1e-4 rad of
    # rounding, so the scores (|q||k| ~ 16) agree to ~3e-3 at worst
    assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-3, abs=1e-2)


def test_rotation_preserves_the_norm() -> None:
    rope = RotaryEmbedding(head_dim=12)
    x = torch.randn(2, 3, 9, 12, dtype=torch.float64)
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1))


def test_explicit_offsets_equal_slicing_a_longer_sequence() -> None:
    rope = RotaryEmbedding(head_dim=8)
    x = torch.randn(2, 4, 12, 8)
    full = rope(x)
    torch.testing.assert_close(rope(x[:, :, 9:], position_ids=torch.arange(9, 12)), full[:, :, 9:])
    ids = torch.arange(9, 12).expand(2, 3)
    torch.testing.assert_close(rope(x[:, :, 9:], position_ids=ids), full[:, :, 9:])


def test_per_row_position_ids_for_left_padding() -> None:
    rope = RotaryEmbedding(head_dim=8)
    x = torch.randn(2, 2, 5, 8)
    ids = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])  # row 1: two pads on the left
    y = rope(x, position_ids=ids)
    torch.testing.assert_close(y[0], rope(x[:1])[0])
    torch.testing.assert_close(y[1, :, 2:], rope(x[1:, :, 2:])[0])


def test_cache_grows_on_demand_and_equals_a_larger_cache() -> None:
    small = RotaryEmbedding(head_dim=8, max_seq_len=4)
    large = RotaryEmbedding(head_dim=8, max_seq_len=4096)
    assert small.cos_cached.shape == (4, 4)
    x = torch.randn(1, 2, 3, 8)
    ids = torch.tensor([100, 2000, 3000])
    torch.testing.assert_close(small(x, position_ids=ids), large(x, position_ids=ids))
    assert small.cos_cached.shape[0] >= 3001
    assert small.cos_cached.dtype == torch.float32
    assert "cos_cached" not in small.state_dict()
    y = small(torch.randn(1, 2, 5000, 8))
    assert small.cos_cached.shape[0] >= 5000
    assert y.shape == (1, 2, 5000, 8)


def test_tables_stay_fp32_after_module_to_bf16() -> None:
    rope = RotaryEmbedding(head_dim=8).to(torch.bfloat16)
    x = torch.randn(1, 1, 6, 8)
    y = rope(x.to(torch.bfloat16))
    assert rope.cos_cached.dtype == torch.float32
    assert y.dtype == torch.bfloat16
    # computed in fp32 from the bf16 input, then rounded once
    expected = RotaryEmbedding(head_dim=8)(x.to(torch.bfloat16).float()).to(torch.bfloat16)
    assert torch.equal(y, expected)


def test_dtypes(dtype: torch.dtype) -> None:
    rope = RotaryEmbedding(head_dim=8)
    x = torch.randn(2, 2, 4, 8).to(dtype)
    y = rope(x)
    assert y.dtype == dtype
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (2e-2, 2e-2)
    torch.testing.assert_close(y.float(), rope(x.float()), rtol=rtol, atol=atol)


def test_gradcheck() -> None:
    rope = RotaryEmbedding(head_dim=6, rotary_dim=4)
    x = torch.randn(1, 2, 3, 6, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[3, 7, 11]])
    assert torch.autograd.gradcheck(lambda t: rope(t, position_ids=ids), (x,))


def test_linear_scaling_equals_interpolated_positions() -> None:
    plain = RotaryEmbedding(head_dim=8)
    scaled = RotaryEmbedding(head_dim=8, scaling=LinearScaling(factor=4.0))
    x = torch.randn(1, 1, 3, 8, dtype=torch.float64)
    # positions 4, 8, 12 at factor 4 rotate like positions 1, 2, 3 unscaled
    torch.testing.assert_close(
        scaled(x, position_ids=torch.tensor([4, 8, 12])),
        plain(x, position_ids=torch.tensor([1, 2, 3])),
    )


def test_dynamic_ntk_changes_only_beyond_the_original_context() -> None:
    scaling = DynamicNTKScaling(factor=2.0, original_max_position_embeddings=16)
    dynamic = RotaryEmbedding(head_dim=8, max_seq_len=16, scaling=scaling)
    plain = RotaryEmbedding(head_dim=8, max_seq_len=16)
    x = torch.randn(1, 1, 16, 8)
    torch.testing.assert_close(dynamic(x), plain(x))  # within the original context
    long_x = torch.randn(1, 1, 40, 8)
    theta = rope_inverse_frequencies(rotary_dim=8, scaling=scaling, seq_len=40)
    expected = rope_reference(long_x, torch.arange(40), theta, rotary_dim=8, interleaved=False)
    torch.testing.assert_close(dynamic(long_x), expected.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dynamic(x), plain(x))  # back to short: unscaled again


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"head_dim": 8, "rotary_dim": 3}, "rotary_dim"),
        ({"head_dim": 8, "rotary_dim": 10}, "rotary_dim"),
        ({"head_dim": 8, "rotary_dim": 0}, "rotary_dim"),
        ({"head_dim": 0}, "head_dim"),
        ({"head_dim": 7}, "rotary_dim"),
        ({"head_dim": 8, "base": -1.0}, "base"),
        ({"head_dim": 8, "max_seq_len": 0}, "max_seq_len"),
    ],
)
def test_bad_config_names_the_values(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RotaryEmbedding(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
    if key == "rotary_dim" and "rotary_dim" in kwargs:
        assert str(kwargs["rotary_dim"]) in str(info.value)


def test_bad_inputs_are_data_errors() -> None:
    rope = RotaryEmbedding(head_dim=8)
    with pytest.raises(DataError, match=r"\(B, n_heads, T, head_dim\)"):
        rope(torch.randn(2, 5, 8))
    with pytest.raises(DataError, match="last dimension 8"):
        rope(torch.randn(1, 1, 5, 6))
    with pytest.raises(DataError, match=">= 0"):
        rope(torch.randn(1, 1, 2, 8), position_ids=torch.tensor([-2, 0]))
    with pytest.raises(DataError, match="integer tensor"):
        rope(torch.randn(1, 1, 2, 8), position_ids=torch.tensor([0.0, 1.0]))
    with pytest.raises(DataError, match=r"shape \(B, 2\)"):
        rope(torch.randn(1, 1, 2, 8), position_ids=torch.arange(3))


def test_apply_rotary_with_fp32_tables_keeps_input_dtype() -> None:
    x = torch.randn(1, 1, 2, 4, dtype=torch.float16)
    cos = torch.ones(2, 2)
    sin = torch.zeros(2, 2)
    y = apply_rotary(x, cos, sin)
    assert y.dtype == torch.float16
    assert torch.equal(y, x)
