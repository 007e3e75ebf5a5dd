r"""CORE-style task scoring (DCLM's CORE metric, as nanochat reports it) on local JSONL files.

Three kinds of task, each example scored by teacher forcing (one forward pass per rendered
prompt, no generation):

- ``multiple_choice`` (rows ``{"query", "choices", "gold"}``): one prompt per choice,
  ``query + delimiter + choice``; the choices share the context, so the scored span is what
  follows the prompts' common token prefix. The model picks the choice with the **lowest
  mean** continuation loss (mean, not sum: long choices are not penalized for length).
- ``schema`` (rows ``{"context_options", "continuation", "gold"}``): the context varies and
  the continuation is fixed: one prompt per context, scored on the prompts' common token
  suffix; lowest mean loss wins.
- ``language_modeling`` (rows ``{"context", "continuation"}``): correct when the greedy
  continuation equals the answer, i.e. at every continuation position the argmax of the
  logits is the answer's token.

With ``num_fewshot = k``, ``k`` other examples of the same file (drawn with a seed that
depends only on the example's index) are prepended, each ``context + delimiter + answer``
followed by a blank line. A task's accuracy is centred for chance, and CORE is the mean:

    centred = (accuracy - random_baseline) / (1 - random_baseline)
    CORE = mean over tasks of centred

so 0 is guessing and 1 is perfect. ``random_baseline`` defaults to the mean of
``1 / len(options)`` over the examples (0 for ``language_modeling``).

Prompts of all examples are sorted by length and scored ``batch_size`` at a time, padded on
the right (a causal model's real positions never see the padding), so the results do not
depend on ``batch_size``.

Example:
    >>> import json, pathlib, tempfile, torch
    >>> from torch import nn
    >>> from lego.protocols import ModelConfig
    >>> class Echo(nn.Module):  # predicts that the next byte repeats the current one
    ...     config = ModelConfig(vocab_size=256, context_length=64)
    ...     def forward(self, ids, *, attention_mask=None, position_ids=None, kv_cache=None):
    ...         return nn.functional.one_hot(ids, 256).float() * 5.0  # (B, T, vocab_size)
    >>> class Bytes:
    ...     vocab_size, special_tokens = 256, {}
    ...     def encode(self, text): return list(text.encode())
    ...     def decode(self, ids): return bytes(ids).decode()
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> rows = [{"query": "aa", "choices": ["ab", "aa"], "gold": 1},
    ...         {"query": "bb", "choices": ["bb", "ba"], "gold": 0}]
    >>> _ = (folder / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    >>> task = CoreTask(name="repeat", path=str(folder / "mc.jsonl"),
    ...                 task_type="multiple_choice", continuation_delimiter="")
    >>> result = evaluate_core(Echo(), Bytes(), [task])
    >>> result.tasks[0].accuracy, result.tasks[0].random_baseline, result.core
    (1.0, 0.5, 1.0)
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from lego.eval.scoring import DEFAULT_CHUNK_SIZE, eval_mode, model_device, position_nll
from lego.protocols import CausalLM, Config, ConfigError, DataError, Tokenizer
from lego.protocols.files import open_binary

__all__ = [
    "TASK_TYPES",
    "CoreResult",
    "CoreTask",
    "TaskScore",
    "TaskType",
    "evaluate_core",
    "evaluate_task",
    "load_examples",
    "render_prompts",
]

TaskType = Literal["multiple_choice", "schema", "language_modeling"]
"""The three kinds of CORE task."""

TASK_TYPES: tuple[TaskType, ...] = ("multiple_choice", "schema", "language_modeling")


@dataclass(frozen=True, kw_only=True)
class CoreTask(Config):
    """One CORE task: a local JSONL file and how to render and score it.

    Attributes:
        name: The task's label in results (e.g. ``"hellaswag_zeroshot"``).
        path: The JSONL file, one example per line (fields by ``task_type``: see the module
            docstring).
        task_type: ``"multiple_choice"``, ``"schema"`` or ``"language_modeling"``.
        num_fewshot: Examples of the same file prepended as demonstrations.
        continuation_delimiter: Text between context and continuation (e.g. ``" "``).
        random_baseline: Accuracy of guessing, a fraction in ``[0, 1)`` (nanochat's CSV gives
            percent: divide by 100); None: the mean of ``1 / len(options)`` over the
            examples, 0 for ``language_modeling``.
    """

    name: str
    path: str
    task_type: TaskType
    num_fewshot: int = 0
    continuation_delimiter: str = " "
    random_baseline: float | None = None

    def validate(self) -> None:
        """Check the counts and the baseline."""
        super().validate()
        if not self.name:
            raise ConfigError("a CORE task needs a name", key="name")
        if self.num_fewshot < 0:
            raise ConfigError(
                f"num_fewshot must be >= 0, got {self.num_fewshot}", key="num_fewshot"
            )
        if self.random_baseline is not None and not 0.0 <= self.random_baseline < 1.0:
            raise ConfigError(
                f"random_baseline must be a fraction in [0, 1), got {self.random_baseline}",
                key="random_baseline",
                hint="give 0.25 for 25 percent",
            )


@dataclass(frozen=True)
class TaskScore:
    """One task's score.

    Attributes:
        name: The task's name.
        task_type: Its kind.
        num_examples: Examples scored.
        num_correct: Examples answered correctly.
        random_baseline: The accuracy of guessing used for centring.
        correct: Per example, in file order, whether it was answered correctly.
    """

    name: str
    task_type: TaskType
    num_examples: int
    num_correct: int
    random_baseline: float
    correct: tuple[bool, ...] = field(repr=False)

    @property
    def accuracy(self) -> float:
        """``num_correct / num_examples``."""
        return self.num_correct / self.num_examples

    @property
    def centered(self) -> float:
        """``(accuracy - random_baseline) / (1 - random_baseline)``: 0 guessing, 1 perfect."""
        return (self.accuracy - self.random_baseline) / (1.0 - self.random_baseline)

    def to_dict(self) -> dict[str, Any]:
        """The score as JSON-compatible data (without the per-example flags)."""
        return {
            "name": self.name,
            "task_type": self.task_type,
            "num_examples": self.num_examples,
            "num_correct": self.num_correct,
            "accuracy": self.accuracy,
            "random_baseline": self.random_baseline,
            "centered": self.centered,
        }


@dataclass(frozen=True)
class CoreResult:
    """Every task's score and the CORE metric, their mean centred accuracy.

    Attributes:
        tasks: One score per task, in the order given.
    """

    tasks: tuple[TaskScore, ...]

    @property
    def core(self) -> float:
        """The mean of the tasks' centred accuracies."""
        return sum(task.centered for task in self.tasks) / len(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        """The results as JSON-compatible data."""
        return {"tasks": [task.to_dict() for task in self.tasks], "core": self.core}

    def to_markdown(self) -> str:
        """A Markdown table: one row per task and a last row with CORE."""
        lines = [
            "| task | type | examples | accuracy | random | centred |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for t in self.tasks:
            lines.append(
                f"| {t.name} | {t.task_type} | {t.num_examples} | {t.accuracy:.4f} "
                f"| {t.random_baseline:.4f} | {t.centered:.4f} |"
            )
        lines.append(f"| **CORE** | | | | | {self.core:.4f} |")
        return "\n".join(lines) + "\n"


_FIELDS: dict[str, dict[str, str]] = {
    "multiple_choice": {"query": "str", "choices": "options", "gold": "gold:choices"},
    "schema": {
        "context_options": "options",
        "continuation": "text",
        "gold": "gold:context_options",
    },
    "language_modeling": {"context": "str", "continuation": "text"},
}


def load_examples(path: str | os.PathLike[str], task_type: TaskType) -> list[dict[str, Any]]:
    r"""Read and check a task's JSONL file.

    Args:
        path: The file: one JSON object per non-blank line, with the fields of
            ``task_type`` (extra fields are ignored).
        task_type: The kind of task the rows are for.

    Returns:
        The rows in file order.

    Raises:
        DataError: When a line is not a JSON object, lacks a field, or a field has the
            wrong type or value (naming the file, the line and the field), or the file
            holds no rows.
        ConfigError: When the file cannot be opened, or ``task_type`` is unknown.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "lm.jsonl"
        >>> _ = path.write_text('{"context": "1 + 1 =", "continuation": "2"}\n{"context": 3}\n')
        >>> load_examples(path, "language_modeling")
        Traceback (most recent call last):
        ...
        lego.protocols.errors.DataError: ...line 2...: field 'context' must be a string, ...
    """
    return [row for _, row in _read_rows(path, task_type)]


def _read_rows(
    path: str | os.PathLike[str], task_type: TaskType
) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every row of a task file, each checked."""
    from lego.data.jsonl import iter_json_objects  # the one JSON Lines reader

    if task_type not in _FIELDS:
        raise ConfigError(
            f"unknown task_type {task_type!r}",
            key="task_type",
            hint=f"use one of {', '.join(TASK_TYPES)}",
        )
    rows: list[tuple[int, dict[str, Any]]] = []
    with open_binary(path, what="CORE task file") as lines:
        for number, row in iter_json_objects(lines, path):
            _check_row(row, task_type, path, number)
            rows.append((number, row))
    if not rows:
        raise DataError(
            "the task file holds no examples",
            path=path,
            hint="write one JSON object per line",
        )
    return rows


def _check_row(row: Mapping[str, Any], task_type: str, path: Any, line: int) -> None:
    def bad(name: str, what: str) -> DataError:
        return DataError(
            f"line {line}: field {name!r} must be {what}, got {row.get(name)!r:.60}",
            path=path,
            line=line,
            key=name,
            hint=f"a {task_type} row has the fields {', '.join(_FIELDS[task_type])}",
        )

    for name, kind in _FIELDS[task_type].items():
        if name not in row:
            raise DataError(
                f"line {line}: the row has no field {name!r}",
                path=path,
                line=line,
                key=name,
                hint=f"a {task_type} row has the fields {', '.join(_FIELDS[task_type])}",
            )
        value = row[name]
        if kind == "str" and not isinstance(value, str):
            raise bad(name, "a string")
        if kind == "text" and not (isinstance(value, str) and value):
            raise bad(name, "a non-empty string")
        if kind == "options" and not (
            isinstance(value, list) and len(value) >= 2 and all(isinstance(v, str) for v in value)
        ):
            raise bad(name, "a list of at least two strings")
        if kind.startswith("gold:"):
            options = row.get(kind.removeprefix("gold:"))
            count = len(options) if isinstance(options, list) else 0
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
                raise bad(name, f"an index into {kind.removeprefix('gold:')} (0..{count - 1})")


def render_prompts(
    item: Mapping[str, Any],
    task_type: TaskType,
    delimiter: str,
    fewshot: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """The prompts one example is scored on.

    Args:
        item: The example's row.
        task_type: Its kind.
        delimiter: The continuation delimiter.
        fewshot: Demonstration rows, each rendered with its correct answer and a blank line.

    Returns:
        ``multiple_choice``: one prompt per choice; ``schema``: one per context option;
        ``language_modeling``: ``[without, with]``, the prompt without its continuation
        (stripped of surrounding whitespace) and with it.

    Example:
        >>> render_prompts({"query": "2+2=", "choices": ["4", "5"], "gold": 0},
        ...                "multiple_choice", " ")
        ['2+2= 4', '2+2= 5']
        >>> render_prompts({"context": "Paris is in ", "continuation": "France"},
        ...                "language_modeling", " ")
        ['Paris is in', 'Paris is in France']
    """
    if task_type == "multiple_choice":
        shots = "".join(f"{s['query']}{delimiter}{s['choices'][s['gold']]}\n\n" for s in fewshot)
        return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if task_type == "schema":
        shots = "".join(
            f"{s['context_options'][s['gold']]}{delimiter}{s['continuation']}\n\n" for s in fewshot
        )
        return [
            f"{shots}{context}{delimiter}{item['continuation']}"
            for context in item["context_options"]
        ]
    shots = "".join(f"{s['context'].strip()}{delimiter}{s['continuation']}\n\n" for s in fewshot)
    head = f"{shots}{item['context'].strip()}{delimiter}"
    return [head.strip(), f"{head}{item['continuation']}"]


@dataclass(frozen=True)
class _Row:
    """One prompt to score: tokens and the span ``start .. end-1`` of scored targets."""

    example: int
    ids: list[int]
    start: int
    end: int


def evaluate_task(
    model: CausalLM,
    tokenizer: Tokenizer,
    task: CoreTask,
    *,
    bos_id: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> TaskScore:
    """Score one CORE task.

    Args:
        model: Any causal LM; ``model(ids)`` with ids ``(B, T)`` returns ``(B, T, V)`` logits.
        tokenizer: Encodes the prompts.
        task: The task.
        bos_id: A token put before every prompt (nanochat puts its BOS); without it, the
            first token of a prompt is context only.
        batch_size: Prompts per forward pass.
        max_length: The longest prompt fed; longer prompts keep their last ``max_length``
            tokens. Default and upper bound: the model's ``config.context_length``.
        chunk_size: Logit rows cast to float32 at a time.
        device: Where to run; default: the model's first parameter's device.

    Returns:
        The task's score.

    Raises:
        DataError: When the file has a malformed row (naming file and line), fewer rows than
            ``num_fewshot + 1``, or an example whose scored span is empty or has no context
            left after cropping.
        ConfigError: When a setting is out of range.
    """
    numbered = _read_rows(task.path, task.task_type)
    examples = [row for _, row in numbered]
    limit = int(model.config.context_length)
    max_length = limit if max_length is None else max_length
    if not 2 <= max_length <= limit:
        raise ConfigError(
            f"max_length must be between 2 and the model's context_length {limit}, "
            f"got {max_length}",
            key="max_length",
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}", key="batch_size")
    if task.num_fewshot >= len(examples):
        raise DataError(
            f"num_fewshot {task.num_fewshot} needs at least {task.num_fewshot + 1} examples, "
            f"the file has {len(examples)}",
            path=task.path,
            key="num_fewshot",
        )
    rows: list[_Row] = []
    for index, item in enumerate(examples):
        shots = _fewshot(examples, index, task.num_fewshot)
        prompts = render_prompts(item, task.task_type, task.continuation_delimiter, shots)
        prefix = [] if bos_id is None else [bos_id]
        encoded = [prefix + list(tokenizer.encode(p)) for p in prompts]
        rows += _spans(encoded, task, index, numbered[index][0], max_length)
    with eval_mode(model):
        nll, greedy = _score_rows(model, rows, batch_size, chunk_size, model_device(model, device))
    correct = _judge(examples, rows, nll, greedy, task.task_type)
    return TaskScore(
        name=task.name,
        task_type=task.task_type,
        num_examples=len(examples),
        num_correct=sum(correct),
        random_baseline=_baseline(task, examples),
        correct=tuple(correct),
    )


def evaluate_core(
    model: CausalLM, tokenizer: Tokenizer, tasks: Sequence[CoreTask], **options: Any
) -> CoreResult:
    """Score several CORE tasks and their mean centred accuracy.

    Args:
        model: Any causal LM.
        tokenizer: Encodes the prompts.
        tasks: The tasks (at least one; names unique).
        **options: Passed to [`evaluate_task()`][lego.eval.core.evaluate_task].

    Returns:
        The per-task scores and CORE.

    Raises:
        ConfigError: When no task is given or two share a name.
        DataError: See [`evaluate_task()`][lego.eval.core.evaluate_task].
    """
    if not tasks:
        raise ConfigError("no CORE task given", key="tasks", hint="pass at least one CoreTask")
    names = [task.name for task in tasks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"two tasks are named {duplicate!r}", key="tasks")
    return CoreResult(tuple(evaluate_task(model, tokenizer, task, **options) for task in tasks))


def _fewshot(examples: list[dict[str, Any]], index: int, k: int) -> list[dict[str, Any]]:
    """``k`` other examples, drawn with a generator seeded by ``index`` only."""
    if k == 0:
        return []
    others = [i for i in range(len(examples)) if i != index]
    return [examples[i] for i in random.Random(1234 + index).sample(others, k)]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    shortest = min(len(s) for s in seqs)
    for i in range(shortest):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return shortest


def _spans(
    encoded: list[list[int]], task: CoreTask, index: int, line: int, max_length: int
) -> list[_Row]:
    """The rows of one example with their scored spans, cropped on the left to fit."""
    shortest = min(len(ids) for ids in encoded)
    if task.task_type == "multiple_choice":
        start = min(_common_prefix(encoded), shortest - 1)  # every choice keeps a token
        spans = [(ids, start, len(ids)) for ids in encoded]
    elif task.task_type == "schema":
        suffix = min(_common_prefix([ids[::-1] for ids in encoded]), shortest - 1)
        spans = [(ids, len(ids) - suffix, len(ids)) for ids in encoded]
    else:
        without, with_ = encoded
        spans = [(with_, _common_prefix([without, with_]), len(with_))]
    rows = []
    for ids, start, end in spans:
        crop = max(len(ids) - max_length, 0)
        start, end = start - crop, end - crop
        if start < 1 or end <= start:
            what = "is empty" if end <= start else "has no context before it"
            raise DataError(
                f"line {line}: the scored continuation {what}"
                + (f" after keeping the last {max_length} tokens" if crop else ""),
                path=task.path,
                line=line,
                hint="pass bos_id (e.g. the tokenizer's BOS or end-of-text id) so every prompt "
                "has context, or shorten the example",
            )
        rows.append(_Row(index, ids[crop:], start, end))
    return rows


def _score_rows(
    model: CausalLM, rows: list[_Row], batch_size: int, chunk_size: int, device: torch.device
) -> tuple[list[float], list[bool]]:
    """Mean continuation loss and "all greedy" per row (in ``rows`` order)."""
    mean_nll = [0.0] * len(rows)
    all_greedy = [False] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].ids), i))
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            picked = order[lo : lo + batch_size]
            width = max(len(rows[i].ids) for i in picked)
            ids = torch.zeros(len(picked), width, dtype=torch.long)  # right padding: id 0
            positions: list[Tensor] = []
            targets: list[Tensor] = []
            for b, i in enumerate(picked):
                row = rows[i]
                ids[b, : len(row.ids)] = torch.tensor(row.ids, dtype=torch.long)
                index = torch.arange(row.start - 1, row.end - 1)  # predicts start .. end-1
                positions.append(b * width + index)
                targets.append(ids[b, index + 1])
            logits = model(ids.to(device))  # (B, T, V)
            nll, greedy = position_nll(
                logits, torch.cat(positions), torch.cat(targets), chunk_size=chunk_size
            )
            nll, greedy = nll.cpu(), greedy.cpu()
            offset = 0
            for i in picked:
                size = rows[i].end - rows[i].start
                mean_nll[i] = float(nll[offset : offset + size].mean())
                all_greedy[i] = bool(greedy[offset : offset + size].all())
                offset += size
    return mean_nll, all_greedy


def _judge(
    examples: list[dict[str, Any]],
    rows: list[_Row],
    mean_nll: list[float],
    greedy: list[bool],
    task_type: TaskType,
) -> list[bool]:
    """Per example: lowest mean loss is gold (ties: the first), or greedy continuation."""
    losses: list[list[float]] = [[] for _ in examples]
    hits: list[bool] = [True] * len(examples)
    for row, loss, is_greedy in zip(rows, mean_nll, greedy, strict=True):
        losses[row.example].append(loss)
        hits[row.example] = hits[row.example] and is_greedy
    if task_type == "language_modeling":
        return hits
    return [
        min(range(len(option)), key=option.__getitem__) == item["gold"]
        for item, option in zip(examples, losses, strict=True)
    ]


def _baseline(task: CoreTask, examples: list[dict[str, Any]]) -> float:
    if task.random_baseline is not None:
        return task.random_baseline
    if task.task_type == "language_modeling":
        return 0.0
    key = "choices" if task.task_type == "multiple_choice" else "context_options"
    return sum(1.0 / len(item[key]) for item in examples) / len(examples)
