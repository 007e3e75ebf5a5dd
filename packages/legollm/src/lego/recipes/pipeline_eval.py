"""The pipeline's evaluation stage: held-out perplexity and the offline task scores.

After pretraining, [`run_evaluation()`][lego.recipes.pipeline_eval.run_evaluation] measures
the final model with lego-eval and writes ``eval.json`` into the run directory; the report
shows it as tables ([`report_lines()`][lego.recipes.pipeline_eval.report_lines]). Four
parts, each written to ``eval.json`` as soon as it is done:

- **Held-out perplexity** of the validation split (the first ``eval.max_tokens`` tokens,
  documents concatenated with their end-of-text ids as training saw them): lego-eval's exact
  sliding window ([`perplexity()`][lego.eval.perplexity.perplexity]), every token scored
  once with at least ``window - stride + 1`` tokens of context; bits per byte over the
  UTF-8 bytes those tokens decode to (special tokens count no bytes).
- **The trainer check**: the same measurement on exactly the tokens of the trainer's last
  validation pass (its logged ``val_tokens``, from the start of the split) with
  non-overlapping windows of the training context (``stride = window``), which are the
  trainer's own validation windows. Its mean NLL must equal the logged ``val_loss`` to float
  rounding (about 1e-6 in fp32; bf16 autocast training differs by its rounding, about 1e-3):
  a larger gap means the model saved is not the model validated, or one of the two
  computations is wrong.
- **Python documentation perplexity** (the packaged ``lego_stdlib_ppl`` task's texts),
  each topic scored from its first token (end-of-text before it). These topics are part of
  the embedded corpus, so some may be training text: it is no held-out figure.
- **Offline task scores**, CORE-style ([`evaluate_core()`][lego.eval.core.evaluate_core]):
  the packaged ``lego_arithmetic_mc`` (multiple choice by lowest mean continuation loss),
  ``lego_arithmetic_exact`` and ``lego_sort_exact`` (greedy continuation equals the answer)
  tasks, their first ``eval.max_rows`` rows written as CORE JSONL into ``eval/``; each
  accuracy centred for chance, and CORE, their mean.

**Resuming.** ``eval.json`` records the model's SHA-256 and the settings; a rerun of the
pipeline (after Ctrl-C during the evaluation or the report) keeps every part recorded for
the same model and settings and computes only the rest, so a finished evaluation is never
redone.

Example:
    >>> spec = EvalSpec(max_tokens=4096, max_rows=20)
    >>> spec.enabled, spec.tasks[0]
    (True, 'lego_arithmetic_mc')
    >>> EvalSpec(tasks=["lego_sort"])
    Traceback (most recent call last):
    ...
    lego.protocols.errors.ConfigError: eval.tasks: unknown task 'lego_sort'...
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lego.eval import CoreTask, evaluate_task, perplexity, text_perplexity
from lego.eval.tasks import CORE_TASKS, read_rows, write_core_tasks
from lego.protocols import (
    ENDOFTEXT,
    Config,
    ConfigError,
    LegoError,
    Tokenizer,
    atomic_write_text,
    check_int,
    closest,
    read_json,
)
from lego.recipes.pipeline_stages_eval import STAGES_KEY, StageEvalSpec
from lego.train.monitor import read_metrics

__all__ = [
    "EVAL_FILE",
    "TASKS",
    "DOCS_TASK",
    "EvalSpec",
    "core_tasks",
    "model_digest",
    "read_eval_file",
    "write_eval_file",
    "run_evaluation",
    "report_lines",
]

EVAL_FILE = "eval.json"
"""The file in a run directory that holds the evaluation."""

DOCS_TASK = "lego_stdlib_ppl"
"""The packaged perplexity task: Python documentation topics."""

TASKS = CORE_TASKS
"""The packaged offline tasks scored CORE-style: file, CORE task type, delimiter."""

_FORMAT = "lego-pipeline-eval"
_VERSION = 1
_TASKS_DIR = "eval"


@dataclass(frozen=True, kw_only=True)
class EvalSpec(Config):
    """What the pipeline's evaluation stage measures (the ``eval:`` section).

    Attributes:
        enabled: Run the stage (``false``: no ``eval.json``, no report section).
        max_tokens: Validation tokens scored for the held-out perplexity (0: the whole split).
        max_length: Window of the perplexity, in tokens (0: the model's context).
        stride: Tokens scored per window after the first (0: half the window).
        batch_size: Windows (or task prompts) per forward pass.
        tasks: The packaged offline tasks to run: any of ``lego_arithmetic_mc``,
            ``lego_arithmetic_exact``, ``lego_sort_exact`` (CORE-scored) and
            ``lego_stdlib_ppl`` (perplexity of Python documentation topics).
        max_rows: Rows used per task, from the top of its file (0: every row).
        stages: What is measured on the models of the later stages (pretrained, SFT, DPO,
            GRPO side by side): the
            [`StageEvalSpec`][lego.recipes.pipeline_stages_eval.StageEvalSpec].
    """

    enabled: bool = True
    max_tokens: int = 0
    max_length: int = 0
    stride: int = 0
    batch_size: int = 8
    tasks: list[str] = field(default_factory=lambda: [*TASKS, DOCS_TASK])
    max_rows: int = 0
    stages: StageEvalSpec = field(default_factory=StageEvalSpec)

    def validate(self) -> None:
        """Sizes in range; tasks known and not repeated."""
        super().validate()
        if not isinstance(self.enabled, bool):
            raise ConfigError(
                f"eval.enabled must be true or false, got {self.enabled!r}", key="eval.enabled"
            )
        for key in ("max_tokens", "max_length", "stride", "max_rows"):
            check_int(f"eval.{key}", getattr(self, key), minimum=0)
        check_int("eval.batch_size", self.batch_size, minimum=1)
        if self.max_tokens == 1:
            raise ConfigError(
                "eval.max_tokens 1 leaves nothing to score",
                key="eval.max_tokens",
                hint="give at least 2 tokens, or 0 for the whole validation split",
            )
        if self.max_length and self.stride > self.max_length:
            raise ConfigError(
                f"eval.stride {self.stride} exceeds eval.max_length {self.max_length}",
                key="eval.stride",
                hint="a stride above the window would skip tokens",
            )
        known = [*TASKS, DOCS_TASK]
        for name in self.tasks:
            if name not in known:
                near = closest(str(name), known, n=1)
                raise ConfigError(
                    f"eval.tasks: unknown task {name!r}",
                    key="eval.tasks",
                    hint=(f"did you mean {near[0]!r}? " if near else "")
                    + f"the offline tasks are {', '.join(known)}",
                )
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("eval.tasks names a task twice", key="eval.tasks")

    def window(self, context: int) -> tuple[int, int]:
        """The perplexity's window and stride for a model of ``context`` tokens.

        Args:
            context: The model's context length.

        Returns:
            ``(max_length, stride)``.

        Raises:
            ConfigError: ``max_length`` exceeds the context, or ``stride`` the window.
        """
        length = self.max_length or context
        if length > context:
            raise ConfigError(
                f"eval.max_length {length} exceeds the model's context length {context}",
                key="eval.max_length",
                hint=f"give at most {context}, or 0 for the context",
            )
        stride = self.stride or max(1, length // 2)
        if stride > length:
            raise ConfigError(
                f"eval.stride {stride} exceeds the window of {length} tokens",
                key="eval.stride",
                hint="a stride above the window would skip tokens",
            )
        return length, stride


def core_tasks(spec: EvalSpec, folder: Path) -> list[CoreTask]:
    """Write the chosen packaged tasks as CORE JSONL files into ``folder``.

    [`write_core_tasks()`][lego.eval.tasks.write_core_tasks] with the spec's task names and
    row bound.

    Args:
        spec: The evaluation settings.
        folder: Where the files go (created).

    Returns:
        One [`CoreTask`][lego.eval.core.CoreTask] per chosen CORE-scored task, in order.
    """
    return write_core_tasks(folder, list(spec.tasks), max_rows=spec.max_rows)


def model_digest(model_dir: Path) -> str:
    """SHA-256 over a model directory's weight files (names and bytes, sorted).

    Args:
        model_dir: The model directory.

    Returns:
        64 hex digits; an evaluation part recorded with another digest is measured again.
    """
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _num_bytes(tokenizer: Tokenizer, ids: Sequence[int]) -> int:
    """UTF-8 bytes the ids stand for, special tokens excluded."""
    special = set(tokenizer.special_tokens.values())
    plain = [int(i) for i in ids if int(i) not in special]
    decode_bytes = getattr(tokenizer, "decode_bytes", None)
    if callable(decode_bytes):
        return len(decode_bytes(plain))
    return len(tokenizer.decode(plain).encode("utf-8"))


def _val_record(run_dir: Path, step: int) -> dict[str, Any] | None:
    """The trainer's validation record at ``step`` (``val_loss``, ``val_tokens``), if any."""
    try:
        records = read_metrics(run_dir)
    except LegoError:
        return None
    for record in records:
        if (
            record.get("split") == "val"
            and record.get("step") == step
            and isinstance(record.get("val_loss"), (int, float))
            and record.get("val_tokens")
        ):
            return record
    return None


class _Record:
    """``eval.json``: parts kept from an earlier run of the same model and settings."""

    def __init__(self, path: Path, model: dict[str, Any], settings: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "format": _FORMAT,
            "version": _VERSION,
            "complete": False,
            "model": model,
            "settings": settings,
            "parts": {},
        }
        old = read_eval_file(path)
        if old is not None and old.get("model") == model and old.get("settings") == settings:
            self.data["parts"] = dict(old.get("parts") or {})
        if old is not None and STAGES_KEY in old:  # the later stages' part, kept as it is
            self.data[STAGES_KEY] = old[STAGES_KEY]
        self.kept = len(self.data["parts"])

    @property
    def parts(self) -> dict[str, Any]:
        """The parts measured so far, by name."""
        parts: dict[str, Any] = self.data["parts"]
        return parts

    def put(self, name: str, value: dict[str, Any]) -> None:
        """Record one part and write the file (atomically)."""
        self.parts[name] = value
        self.write()

    def write(self) -> None:
        """Write ``eval.json`` atomically."""
        write_eval_file(self.path, self.data)


def read_eval_file(path: Path) -> dict[str, Any] | None:
    """Read an ``eval.json`` this stage wrote, or None when absent, cut, damaged or foreign.

    Args:
        path: The file.

    Returns:
        Its content (a ``lego-pipeline-eval`` record of this version), or None: whatever
        it held is then measured again.
    """
    if not path.is_file():
        return None
    try:
        old = read_json(path, what="evaluation record")
    except LegoError:  # cut or damaged: computed again
        return None
    if not isinstance(old, dict) or old.get("format") != _FORMAT:
        return None
    if old.get("version") != _VERSION or not isinstance(old.get("parts"), dict):
        return None
    return old


def write_eval_file(path: Path, data: Mapping[str, Any]) -> None:
    """Write an ``eval.json`` content atomically (a temporary name, then a rename).

    Args:
        path: The file.
        data: The content; with no ``format`` yet, the header of an empty evaluation
            record is added (no part of the pretrained model's evaluation).
    """
    content = dict(data)
    if "format" not in content:
        content = {
            "format": _FORMAT,
            "version": _VERSION,
            "complete": False,
            "model": None,
            "settings": None,
            "parts": {},
            **content,
        }
    text = json.dumps(content, indent=2, allow_nan=True) + "\n"
    atomic_write_text(path, text, what="evaluation record")


def _ppl_dict(result: Any) -> dict[str, Any]:
    data: dict[str, Any] = result.to_dict()
    return data


def run_evaluation(
    *,
    run_dir: Path,
    model_dir: Path,
    data_path: Path,
    spec: EvalSpec,
    train_context: int,
    step: int,
    device: str = "cpu",
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Evaluate the final model and write ``run_dir/eval.json`` part by part.

    Args:
        run_dir: The run directory (holds ``metrics.jsonl``; receives ``eval.json`` and the
            task files in ``eval/``).
        model_dir: The final model directory (with its tokenizer).
        data_path: The prepared data (``meta.json``, ``val.bin``).
        spec: The evaluation settings.
        train_context: The training windows' length, the trainer check's window (0: the
            model's context).
        step: The final optimizer step (whose validation record the check compares with).
        device: Where the model runs: a torch device, or ``"auto"`` (the training's
            ``device`` setting: CUDA when there is one).
        echo: Where progress lines go.

    Returns:
        The content of ``eval.json`` (``complete`` true).

    Raises:
        ConfigError: The window does not fit the model.
        DataError: A task file or the validation split is damaged.
    """
    from lego.data.meta import open_split, read_meta
    from lego.recipes.loading import load_model, load_tokenizer

    model, _ = load_model(model_dir, device=device)
    tokenizer = load_tokenizer(None, model_dir)
    context = int(model.config.context_length)
    max_length, stride = spec.window(context)
    train_window = train_context or context
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    own = {k: v for k, v in spec.to_dict().items() if k != STAGES_KEY}  # stages: their part
    settings = {
        **own,
        "max_length": max_length,
        "stride": stride,
        "bos_id": eot,
        "train_window": train_window,
    }
    model_info = {"path": model_dir.name, "sha256": model_digest(model_dir)}
    record = _Record(run_dir / EVAL_FILE, model_info, settings)
    if record.kept:
        echo(f"eval: {record.kept} part(s) kept from {EVAL_FILE}")
    start = time.perf_counter()
    has_val = "val" in read_meta(data_path).splits

    if "perplexity" not in record.parts:
        if not has_val:
            record.put("perplexity", {"skipped": "the data has no validation split"})
        else:
            tokens = open_split(data_path, "val")
            count = min(len(tokens), spec.max_tokens or len(tokens))
            echo(f"eval: held-out perplexity on {count:,} validation tokens")
            ids = tokens[:count]
            result = perplexity(
                model,
                ids,
                max_length=max_length,
                stride=stride,
                num_bytes=_num_bytes(tokenizer, ids.tolist()),
                batch_size=spec.batch_size,
            )
            record.put("perplexity", _ppl_dict(result))

    if "trainer_check" not in record.parts:
        logged = _val_record(run_dir, step) if has_val else None
        if logged is None:
            record.put("trainer_check", {"skipped": "the trainer logged no validation loss"})
        else:
            scored = int(logged["val_tokens"])
            echo(f"eval: the trainer's {scored:,} validation tokens, its own windows")
            tokens = open_split(data_path, "val")
            check = perplexity(
                model,
                tokens[: scored + 1],
                max_length=train_window,
                stride=train_window,
                batch_size=spec.batch_size,
            )
            logged_loss = float(logged["val_loss"])
            record.put(
                "trainer_check",
                {
                    "val_loss_logged": logged_loss,
                    "mean_nll": check.mean_nll,
                    "num_tokens": check.num_tokens,
                    "window": train_window,
                    "difference": check.mean_nll - logged_loss,
                },
            )

    if DOCS_TASK in spec.tasks and DOCS_TASK not in record.parts:
        texts = [row["text"] for row in read_rows("stdlib_ppl.jsonl", spec.max_rows)]
        echo(f"eval: {DOCS_TASK} ({len(texts)} documentation topics)")
        total, scored, size = 0.0, 0, 0
        for text in texts:
            one = text_perplexity(
                model,
                tokenizer,
                text,
                max_length=max_length,
                stride=stride,
                prefix_id=eot,
                batch_size=spec.batch_size,
            )
            total += one.total_nats
            scored += one.num_tokens
            size += one.num_bytes or 0
        record.put(
            DOCS_TASK,
            {
                "documents": len(texts),
                "total_nats": total,
                "num_tokens": scored,
                "num_bytes": size,
                "mean_nll": total / scored,
                "perplexity": math.exp(total / scored),
                "bits_per_byte": total / (math.log(2) * size),
            },
        )

    for task in core_tasks(spec, run_dir / _TASKS_DIR):
        if task.name in record.parts:
            continue
        echo(f"eval: {task.name} ({task.task_type})")
        score = evaluate_task(model, tokenizer, task, bos_id=eot, batch_size=spec.batch_size * 2)
        record.put(task.name, score.to_dict())

    centred = [record.parts[name]["centered"] for name in spec.tasks if name in TASKS]
    record.data["core"] = sum(centred) / len(centred) if centred else None
    record.data["complete"] = True
    record.data["seconds"] = time.perf_counter() - start  # this invocation's
    record.write()
    echo(f"wrote {EVAL_FILE}")
    return record.data


def _num(value: Any, digits: int = 4) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def report_lines(evaluation: Mapping[str, Any]) -> list[str]:
    """The report's ``## Evaluation`` section for an ``eval.json`` content.

    Args:
        evaluation: What [`run_evaluation()`][lego.recipes.pipeline_eval.run_evaluation]
            returned (or ``eval.json`` read back).

    Returns:
        Markdown lines: the perplexity table, the trainer check and the task table.

    Example:
        >>> lines = report_lines({"parts": {}, "settings": {}, "core": None})
        >>> lines[0]
        '## Evaluation'
    """
    parts: Mapping[str, Any] = evaluation.get("parts", {})
    settings: Mapping[str, Any] = evaluation.get("settings", {})
    lines = [
        "## Evaluation",
        "",
        "Measured on the final model by lego-eval (`eval.json`). Perplexity: exact sliding "
        f"windows of {settings.get('max_length', '?')} tokens, stride "
        f"{settings.get('stride', '?')}, every token scored once.",
        "",
    ]
    columns: list[tuple[str, Mapping[str, Any]]] = []
    held_out = parts.get("perplexity", {})
    if "skipped" not in held_out and held_out:
        columns.append(("validation split (held out)", held_out))
    if DOCS_TASK in parts:
        columns.append((f"Python docs (`{DOCS_TASK}`)", parts[DOCS_TASK]))
    if columns:
        lines += [
            "| measure | " + " | ".join(name for name, _ in columns) + " |",
            "| --- |" + " ---: |" * len(columns),
            "| tokens scored | " + " | ".join(f"{c['num_tokens']:,}" for _, c in columns) + " |",
            "| mean NLL (nats/token) | "
            + " | ".join(_num(c["mean_nll"]) for _, c in columns)
            + " |",
            "| perplexity | " + " | ".join(_num(c["perplexity"], 2) for _, c in columns) + " |",
            "| bits per byte | "
            + " | ".join(_num(c.get("bits_per_byte")) for _, c in columns)
            + " |",
            "",
        ]
    check = parts.get("trainer_check", {})
    if "mean_nll" in check:
        lines += [
            f"Check: on the {check['num_tokens']:,} validation tokens of the trainer's last "
            f"evaluation, in its own windows of {check['window']} tokens, lego-eval gives "
            f"{check['mean_nll']:.6f} nats/token against the logged `val_loss` "
            f"{check['val_loss_logged']:.6f} (difference {check['difference']:.1e}). The "
            "held-out figure above is lower when its stride gives tokens more context.",
            "",
        ]
    scores = [(name, parts[name]) for name in TASKS if name in parts]
    if scores:
        lines += [
            "Offline tasks (lego-eval's packaged tasks, CORE-style: multiple choice by "
            "lowest mean continuation loss, exact answers by greedy continuation; centred "
            "= (accuracy - chance) / (1 - chance)):",
            "",
            "| task | kind | rows | accuracy | chance | centred |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for name, score in scores:
            lines.append(
                f"| `{name}` | {score['task_type']} | {score['num_examples']} | "
                f"{_num(score['accuracy'])} | {_num(score['random_baseline'])} | "
                f"{_num(score['centered'])} |"
            )
        lines += [f"| **CORE** (mean centred) | | | | | {_num(evaluation.get('core'))} |", ""]
    return lines
