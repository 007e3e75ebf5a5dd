from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.layers import LayerNorm, QKNorm, RMSNorm
from lego.protocols import ConfigError, DataError, Norm


def rms_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double()
    rms = torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps)
    return (x64 / rms) * weight.double()


def layer_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    x64 = x.double()
    mean = x64.mean(-1, keepdim=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdim=True)  # biased variance
    y = (x64 - mean) / torch.sqrt(var + eps) * weight.double()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize(
    "make", [lambda: LayerNorm(dim=8), lambda: RMSNorm(dim=8), lambda: QKNorm(head_dim=8)]
)
def test_norms_satisfy_the_protocol(make: Callable[[], torch.nn.Module]) -> None:
    assert isinstance(make(), Norm)


def test_rms_norm_matches_the_formula(
    dtype: torch.dtype, assert_close: Callable[..., None]
) -> None:
    norm = RMSNorm(dim=16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    norm = norm.to(dtype)
    x = (torch.randn(2, 5, 16) * 3).to(dtype)
    y = norm(x)
    assert y.dtype == dtype
    assert y.shape == x.shape
    assert_close(y, rms_reference(x, norm.weight, 1e-6))


def test_rms_norm_order_of_operations_matches_llama_in_bf16() -> None:
    # transformers' LlamaRMSNorm: weight * (x_fp32 * rsqrt(mean(x^2) + eps)).to(bf16)
    norm = RMSNorm(dim=32).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32).to(torch.bfloat16))
    x = torch.randn(4, 32).to(torch.bfloat16)
    h = x.float()
    expected = norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(
        torch.bfloat16
    )
    assert torch.equal(norm(x), expected)


def test_rms_norm_keeps_input_dtype_with_fp32_weight() -> None:
    norm = RMSNorm(dim=8)  # fp32 weight, as under autocast
    x = torch.randn(3, 8).to(torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16


def test_rms_norm_is_fp32_internally_for_large_values() -> None:
    # 300^2 overflows fp16; computing in fp32 keeps the result finite and right
    norm = RMSNorm(dim=4).to(torch.float16)
    x = torch.full((1, 4), 300.0, dtype=torch.float16)
    y = norm(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), torch.ones(1, 4), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_the_formula(
    bias: bool, dtype: torch.dtype, assert_close: Callable[..., None]
) -> None:
    norm = LayerNorm(dim=12, eps=1e-5, bias=bias)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12))
        if norm.bias is not None:
            norm.bias.copy_(torch.randn(12))
    norm = norm.to(dtype)
    x = (torch.randn(3, 4, 12) + 2).to(dtype)
    y = norm(x)
    assert y.dtype == dtype
    assert_close(y, layer_norm_reference(x, norm.weight, norm.bias, 1e-5))
    assert ("bias" in dict(norm.named_parameters())) is bias


def test_layer_norm_equals_torch_layer_norm() -> None:
    ours = LayerNorm(dim=10)
    theirs = torch.nn.LayerNorm(10)
    with torch.no_grad():
        w, b = torch.randn(10), torch.randn(10)
        ours.weight.copy_(w)
        theirs.weight.copy_(w)
        assert ours.bias is not None
        ours.bias.copy_(b)
        theirs.bias.copy_(b)
    x = torch.randn(4, 10)
    torch.testing.assert_close(ours(x), theirs(x))


def test_qk_norm_normalizes_each_head_over_head_dim() -> None:
    norm = QKNorm(head_dim=8)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(8) + 0.5)
    q = torch.randn(2, 4, 5, 8)  # (B, H, T, head_dim)
    y = norm(q)
    assert y.shape == q.shape
    assert norm.head_dim == 8
    for h in range(4):  # one shared weight, heads normalized independently
        torch.testing.assert_close(y[:, h], rms_reference(q[:, h], norm.weight, 1e-6).float())


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(min_value=1e-2, max_value=1e3), dim=st.integers(min_value=1, max_value=64))
def test_rms_norm_is_scale_invariant(scale: float, dim: int) -> None:
    norm = RMSNorm(dim=dim, eps=1e-12)
    x = torch.randn(3, dim, dtype=torch.float64)
    norm = norm.double()
    torch.testing.assert_close(norm(x * scale), norm(x), rtol=1e-6, atol=1e-6)


def test_rms_norm_gradcheck() -> None:
    norm = RMSNorm(dim=6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6, dtype=torch.float64))
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: norm(t), (x,))
    assert torch.autograd.gradcheck(lambda w: rms_reference(x.detach(), w, 1e-6), (norm.weight,))


def test_rms_norm_weight_gets_a_gradient() -> None:
    norm = RMSNorm(dim=6)
    norm(torch.randn(2, 6)).sum().backward()
    assert norm.weight.grad is not None
    assert norm.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: RMSNorm(dim=0), "dim"),
        (lambda: RMSNorm(dim=8, eps=0.0), "eps"),
        (lambda: RMSNorm(dim=8, eps=-1e-6), "eps"),
        (lambda: LayerNorm(dim=-3), "dim"),
        (lambda: LayerNorm(dim=8, eps=float("nan")), "eps"),
        (lambda: QKNorm(head_dim=0), "head_dim"),
        (lambda: RMSNorm(dim=8.0), "dim"),  # type: ignore[arg-type]
    ],
)
def test_bad_config_is_a_config_error(make: Callable[[], object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key


def test_wrong_last_dimension_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"last dimension 8"):
        RMSNorm(dim=8)(torch.randn(2, 7))
    with pytest.raises(DataError, match="tensor 'x'"):
        LayerNorm(dim=8)(torch.randn(2, 9))
