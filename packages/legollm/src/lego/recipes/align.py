"""``legollm align dpo`` and ``legollm align reward``: preference tuning from one YAML file.

Both read preference records from local JSON Lines files, one pair per line, in TRL's
forms: ``{"prompt": ..., "chosen": ..., "rejected": ...}`` with strings (each rendered as a
user and an assistant message of the chat template, or as Alpaca text with ``template:
alpaca``) or with messages (TRL's conversational form: ``prompt`` a list of messages,
``chosen`` / ``rejected`` lists of assistant messages).

- ``align dpo`` hands them to lego-align's [`DPOTrainer`][lego.align.DPOTrainer]: every
  ``dpo_loss`` loss type (``dpo.loss_type``), full fine-tuning or LoRA / QLoRA, the
  reference as the disabled adapter, a frozen copy or log-probabilities precomputed and
  cached in ``out_dir/reference-logps``. It logs TRL's metrics (``rewards/margins``,
  ``rewards/accuracies``... and ``val_`` ones after each evaluation); ``curves.png`` shows
  the loss, the reward margin and the preference accuracy. ``out_dir/model`` is the policy
  (merged, or the adapter with its base reference: ``output``).
- ``align reward`` trains a reward model, lego-align's
  [`RewardTrainer`][lego.align.RewardTrainer] (a ``score`` head on the model, the
  Bradley-Terry loss, accuracy and margin on held-out pairs); ``out_dir/model`` is a
  directory transformers' ``AutoModelForSequenceClassification`` loads.

The YAML holds every [`TrainConfig`][lego.train.config.TrainConfig] key, the shared keys of
[`TuningConfig`][lego.recipes.tuning.TuningConfig] (``model``, ``data``,
``add_special_tokens``, ``output``, ``plots``...) and a ``dpo:`` section (lego-align's
[`DPOConfig`][lego.align.DPOConfig]) or a ``reward:`` section
([`RewardConfig`][lego.align.RewardConfig]).

``align grpo`` (online RL with verifiable rewards) is described in
[`GRPORecipeConfig`][lego.recipes.align.GRPORecipeConfig] and
[`build_grpo()`][lego.recipes.align.build_grpo]: an optional supervised warm-up on the
task's reference completions (``sft:``), then lego-align's
[`GRPOTrainer`][lego.align.GRPOTrainer] on the prompts, with the held-out accuracy before
and after.

    >>> config = DPORecipeConfig.from_dict({"model": "m", "data": {"train": "pairs.jsonl"}})
    >>> config.dpo.loss_type, config.dpo.reference_mode()
    ('sigmoid', 'copy')
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from lego.align import (
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    RewardConfig,
    RewardTrainer,
    SFTConfig,
    SFTTrainer,
    generation_stop_ids,
)
from lego.align.rewards import RewardFunction, exact_answer_reward
from lego.align.rollouts import encode_prompts, stop_and_pad_ids
from lego.data.records import RecordSource
from lego.data.tasks import TASK_NAMES, task_rows
from lego.protocols import (
    Config,
    ConfigError,
    DataError,
    FolderLock,
    Tokenizer,
    check_choice,
    check_float,
    check_int,
)
from lego.protocols.chat import get_chat_template
from lego.protocols.layout import MODEL_DIR
from lego.recipes.loading import load_model
from lego.recipes.report import Curve
from lego.recipes.tuning import (
    DataFiles,
    EvaluationReport,
    Tuning,
    TuningConfig,
    TuningModel,
    TuningResult,
    _write_model_directory,
    build_tuning,
    export_causal_lm,
    record_base_model,
    save_tokenizer,
    trainer_inputs,
)
from lego.train import OptimConfig, ScheduleConfig, TrainConfig, Trainer, read_metrics
from lego.train.checkpoint import save_model_dir
from lego.train.rundir import run_contents
from lego.train.state import RunState

__all__ = [
    "DPORecipeConfig",
    "RewardRecipeConfig",
    "DPO_CURVES",
    "REWARD_CURVES",
    "build_dpo",
    "run_dpo",
    "build_reward",
    "run_reward",
    "preference_stop_ids",
    "GRPORecipeConfig",
    "GRPOData",
    "AnswerRewardConfig",
    "WarmupConfig",
    "GRPOStages",
    "GRPO_CURVES",
    "SFT_STAGE_DIR",
    "REWARD_EXTRACTS",
    "build_grpo",
    "run_grpo",
    "held_out_accuracy",
]

DPO_CURVES = (
    Curve("loss", "loss", "val_loss"),
    Curve("reward margin", "rewards/margins", "val_rewards/margins"),
    Curve("preference accuracy", "rewards/accuracies", "val_rewards/accuracies"),
)
"""The panels of a DPO run's ``curves.png``."""

