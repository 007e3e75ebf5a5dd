"""The native NF4 dequantization kernel equals the PyTorch path bit for bit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lego.peft import quantize_nf4
from lego.peft.native import dequantize_native, native_status, scales_native
from lego.peft.nf4 import _dequantize_torch, nf4_code

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def native() -> None:
    status = native_status()
    if not status.available:
        pytest.skip(f"the native NF4 kernel does not run here: {status.reason}")


@pytest.fixture
def fresh_status() -> Iterator[None]:
    native_status.cache_clear()
    yield
    native_status.cache_clear()


def _both(
    shape: tuple[int, ...],
    block_size: int,
    dtype: torch.dtype,
    start_block: int = 0,
    trim: int = 0,
    double_quant: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    q = quantize_nf4(torch.randn(*shape) * 3, block_size, double_quant=double_quant)
    scales = q.scales().contiguous()
    start = start_block * block_size
    count = q.numel - start - trim
    native = torch.full((count,), float("nan"), dtype=dtype)
    reference = torch.full((count,), float("nan"), dtype=dtype)
    packed = q.packed.reshape(-1)
    assert dequantize_native(packed, scales, nf4_code(), block_size, start, native)
    _dequantize_torch(packed, scales, block_size, start, reference)
    return native, reference


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "block_size"),
    [((256, 1024), 64), ((33, 70), 32), ((7, 1000), 128), ((3, 4096), 4096), ((5, 5), 64)],
)
def test_equals_the_pytorch_path(
    shape: tuple[int, int], block_size: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(sum(shape) + block_size)
    native, reference = _both(shape, block_size, dtype)
    assert torch.equal(
        native.view(torch.int16 if dtype != torch.float32 else torch.int32),
        reference.view(torch.int16 if dtype != torch.float32 else torch.int32),
    )


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("dtype", DTYPES)
def test_ranges_and_short_ends(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    for start_block, trim in [(1, 0), (3, 5), (0, 31), (7, 1)]:
        native, reference = _both((40, 96), 32, dtype, start_block, trim, double_quant=False)
        assert torch.equal(native, reference), (start_block, trim)


@pytest.mark.usefixtures("native")
def test_nan_and_inf_scales_round_as_pytorch() -> None:
    q = quantize_nf4(torch.randn(4, 64), 64, double_quant=False)
    scales = torch.tensor([float("nan"), float("inf"), 3.0e38, 1.0e-40])
    for dtype in DTYPES:
        native = torch.empty(256, dtype=dtype)
        reference = torch.empty(256, dtype=dtype)
        packed = q.packed.reshape(-1)
        assert dequantize_native(packed, scales, nf4_code(), 64, 0, native)
        _dequantize_torch(packed, scales, 64, 0, reference)
        assert torch.equal(native.float().isnan(), reference.float().isnan())
        same = ~reference.float().isnan()
        assert torch.equal(native[same], reference[same]), dtype


@pytest.mark.usefixtures("native")
def test_torch_threads_do_not_change_the_values() -> None:
    torch.manual_seed(2)
    q = quantize_nf4(torch.randn(512, 1024), 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = q.dequantize()
        torch.set_num_threads(max(2, threads))
        many = q.dequantize()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.usefixtures("native")
def test_declines_what_it_does_not_take() -> None:
    q = quantize_nf4(torch.randn(8, 64), 64, double_quant=False)
    packed, scales, code = q.packed.reshape(-1), q.scales(), nf4_code()
    assert not dequantize_native(packed, scales, code, 64, 0, torch.empty(512, dtype=torch.float64))
    assert not dequantize_native(packed, scales, code, 64, 0, torch.empty(1024)[::2])
    assert not dequantize_native(packed, scales, code, 48, 0, torch.empty(512))  # block % 32
    # out longer than the codes (or the scales) hold: refused, never read past the end
    assert not dequantize_native(packed, scales, code, 64, 0, torch.empty(513))
    assert not dequantize_native(packed, scales[:4], code, 64, 0, torch.empty(512))
    assert not dequantize_native(packed, scales, code[:8], 64, 0, torch.empty(512))


@pytest.mark.usefixtures("fresh_status")
def test_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEGO_PEFT_NATIVE_KERNELS", "0")
    status = native_status()
    assert not status.available
    assert "LEGO_PEFT_NATIVE_KERNELS=0" in status.reason
    q = quantize_nf4(torch.randn(8, 64), 64)
    out = torch.empty(512)
    assert not dequantize_native(q.packed.reshape(-1), q.scales(), nf4_code(), 64, 0, out)
    reference = torch.empty(512)
    _dequantize_torch(q.packed.reshape(-1), q.scales(), 64, 0, reference)
    assert torch.equal(q.dequantize().reshape(-1), reference)  # the PyTorch path served it


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("n_blocks", [1, 255, 256, 257, 4099])
def test_double_quantization_scales_equal_the_pytorch_path(n_blocks: int) -> None:
    torch.manual_seed(n_blocks)
    q = quantize_nf4(torch.randn(n_blocks, 64) * torch.rand(n_blocks, 1) * 5, 64)
    assert q.offset is not None
    assert q.nested_absmax is not None
    assert q.nested_code is not None
    fast = scales_native(q.absmax, q.nested_code, q.nested_absmax, q.offset, q.nested_block_size)
    assert fast is not None
    values = q.nested_code[q.absmax.long()]
    scale = q.nested_absmax.repeat_interleave(q.nested_block_size)[:n_blocks]
    reference = values * scale + q.offset  # two roundings
    assert torch.equal(fast, reference)
    assert torch.equal(q.scales(), reference)
    # what it does not take: declined, never read past the end
    assert scales_native(q.absmax, q.nested_code, q.nested_absmax[:0], q.offset, 256) is None
    assert scales_native(q.absmax.long(), q.nested_code, q.nested_absmax, q.offset, 256) is None


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_outputs_split_among_threads_equal_the_pytorch_path(dtype: torch.dtype) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # 3 parts of whole blocks, the last one shorter
        torch.manual_seed(3)
        native, reference = _both((1543, 4096), 64, dtype, trim=37)  # 6.3M values
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(native, reference)
