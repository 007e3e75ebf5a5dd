"""NF4Linear: the product, slice-by-slice dequantization, gradients, state dicts, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from lego.peft import NF4Linear, NF4Tensor, quantize_nf4
from lego.protocols import CompatibilityError, ConfigError, FormatError


def _dense(in_features: int = 40, out_features: int = 24, *, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias)


def test_forward_is_the_product_with_the_dequantized_weight() -> None:
    dense = _dense()
    layer = NF4Linear.from_linear(dense)
    x = torch.randn(2, 3, 40)
    weight = layer.dequantized_weight()
    assert torch.equal(weight, quantize_nf4(dense.weight.detach()).dequantize())
    assert torch.equal(layer(x), F.linear(x, weight, dense.bias))
    assert layer(x).shape == (2, 3, 24)
    assert [name for name, _ in layer.named_parameters()] == ["bias"]
    assert not layer.bias.requires_grad  # type: ignore[union-attr]


@pytest.mark.parametrize(("in_features", "bias"), [(40, True), (64, False), (100, True)])
def test_slices_give_the_same_product(
    in_features: int, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    dense = _dense(in_features, 48, bias=bias)
    whole = NF4Linear.from_linear(dense)
    sliced = NF4Linear.from_linear(dense, chunk_values=in_features * 8)
    sizes: list[int] = []
    original = NF4Tensor.dequantize_range

    def spy(self: NF4Tensor, start: int, stop: int, out: Tensor, scales: Tensor) -> None:
        sizes.append(stop - start)
        original(self, start, stop, out, scales)

    monkeypatch.setattr(NF4Tensor, "dequantize_range", spy)
    x = torch.randn(5, in_features)
    y = sliced(x)
    assert len(sizes) > 1  # several slices, each of whole rows and blocks
    assert max(sizes) < 48 * in_features  # never the whole weight
    assert all(size % 64 == 0 or size == sizes[-1] for size in sizes)
    sizes.clear()
    torch.testing.assert_close(y, whole(x))
    assert sizes == [48 * in_features]  # small enough for one piece


def test_input_and_bias_gradients_equal_the_dense_layer() -> None:
    dense = _dense()
    layer = NF4Linear.from_linear(dense, chunk_values=40 * 8)
    reference = nn.Linear(40, 24)
    with torch.no_grad():
        reference.weight.copy_(layer.dequantized_weight())
        reference.bias.copy_(dense.bias)
    assert layer.bias is not None
    layer.bias.requires_grad_(True)
    x = torch.randn(6, 40, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    grad = torch.randn(6, 24)
    layer(x).backward(grad)
    reference(x_ref).backward(grad)
    assert x.grad is not None
    assert x_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad)


def test_half_precision_input_and_compute_dtype() -> None:
    dense = _dense()
    x = torch.randn(3, 40)
    layer = NF4Linear.from_linear(dense, compute_dtype=torch.float32)
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, layer(x.bfloat16().float()).bfloat16())
    bf16 = NF4Linear.from_linear(dense.to(torch.bfloat16))
    assert bf16.dtype == torch.bfloat16
    assert bf16(x.bfloat16()).dtype == torch.bfloat16


def test_model_half_keeps_the_quantization_state_exact() -> None:
    layer = NF4Linear.from_linear(_dense())
    before = layer.dequantized_weight()
    layer.half()
    assert torch.equal(layer.dequantized_weight(), before)  # absmax state never rounded
    assert layer.bias is not None
    assert layer.bias.dtype == torch.float16


@pytest.mark.parametrize("double_quant", [False, True])
def test_state_dict_uses_bitsandbytes_keys_and_round_trips(double_quant: bool) -> None:
    layer = NF4Linear.from_linear(_dense(), double_quant=double_quant)
    state = layer.state_dict()
    keys = ["weight", "bias", "weight.absmax", "weight.quant_map"]
    if double_quant:
        keys += ["weight.nested_absmax", "weight.nested_quant_map"]
    assert list(state) == [*keys, "weight.quant_state.bitsandbytes__nf4"]
    twin = NF4Linear.from_linear(_dense(), double_quant=not double_quant)
    torch.nn.init.zeros_(twin.bias)  # type: ignore[arg-type]
    twin.load_state_dict(state)
    x = torch.randn(4, 40)
    assert torch.equal(twin(x), layer(x))
    assert twin.double_quant == double_quant


def test_a_dense_state_dict_is_quantized_on_load() -> None:
    dense = _dense()
    layer = NF4Linear.from_linear(nn.Linear(40, 24))
    layer.load_state_dict(dense.state_dict())
    assert torch.equal(
        layer.dequantized_weight(), NF4Linear.from_linear(dense).dequantized_weight()
    )


def test_loading_the_wrong_shape_or_damaged_state_names_the_key() -> None:
    layer = NF4Linear.from_linear(_dense())
    with pytest.raises(CompatibilityError, match=r"weight has shape \(24, 41\)"):
        layer.load_state_dict(nn.Linear(41, 24).state_dict())
    other = NF4Linear.from_linear(_dense(64, 24)).state_dict()
    with pytest.raises(CompatibilityError, match=r"NF4 weight of shape \(24, 64\)"):
        layer.load_state_dict(other)
    damaged = layer.state_dict()
    del damaged["weight.absmax"]
    with pytest.raises(FormatError, match=r"no 'weight\.absmax' entry"):
        layer.load_state_dict(damaged)
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict({"bias": torch.zeros(24)})


def test_nested_state_dict_prefixes() -> None:
    model = nn.Sequential(NF4Linear.from_linear(_dense()), nn.ReLU())
    assert "0.weight.quant_state.bitsandbytes__nf4" in model.state_dict()
    twin = nn.Sequential(NF4Linear.from_linear(_dense(40, 24)), nn.ReLU())
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 40)
    assert torch.equal(twin(x), model(x))


def test_bad_input() -> None:
    layer = NF4Linear.from_linear(_dense())
    with pytest.raises(CompatibilityError, match="input has 39 features"):
        layer(torch.randn(2, 39))
    with pytest.raises(CompatibilityError, match=r"cannot compute in torch\.int64"):
        layer(torch.ones(2, 40, dtype=torch.int64))
    with pytest.raises(ConfigError, match="2-D NF4Tensor"):
        NF4Linear(weight=quantize_nf4(torch.randn(64)))
    with pytest.raises(ConfigError, match="2-D NF4Tensor"):
        NF4Linear(weight=torch.randn(4, 4))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bias has shape"):
        NF4Linear(weight=quantize_nf4(torch.randn(4, 64)), bias=torch.zeros(5))
    with pytest.raises(ConfigError, match="compute_dtype"):
        NF4Linear.from_linear(_dense(), compute_dtype=torch.int8)
    with pytest.raises(ConfigError, match="chunk_values"):
        NF4Linear.from_linear(_dense(), chunk_values=0)
    with pytest.raises(ConfigError, match="block_size"):
        NF4Linear.from_linear(_dense(), block_size=100)


def test_repr() -> None:
    layer = NF4Linear.from_linear(_dense(), block_size=32)
    assert "in_features=40, out_features=24, bias=True, nf4 block_size=32" in repr(layer)


def test_layers_share_no_state_tensor() -> None:
    """An in-place change to one layer's buffers (``model.apply``) leaves the others alone."""
    first = NF4Linear.from_linear(_dense())
    second = NF4Linear.from_linear(_dense())
    before = second.dequantized_weight()
    with torch.no_grad():
        for buffer in first.buffers():
            buffer.zero_()
    assert torch.equal(second.dequantized_weight(), before)
    assert torch.equal(NF4Linear.from_linear(_dense()).dequantized_weight(), before)


def test_a_loaded_layer_does_not_alias_the_state_dict() -> None:
    state = NF4Linear.from_linear(_dense()).state_dict()
    layer = NF4Linear.from_linear(nn.Linear(40, 24))
    layer.load_state_dict(state)
    before = layer.dequantized_weight()
    with torch.no_grad():
        for value in state.values():
            value.zero_()
    assert torch.equal(layer.dequantized_weight(), before)