REWARD_CURVES = (
    Curve("loss", "loss", "val_loss"),
    Curve("reward margin", "margin", "val_margin"),
    Curve("accuracy", "accuracy", "val_accuracy"),
)
"""The panels of a reward-model run's ``curves.png``."""


@dataclass(frozen=True, kw_only=True)
class DPORecipeConfig(TuningConfig):
    """A ``legollm align dpo`` config: lego-train's keys, the shared keys and ``dpo:``.

    Attributes:
        dpo: lego-align's [`DPOConfig`][lego.align.DPOConfig].
        out_dir: The run directory.
    """

    dpo: DPOConfig = field(default_factory=DPOConfig)
    out_dir: str = "runs/dpo"

    def validate(self) -> None:
        """The shared checks, and an adapter output only for LoRA / QLoRA."""
        super().validate()
        self.check_adapter_output("dpo", self.dpo.finetune)


@dataclass(frozen=True, kw_only=True)
class RewardRecipeConfig(TuningConfig):
    """A ``legollm align reward`` config: lego-train's keys, the shared keys and ``reward:``.

    Attributes:
        reward: lego-align's [`RewardConfig`][lego.align.RewardConfig].
        out_dir: The run directory.
    """

    reward: RewardConfig = field(default_factory=RewardConfig)
    out_dir: str = "runs/reward"

    def validate(self) -> None:
        """The shared checks; reward models are saved whole (``output: merged``)."""
        super().validate()
        if self.output != "merged":
            raise ConfigError(
                "output: adapter is not available for reward models: lego-align trains them "
                "in full and saves the whole model (score head included)",
                key="output",
                hint="remove output (or set output: merged)",
            )


def preference_stop_ids(
    tokenizer: Tokenizer, *, template: str, eos_token: str, model_dir: Path
) -> list[int]:
    """The ids a preference-tuned model stops on, for its ``generation_config.json``.

    The model directory's own generation config when it has one; else the template's
    end-of-turn token and ``eos_token`` (those of them the tokenizer has).

    Args:
        tokenizer: The tokenizer.
        template: The data's template (``chatml``, ``llama3``, ``alpaca``).
        eos_token: The recipe's ``eos_token``.
        model_dir: The model directory the run started from.

    Returns:
        The ids, at least one when the tokenizer has either token.

    Example:
        >>> from lego.tokenize import RegexBPETokenizer
        >>> specials = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
        >>> tok = RegexBPETokenizer("gpt2", special_tokens=specials)
        >>> preference_stop_ids(
        ...     tok, template="chatml", eos_token="<|endoftext|>", model_dir=Path("none")
        ... )
        [258, 256]
    """
    given = generation_stop_ids(model_dir)
    if given is not None:
        return list(given)
    names = [eos_token]
    if template.lower() != "alpaca":
        end = getattr(get_chat_template(template), "end_of_turn", None)
        if isinstance(end, str):
            names.insert(0, end)
    specials = tokenizer.special_tokens
    return list(dict.fromkeys(specials[n] for n in names if n in specials))


def _make_dpo(config: DPORecipeConfig) -> Any:
    def make(
        source: TuningModel, train: TrainConfig, lock: FolderLock | None
    ) -> tuple[DPOTrainer, Any]:
        report = EvaluationReport(("val_rewards/margins", "val_rewards/accuracies"))
        trainer = DPOTrainer(
            config=config.dpo, **trainer_inputs(config, source, train, lock, report)
        )
        report.trainer = trainer.trainer
        record_base_model(trainer.model, source)
        stops = preference_stop_ids(
            source.tokenizer,
            template=config.dpo.template,
            eos_token=config.dpo.eos_token,
            model_dir=source.model_dir,
        )

        def export(folder: Path) -> None:
            export_causal_lm(
                trainer.model,
                folder,
                output=config.output,
                source=source,
                eos_ids=stops,
                pad_id=trainer.pad_id,
            )

        return trainer, export

    return make


