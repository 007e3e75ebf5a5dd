"""quantize_nf4 / NF4Tensor: the codebook, round trips, odd sizes, bad input, state dicts.

The values are checked against a plain reference written here from the definition
(``torch.bucketize`` at the codebook's midpoints, one block at a time); the bit-for-bit
comparison with bitsandbytes itself is in tests-integration/test_nf4_oracles.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from lego.peft import NF4Tensor, quantize_nf4
from lego.peft.nf4 import BLOCK_SIZES, NF4_CODE, dynamic_map, nf4_code
from lego.protocols import CompatibilityError, ConfigError, DataError, FormatError


def _reference(weight: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """(codes (numel,) uint8, absmax (n_blocks,) float32) from the definition."""
    flat = weight.reshape(-1).float()
    code = nf4_code()
    bounds = (code[:-1] + code[1:]) / 2
    codes, absmax = [], []
    for start in range(0, flat.numel(), block_size):
        block = flat[start : start + block_size]
        amax = block.abs().max().clamp(min=1e-38)
        scaled = block * (1.0 / amax) if block.numel() == block_size else block / amax
        codes.append(torch.bucketize(scaled, bounds).to(torch.uint8))
        absmax.append(amax)
    return torch.cat(codes), torch.stack(absmax)


def test_codebook_is_sorted_nf4_with_zero_and_ends() -> None:
    code = nf4_code()
    assert code.shape == (16,)
    assert code.dtype == torch.float32
    assert torch.equal(code, torch.sort(code).values)
    assert (code[0], code[7], code[15]) == (-1.0, 0.0, 1.0)
    assert tuple(code.tolist()) == NF4_CODE


def test_dynamic_map_is_256_sorted_values_in_range() -> None:
    table = dynamic_map()
    assert table.shape == (256,)
    assert torch.equal(table, torch.sort(table).values)
    assert table[-1] == 1.0
    assert 0.0 in table.tolist()
    assert table[0] > -1.0
    assert len(set(table.tolist())) == 256


@pytest.mark.parametrize("block_size", [32, 64, 256])
def test_codes_and_absmax_follow_the_definition(block_size: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(24, 40)  # 960 values: not a multiple of 64 or 256
    q = quantize_nf4(weight, block_size, double_quant=False)
    codes, absmax = _reference(weight, block_size)
    assert torch.equal(q.codes(), codes)
    assert torch.equal(q.absmax, absmax)
    expected = nf4_code()[codes.long()] * absmax.repeat_interleave(block_size)[: codes.numel()]
    assert torch.equal(q.dequantize(), expected.view(24, 40))


def test_nibble_order_first_value_high() -> None:
    weight = torch.tensor([-1.0, 1.0, 0.0, 0.6] + [0.0] * 60)
    q = quantize_nf4(weight, 64, double_quant=False)
    assert q.packed.shape == (32, 1)
    assert q.packed.dtype == torch.uint8
    assert q.packed[0, 0] == 0x0F  # -1.0 -> code 0 (high), 1.0 -> code 15 (low)
    assert q.packed[1, 0] == (7 << 4) | 13  # 0.0 -> 7, 0.6 -> nearest 0.5626 -> 13


def test_values_on_the_codebook_round_trip_exactly() -> None:
    code = nf4_code()
    weight = (code[torch.arange(128) % 16] * 3.0).view(2, 64)
    q = quantize_nf4(weight, 64, double_quant=False)
    assert torch.equal(q.dequantize(), weight)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (1, 4097), (2, 3, 33)])
@pytest.mark.parametrize("double_quant", [False, True])
def test_odd_sizes(shape: tuple[int, ...], double_quant: bool) -> None:
    torch.manual_seed(1)
    weight = torch.randn(*shape)
    q = quantize_nf4(weight, 64, double_quant=double_quant)
    n = weight.numel()
    assert q.numel == n
    assert q.n_blocks == math.ceil(n / 64)
    assert q.packed.shape == ((n + 1) // 2, 1)
    if n % 2:
        assert int(q.packed[-1, 0]) & 15 == 7  # padded with the code of 0.0
    restored = q.dequantize()
    assert restored.shape == weight.shape
    codes, absmax = _reference(weight, 64)
    assert torch.equal(q.codes(), codes)
    tail = weight.reshape(-1)[(q.n_blocks - 1) * 64 :]
    assert float(q.scales()[-1]) == pytest.approx(float(tail.abs().max()), rel=0.02)
    if not double_quant:
        assert torch.equal(q.absmax, absmax)


@given(
    n=st.integers(min_value=1, max_value=700),
    block_size=st.sampled_from([32, 64, 128]),
    scale=st.floats(min_value=1e-6, max_value=1e6),
    seed=st.integers(min_value=0, max_value=2**16),
)
@settings(max_examples=40, deadline=None)
def test_any_size_matches_the_reference(n: int, block_size: int, scale: float, seed: int) -> None:
    weight = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * scale
    q = quantize_nf4(weight, block_size, double_quant=False)
    codes, absmax = _reference(weight, block_size)
    assert torch.equal(q.codes(), codes)
    assert torch.equal(q.absmax, absmax)
    error = (q.dequantize() - weight).abs()
    assert bool((error <= absmax.repeat_interleave(block_size)[:n] * 0.17).all())


def test_every_block_size_round_trips() -> None:
    torch.manual_seed(2)
    weight = torch.randn(16, 512)
    for block_size in BLOCK_SIZES:
        q = quantize_nf4(weight, block_size)
        assert q.block_size == block_size
        error = float((q.dequantize() - weight).norm() / weight.norm())
        assert error < 0.12, block_size


def test_double_quantization_state() -> None:
    torch.manual_seed(3)
    weight = torch.randn(256, 512)  # 2048 blocks: 8 nested blocks
    plain = quantize_nf4(weight, double_quant=False)
    q = quantize_nf4(weight)
    assert q.double_quant
    assert not plain.double_quant
    assert q.absmax.dtype == torch.uint8
    assert q.absmax.shape == (2048,)
    assert q.nested_absmax is not None
    assert q.nested_absmax.shape == (8,)
    assert q.offset is not None
    assert torch.equal(q.offset, plain.absmax.mean())
    assert torch.equal(q.packed, plain.packed)  # the 4-bit codes do not depend on it
    torch.testing.assert_close(q.scales(), plain.absmax, rtol=0.01, atol=0.0)
    bits = 8 * (q.nbytes - 256 * 4) / weight.numel()  # the shared map aside
    assert bits == pytest.approx(4.127, abs=0.01)
    assert 8 * plain.nbytes / weight.numel() == 4.5


def test_zero_weight_and_zero_blocks() -> None:
    weight = torch.zeros(4, 64)
    weight[2] = torch.linspace(-1, 1, 64)
    for double_quant in (False, True):
        restored = quantize_nf4(weight, double_quant=double_quant).dequantize()
        assert torch.equal(restored[:2], weight[:2])
        assert torch.equal(restored[3], weight[3])
    assert torch.equal(quantize_nf4(torch.zeros(130)).dequantize(), torch.zeros(130))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    weight = torch.randn(8, 64).to(dtype)
    q = quantize_nf4(weight)
    assert q.dtype == dtype
    assert q.dequantize().dtype == dtype
    full = q.dequantize(torch.float32)
    assert torch.equal(q.dequantize(), full.to(dtype))  # one rounding, from float32
    reference = quantize_nf4(weight.float(), double_quant=True)
    assert torch.equal(q.packed, reference.packed)


def test_dequantize_range_pieces_equal_the_whole() -> None:
    torch.manual_seed(5)
    q = quantize_nf4(torch.randn(10, 30))  # 300 values, 5 blocks (the last one short)
    whole = q.dequantize().reshape(-1)
    scales = q.scales()
    pieces = []
    for start in range(0, 300, 128):
        out = torch.empty(min(128, 300 - start))
        q.dequantize_range(start, start + out.numel(), out, scales)
        pieces.append(out)
    assert torch.equal(torch.cat(pieces), whole)
    with pytest.raises(ConfigError, match="block-aligned"):
        q.dequantize_range(10, 20, torch.empty(10), scales)
    with pytest.raises(ConfigError, match="block-aligned"):
        q.dequantize_range(0, 301, torch.empty(301), scales)


@pytest.mark.parametrize(
    ("weight", "kwargs", "error", "match"),
    [
        (torch.ones(4, dtype=torch.int64), {}, ConfigError, "float32, float16 or bfloat16"),
        (torch.ones(4, dtype=torch.float64), {}, ConfigError, "float32, float16 or bfloat16"),
        (torch.ones(0), {}, ConfigError, "no values"),
        ([1.0, 2.0], {}, ConfigError, "must be a tensor"),
        (torch.ones(4), {"block_size": 48}, ConfigError, "block_size must be one of"),
        (torch.ones(4), {"block_size": 0}, ConfigError, "block_size"),
        (torch.ones(4), {"block_size": True}, ConfigError, "block_size"),
        (torch.ones(4), {"double_quant": "yes"}, ConfigError, "double_quant"),
    ],
)
def test_bad_input(weight: object, kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        quantize_nf4(weight, **kwargs)  # type: ignore[arg-type]


def test_non_finite_weight_names_the_block() -> None:
    weight = torch.randn(4, 64)
    weight[2, 5] = float("nan")
    with pytest.raises(DataError, match="block starting at 128"):
        quantize_nf4(weight)
    weight[2, 5] = float("inf")
    with pytest.raises(DataError, match="NaN or infinite"):
        quantize_nf4(weight, double_quant=False)


def test_dequantize_to_a_bad_dtype() -> None:
    with pytest.raises(ConfigError, match="dtype"):
        quantize_nf4(torch.randn(64)).dequantize(torch.int32)


# -- bitsandbytes' state-dict layout ------------------------------------------------------


@pytest.mark.parametrize("double_quant", [False, True])
def test_state_dict_round_trip(double_quant: bool) -> None:
    torch.manual_seed(6)
    q = quantize_nf4(torch.randn(12, 70).half(), 128, double_quant=double_quant)
    tensors = q.state_dict("layer.weight")
    expected = {"layer.weight", "layer.weight.absmax", "layer.weight.quant_map"}
    expected.add("layer.weight.quant_state.bitsandbytes__nf4")
    if double_quant:
        expected |= {"layer.weight.nested_absmax", "layer.weight.nested_quant_map"}
    assert set(tensors) == expected
    info = json.loads(bytes(tensors["layer.weight.quant_state.bitsandbytes__nf4"].tolist()))
    assert info["quant_type"] == "nf4"
    assert info["blocksize"] == 128
    assert info["dtype"] == "float16"
    assert info["shape"] == [12, 70]
    back = NF4Tensor.from_state_dict(tensors, "layer.weight")
    assert back.shape == q.shape
    assert back.dtype == q.dtype
    assert back.block_size == 128
    assert back.double_quant == double_quant
    assert torch.equal(back.dequantize(), q.dequantize())


def _damaged(key: str, value: Tensor | None) -> dict[str, Tensor]:
    torch.manual_seed(7)
    tensors = quantize_nf4(torch.randn(8, 64)).state_dict("w")
    if value is None:
        del tensors[key]
    else:
        tensors[key] = value
    return tensors


def _info(**changes: object) -> Tensor:
    info = {
        "quant_type": "nf4",
        "blocksize": 64,
        "dtype": "float32",
        "shape": [8, 64],
        "nested_blocksize": 256,
        "nested_dtype": "float32",
        "nested_offset": 0.5,
    }
    info.update(changes)
    info = {k: v for k, v in info.items() if v is not None}
    return torch.tensor(list(json.dumps(info).encode()), dtype=torch.uint8)


STATE = "w.quant_state.bitsandbytes__nf4"


@pytest.mark.parametrize(
    ("key", "value", "error", "match"),
    [
        ("w", None, FormatError, "has no 'w' entry"),
        ("w.absmax", None, FormatError, "no 'w.absmax' entry"),
        ("w.nested_absmax", None, FormatError, "no 'w.nested_absmax' entry"),
        ("w.nested_quant_map", None, FormatError, "no 'w.nested_quant_map' entry"),
        ("w.quant_map", None, FormatError, "no 'w.quant_map' entry"),
        (STATE, None, FormatError, "no 'w.quant_state.bitsandbytes__nf4' entry"),
        ("w", torch.zeros(100, 1, dtype=torch.uint8), FormatError, "w is torch.uint8 with 100"),
        ("w.absmax", torch.zeros(8), FormatError, "w.absmax is torch.float32"),
        ("w.nested_absmax", torch.zeros(2), FormatError, "w.nested_absmax"),
        ("w.quant_map", torch.linspace(-1, 1, 16), CompatibilityError, "not the NF4 codebook"),
        (
            STATE,
            torch.tensor([1, 2, 255], dtype=torch.uint8),
            FormatError,
            "not bitsandbytes' JSON",
        ),
        (STATE, _info(quant_type="fp4"), CompatibilityError, "not 'nf4'"),
        (STATE, _info(blocksize=48), FormatError, "blocksize"),
        (STATE, _info(shape="8x64"), FormatError, "shape"),
        (STATE, _info(dtype="int8"), FormatError, "dtype"),
        (STATE, _info(nested_offset=None), FormatError, "incomplete"),
        (STATE, _info(nested_offset=float("nan")), FormatError, "nested_offset"),
        (STATE, _info(nested_dtype="float16"), FormatError, "nested_dtype"),
        (STATE, _info(extra=1), CompatibilityError, "extra"),
    ],
)
def test_damaged_state_dict_names_the_key(
    key: str, value: Tensor | None, error: type, match: str
) -> None:
    with pytest.raises(error, match=match) as caught:
        NF4Tensor.from_state_dict(_damaged(key, value), "w")
    assert "w" in str(caught.value)


def test_fp4_state_dict_is_refused() -> None:
    tensors = quantize_nf4(torch.randn(64)).state_dict("w")
    tensors["w.quant_state.bitsandbytes__fp4"] = tensors.pop(STATE)
    with pytest.raises(CompatibilityError, match="FP4, not NF4"):
        NF4Tensor.from_state_dict(tensors, "w")


def test_packed_codes_in_another_storage_dtype_load() -> None:
    """bitsandbytes' ``quant_storage`` may hold the same bytes as another dtype."""
    q = quantize_nf4(torch.randn(8, 64))
    tensors = q.state_dict("w")
    tensors["w"] = tensors["w"].reshape(-1).view(torch.float16).reshape(-1, 1)
    assert torch.equal(NF4Tensor.from_state_dict(tensors, "w").dequantize(), q.dequantize())


