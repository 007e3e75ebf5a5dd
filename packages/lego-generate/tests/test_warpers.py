"""Sampling warpers: thresholds, invariants, bad arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.generate import MinP, Temperature, TopK, TopP
from lego.protocols import ConfigError, LogitsProcessor

IDS = torch.zeros(1, 1, dtype=torch.long)


def test_temperature_divides() -> None:
    scores = torch.tensor([[1.0, 2.0, -4.0]])
    assert torch.equal(Temperature(temperature=2.0)(IDS, scores), scores / 2)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1"])
def test_temperature_rejects(bad: object) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        Temperature(temperature=bad)  # type: ignore[arg-type]


def test_top_k_keeps_k_best() -> None:
    scores = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    out = TopK(top_k=2)(IDS, scores)
    assert torch.isfinite(out).tolist() == [[False, True, False, False, True]]
    assert torch.equal(TopK(top_k=99)(IDS, scores), scores)


def test_top_p_keeps_the_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = TopP(top_p=0.8)(IDS, probs.log())
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    assert torch.isfinite(TopP(top_p=1.0)(IDS, probs.log())).all()


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01])
def test_top_p_outside_0_1_is_an_error(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"top_p must be in \(0"):
        TopP(top_p=bad)


def test_min_p_relative_threshold() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.05, 0.05]])
    out = MinP(min_p=0.2)(IDS, probs.log())
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_min_p_rejects(bad: float) -> None:
    with pytest.raises(ConfigError, match="min_p"):
        MinP(min_p=bad)


def test_top_k_rejects_zero() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        TopK(top_k=0)


def test_warpers_are_logits_processors() -> None:
    for warper in (Temperature(temperature=1.0), TopK(top_k=1), TopP(top_p=0.5), MinP(min_p=0.1)):
        assert isinstance(warper, LogitsProcessor)
        assert type(warper).__name__ in repr(warper)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    top_p=st.floats(0.01, 1.0),
    min_p=st.floats(0.0, 1.0),
    top_k=st.integers(1, 30),
)
def test_every_warper_keeps_the_best_token(
    seed: int, top_p: float, min_p: float, top_k: int
) -> None:
    scores = torch.randn(3, 20, generator=torch.Generator().manual_seed(seed))
    best = scores.argmax(dim=-1)
    for warper in (TopP(top_p=top_p), MinP(min_p=min_p), TopK(top_k=top_k)):
        out = warper(IDS, scores.clone())
        assert torch.equal(out.argmax(dim=-1), best)
        kept = torch.isfinite(out)
        assert torch.equal(out[kept], scores[kept])