def _make_reward(config: RewardRecipeConfig) -> Any:
    def make(
        source: TuningModel, train: TrainConfig, lock: FolderLock | None
    ) -> tuple[RewardTrainer, Any]:
        report = EvaluationReport(("val_margin", "val_accuracy"))
        trainer = RewardTrainer(
            config=config.reward, **trainer_inputs(config, source, train, lock, report)
        )
        report.trainer = trainer.trainer

        def export(folder: Path) -> None:
            save_model_dir(trainer.model, folder)  # transformers' sequence-classification layout
            save_tokenizer(source.tokenizer, folder)

        return trainer, export

    return make


def build_dpo(config: DPORecipeConfig) -> Tuning:
    """Check everything, lock ``out_dir``, load the model and the pairs, build the trainer.

    Args:
        config: The validated recipe config.

    Returns:
        The [`Tuning`][lego.recipes.tuning.Tuning], ready to run (a precomputed reference
        is computed, or read from its cache, here).

    Raises:
        ConfigError: A bad setting (``beta <= 0``, an unknown loss type, no pad token...), a
            missing file, an ``out_dir`` that holds another run or is being written.
        DataError: A bad record (file and line), no pair left.
    """
    length = ("dpo.max_length", config.dpo.max_length)
    return build_tuning(config, _make_dpo(config), curves=DPO_CURVES, max_length=length)


def run_dpo(config: DPORecipeConfig) -> TuningResult:
    """Train with DPO (or another ``loss_type``) as ``config`` says; write the model.

    Args:
        config: The validated recipe config.

    Returns:
        The [`TuningResult`][lego.recipes.tuning.TuningResult].
    """
    return build_dpo(config).run()


def build_reward(config: RewardRecipeConfig) -> Tuning:
    """Check everything, lock ``out_dir``, load the model and the pairs, build the trainer.

    Args:
        config: The validated recipe config.

    Returns:
        The [`Tuning`][lego.recipes.tuning.Tuning], ready to run.

    Raises:
        ConfigError: A bad setting, a missing file, an ``out_dir`` that holds another run
            or is being written.
        DataError: A bad record (file and line), no pair left.
    """
    return build_tuning(
        config,
        _make_reward(config),
        curves=REWARD_CURVES,
        adapter_possible=False,
        max_length=("reward.max_length", config.reward.max_length),
    )


def run_reward(config: RewardRecipeConfig) -> TuningResult:
    """Train a reward model as ``config`` says; write it (transformers' layout).

    Args:
        config: The validated recipe config.

    Returns:
        The [`TuningResult`][lego.recipes.tuning.TuningResult].
    """
    return build_reward(config).run()


# -- GRPO ----------------------------------------------------------------------------------

GRPO_CURVES = (
    Curve("reward", "reward", "val_reward"),
    Curve("KL to the reference", "kl"),
    Curve("clip fraction", "clip_ratio/region_mean"),
    Curve("completion length", "completions/mean_length", "val_completions/mean_length"),
    Curve("exact answers", "rewards/exact_answer/mean", "val_accuracy"),
)
"""The panels of a GRPO run's ``curves.png``: reward, KL (logged when ``beta > 0``), clip
fraction, completion length, and the share of exact answers: sampled on the training
prompts (the line) and greedy on the held-out ones (the points: the held-out accuracy)."""

SFT_STAGE_DIR = "sft"
"""The warm-up stage's run directory, inside ``out_dir``."""

REWARD_EXTRACTS = ("auto", "last_number", "marker", "regex", "whole")
"""``reward.extract``: how the answer is read from a completion."""

_WHOLE = r"\A\s*([\s\S]*?)\s*\Z"  # the whole completion, stripped


def _default_warmup_optim() -> OptimConfig:
    return OptimConfig(lr=3e-3, min_lr=3e-4, weight_decay=0.0)