def test_repr_and_to() -> None:
    q = quantize_nf4(torch.randn(4, 64))
    assert repr(q) == "NF4Tensor(shape=(4, 64), dtype=torch.float32, block_size=64, double_quant)"
    moved = q.to("cpu")
    assert torch.equal(moved.dequantize(), q.dequantize())


def test_values_at_and_beside_every_midpoint_get_bucketize_codes() -> None:
    """The cell lookup that finds codes agrees with bucketize where it is hardest."""
    code = nf4_code()
    bounds = (code[:-1] + code[1:]) / 2
    up, down = torch.tensor(2.0), torch.tensor(-2.0)
    values = torch.cat(
        [
            bounds,
            torch.nextafter(bounds, up),
            torch.nextafter(bounds, down),
            code,
            torch.nextafter(code, up),
            torch.nextafter(code, down),
            torch.linspace(-1, 1, 4001),
        ]
    )
    values = torch.cat([values.clamp(-1, 1), torch.zeros(64 - values.numel() % 64)])
    blocks = values.view(-1, 64).clone()
    blocks[:, 0] = 1.0  # every block's absmax is 1: the values are scaled by 1.0 exactly
    q = quantize_nf4(blocks, 64, double_quant=False)
    assert torch.equal(q.codes(), torch.bucketize(blocks.reshape(-1), bounds).to(torch.uint8))
