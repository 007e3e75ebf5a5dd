"""LoraLinear / LoraEmbedding: the formulas, initializations, DoRA, exact merge and unmerge."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from lego.peft import LoraEmbedding, LoraLinear, QuantizedLinear
from lego.protocols import CompatibilityError, ConfigError, DataError


def _linear(*, bias: bool = True, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(6, 5, bias=bias).to(dtype)


def test_lora_output_is_base_plus_scaled_update() -> None:
    base = _linear()
    layer = LoraLinear(base_layer=base, r=3, lora_alpha=6, init_lora_weights=False)
    x = torch.randn(2, 4, 6)
    a, b = layer.lora_A.weight, layer.lora_B.weight  # (3, 6), (5, 3)
    expected = base(x) + (x @ a.T @ b.T) * 2.0
    torch.testing.assert_close(layer(x), expected)
    assert layer.scaling == 2.0
    assert layer.base_layer is base
    assert layer.weight is base.weight
    assert layer.bias is base.bias
    assert (layer.in_features, layer.out_features) == (6, 5)


def test_rslora_scaling() -> None:
    layer = LoraLinear(base_layer=_linear(), r=4, lora_alpha=8, use_rslora=True)
    assert layer.scaling == 8 / math.sqrt(4)


@pytest.mark.parametrize("init", [True, "gaussian"])
def test_default_inits_start_at_the_base(init: bool | str) -> None:
    base = _linear()
    layer = LoraLinear(base_layer=base, r=2, lora_alpha=2, init_lora_weights=init)  # type: ignore[arg-type]
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert torch.count_nonzero(layer.lora_A.weight) > 0
    x = torch.randn(3, 6)
    assert torch.equal(layer(x), base(x))


def test_gaussian_init_std() -> None:
    torch.manual_seed(0)
    layer = LoraLinear(
        base_layer=nn.Linear(400, 4), r=4, lora_alpha=4, init_lora_weights="gaussian"
    )
    assert abs(layer.lora_A.weight.std().item() - 1 / 4) < 0.02


def test_dora_matches_the_paper_formula() -> None:
    base = _linear()
    layer = LoraLinear(base_layer=base, r=2, lora_alpha=4, use_dora=True, init_lora_weights=False)
    assert layer.use_dora
    magnitude = layer.lora_magnitude_vector
    assert magnitude is not None
    delta = layer.lora_B.weight @ layer.lora_A.weight * layer.scaling  # (5, 6)
    directed = base.weight + delta
    torch.testing.assert_close(magnitude, directed.norm(dim=1))  # initialized to the norm
    with torch.no_grad():
        magnitude.mul_(1.5)
    x = torch.randn(4, 6)
    expected = F.linear(x, magnitude[:, None] * directed / directed.norm(dim=1)[:, None], base.bias)
    torch.testing.assert_close(layer(x), expected)


def test_dora_norm_is_detached_from_the_gradient() -> None:
    layer = LoraLinear(
        base_layer=_linear(), r=2, lora_alpha=4, use_dora=True, init_lora_weights=False
    )
    x = torch.randn(4, 6)
    layer(x).sum().backward()
    assert layer.lora_A.weight.grad is not None
    # with the norm detached, d/dB of sum(out) is m/||.|| * scale * (sum over batch of A x)
    assert layer.lora_magnitude_vector is not None
    norm = (layer.base_layer.weight + layer.delta_weight()).norm(dim=1).detach()
    ax = (x @ layer.lora_A.weight.T).sum(0)  # (r,)
    expected = (layer.lora_magnitude_vector / norm)[:, None] * layer.scaling * ax[None, :]
    torch.testing.assert_close(layer.lora_B.weight.grad, expected.detach())


def test_dropout_only_in_training() -> None:
    layer = LoraLinear(
        base_layer=_linear(), r=2, lora_alpha=2, lora_dropout=0.5, init_lora_weights=False
    )
    assert isinstance(layer.lora_dropout, nn.Dropout)
    x = torch.randn(64, 6)
    layer.eval()
    first = layer(x)
    assert torch.equal(first, layer(x))
    layer.train()
    assert not torch.equal(layer(x), first)


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_then_unmerge_is_bit_exact(use_dora: bool, dtype: torch.dtype) -> None:
    base = _linear(dtype=dtype)
    layer = LoraLinear(
        base_layer=base, r=2, lora_alpha=4, use_dora=use_dora, init_lora_weights=False
    )
    parameter, original = base.weight, base.weight.detach().clone()
    x = torch.randn(3, 6, dtype=dtype)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    assert base.weight is parameter  # the same Parameter: optimizers and ties still see it
    assert not torch.equal(base.weight, original)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.05}
    torch.testing.assert_close(layer(x), unmerged, **tol)
    layer.unmerge()
    assert not layer.merged
    assert torch.equal(base.weight, original)
    assert layer.state_dict().keys() == {
        "base_layer.weight",
        "base_layer.bias",
        "lora_A.weight",
        "lora_B.weight",
        *(["lora_magnitude_vector"] if use_dora else []),
    }


def test_adapters_train_in_float32_on_half_precision_bases() -> None:
    layer = LoraLinear(
        base_layer=_linear(dtype=torch.bfloat16), r=2, lora_alpha=2, init_lora_weights=False
    )
    assert layer.lora_A.weight.dtype == torch.float32
    assert layer(torch.randn(2, 6, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_merge_twice_and_unmerge_unmerged_are_errors() -> None:
    layer = LoraLinear(base_layer=_linear(), r=2, lora_alpha=2)
    with pytest.raises(ConfigError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(ConfigError, match="already merged"):
        layer.merge()


def test_a_broken_adapter_does_not_merge() -> None:
    base = _linear()
    original = base.weight.detach().clone()
    layer = LoraLinear(base_layer=base, r=2, lora_alpha=2, init_lora_weights=False)
    with torch.no_grad():
        layer.lora_B.weight[0, 0] = float("nan")
    with pytest.raises(DataError, match="non-finite"):
        layer.merge()
    assert not layer.merged
    assert torch.equal(base.weight, original)


def test_rank_and_base_are_checked() -> None:
    with pytest.raises(ConfigError, match="r must be at least 1"):
        LoraLinear(base_layer=_linear(), r=0, lora_alpha=1)
    with pytest.raises(CompatibilityError, match="not a linear layer"):
        LoraLinear(base_layer=nn.LayerNorm(4), r=1, lora_alpha=1)
    with pytest.raises(CompatibilityError, match=r"not an nn\.Embedding"):
        LoraEmbedding(base_layer=_linear(), r=1, lora_alpha=1)  # type: ignore[arg-type]


# -- embeddings ------------------------------------------------------------------------------


def _embedding() -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(9, 4, padding_idx=0)


def test_embedding_update_is_a_lookup_of_a_then_b() -> None:
    base = _embedding()
    layer = LoraEmbedding(base_layer=base, r=2, lora_alpha=4, init_lora_weights=False)
    assert layer.lora_embedding_A.shape == (2, 9)
    assert layer.lora_embedding_B.shape == (4, 2)
    ids = torch.tensor([[0, 3, 8], [1, 1, 2]])
    delta = (layer.lora_embedding_B @ layer.lora_embedding_A).T * 2.0  # (9, 4)
    torch.testing.assert_close(layer(ids), base(ids) + delta[ids])


def test_embedding_default_init_starts_at_the_base() -> None:
    base = _embedding()
    layer = LoraEmbedding(base_layer=base, r=2, lora_alpha=4)
    assert torch.count_nonzero(layer.lora_embedding_A) == 0
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(layer(ids), base(ids))


def test_embedding_dora_magnitude_is_per_feature() -> None:
    base = _embedding()
    layer = LoraEmbedding(
        base_layer=base, r=2, lora_alpha=4, use_dora=True, init_lora_weights=False
    )
    assert layer.lora_magnitude_vector is not None
    assert layer.lora_magnitude_vector.shape == (4,)
    with torch.no_grad():
        layer.lora_magnitude_vector.mul_(0.5)
    ids = torch.tensor([[1, 5, 8]])
    merged_table = base.weight + layer.delta_weight()  # (9, 4)
    scale = layer.lora_magnitude_vector / merged_table.norm(dim=0)  # (4,)
    torch.testing.assert_close(layer(ids), (scale * merged_table)[ids])


@pytest.mark.parametrize("use_dora", [False, True])
def test_embedding_merge_then_unmerge_is_bit_exact(use_dora: bool) -> None:
    base = _embedding()
    head = nn.Linear(4, 9, bias=False)
    head.weight = base.weight  # tied: merging changes the head too, as in PEFT
    layer = LoraEmbedding(
        base_layer=base, r=2, lora_alpha=4, use_dora=use_dora, init_lora_weights=False
    )
    original = base.weight.detach().clone()
    ids = torch.tensor([[1, 5, 8]])
    unmerged = layer(ids)
    layer.merge()
    torch.testing.assert_close(layer(ids), unmerged)
    assert head.weight is base.weight
    assert not torch.equal(head.weight, original)
    layer.unmerge()
    assert torch.equal(base.weight, original)


# -- a quantized base (the seam lego-peft's NF4 layer fills) ------------------------------------


class FakeQuantized(nn.Module):
    """A linear layer storing its weight as int8 codes times one scale."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.scale = weight.abs().max() / 127
        self.register_buffer("codes", torch.round(weight / self.scale).to(torch.int8))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def dequantized_weight(self) -> Tensor:
        return self.codes.float() * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)


@pytest.mark.parametrize("use_dora", [False, True])
def test_quantized_base_merges_to_higher_precision(use_dora: bool) -> None:
    dense = _linear()
    quantized = FakeQuantized(dense.weight.detach(), dense.bias)
    assert isinstance(quantized, QuantizedLinear)
    layer = LoraLinear(
        base_layer=quantized, r=2, lora_alpha=4, use_dora=use_dora, init_lora_weights=False
    )
    assert layer.quantized
    assert layer.lora_A.weight.dtype == torch.float32
    x = torch.randn(3, 6)
    unmerged = layer(x)
    codes = quantized.codes.clone()
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged)
    assert torch.equal(quantized.codes, codes)  # never re-quantized
    merged = layer.merged_weight()
    assert merged.dtype == torch.float32
    layer.unmerge()
    assert torch.equal(layer(x), unmerged)
