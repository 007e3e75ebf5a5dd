r"""Reward functions for online RL: plain callables, combined with weights, and a verifier.

A reward function is any callable
``f(prompts: list[str], completions: list[str], **columns) -> list[float | None]``: one
reward per completion, ``None`` where the function does not apply to that row (for
example a math verifier on a coding prompt). ``columns`` are the dataset's other fields,
one list per field aligned with ``completions`` (the prompt's row repeated for each of its
completions), passed by keyword as TRL's ``GRPOTrainer`` does, so a function written for
TRL works here and the other way round.

- [`RewardFunctions`][lego.align.rewards.RewardFunctions] calls several with weights and
  returns the weighted sum per completion (TRL's ``nansum``: ``None`` counts as missing),
  the per-function matrix and the names to log them under.
- [`exact_answer_reward()`][lego.align.rewards.exact_answer_reward] builds a verifier for
  exact-answer tasks (arithmetic, short factual answers) from
  [`extract_answer()`][lego.align.rewards.extract_answer] and
  [`answers_match()`][lego.align.rewards.answers_match];
  [`format_reward()`][lego.align.rewards.format_reward] rewards a completion shape.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import torch
from torch import Tensor

from lego.align.advantages import nanstd
from lego.protocols import ConfigError, TrainingError, check_choice

__all__ = [
    "RewardFunction",
    "RewardScores",
    "RewardFunctions",
    "ANSWER_EXTRACTORS",
    "extract_answer",
    "answers_match",
    "exact_answer_reward",
    "format_reward",
]

RewardFunction = Callable[..., Sequence[float | None]]
"""``(prompts, completions, **columns) -> list[float | None]``, called with keywords."""

ANSWER_EXTRACTORS = ("last_number", "marker", "regex")
"""The ``extract`` values of [`extract_answer()`][lego.align.rewards.extract_answer]."""

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


@dataclasses.dataclass(frozen=True)
class RewardScores:
    """What [`RewardFunctions`][lego.align.rewards.RewardFunctions] returns.

    Attributes:
        total: ``(N,)`` float32 weighted sum of the functions' rewards, NaN-aware (a
            ``None`` adds nothing); NaN where every function returned ``None``.
        per_function: ``(N, F)`` float32 rewards, NaN for ``None``.
        names: The ``F`` function names, in column order.
        metrics: TRL's names: ``"rewards/<name>/mean"`` and ``"rewards/<name>/std"`` per
            function (over the rows it scored), ``"reward"`` and ``"reward_std"`` (of
            ``total``), detached 0-dim tensors.
    """

    total: Tensor
    per_function: Tensor
    names: tuple[str, ...]
    metrics: Mapping[str, Tensor]


def _name_of(function: object) -> str:
    name = getattr(function, "__name__", None)
    if isinstance(name, str) and name != "<lambda>":
        return name
    inner = getattr(function, "func", None)  # functools.partial
    if inner is not None:
        return _name_of(inner)
    return type(function).__name__ if name is None else "lambda"


class RewardFunctions:
    """Several reward functions, called together and summed with weights.

    Args:
        functions: The callables, as a sequence (named by ``__name__``) or a mapping from
            name to callable.
        weights: One weight per function (TRL's ``reward_weights``), default all 1.0.

    Raises:
        ConfigError: No functions, a non-callable, repeated names, or ``weights`` of the
            wrong length or not finite.

    Example:
        >>> def length(prompts, completions, **columns):
        ...     return [float(len(c)) for c in completions]
        >>> def has_x(prompts, completions, **columns):
        ...     return [1.0 if "x" in c else None for c in completions]
        >>> rewards = RewardFunctions([length, has_x], weights=[0.5, 2.0])
        >>> out = rewards(["p", "p"], ["ab", "x"])
        >>> out.total, out.names
        (tensor([1.0000, 2.5000]), ('length', 'has_x'))
    """

    def __init__(
        self,
        functions: Sequence[RewardFunction] | Mapping[str, RewardFunction],
        *,
        weights: Sequence[float] | None = None,
    ) -> None:
        if isinstance(functions, Mapping):
            named = [(str(k), f) for k, f in functions.items()]
        else:
            named = [(_name_of(f), f) for f in functions]
        if not named:
            raise ConfigError(
                "no reward functions given", key="functions", hint="pass at least one callable"
            )
        for name, function in named:
            if not callable(function):
                raise ConfigError(
                    f"reward function {name!r} is a {type(function).__name__}, not a callable",
                    key="functions",
                    hint="pass f(prompts, completions, **columns) -> list[float | None]",
                )
        names = [n for n, _ in named]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(
                f"reward functions share the names {repeated}: their metrics would collide",
                key="functions",
                hint="pass a mapping {name: function} with distinct names",
            )
        if weights is None:
            weights = [1.0] * len(named)
        if len(weights) != len(named):
            raise ConfigError(
                f"weights has {len(weights)} values for {len(named)} reward functions {names}",
                key="weights",
                hint="pass one weight per reward function",
            )
        checked: list[float] = []
        given: Sequence[object] = weights
        for i, w in enumerate(given):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ConfigError(
                    f"weights[{i}] (for {names[i]!r}) must be a finite number, got {w!r}",
                    key="weights",
                )
            checked.append(float(w))
        self.functions: tuple[RewardFunction, ...] = tuple(f for _, f in named)
        self.names: tuple[str, ...] = tuple(names)
        self.weights: tuple[float, ...] = tuple(checked)

    def __len__(self) -> int:
        return len(self.functions)

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> RewardScores:
        """Call every function on the batch and combine the rewards.

        Args:
            prompts: ``N`` prompts (each repeated for its completions).
            completions: ``N`` completions.
            **columns: Other dataset fields, one sequence of ``N`` values each.

        Returns:
            A [`RewardScores`][lego.align.rewards.RewardScores].

        Raises:
            ConfigError: ``prompts``, ``completions`` or a column has a different length
                from the others; a function returned the wrong number of rewards or a
                value that is neither a finite number nor None (naming it and the row).
            TrainingError: A function raised (naming it and the row count; the original
                exception is chained).
        """
        n = len(completions)
        for key, values in {"prompts": prompts, **columns}.items():
            if len(values) != n:
                raise ConfigError(
                    f"{key} has {len(values)} values but completions has {n}",
                    key=key,
                    hint="pass one value per completion (repeat each prompt's row)",
                )
        table = torch.full((n, len(self.functions)), float("nan"), dtype=torch.float32)
        for column, (name, function) in enumerate(zip(self.names, self.functions, strict=True)):
            try:
                out = function(prompts=list(prompts), completions=list(completions), **columns)
            except Exception as exc:  # a user function: report which one failed
                raise TrainingError(
                    f"reward function {name!r} raised {type(exc).__name__} on a batch of "
                    f"{n} completions: {exc}",
                    key=name,
                    hint="fix the reward function (return None for rows it cannot score)",
                ) from exc
            try:
                count = len(out)
            except TypeError:
                raise ConfigError(
                    f"reward function {name!r} returned a {type(out).__name__}, not a list",
                    key=name,
                    hint="return one float (or None) per completion",
                ) from None
            if count != n:
                raise ConfigError(
                    f"reward function {name!r} returned {count} rewards for {n} completions",
                    key=name,
                    hint="return exactly one float (or None) per completion, in order",
                )
            returned: Sequence[object] = out
            for row, value in enumerate(returned):
                if value is None:
                    continue
                if isinstance(value, Tensor) and value.numel() == 1:
                    value = value.item()
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(
                        f"reward function {name!r} returned {value!r} for row {row}, not a number",
                        key=name,
                        hint="return a float, or None where the function does not apply",
                    )
                if not math.isfinite(value):
                    raise ConfigError(
                        f"reward function {name!r} returned {value} for row {row} "
                        f"(completion {str(completions[row])[:60]!r})",
                        key=name,
                        hint="return a finite float, or None where the function does not apply",
                    )
                table[row, column] = float(value)
        weights = torch.tensor(self.weights, dtype=torch.float32)
        total = (table * weights).nansum(dim=1)
        total[torch.isnan(table).all(dim=1)] = float("nan")
        metrics: dict[str, Tensor] = {}
        for column, name in enumerate(self.names):
            metrics[f"rewards/{name}/mean"] = torch.nanmean(table[:, column])
            metrics[f"rewards/{name}/std"] = nanstd(table[:, column])
        metrics["reward"] = torch.nanmean(total)
        metrics["reward_std"] = nanstd(total)
        return RewardScores(total=total, per_function=table, names=self.names, metrics=metrics)


# -- exact answers ---------------------------------------------------------------------------


def extract_answer(
    text: str,
    *,
    extract: str = "last_number",
    marker: str = "Answer:",
    pattern: str | re.Pattern[str] | None = None,
) -> str | None:
    r"""The final answer in a completion, or None when it has none.

    - ``"last_number"``: the last number in the text (``-3``, ``1,024``, ``2.5``);
    - ``"marker"``: the text after the last ``marker``, up to the end of that line;
    - ``"regex"``: the last match of ``pattern``: its first group if it has groups, else
      the whole match.

    Args:
        text: The completion.
        extract: ``"last_number"``, ``"marker"`` or ``"regex"``.
        marker: The marker for ``"marker"`` (non-empty).
        pattern: The regular expression for ``"regex"``.

    Returns:
        The answer, stripped, or None.

    Raises:
        ConfigError: Unknown ``extract``, an empty ``marker``, or ``"regex"`` without a
            (valid) ``pattern``.

    Example:
        >>> extract_answer("3 + 4 = 7, so 7.")
        '7'
        >>> extract_answer("Reasoning...\nAnswer: Paris\n", extract="marker")
        'Paris'
        >>> extract_answer("<a>4</a> <a>42</a>", extract="regex", pattern=r"<a>(.*?)</a>")
        '42'
    """
    check_choice("extract", extract, ANSWER_EXTRACTORS)
    if extract == "last_number":
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else None
    if extract == "marker":
        if not marker:
            raise ConfigError("marker is empty", key="marker", hint='pass e.g. "Answer:"')
        at = text.rfind(marker)
        if at < 0:
            return None
        answer = text[at + len(marker) :].split("\n", 1)[0].strip()
        return answer or None
    compiled = _compile(pattern)
    matches = list(compiled.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    found = last.group(1) if compiled.groups else last.group(0)
    return None if found is None else found.strip()


def _compile(pattern: str | re.Pattern[str] | None) -> re.Pattern[str]:
    if pattern is None:
        raise ConfigError(
            'extract="regex" needs a pattern', key="pattern", hint=r'pass e.g. r"\\boxed\{(.*?)\}"'
        )
    if isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"pattern {pattern!r} is not a regular expression: {exc}", key="pattern"
        ) from exc


def _number(text: str) -> Decimal | None:
    cleaned = text.strip().rstrip(".").replace(",", "")
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)", cleaned):
        return None
    try:
        return Decimal(cleaned)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        return None


def answers_match(predicted: str | None, expected: object) -> bool:
    """Whether an extracted answer equals the expected one.

    Both are stripped (and a trailing period dropped); when both read as decimal numbers
    (thousands separators allowed) they are compared by value (``"3.0"`` equals ``3``),
    otherwise as strings with runs of whitespace collapsed.

    Args:
        predicted: The extracted answer, or None (never matches).
        expected: The dataset's answer (a string or a number).

    Returns:
        True when they match.

    Example:
        >>> answers_match("1,000", 1000), answers_match(" 0.50", "0.5")
        (True, True)
        >>> answers_match("Paris.", "Paris"), answers_match("Paris", "paris")
        (True, False)
    """
    if predicted is None or expected is None:
        return False
    want = str(expected)
    a, b = _number(predicted), _number(want)
    if a is not None and b is not None:
        return a == b
    a_text = " ".join(predicted.strip().rstrip(".").split())
    b_text = " ".join(want.strip().rstrip(".").split())
    return a_text == b_text


def exact_answer_reward(
    *,
    extract: str = "last_number",
    marker: str = "Answer:",
    pattern: str | re.Pattern[str] | None = None,
    answer_column: str = "answer",
    name: str = "exact_answer",
) -> RewardFunction:
    """A reward function: 1.0 when the completion's final answer equals the row's answer.

    The answer is taken with [`extract_answer()`][lego.align.rewards.extract_answer] and
    compared with [`answers_match()`][lego.align.rewards.answers_match]; 0.0 otherwise (no
    answer found counts as wrong), ``None`` for rows whose expected answer is None.

    Args:
        extract: ``"last_number"``, ``"marker"`` or ``"regex"``.
        marker: The marker for ``"marker"``.
        pattern: The regular expression for ``"regex"``.
        answer_column: The dataset column holding the expected answer.
        name: The function's ``__name__`` (its metric name).

    Returns:
        ``f(prompts, completions, **columns) -> list[float | None]``.

    Raises:
        ConfigError: Bad extraction settings (at once); when called, a batch without
            ``answer_column``.

    Example:
        >>> reward = exact_answer_reward(extract="marker")
        >>> reward(["2+2?", "2+3?"], ["Answer: 4", "Answer: 6"], answer=["4", 5])
        [1.0, 0.0]
    """
    check_choice("extract", extract, ANSWER_EXTRACTORS)
    if extract == "regex":
        pattern = _compile(pattern)
    elif extract == "marker" and not marker:
        raise ConfigError("marker is empty", key="marker", hint='pass e.g. "Answer:"')

    def reward(
        prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> list[float | None]:
        if answer_column not in columns:
            raise ConfigError(
                f"the batch has no {answer_column!r} column for {name} "
                f"(columns: {sorted(columns)})",
                key=answer_column,
                hint="add the expected answers to the dataset, or pass answer_column=",
            )
        expected = columns[answer_column]
        out: list[float | None] = []
        for completion, want in zip(completions, expected, strict=True):
            if want is None:
                out.append(None)
                continue
            found = extract_answer(completion, extract=extract, marker=marker, pattern=pattern)
            out.append(1.0 if answers_match(found, want) else 0.0)
        return out

    reward.__name__ = name
    reward.__qualname__ = name
    return reward


def format_reward(
    pattern: str | re.Pattern[str], *, full_match: bool = True, name: str = "format"
) -> RewardFunction:
    r"""A reward function: 1.0 when the completion has the required shape, else 0.0.

    Args:
        pattern: A regular expression (``.`` matches newlines too).
        full_match: The whole (stripped) completion must match (True) or any part (False).
        name: The function's ``__name__``.

    Returns:
        ``f(prompts, completions, **columns) -> list[float | None]``.

    Raises:
        ConfigError: ``pattern`` is not a regular expression.

    Example:
        >>> reward = format_reward(r"<think>.*</think>\s*Answer: .+")
        >>> reward(["q", "q"], ["<think>a\nb</think> Answer: 3", "Answer: 3"])
        [1.0, 0.0]
    """
    try:
        compiled = re.compile(pattern, re.DOTALL) if isinstance(pattern, str) else pattern
    except re.error as exc:
        raise ConfigError(
            f"pattern {pattern!r} is not a regular expression: {exc}", key="pattern"
        ) from exc

    def reward(
        prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> list[float | None]:
        match = compiled.fullmatch if full_match else compiled.search
        return [1.0 if match(c.strip()) else 0.0 for c in completions]

    reward.__name__ = name
    reward.__qualname__ = name
    return reward
