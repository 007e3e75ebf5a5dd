"""Penalties: repetition, presence, frequency, n-gram blocking, logit bias."""

from __future__ import annotations

import pytest
import torch

from lego.generate import (
    FrequencyPenalty,
    LogitBias,
    LogitsProcessorList,
    NoRepeatNGram,
    PresencePenalty,
    RepetitionPenalty,
)
from lego.protocols import ConfigError


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    ids = torch.tensor([[0, 1]])
    scores = torch.tensor([[2.0, -2.0, 2.0]])
    out = RepetitionPenalty(penalty=2.0)(ids, scores)
    assert out.tolist() == [[1.0, -4.0, 2.0]]


def test_presence_and_frequency() -> None:
    ids = torch.tensor([[2, 2, 2, 0]])
    scores = torch.zeros(1, 4)
    assert PresencePenalty(penalty=0.5)(ids, scores).tolist() == [[-0.5, 0.0, -0.5, 0.0]]
    assert FrequencyPenalty(penalty=0.5)(ids, scores).tolist() == [[-0.5, 0.0, -1.5, 0.0]]


def test_no_repeat_ngram_bans_the_follower() -> None:
    ids = torch.tensor([[5, 6, 7, 5]])  # "5 6" seen: after a 5, 6 is banned
    out = NoRepeatNGram(ngram_size=2)(ids, torch.zeros(1, 10))
    assert torch.isinf(out).nonzero()[:, 1].tolist() == [6]
    out3 = NoRepeatNGram(ngram_size=3)(torch.tensor([[1, 2, 3, 1, 2]]), torch.zeros(1, 10))
    assert torch.isinf(out3).nonzero()[:, 1].tolist() == [3]


def test_no_repeat_ngram_short_input_changes_nothing() -> None:
    scores = torch.randn(1, 5)
    assert torch.equal(NoRepeatNGram(ngram_size=4)(torch.tensor([[1, 2]]), scores), scores)


def test_logit_bias_adds_and_bans() -> None:
    bias = LogitBias(bias={1: 2.0, 3: float("-inf")})
    out = bias(torch.zeros(1, 1, dtype=torch.long), torch.zeros(2, 4))
    assert out[0].tolist() == [0.0, 2.0, 0.0, float("-inf")]


def test_logit_bias_outside_vocab_is_an_error() -> None:
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        LogitBias(bias={10: 1.0})(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 4))


@pytest.mark.parametrize("bad", [{-1: 1.0}, {1: "x"}, [1, 2]])
def test_logit_bias_rejects(bad: object) -> None:
    with pytest.raises(ConfigError):
        LogitBias(bias=bad)  # type: ignore[arg-type]


def test_processor_list_applies_in_order() -> None:
    ids = torch.tensor([[0]])
    chain = LogitsProcessorList([LogitBias(bias={0: 1.0}), RepetitionPenalty(penalty=2.0)])
    assert chain(ids, torch.tensor([[1.0, 1.0]])).tolist() == [[1.0, 1.0]]
    with pytest.raises(ConfigError, match="not callable"):
        LogitsProcessorList([3])  # type: ignore[list-item]


def test_repetition_penalty_rejects_zero() -> None:
    with pytest.raises(ConfigError, match="repetition_penalty"):
        RepetitionPenalty(penalty=0.0)