def _default_warmup_schedule() -> ScheduleConfig:
    return ScheduleConfig(name="cosine", warmup_steps=10)


@dataclass(frozen=True, kw_only=True)
class GRPOData(DataFiles):
    """``data:`` of ``align grpo``: a generated task, or local JSON Lines files.

    With ``task`` the records come from lego-data's
    [`task_rows()`][lego.data.tasks.task_rows] (``prompt``, ``completion``, ``answer``): the
    training split for the warm-up and GRPO, ``eval_count`` problems of the held-out split
    for evaluation (never seen in training). Otherwise ``train`` (and ``eval``) are JSONL
    files of records with ``prompt`` and the answer column (and ``completion`` for the
    warm-up).

    Attributes:
        task: ``addition``, ``arithmetic``, ``sort`` or ``reverse``; ``""``: files.
        train_count: Training rows drawn from the task (repeats go round the problems).
        eval_count: Held-out problems (0: no evaluation).
        seed: The task's seed (order, and the lists of ``sort`` / ``reverse``).
        test_fraction: The share of problems held out.
        max_value: The largest operand (``addition``, ``arithmetic``).
        min_length: The shortest list (``sort``, ``reverse``).
        max_length: The longest list.
    """

    task: str = ""
    train_count: int = 4000
    eval_count: int = 200
    seed: int = 0
    test_fraction: float = 0.2
    max_value: int = 20
    min_length: int = 3
    max_length: int = 5

    def validate(self) -> None:
        """Either a task or a training file; sizes in range."""
        Config.validate(self)  # DataFiles' own check needs a file: a task replaces it
        if self.task:
            check_choice("task", self.task, TASK_NAMES)
            if self.train or self.eval:
                raise ConfigError(
                    f"data names both a task ({self.task}) and files",
                    key="task",
                    hint="keep data.task (generated records) or data.train / data.eval (files)",
                )
            check_int("train_count", self.train_count, minimum=1)
            check_int("eval_count", self.eval_count, minimum=0)
            check_float("test_fraction", self.test_fraction, low=0.0, high=1.0)
        elif not self.train:
            raise ConfigError(
                "data has neither a task nor a training file",
                key="train",
                hint="give data: {task: sort} (generated, offline) or data: {train: "
                "prompts.jsonl} (records with prompt and answer)",
            )

    def task_records(self, split: str, count: int) -> list[dict[str, str]]:
        """``count`` rows of the task's ``split`` (``train`` or ``test``)."""
        return task_rows(
            self.task,
            count=count,
            split="test" if split == "test" else "train",
            seed=self.seed,
            test_fraction=self.test_fraction,
            max_value=self.max_value,
            min_length=self.min_length,
            max_length=self.max_length,
        )


@dataclass(frozen=True, kw_only=True)
class AnswerRewardConfig(Config):
    """``reward:`` of ``align grpo``: the exact-answer verifier.

    lego-align's [`exact_answer_reward()`][lego.align.rewards.exact_answer_reward] compares
    the answer read from each completion with the record's answer column (1.0 or 0.0).

    Attributes:
        extract: ``auto`` (``whole`` for ``sort`` / ``reverse``, else ``last_number``),
            ``last_number``, ``marker`` (the text after ``marker``), ``regex`` (``pattern``'s
            last match) or ``whole`` (the whole completion, stripped).
        marker: The marker for ``extract: marker``.
        pattern: The regular expression for ``extract: regex``.
        answer_column: The records' field holding the expected answer.
    """

    extract: str = "auto"
    marker: str = "Answer:"
    pattern: str = ""
    answer_column: str = "answer"

    def validate(self) -> None:
        """A known extraction; a pattern for ``regex``."""
        super().validate()
        check_choice("extract", self.extract, REWARD_EXTRACTS)
        if self.extract == "regex" and not self.pattern:
            raise ConfigError(
                "reward.extract is regex but reward.pattern is empty",
                key="pattern",
                hint=r"e.g. pattern: '\\boxed\{(.*?)\}'",
            )

    def function(self, task: str) -> RewardFunction:
        """The reward function for records of ``task`` (``""``: files)."""
        extract = self.extract
        if extract == "auto":
            extract = "whole" if task in ("sort", "reverse") else "last_number"
        if extract == "whole":
            return exact_answer_reward(
                extract="regex", pattern=_WHOLE, answer_column=self.answer_column
            )
        return exact_answer_reward(
            extract=extract,
            marker=self.marker,
            pattern=self.pattern or None,
            answer_column=self.answer_column,
        )


