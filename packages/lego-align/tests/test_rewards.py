from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from lego.align import (
    RewardFunctions,
    answers_match,
    exact_answer_reward,
    extract_answer,
    format_reward,
)
from lego.protocols import ConfigError, TrainingError

PROMPTS = ["2+2?", "2+2?", "3*3?"]
COMPLETIONS = ["it is 4", "maybe 5", "Answer: 9"]


def lengths(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
    return [float(len(c)) for c in completions]


def only_marked(
    prompts: Sequence[str], completions: Sequence[str], **columns: Any
) -> list[float | None]:
    return [1.0 if "Answer:" in c else None for c in completions]


def test_weighted_nansum_and_names() -> None:
    rewards = RewardFunctions([lengths, only_marked], weights=[0.5, 3.0])
    out = rewards(PROMPTS, COMPLETIONS)
    assert out.names == ("lengths", "only_marked")
    assert out.total.tolist() == pytest.approx([3.5, 3.5, 4.5 + 3.0])
    assert out.per_function.shape == (3, 2)
    assert math.isnan(float(out.per_function[0, 1]))
    assert float(out.metrics["rewards/only_marked/mean"]) == 1.0
    assert float(out.metrics["rewards/lengths/mean"]) == pytest.approx(7.667, abs=1e-3)
    assert float(out.metrics["reward"]) == pytest.approx(float(out.total.mean()))


def test_row_no_function_scores_is_nan() -> None:
    out = RewardFunctions({"marked": only_marked})(PROMPTS, COMPLETIONS)
    assert math.isnan(float(out.total[0]))
    assert float(out.total[2]) == 1.0
    assert float(out.metrics["reward"]) == 1.0  # NaN rows left out


def test_columns_are_passed_by_keyword() -> None:
    seen: dict[str, Any] = {}

    def spy(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
        seen.update(prompts=prompts, completions=completions, **columns)
        return [0.0] * len(completions)

    RewardFunctions([spy])(PROMPTS, COMPLETIONS, answer=["4", "4", "9"])
    assert seen == {"prompts": PROMPTS, "completions": COMPLETIONS, "answer": ["4", "4", "9"]}


def test_partial_and_lambda_names() -> None:
    partial = functools.partial(lengths)
    rewards = RewardFunctions([partial, lambda prompts, completions, **c: [0.0] * len(prompts)])
    assert rewards.names == ("lengths", "lambda")
    assert len(rewards) == 2


def test_wrong_length_names_the_function() -> None:
    def short(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
        return [1.0]

    with pytest.raises(ConfigError) as caught:
        RewardFunctions([lengths, short])(PROMPTS, COMPLETIONS)
    assert caught.value.key == "short"
    assert "1 rewards for 3 completions" in caught.value.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.0", True])
def test_bad_values_name_the_function_and_row(bad: object) -> None:
    def odd(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[object]:
        return [0.0, bad, 0.0]

    with pytest.raises(ConfigError) as caught:
        RewardFunctions({"odd": odd})(PROMPTS, COMPLETIONS)  # type: ignore[dict-item]
    assert caught.value.key == "odd"
    assert "row 1" in caught.value.message


def test_raising_function_is_a_training_error() -> None:
    def broken(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
        raise KeyError("answer")

    with pytest.raises(TrainingError) as caught:
        RewardFunctions([lengths, broken])(PROMPTS, COMPLETIONS)
    assert "'broken'" in caught.value.message
    assert "3 completions" in caught.value.message
    assert isinstance(caught.value.__cause__, KeyError)


def test_bad_construction() -> None:
    with pytest.raises(ConfigError) as caught:
        RewardFunctions([])
    assert caught.value.key == "functions"
    with pytest.raises(ConfigError) as caught:
        RewardFunctions([lengths], weights=[1.0, 2.0])
    assert caught.value.key == "weights"
    with pytest.raises(ConfigError) as caught:
        RewardFunctions([lengths], weights=[float("nan")])
    assert caught.value.key == "weights"
    with pytest.raises(ConfigError) as caught:
        RewardFunctions([lengths, lengths])
    assert "lengths" in caught.value.message
    with pytest.raises(ConfigError) as caught:
        RewardFunctions({"x": 3})  # type: ignore[dict-item]
    assert caught.value.key == "functions"


def test_column_length_mismatch() -> None:
    with pytest.raises(ConfigError) as caught:
        RewardFunctions([lengths])(PROMPTS, COMPLETIONS, answer=["4"])
    assert caught.value.key == "answer"


def test_tensor_rewards_are_accepted() -> None:
    def tensors(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> Any:
        return torch.tensor([1.0, 2.0, 3.0])

    assert RewardFunctions([tensors])(PROMPTS, COMPLETIONS).total.tolist() == [1.0, 2.0, 3.0]


# -- exact answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so the total is 1,024 apples.", "1,024"),
        ("-3 then 2.50", "2.50"),
        ("no digits here", None),
        ("x = .5", ".5"),
    ],
)
def test_last_number(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


def test_marker_and_regex() -> None:
    assert extract_answer("Answer: 3\nAnswer: 4 \nbye", extract="marker") == "4"
    assert extract_answer("nothing", extract="marker") is None
    assert extract_answer("Answer:   \n", extract="marker") is None
    boxed = r"\\boxed\{([^}]*)\}"
    assert extract_answer(r"\boxed{1} then \boxed{x+1}", extract="regex", pattern=boxed) == "x+1"
    assert extract_answer("42 and 7", extract="regex", pattern=r"\d+") == "7"
    with pytest.raises(ConfigError) as caught:
        extract_answer("x", extract="regex")
    assert caught.value.key == "pattern"
    with pytest.raises(ConfigError) as caught:
        extract_answer("x", extract="regex", pattern="(")
    assert caught.value.key == "pattern"
    with pytest.raises(ConfigError) as caught:
        extract_answer("x", extract="last")
    assert caught.value.key == "extract"


@pytest.mark.parametrize(
    ("predicted", "expected", "match"),
    [
        ("4", 4, True),
        ("4.0", "4", True),
        ("1,000", "1000", True),
        ("-2", "2", False),
        (" Paris. ", "Paris", True),
        ("New  York", "New York", True),
        ("paris", "Paris", False),
        (None, "4", False),
        ("4", None, False),
    ],
)
def test_answers_match(predicted: str | None, expected: object, match: bool) -> None:
    assert answers_match(predicted, expected) is match


def test_exact_answer_reward() -> None:
    reward = exact_answer_reward()
    assert reward.__name__ == "exact_answer"
    out = reward(PROMPTS, COMPLETIONS, answer=["4", 4, "9"])
    assert out == [1.0, 0.0, 1.0]
    assert reward(PROMPTS, COMPLETIONS, answer=[None, "5", "9"]) == [None, 1.0, 1.0]
    marked = exact_answer_reward(extract="marker", answer_column="solution", name="solved")
    assert marked(PROMPTS, COMPLETIONS, solution=["4", "5", "9"]) == [0.0, 0.0, 1.0]
    with pytest.raises(ConfigError) as caught:
        marked(PROMPTS, COMPLETIONS, answer=["4", "5", "9"])
    assert caught.value.key == "solution"
    with pytest.raises(ConfigError):
        exact_answer_reward(extract="regex")
    with pytest.raises(ConfigError):
        exact_answer_reward(extract="marker", marker="")
    combined = RewardFunctions([marked])(PROMPTS, COMPLETIONS, solution=["4", "5", "9"])
    assert combined.names == ("solved",)


def test_format_reward() -> None:
    reward = format_reward(r"Answer: \d+")
    assert reward(PROMPTS, COMPLETIONS) == [0.0, 0.0, 1.0]
    anywhere = format_reward(r"\d", full_match=False, name="digit")
    assert anywhere(PROMPTS, COMPLETIONS) == [1.0, 1.0, 1.0]
    assert anywhere.__name__ == "digit"
    with pytest.raises(ConfigError):
        format_reward("(")
