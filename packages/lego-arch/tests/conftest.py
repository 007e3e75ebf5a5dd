"""Shared fixtures of the lego-arch tests: seeding and the tiny presets.

Every test starts from ``torch.manual_seed(0)`` (autouse). ``TINY`` lists the four tiny
presets (one per family, plus the mixture of experts) that run on the CPU in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

TINY: tuple[str, ...] = ("gpt2-tiny", "llama-tiny", "qwen3-tiny", "qwen3-moe-tiny")
"""The tiny presets, one per family plus Qwen 3 MoE."""


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    """Seed torch before every test; restore the default dtype after it."""
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(default_dtype)


@pytest.fixture(params=TINY)
def tiny(request: pytest.FixtureRequest) -> str:
    """Each tiny preset name in turn."""
    name: str = request.param
    return name