@dataclass(frozen=True, kw_only=True)
class WarmupConfig(Config):
    """``sft:`` of ``align grpo``: supervised warm-up on the records' ``completion``.

    Full fine-tuning with lego-align's [`SFTTrainer`][lego.align.SFTTrainer], in
    ``out_dir/sft`` (its own checkpoints, ``metrics.jsonl`` and, once finished, ``model/``,
    which a resumed run starts GRPO from instead of training again). The template, EOS and
    pad tokens are those of ``grpo:``.

    Attributes:
        max_steps: Optimizer steps.
        batch_size: Records per step.
        max_length: The longest record (tokens).
        optim: The optimizer (lego-train's ``OptimConfig``).
        schedule: The learning-rate schedule.
    """

    max_steps: int = 300
    batch_size: int = 32
    max_length: int = 64
    optim: OptimConfig = field(default_factory=_default_warmup_optim)
    schedule: ScheduleConfig = field(default_factory=_default_warmup_schedule)

    def validate(self) -> None:
        """Positive sizes."""
        super().validate()
        check_int("max_steps", self.max_steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("max_length", self.max_length, minimum=2)


@dataclass(frozen=True, kw_only=True)
class GRPORecipeConfig(TuningConfig):
    """A ``legollm align grpo`` config: lego-train keys, ``data``, ``reward``, ``sft``, ``grpo``.

    The top-level lego-train keys (``max_steps``, ``optim``, ``eval_every``...) are the GRPO
    stage's; the shared keys are [`TuningConfig`][lego.recipes.tuning.TuningConfig]'s.

    Attributes:
        data: The [`GRPOData`][lego.recipes.align.GRPOData]: a task or files.
        reward: The [`AnswerRewardConfig`][lego.recipes.align.AnswerRewardConfig].
        sft: The [`WarmupConfig`][lego.recipes.align.WarmupConfig], or None: no warm-up
            (the model already writes the task's format).
        grpo: lego-align's [`GRPOConfig`][lego.align.GRPOConfig].
        out_dir: The run directory.

    Example:
        >>> config = GRPORecipeConfig.from_dict(
        ...     {"model": "m", "data": {"task": "sort"}, "grpo": {"template": "none"}}
        ... )
        >>> config.sft is not None, config.grpo.num_generations, config.reward.extract
        (True, 8, 'auto')
        >>> GRPORecipeConfig.from_dict({"model": "m", "data": {"task": "sort"}, "sft": None}).sft
    """

    data: GRPOData
    reward: AnswerRewardConfig = field(default_factory=AnswerRewardConfig)
    sft: WarmupConfig | None = field(default_factory=WarmupConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    out_dir: str = "runs/grpo"

    def validate(self) -> None:
        """The shared checks, an adapter output only for LoRA / QLoRA, the warm-up's length."""
        super().validate()
        self.check_adapter_output("grpo", self.grpo.finetune)
        if self.sft is not None and self.output == "adapter":
            raise ConfigError(
                "output: adapter with an sft: warm-up: the adapter's base would be the warmed "
                "model (out_dir/sft/model), not the model given",
                key="output",
                hint="set output: merged, or sft: null (start from a model that is warmed)",
            )
        if self.sft is not None:
            self.warmup_train_config()  # lego-train's own checks of the warm-up stage

    def warmup_train_config(self, train: TrainConfig | None = None) -> TrainConfig:
        """lego-train's settings of the warm-up stage (in ``out_dir/sft``).

        Args:
            train: The GRPO stage's settings (default: this config's).

        Returns:
            ``train`` with the warm-up's steps (no ``time_budget_s``), optimizer and
            schedule, no evaluation, one micro-batch per step, ``resume=auto`` when the run
            resumes.

        Raises:
            ConfigError: No ``sft:`` section, or settings lego-train refuses (a warm-up
                schedule longer than ``sft.max_steps``), named under ``sft.``.
        """
        if self.sft is None:
            raise ConfigError("sft: null has no warm-up stage", key="sft")
        base = self.train_config() if train is None else train
        try:
            return dataclasses.replace(
                base,
                out_dir=str(Path(base.out_dir) / SFT_STAGE_DIR),
                max_steps=self.sft.max_steps,
                time_budget_s=0.0,  # GRPO's budget is GRPO's: the warm-up trains its length
                grad_accum=1,
                optim=self.sft.optim,
                schedule=self.sft.schedule,
                eval_every=0,
                resume="auto" if base.resume else "",
                overwrite=False,
            )
        except ConfigError as exc:
            key = f"sft.{exc.key}" if exc.key else "sft"
            raise ConfigError(exc.message, key=key, hint=exc.hint) from None

    def reward_function(self) -> RewardFunction:
        """The exact-answer reward for this config's records."""
        return self.reward.function(self.data.task)


def _records(config: GRPORecipeConfig) -> tuple[RecordSource, RecordSource | None]:
    """The training and held-out records: generated from the task, or the files."""
    data = config.data
    if data.task:
        train: RecordSource = data.task_records("train", data.train_count)
        held = data.task_records("test", data.eval_count) if data.eval_count else None
        return train, held
    return data.train, (data.eval or None)


def _check_grpo_inputs(
    config: GRPORecipeConfig,
    source: TuningModel,
    train: RecordSource,
    held: RecordSource | None,
) -> None:
    """Before any training: the stop and pad tokens, every prompt and answer, the context."""
    grpo = config.grpo
    template = grpo.chat_template()
    stop_and_pad_ids(
        source.tokenizer, template=template, eos_token=grpo.eos_token, pad_token=grpo.pad_token
    )
    context = int(getattr(source.model.config, "context_length", 0) or 0)
    column = config.reward.answer_column
    for key, records in (("data.train", train), ("data.eval", held)):
        if records is None:
            continue
        prompts, _ = encode_prompts(
            records,
            source.tokenizer,
            template=template,
            max_prompt_length=grpo.max_prompt_length,
            overflow=grpo.prompt_overflow,
            system_prompt=grpo.system_prompt,
        )
        path = records if isinstance(records, (str, Path)) else None
        for prompt in prompts:
            if column not in prompt.columns:
                raise DataError(
                    f"line {prompt.line}: no {column!r} field (the answer the verifier "
                    "compares with)",
                    path=path,
                    line=prompt.line,
                    key=column,
                    hint=f'give every record of {key} an "{column}" (or set reward.answer_column)',
                )
        longest = max(prompts, key=lambda p: len(p.ids))
        need = len(longest.ids) + grpo.max_completion_length
        if context and need > context:
            raise ConfigError(
                f"the prompt on line {longest.line} of {key} ({len(longest.ids)} tokens) plus "
                f"grpo.max_completion_length={grpo.max_completion_length} is {need} tokens, "
                f"more than the model's context of {context}",
                key="grpo.max_completion_length",
                hint="lower grpo.max_completion_length or grpo.max_prompt_length",
            )


def _check_warmup_dir(config: GRPORecipeConfig) -> None:
    """A fresh run refuses an ``out_dir/sft`` that holds a warm-up (as lego-train does)."""
    if config.sft is None or config.resume or config.overwrite:
        return
    stage = Path(config.out_dir) / SFT_STAGE_DIR
    held = run_contents(stage)
    if (stage / MODEL_DIR).exists():
        held.append(MODEL_DIR)
    if held:
        raise ConfigError(
            f"out_dir already holds a warm-up run ({SFT_STAGE_DIR}/: {', '.join(held)}); a "
            "fresh run would replace it",
            path=stage,
            key="out_dir",
            hint="pass resume=auto to continue it, a new out_dir for a new run, or "
            "overwrite=true to replace it",
        )


class GRPOStages:
    """The stages of ``align grpo``: the warm-up (optional), then GRPO.

    [`Tuning.run()`][lego.recipes.tuning.Tuning.run] calls ``fit()``; a stage stopped by a
    signal returns its state (a checkpoint saved: ``resume=auto`` continues that stage).
    The warm-up trains in ``out_dir/sft``; once finished its model is written to
    ``out_dir/sft/model``, which a resumed run loads instead of training again.

    Args:
        config: The recipe config.
        source: The model given, with its tokenizer.
        train: lego-train's settings of the GRPO stage.
        lock: The lock on ``out_dir``.
        records: The training and held-out records.
        echo: Where the recipe's own lines go.

    Attributes:
        warm: The model GRPO starts from (``source``, or the warmed model and its folder).
        grpo: lego-align's ``GRPOTrainer``, once the warm-up is done.
        trainer: Its lego-train ``Trainer`` (None before).
    """

    def __init__(
        self,
        config: GRPORecipeConfig,
        source: TuningModel,
        train: TrainConfig,
        lock: FolderLock | None,
        records: tuple[RecordSource, RecordSource | None],
        echo: Callable[[str], None],
    ) -> None:
        self.config = config
        self.source = source
        self.warm = source
        self.train = train
        self.lock = lock
        self.train_rows, self.eval_rows = records
        self.echo = echo
        self.grpo: GRPOTrainer | None = None
        self.trainer: Trainer | None = None
        self.stop_ids, self.pad_id = stop_and_pad_ids(
            source.tokenizer,
            template=config.grpo.chat_template(),
            eos_token=config.grpo.eos_token,
            pad_token=config.grpo.pad_token,
        )

    @property
    def model(self) -> nn.Module:
        """The policy (GRPO's, once it exists)."""
        return self.grpo.model if self.grpo is not None else self.warm.model

    def fit(self) -> RunState:
        """Warm up (unless done or ``sft: null``), then train with GRPO.

        Returns:
            The state of the stage that ended: the warm-up's when a signal stopped it.
        """
        if self.config.sft is not None:
            stopped = self._warm_up(self.config.sft)
            if stopped is not None:
                return stopped
        self.grpo = self._grpo()
        self.trainer = self.grpo.trainer
        return self.grpo.fit()

    def _warm_up(self, sft: WarmupConfig) -> RunState | None:
        stage = Path(self.config.out_dir) / SFT_STAGE_DIR
        resuming = bool(self.config.resume)
        if self.config.overwrite and not resuming and stage.is_dir():
            shutil.rmtree(stage)  # the warm-up of the run that overwrite=true replaces
        done = stage / MODEL_DIR
        if done.is_dir():
            dtype = None if self.config.dtype == "auto" else self.config.dtype
            model, model_dir = load_model(done, dtype=dtype)
            self.warm = dataclasses.replace(self.source, model=model.train(), model_dir=model_dir)
            self.echo(f"warm-up: done earlier; GRPO starts from {done}")
            return None
        grpo = self.config.grpo
        settings = SFTConfig(
            template=grpo.template,
            eos_token=grpo.eos_token,
            pad_token=grpo.pad_token,
            system_prompt=grpo.system_prompt,
            max_length=sft.max_length,
            batch_size=sft.batch_size,
            finetune="full",
            seed=self.config.seed,
        )
        train = self.config.warmup_train_config(self.train)
        self.echo(f"warm-up: {sft.max_steps} steps of supervised fine-tuning in {stage}")
        trainer = SFTTrainer(
            model=self.source.model,
            tokenizer=self.source.tokenizer,
            train_data=self.train_rows,
            config=settings,
            train=train,
            tokenizer_hash=self.source.tokenizer_hash,
        )
        state = trainer.fit()
        if state.stop_signal is not None or state.step < state.max_steps:
            return state
        warmed = self.source.model  # full fine-tuning: trained in place

        def fill(folder: Path) -> None:
            export_causal_lm(
                warmed,
                folder,
                output="merged",
                source=self.source,
                eos_ids=self.stop_ids,
                pad_id=self.pad_id,
            )

        if _is_main():
            _write_model_directory(stage, fill)
        _barrier()
        self.warm = dataclasses.replace(self.source, model=warmed.train(), model_dir=done)
        return None

    def _grpo(self) -> GRPOTrainer:
        config = self.config
        grpo = config.grpo
        if self.eval_rows is not None and not grpo.eval_on_start:
            grpo = dataclasses.replace(grpo, eval_on_start=True)  # the accuracy before
        trainer = GRPOTrainer(
            model=self.warm.model,
            tokenizer=self.warm.tokenizer,
            train_data=self.train_rows,
            reward_funcs=[config.reward_function()],
            config=grpo,
            train=self.train,
            eval_data=self.eval_rows,
            tokenizer_hash=self.warm.tokenizer_hash,
            lock=self.lock,
        )
        record_base_model(trainer.model, self.warm)
        return trainer

    def export(self, folder: Path) -> None:
        """Write the policy into ``folder`` (``output: merged | adapter``)."""
        export_causal_lm(
            self.model,
            folder,
            output=self.config.output,
            source=self.warm,
            eos_ids=self.stop_ids,
            pad_id=self.pad_id,
        )


def held_out_accuracy(run_dir: str | os.PathLike[str]) -> tuple[float, float] | None:
    r"""The held-out accuracy of a GRPO run before its first step and at its last evaluation.

    Args:
        run_dir: The run directory (its ``metrics.jsonl``).

    Returns:
        ``(before, after)`` from the ``val_accuracy`` records, or None without them.

    Example:
        >>> import tempfile, json
        >>> folder = Path(tempfile.mkdtemp())
        >>> rows = [{"step": 0, "split": "val", "val_accuracy": 0.5},
        ...         {"step": 9, "split": "val", "val_accuracy": 0.7}]
        >>> lines = "".join(json.dumps(r) + "\n" for r in rows)
        >>> _ = (folder / "metrics.jsonl").write_text(lines)
        >>> held_out_accuracy(folder)
        (0.5, 0.7)
    """
    found = [
        (int(r["step"]), float(r["val_accuracy"]))
        for r in read_metrics(Path(run_dir))
        if r.get("split") == "val" and isinstance(r.get("val_accuracy"), (int, float))
    ]
    if not found:
        return None
    found.sort(key=lambda item: item[0])
    return found[0][1], found[-1][1]


def _make_grpo(config: GRPORecipeConfig) -> Any:
    def make(
        source: TuningModel, train: TrainConfig, lock: FolderLock | None
    ) -> tuple[GRPOStages, Any]:
        _check_warmup_dir(config)
        records = _records(config)
        _check_grpo_inputs(config, source, *records)
        echo = _echo(train.progress)
        stages = GRPOStages(config, source, train, lock, records, echo)
        return stages, stages.export

    return make


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _echo(progress: str) -> Callable[[str], None]:
    def echo(text: str) -> None:
        if progress != "none" and _is_main():
            print(text, file=sys.stderr, flush=True)

    return echo


def build_grpo(config: GRPORecipeConfig) -> Tuning:
    """Check everything, lock ``out_dir``, load the model and the records, build the stages.

    Before any training: the config, the data (every prompt encoded, its answer present,
    prompt plus ``grpo.max_completion_length`` within the model's context), the stop and
    pad tokens, ``out_dir`` (and ``out_dir/sft``: a run there needs ``resume=auto`` or
    ``overwrite=true``) and its lock.

    Args:
        config: The validated recipe config.

    Returns:
        The [`Tuning`][lego.recipes.tuning.Tuning], ready to run: ``run()`` warms up, trains
        with GRPO, writes ``out_dir/model`` and ``curves.png``.

    Raises:
        ConfigError: A bad setting, a missing file, no pad token, a prompt that does not
            fit, an ``out_dir`` that holds another run or is being written.
        DataError: A bad record (file and line), a record without its answer.
    """
    length = ("sft.max_length", config.sft.max_length) if config.sft is not None else None
    return build_tuning(config, _make_grpo(config), curves=GRPO_CURVES, max_length=length)


def run_grpo(config: GRPORecipeConfig) -> TuningResult:
    """Warm up, train with GRPO as ``config`` says, write the model and the curves.

    Args:
        config: The validated recipe config.

    Returns:
        The [`TuningResult`][lego.recipes.tuning.TuningResult];
        [`held_out_accuracy()`][lego.recipes.align.held_out_accuracy] reads the accuracy
        before and after from its ``out_dir``.
    """
    return build_grpo(config).run()
