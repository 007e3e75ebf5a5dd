"""Shared fixtures of the lego-layers tests: seeding and per-dtype tolerances.

Every test starts from ``torch.manual_seed(0)`` (autouse), so random inputs are the same on
every run. ``tolerance(dtype)`` gives the ``(rtol, atol)`` pair to compare a layer with its
reference at that dtype; the ``dtype`` fixture parametrizes a test over fp32 and bf16.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}
"""``(rtol, atol)`` per dtype, for a layer against a reference computed in float64 or fp32."""


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    """Seed torch before every test; restore the default dtype after it."""
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(default_dtype)


@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """The floating dtypes every layer is tested in (fp32 and bf16)."""
    value: torch.dtype = request.param
    return value


@pytest.fixture
def tolerance() -> Callable[[torch.dtype], tuple[float, float]]:
    """Return ``(rtol, atol)`` for comparing results computed at ``dtype``."""

    def lookup(dtype: torch.dtype) -> tuple[float, float]:
        return TOLERANCES[dtype]

    return lookup


@pytest.fixture
def assert_close() -> Callable[..., None]:
    """``torch.testing.assert_close`` with the tolerance of the actual tensor's dtype.

    The expected tensor is cast to the actual one's dtype first, so a reference computed in
    float64 compares directly with a bf16 result.
    """

    def check(actual: torch.Tensor, expected: torch.Tensor, *, msg: str | None = None) -> None:
        rtol, atol = TOLERANCES.get(actual.dtype, (1e-5, 1e-5))
        torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol, msg=msg)

    return check
