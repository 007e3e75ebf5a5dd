"""The native kernels from Python: equal to F.linear, one operator node, clear refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor

from lego.generate.native import MAX_ROWS, build, native_status, prepare_skinny, skinny_linear
from lego.protocols import CompatibilityError, DataError, cpu_flags
from lego.protocols import native as protocols_native


@pytest.fixture
def kernels() -> None:
    status = native_status()
    if not status.available:
        pytest.skip(f"no native kernels here: {status.reason}")


@pytest.fixture(params=["dot", "widened"])
def bf16_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both bf16 paths of the (N, K) kernel: AVX512-BF16 dot products, and widening to fp32."""
    path = str(request.param)
    if path == "dot" and build._BF16_DOT_FLAG not in cpu_flags():
        pytest.skip("this CPU has no AVX512-BF16")
    if path == "widened":
        flags = cpu_flags() - {build._BF16_DOT_FLAG}
        monkeypatch.setattr(protocols_native, "cpu_flags", lambda: flags)
        monkeypatch.setattr(protocols_native, "_loaded", {})
    build._load.cache_clear()
    assert native_status().bf16_dot == (path == "dot")
    yield path
    monkeypatch.undo()
    build._load.cache_clear()


def _reference(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear in float64: the exact value both kernels approximate."""
    b = None if bias is None else bias.double()
    return F.linear(x.double(), weight.double(), b)


SHAPES = [  # (rows, N, K): odd sizes exercise every tail (N % 4, N % 32, K % 16)
    (1, 77, 45),
    (3, 130, 96),
    (4, 4, 16),
    (8, 100, 300),
    (13, 33, 17),
]


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "cols"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(("rows", "n", "k"), SHAPES)
def test_fp32_equals_f_linear(rows: int, n: int, k: int, with_bias: bool, transposed: bool) -> None:
    gen = torch.Generator().manual_seed(rows * 1000 + n + k)
    x = torch.randn(rows, k, generator=gen)
    stored = torch.randn(k, n, generator=gen) if transposed else torch.randn(n, k, generator=gen)
    weight = stored.t() if transposed else stored  # (N, K) either way
    bias = torch.randn(n, generator=gen) if with_bias else None
    got = skinny_linear(x, weight, bias)
    assert got.shape == (rows, n)
    assert got.dtype == torch.float32
    exact = _reference(x, weight, bias)
    torch.testing.assert_close(got.double(), exact, atol=1e-5 * k**0.5, rtol=1e-5)
    torch.testing.assert_close(got, F.linear(x, weight, bias), atol=1e-5 * k**0.5, rtol=1e-5)


@pytest.mark.usefixtures("kernels", "bf16_path")
@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "cols"])
@pytest.mark.parametrize(("rows", "n", "k"), SHAPES)
def test_bf16_is_the_fp32_sum_rounded_once(rows: int, n: int, k: int, transposed: bool) -> None:
    gen = torch.Generator().manual_seed(rows + n + k)
    x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
    stored = torch.randn(k, n, generator=gen) if transposed else torch.randn(n, k, generator=gen)
    stored = stored.to(torch.bfloat16)
    weight = stored.t() if transposed else stored
    bias = torch.randn(n, generator=gen).to(torch.bfloat16)
    got = skinny_linear(x, weight, bias)
    assert got.dtype == torch.bfloat16
    # Products of bf16 values are exact in fp32; the sum in fp32 is then rounded to bf16
    # once, so the result is the bf16 rounding of (nearly) the exact value: within one bf16
    # step of it, as F.linear's bf16 result is.
    exact = _reference(x, weight, bias)
    step = exact.abs().clamp_min(1e-3) * 2.0**-7
    assert bool(((got.double() - exact).abs() <= step).all())
    torch.testing.assert_close(got, F.linear(x, weight, bias))


@pytest.mark.usefixtures("kernels", "bf16_path")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "cols"])
def test_a_row_does_not_depend_on_its_batch(transposed: bool, dtype: torch.dtype) -> None:
    """Each row is summed in the same order whatever the batch: bit-identical results."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(MAX_ROWS, 200, generator=gen).to(dtype)
    shape = (200, 90) if transposed else (90, 200)
    stored = torch.randn(shape, generator=gen).to(dtype)
    weight = stored.t() if transposed else stored
    linear = prepare_skinny(weight)
    batch = linear(x)
    for i in range(MAX_ROWS):
        assert torch.equal(linear(x[i : i + 1]), batch[i : i + 1])


@pytest.mark.usefixtures("kernels")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_the_operator_is_one_node_of_a_compiled_graph() -> None:
    weight, bias = torch.randn(24, 40), torch.randn(24)
    x = torch.randn(2, 1, 40)
    compiled = torch.compile(lambda v: skinny_linear(v, weight, bias).relu(), fullgraph=True)
    torch.testing.assert_close(compiled(x), F.linear(x, weight, bias).relu())
    torch.testing.assert_close(
        torch.ops.lego.skinny_linear(x, weight.t().contiguous().t()), F.linear(x, weight)
    )


@pytest.mark.usefixtures("kernels")
def test_leading_dimensions_and_non_contiguous_inputs() -> None:
    weight = torch.randn(24, 40)
    x = torch.randn(2, 1, 80)[..., ::2]  # (2, 1, 40), strided
    got = skinny_linear(x, weight)
    assert got.shape == (2, 1, 24)
    torch.testing.assert_close(got, F.linear(x, weight))
    assert skinny_linear(torch.randn(0, 40), weight).shape == (0, 24)


@pytest.mark.usefixtures("kernels")
def test_prepared_kernels_read_the_current_weights() -> None:
    weight = torch.randn(8, 16)
    linear = prepare_skinny(weight)
    x = torch.randn(1, 16)
    with torch.no_grad():
        weight.mul_(2.0)
    torch.testing.assert_close(linear(x), F.linear(x, weight))


@pytest.mark.usefixtures("kernels")
def test_weights_the_kernels_cannot_take() -> None:
    with pytest.raises(CompatibilityError, match="fp32 or bf16"):
        prepare_skinny(torch.randn(4, 4, dtype=torch.float16))
    with pytest.raises(CompatibilityError, match="2-D"):
        prepare_skinny(torch.randn(4))
    with pytest.raises(CompatibilityError, match="strides") as info:
        prepare_skinny(torch.randn(4, 8)[:, ::2])
    assert "contiguous()" in (info.value.hint or "")
    with pytest.raises(CompatibilityError, match="bias"):
        prepare_skinny(torch.randn(4, 4), torch.randn(5))
    with pytest.raises(CompatibilityError, match="bias"):
        prepare_skinny(torch.randn(4, 4), torch.randn(4, dtype=torch.float64))


@pytest.mark.usefixtures("kernels")
def test_inputs_that_do_not_fit() -> None:
    linear = prepare_skinny(torch.randn(4, 8))
    with pytest.raises(DataError, match=r"\(\.\.\., 8\)"):
        linear(torch.randn(1, 7))
    with pytest.raises(DataError, match="float32"):
        linear(torch.randn(1, 8, dtype=torch.float64))


@pytest.mark.usefixtures("kernels")
def test_bf16_dot_products_where_the_cpu_has_avx512_bf16() -> None:
    assert native_status().bf16_dot == (build._BF16_DOT_FLAG in cpu_flags())
    # Values below fp32's normal range count as zero on the dot-product path, nowhere else.
    tiny = torch.full((1, 32), 2.0**-130, dtype=torch.bfloat16)  # subnormal in bf16 and fp32
    weight = torch.ones(4, 32, dtype=torch.bfloat16)
    got = skinny_linear(tiny, weight)
    expected = 0.0 if native_status().bf16_dot else 32 * 2.0**-130
    assert got.float().tolist() == [[expected] * 4]
