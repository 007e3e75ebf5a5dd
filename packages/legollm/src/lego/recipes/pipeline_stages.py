"""The pipeline's stages after pretraining: SFT, DPO and (optionally) GRPO.

One pipeline YAML describes the whole chain. Besides the pretraining keys it may hold three
top-level sections, each a tuning recipe's config with ``enabled`` and without the paths
(the pipeline fills ``model``, ``out_dir`` and the data files):

- ``sft:`` ([`SFTStage`][lego.recipes.pipeline_stages.SFTStage]): every
  [`FinetuneConfig`][lego.recipes.finetune.FinetuneConfig] key (``max_steps``, ``optim``,
  ``schedule``, ``add_special_tokens``, the method section ``sft:``...) and a ``data:`` block
  ([`QAData`][lego.recipes.pipeline_stages.QAData]) saying how many rows of lego-data's
  ``stdlib_qa`` questions to generate;
- ``dpo:`` ([`DPOStage`][lego.recipes.pipeline_stages.DPOStage]): every
  [`DPORecipeConfig`][lego.recipes.align.DPORecipeConfig] key and a ``data:`` block
  ([`PairData`][lego.recipes.pipeline_stages.PairData]) for the generated preference pairs;
- ``grpo:`` ([`GRPOStage`][lego.recipes.pipeline_stages.GRPOStage]): every
  [`GRPORecipeConfig`][lego.recipes.align.GRPORecipeConfig] key, its ``data:`` the
  generated task block ([`GRPOData`][lego.recipes.align.GRPOData]).

A section left out is a stage switched off (``enabled: false``, the default); a stage
switched off is skipped and the next starts from the previous enabled stage's model. Each
section is validated when the pipeline config is read, by the recipe config's own checks
(an error names the key as ``sft.max_steps`` or ``dpo.dpo.beta``), and checked against the
model and the tokenizer before pretraining starts
([`check_stages()`][lego.recipes.pipeline_stages.check_stages]).

    >>> stage = SFTStage.from_dict({"enabled": True, "max_steps": 20})
    >>> stage.add_special_tokens, stage.data.train_count
    (('<|im_start|>', '<|im_end|>', '<|pad|>'), 400)
    >>> stage.recipe(model=Path("run/model"), out_dir=Path("run/sft")).out_dir
    'run/sft'

[`run_stages()`][lego.recipes.pipeline_stages.run_stages] runs them in order, each in its
own folder of the run directory (``sft/``, ``dpo/``, ``grpo/``) with the recipe's own
``build_`` function, ``resume: auto`` (a stage stopped by SIGINT / SIGTERM keeps its
checkpoint and the same command continues it) and the data written to ``run_dir/data``
(the same bytes on a rerun).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lego.align import (
    DPOConfig,
    SFTConfig,
    check_stop_tokens,
    preference_pad_id,
    resolve_pad_id,
)
from lego.align.rollouts import stop_and_pad_ids
from lego.protocols import (
    Config,
    ConfigError,
    Tokenizer,
    atomic_write_text,
    check_float,
    check_int,
    temporary_name,
)
from lego.protocols.chat import get_chat_template
from lego.protocols.layout import MODEL_DIR
from lego.recipes.align import (
    DPORecipeConfig,
    GRPOData,
    GRPORecipeConfig,
    WarmupConfig,
    build_dpo,
    build_grpo,
)
from lego.recipes.finetune import FinetuneConfig, build_finetune
from lego.recipes.tuning import DataFiles, Tuning, TuningConfig, add_special_tokens
from lego.train.config import SEED_MAX
from lego.train.rng import seed_everything
from lego.train.state import RunState

__all__ = [
    "STAGES",
    "FILLED",
    "CHATML_TOKENS",
    "END_OF_TURN",
    "DATA_DIR",
    "StageData",
    "QAData",
    "PairData",
    "SFTStage",
    "DPOStage",
    "GRPOStage",
    "StageRun",
    "StagesResult",
    "check_stages",
    "check_stage_folders",
    "check_stage_data",
    "stage_template",
    "stage_fingerprint_data",
    "write_stage_data",
    "run_stages",
]

STAGES = ("sft", "dpo", "grpo")
"""The stages after pretraining, in the order they run (each a section and a folder)."""

FILLED = "(filled by the pipeline)"
"""The value of a stage's ``model`` and ``out_dir``: the pipeline fills them."""

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>", "<|pad|>")
"""ChatML's markers and a pad token: the stages' default ``add_special_tokens``."""

END_OF_TURN = "<|im_end|>"
"""The stages' default ``eos_token``: ChatML's end of turn, so a chat reply ends there."""

DATA_DIR = "data"
"""The folder of the generated records in the run directory."""

_UNSET_KEYS = ("model", "out_dir")
_DONE = "done"


@dataclass(frozen=True, kw_only=True)
class StageData(DataFiles):
    """``data:`` of a pipeline stage: how many generated rows to use.

    The rows come from lego-data's ``stdlib_qa`` (questions about the standard library,
    held out by module); the pipeline writes them to ``run_dir/data`` and fills
    ``train`` / ``eval``, which the YAML leaves empty.

    Attributes:
        train_count: Training rows.
        eval_count: Held-out rows (the recipe's evaluation and the stage evaluation).
        seed: The rows' seed.
        test_fraction: The share of modules held out.
    """

    train_count: int = 400
    eval_count: int = 64
    seed: int = 0
    test_fraction: float = 0.2

    def validate(self) -> None:
        """Counts and fraction in range; no file names (the pipeline writes the files)."""
        Config.validate(self)  # DataFiles' own check wants a file: the pipeline gives it
        for key in ("train", "eval"):
            if getattr(self, key):
                raise ConfigError(
                    f"data.{key} is written by the pipeline (generated rows), not read",
                    key=key,
                    hint="remove it; set data.train_count / data.eval_count instead",
                )
        check_int("train_count", self.train_count, minimum=1)
        check_int("eval_count", self.eval_count, minimum=1)
        check_int("seed", self.seed, minimum=0, maximum=SEED_MAX)
        check_float("test_fraction", self.test_fraction, low=0.0, high=1.0, low_open=True)


@dataclass(frozen=True, kw_only=True)
class QAData(StageData):
    """``sft.data``: question-answer rows (``stdlib_qa.qa_rows``).

    Attributes:
        kinds: The kinds of questions (``()``: every kind lego-data generates).
    """

    kinds: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PairData(StageData):
    """``dpo.data``: preference pairs (``stdlib_qa.preference_rows``)."""


def _chat_sft() -> SFTConfig:
    return SFTConfig(template="chatml", eos_token=END_OF_TURN)


def _chat_dpo() -> DPOConfig:
    return DPOConfig(template="chatml", eos_token=END_OF_TURN)


def _check_filled(config: TuningConfig) -> None:
    """Refuse the keys the pipeline sets itself (the paths, resume and overwrite)."""
    for key in _UNSET_KEYS:
        if getattr(config, key) != FILLED:
            raise ConfigError(
                f"{key} is set by the pipeline (the previous stage's model and the stage's "
                "folder in the run directory)",
                key=key,
                hint=f"remove {key} from the stage's section",
            )
    if config.resume or config.overwrite:
        raise ConfigError(
            "a stage resumes (and is overwritten) with the pipeline's run: resume and "
            "overwrite are the pipeline's keys",
            key="resume" if config.resume else "overwrite",
            hint="remove the key from the stage's section (overwrite=true at the top level "
            "starts the whole run over)",
        )


def _recipe_dict(
    config: TuningConfig, *, model: Path, out_dir: Path, overwrite: bool
) -> dict[str, Any]:
    data = config.to_dict()
    data.pop("enabled")
    data.update(
        model=str(model),
        out_dir=str(out_dir),
        resume="" if overwrite else "auto",
        overwrite=overwrite,
    )
    return data


def _files(train: Path | None, eval_file: Path | None) -> dict[str, str]:
    return {"train": str(train or "train.jsonl"), "eval": str(eval_file or "")}


@dataclass(frozen=True, kw_only=True)
class SFTStage(FinetuneConfig):
    """``sft:``: supervised fine-tuning on generated question-answer rows.

    Every [`FinetuneConfig`][lego.recipes.finetune.FinetuneConfig] key but ``model`` and
    ``out_dir`` (the pipeline's), with ``data`` the generated rows' sizes.

    Attributes:
        enabled: Run the stage.
        data: The [`QAData`][lego.recipes.pipeline_stages.QAData].
        add_special_tokens: Tokens to add (ChatML's markers by default: the chat model's
            template, found by ``legollm serve``).
        sft: lego-align's [`SFTConfig`][lego.align.SFTConfig]; by default ChatML with
            ``eos_token: <|im_end|>`` (the trained end of each answer, where generation
            stops).
    """

    enabled: bool = False
    model: str = FILLED
    out_dir: str = FILLED
    data: QAData = field(default_factory=QAData)
    add_special_tokens: tuple[str, ...] = CHATML_TOKENS
    sft: SFTConfig = field(default_factory=_chat_sft)

    def validate(self) -> None:
        """The recipe's checks; the pipeline's keys left unset."""
        super().validate()
        _check_filled(self)

    def recipe(
        self,
        *,
        model: Path,
        out_dir: Path,
        train: Path | None = None,
        eval_file: Path | None = None,
        overwrite: bool = False,
    ) -> FinetuneConfig:
        """The ``legollm finetune`` config of this stage.

        Args:
            model: The model directory it starts from.
            out_dir: The stage's folder.
            train: The training records (a placeholder name when None).
            eval_file: The held-out records (None: none).
            overwrite: Start the stage over (the pipeline's ``overwrite``).

        Returns:
            The validated recipe config (``resume: auto`` unless ``overwrite``).
        """
        data = _recipe_dict(self, model=model, out_dir=out_dir, overwrite=overwrite)
        data["data"] = _files(train, eval_file)
        return FinetuneConfig.from_dict(data)


@dataclass(frozen=True, kw_only=True)
class DPOStage(DPORecipeConfig):
    """``dpo:``: DPO on generated preference pairs.

    Every [`DPORecipeConfig`][lego.recipes.align.DPORecipeConfig] key but ``model`` and
    ``out_dir``, with ``data`` the generated pairs' sizes.

    Attributes:
        enabled: Run the stage.
        data: The [`PairData`][lego.recipes.pipeline_stages.PairData].
        add_special_tokens: Tokens to add when the model lacks them (ChatML's markers:
            nothing to add after the SFT stage).
        dpo: lego-align's [`DPOConfig`][lego.align.DPOConfig]; by default ChatML with
            ``eos_token: <|im_end|>``.
    """

    enabled: bool = False
    model: str = FILLED
    out_dir: str = FILLED
    data: PairData = field(default_factory=PairData)
    add_special_tokens: tuple[str, ...] = CHATML_TOKENS
    dpo: DPOConfig = field(default_factory=_chat_dpo)

    def validate(self) -> None:
        """The recipe's checks; the pipeline's keys left unset."""
        super().validate()
        _check_filled(self)

    def recipe(
        self,
        *,
        model: Path,
        out_dir: Path,
        train: Path | None = None,
        eval_file: Path | None = None,
        overwrite: bool = False,
    ) -> DPORecipeConfig:
        """The ``legollm align dpo`` config of this stage.

        Args:
            model: The model directory it starts from.
            out_dir: The stage's folder.
            train: The training pairs (a placeholder name when None).
            eval_file: The held-out pairs (None: none).
            overwrite: Start the stage over.

        Returns:
            The validated recipe config.
        """
        data = _recipe_dict(self, model=model, out_dir=out_dir, overwrite=overwrite)
        data["data"] = _files(train, eval_file)
        return DPORecipeConfig.from_dict(data)


def _default_grpo_data() -> GRPOData:
    return GRPOData(task="addition")


@dataclass(frozen=True, kw_only=True)
class GRPOStage(GRPORecipeConfig):
    """``grpo:``: GRPO on a generated task with a verifiable answer.

    Every [`GRPORecipeConfig`][lego.recipes.align.GRPORecipeConfig] key but ``model`` and
    ``out_dir``; ``data`` is the task block (``task: addition`` by default) and the
    supervised warm-up ``sft`` is off unless configured.

    Attributes:
        enabled: Run the stage.
        data: The [`GRPOData`][lego.recipes.align.GRPOData] (a task; files are refused).
        sft: The warm-up ([`WarmupConfig`][lego.recipes.align.WarmupConfig]) or None.
        add_special_tokens: Tokens to add when the model lacks them.
    """

    enabled: bool = False
    model: str = FILLED
    out_dir: str = FILLED
    data: GRPOData = field(default_factory=_default_grpo_data)
    sft: WarmupConfig | None = None
    add_special_tokens: tuple[str, ...] = CHATML_TOKENS

    def validate(self) -> None:
        """The recipe's checks; the pipeline's keys left unset; a generated task."""
        super().validate()
        _check_filled(self)
        if not self.data.task:
            raise ConfigError(
                "the pipeline's GRPO stage trains on a generated task, not on files",
                key="data.task",
                hint="set data.task: addition (or arithmetic, sort, reverse)",
            )

    def recipe(self, *, model: Path, out_dir: Path, overwrite: bool = False) -> GRPORecipeConfig:
        """The ``legollm align grpo`` config of this stage.

        Args:
            model: The model directory it starts from.
            out_dir: The stage's folder.
            overwrite: Start the stage over.

        Returns:
            The validated recipe config.
        """
        data = _recipe_dict(self, model=model, out_dir=out_dir, overwrite=overwrite)
        return GRPORecipeConfig.from_dict(data)


def _sections(config: Any) -> list[tuple[str, SFTStage | DPOStage | GRPOStage]]:
    return [(name, getattr(config, name)) for name in STAGES]


def _template_tokens(template: str) -> tuple[str, ...]:
    if template.lower() in ("none", "alpaca", ""):
        return ()
    return tuple(get_chat_template(template).special_tokens)


def _stage_lengths(name: str, stage: SFTStage | DPOStage | GRPOStage) -> list[tuple[str, int]]:
    if isinstance(stage, SFTStage):
        return [(f"{name}.sft.max_length", stage.sft.max_length)]
    if isinstance(stage, DPOStage):
        return [(f"{name}.dpo.max_length", stage.dpo.max_length)]
    lengths = [
        (
            f"{name}.grpo.max_completion_length",
            stage.grpo.max_prompt_length + stage.grpo.max_completion_length,
        )
    ]
    if stage.sft is not None:
        lengths.append((f"{name}.sft.max_length", stage.sft.max_length))
    return lengths


def stage_template(stage: SFTStage | DPOStage | GRPOStage) -> str:
    """The chat template a stage renders its rows with (``none``, ``alpaca``, ``chatml``...).

    Args:
        stage: A stage section.

    Returns:
        The method section's ``template``.

    Example:
        >>> stage_template(DPOStage())
        'chatml'
    """
    if isinstance(stage, SFTStage):
        return stage.sft.template
    if isinstance(stage, DPOStage):
        return stage.dpo.template
    return stage.grpo.template


def check_stages(config: Any, *, context: int, tokenizer: Tokenizer | None = None) -> None:
    """Check the enabled stages against the model and the tokenizer, before pretraining.

    Each stage's longest row must fit the model's context; with the tokenizer known, every
    special token of a stage's chat template must be in the tokenizer or added by that
    stage or an earlier enabled one (``add_special_tokens``), and the SFT stage's stop
    tokens must pass lego-align's
    [`check_stop_tokens()`][lego.align.check_stop_tokens] (the trained end of an answer
    stops generation) and each stage must find its pad token, as they would only after
    pretraining otherwise.

    Args:
        config: The pipeline config (its ``sft``, ``dpo`` and ``grpo`` sections).
        context: The model's context length.
        tokenizer: The pretraining tokenizer, once it exists (None: the context only).

    Raises:
        ConfigError: A length past the context, a template whose tokens nobody adds, stop
            tokens that disagree or no pad token, naming the stage's key
            (``sft.sft.eos_token``, ``dpo.dpo.pad_token``...).

    Example:
        >>> from types import SimpleNamespace
        >>> stages = SimpleNamespace(sft=SFTStage(enabled=True), dpo=DPOStage(), grpo=GRPOStage())
        >>> check_stages(stages, context=2048)
        >>> check_stages(stages, context=128)
        Traceback (most recent call last):
        ...
        lego.protocols.errors.ConfigError: sft.sft.max_length=1024 ...
    """
    have: set[str] = set(tokenizer.special_tokens) if tokenizer is not None else set()
    grown = tokenizer
    for name, stage in _sections(config):
        if not stage.enabled:
            continue
        for key, length in _stage_lengths(name, stage):
            if length > context:
                raise ConfigError(
                    f"{key}={length} is longer than the model's context of {context} tokens",
                    key=key,
                    hint=f"set {key}={context} (or less)",
                )
        have.update(stage.add_special_tokens)
        missing = [t for t in _template_tokens(stage_template(stage)) if t not in have]
        if grown is None:
            continue
        if missing:
            raise ConfigError(
                f"the {name} stage's chat template needs {', '.join(missing)}, which the "
                "tokenizer lacks and no stage adds",
                key=f"{name}.add_special_tokens",
                hint=f"add them: {name}.add_special_tokens: {list(CHATML_TOKENS)} (or use "
                "template: none)",
            )
        grown = _with_tokens(grown, stage, name)
        _check_stage_tokens(grown, stage, name)


def _with_tokens(
    tokenizer: Tokenizer, stage: SFTStage | DPOStage | GRPOStage, name: str
) -> Tokenizer:
    """The tokenizer as the stage will see it (its ``add_special_tokens`` added)."""
    try:
        return add_special_tokens(tokenizer, stage.add_special_tokens)[0]
    except ConfigError as exc:
        raise ConfigError(exc.message, key=f"{name}.add_special_tokens", hint=exc.hint) from None


def _check_stage_tokens(
    tokenizer: Tokenizer, stage: SFTStage | DPOStage | GRPOStage, name: str
) -> None:
    """lego-align's stop- and pad-token rules, before pretraining rather than after it."""
    template = stage_template(stage)
    chat = None if template.lower() in ("none", "alpaca") else get_chat_template(template)
    method = "sft" if isinstance(stage, SFTStage) else name
    try:
        if isinstance(stage, SFTStage):
            stops = check_stop_tokens(
                tokenizer,
                chat,
                eos_token=stage.sft.eos_token,
                generation_eos_token_ids=stage.sft.generation_eos_token_ids,
            )
            resolve_pad_id(
                tokenizer, stage.sft.pad_token, avoid=(stops.eos_id, stops.trained_end_id)
            )
        elif isinstance(stage, DPOStage):
            preference_pad_id(
                tokenizer, chat, eos_token=stage.dpo.eos_token, pad_token=stage.dpo.pad_token
            )
        else:
            grpo = stage.grpo
            stop_and_pad_ids(
                tokenizer,
                template=grpo.chat_template(),
                eos_token=grpo.eos_token,
                pad_token=grpo.pad_token,
            )
    except ConfigError as exc:
        key = f"{name}.{method}.{exc.key}" if exc.key else f"{name}.{method}.eos_token"
        raise ConfigError(exc.message, key=key, hint=exc.hint) from None


def check_stage_data(config: Any) -> None:
    """Generate each enabled stage's rows once, before any work, to check the counts.

    The generators cache what they read, so the rows written later cost nothing more.

    Args:
        config: The pipeline config.

    Raises:
        ConfigError: A split that has fewer rows than asked for (or another refusal of the
            generator), named as the stage's key (``grpo.data.eval_count``...).
    """
    for name, stage in _sections(config):
        if not stage.enabled:
            continue
        data = stage.data
        for split, key in (("train", "train_count"), ("test", "eval_count")):
            count = int(getattr(data, key))
            try:
                if isinstance(stage, GRPOStage):
                    if split == "train" or count:
                        stage.data.task_records(split, count)
                elif isinstance(stage, SFTStage):
                    _qa_rows(stage.data, split, count)
                else:
                    _preference_rows(stage.data, split, count)
            except ConfigError as exc:
                known = exc.key if exc.key in data.to_dict() else key  # "count" is this one
                raise ConfigError(exc.message, key=f"{name}.data.{known}", hint=exc.hint) from None


def check_stage_folders(config: Any, run_dir: Path) -> None:
    """Check, before any work, that each enabled stage can write its folder.

    ``run_dir/<stage>`` and ``run_dir/data`` must be folders (created here when missing)
    that take a file.

    Args:
        config: The pipeline config.
        run_dir: The run directory.

    Raises:
        ConfigError: A stage's folder is a file, or cannot be created or written, naming the
            folder and the stage.
    """
    enabled = [name for name, stage in _sections(config) if stage.enabled]
    folders = [(name, run_dir / name) for name in enabled]
    if {"sft", "dpo"} & set(enabled):
        folders.append(("sft" if "sft" in enabled else "dpo", run_dir / DATA_DIR))
    for name, folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = temporary_name(folder / ".write-test")
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            why = "a file is in its place" if folder.is_file() else exc.strerror or str(exc)
            raise ConfigError(
                f"the {name} stage cannot write its folder: {why}",
                path=folder,
                key=name,
                hint=f"make {folder} a writable folder (or remove what is there), or switch "
                f"the stage off with {name}.enabled=false",
            ) from exc


def stage_fingerprint_data(config: Any) -> dict[str, Any]:
    """The stage settings that shape a run, for the pipeline's fingerprint.

    Everything but ``enabled`` (a stage switched on later continues the same run), the
    lengths (``max_steps``, ``time_budget_s``, the warm-up's ``sft.max_steps``) and
    ``progress``, as the pretraining part leaves out ``max_steps`` and ``time_budget_s``.

    Args:
        config: The pipeline config.

    Returns:
        Section name -> its settings.

    Example:
        >>> from types import SimpleNamespace
        >>> a = SimpleNamespace(sft=SFTStage(max_steps=5), dpo=DPOStage(), grpo=GRPOStage())
        >>> b = SimpleNamespace(sft=SFTStage(max_steps=9, enabled=True), dpo=a.dpo, grpo=a.grpo)
        >>> stage_fingerprint_data(a) == stage_fingerprint_data(b)
        True
    """
    found: dict[str, Any] = {}
    for name, stage in _sections(config):
        data = stage.to_dict()
        for key in ("enabled", "max_steps", "time_budget_s", "progress", "model", "out_dir"):
            data.pop(key, None)
        warmup = data.get("sft")
        if name == "grpo" and isinstance(warmup, dict):
            warmup.pop("max_steps", None)
        found[name] = data
    return found


# -- the data -----------------------------------------------------------------------------


def _jsonl(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    return "".join(json.dumps({k: row[k] for k in keys}, ensure_ascii=False) + "\n" for row in rows)


def _qa_rows(data: QAData, split: str, count: int) -> list[dict[str, str]]:
    from lego.data.stdlib_qa import qa_rows

    chosen: dict[str, Any] = {"kinds": list(data.kinds)} if data.kinds else {}
    return list(
        qa_rows(
            split="test" if split == "test" else "train",
            test_fraction=data.test_fraction,
            seed=data.seed,
            count=count,
            **chosen,
        )
    )


def _preference_rows(data: PairData, split: str, count: int) -> list[dict[str, str]]:
    from lego.data.stdlib_qa import preference_rows

    return list(
        preference_rows(
            split="test" if split == "test" else "train",
            test_fraction=data.test_fraction,
            seed=data.seed,
            count=count,
        )
    )


def write_stage_data(
    run_dir: Path, name: str, stage: SFTStage | DPOStage
) -> tuple[Path, Path, list[dict[str, str]]]:
    """Generate a stage's records and write them to ``run_dir/data`` (atomically).

    The same settings give the same bytes, so a rerun rewrites identical files.

    Args:
        run_dir: The run directory.
        name: The stage (``sft`` or ``dpo``): the files are ``<name>-train.jsonl`` and
            ``<name>-eval.jsonl``.
        stage: The stage's section.

    Returns:
        ``(train, eval, held_out_rows)``: the two files and the held-out rows (every
        column, for the stage evaluation).
    """
    folder = run_dir / DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    data = stage.data
    if isinstance(stage, SFTStage):
        assert isinstance(data, QAData)
        train_rows = _qa_rows(data, "train", data.train_count)
        test_rows = _qa_rows(data, "test", data.eval_count)
        keys: tuple[str, ...] = ("prompt", "completion")
    else:
        assert isinstance(data, PairData)
        train_rows = _preference_rows(data, "train", data.train_count)
        test_rows = _preference_rows(data, "test", data.eval_count)
        keys = ("prompt", "chosen", "rejected")
    train = folder / f"{name}-train.jsonl"
    held = folder / f"{name}-eval.jsonl"
    atomic_write_text(train, _jsonl(train_rows, keys), what=f"{name} training records")
    atomic_write_text(held, _jsonl(test_rows, keys), what=f"{name} held-out records")
    return train, held, test_rows


# -- running ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageRun:
    """What one stage did in this invocation.

    Attributes:
        name: ``sft``, ``dpo`` or ``grpo``.
        status: ``done`` (trained now), ``done earlier`` (a finished stage, not redone),
            ``skipped`` (``enabled: false``) or ``stopped`` (a signal; checkpoint kept).
        model_dir: The stage's ``model/`` once done (None otherwise).
        seconds: Wall time of this invocation's work on the stage.
        state: The trainer's final state (None unless it trained now).
    """

    name: str
    status: str
    model_dir: Path | None = None
    seconds: float = 0.0
    state: RunState | None = None


@dataclass
class StagesResult:
    """The stages' outcome.

    Attributes:
        runs: One [`StageRun`][lego.recipes.pipeline_stages.StageRun] per stage, in order.
        model_dir: The last model of the chain (the pretrained one when no stage ran).
        models: Stage name -> model directory, from ``pretrained`` on (the enabled ones).
        qa_test: The held-out question rows (empty without the SFT stage's data).
        pairs_test: The held-out preference pairs (empty without the DPO stage's data).
        stopped: The stage a signal stopped (None: all finished).
    """

    runs: list[StageRun] = field(default_factory=list)
    model_dir: Path | None = None
    models: dict[str, Path] = field(default_factory=dict)
    qa_test: list[dict[str, str]] = field(default_factory=list)
    pairs_test: list[dict[str, str]] = field(default_factory=list)
    stopped: StageRun | None = None


def _build(
    name: str,
    stage: SFTStage | DPOStage | GRPOStage,
    *,
    model: Path,
    out_dir: Path,
    files: tuple[Path, Path] | None,
    overwrite: bool,
) -> Tuning:
    if isinstance(stage, GRPOStage):
        return build_grpo(stage.recipe(model=model, out_dir=out_dir, overwrite=overwrite))
    assert files is not None
    train, held = files
    if isinstance(stage, SFTStage):
        sft = stage.recipe(
            model=model, out_dir=out_dir, train=train, eval_file=held, overwrite=overwrite
        )
        return build_finetune(sft)
    dpo = stage.recipe(
        model=model, out_dir=out_dir, train=train, eval_file=held, overwrite=overwrite
    )
    return build_dpo(dpo)


def run_stages(
    config: Any,
    *,
    run_dir: Path,
    pretrained: Path,
    statuses: dict[str, str],
    save: Callable[[], None],
    echo: Callable[[str], Any] = print,
) -> StagesResult:
    """Run the enabled stages in order, each from the previous model (see the module docs).

    A stage is finished, and not redone, when ``statuses`` says ``done`` and its
    ``model/`` exists. Each stage's status is set in ``statuses`` (``running``, ``done``,
    ``skipped``) and ``save()`` records it (``pipeline.json``) before and after it trains.

    Args:
        config: The pipeline config.
        run_dir: The run directory (each stage trains in ``run_dir/<stage>``).
        pretrained: The pretrained model directory (``run_dir/model``).
        statuses: Stage name -> status, from ``pipeline.json``; updated in place.
        save: Writes the statuses to ``pipeline.json``.
        echo: Where progress lines go.

    Returns:
        The [`StagesResult`][lego.recipes.pipeline_stages.StagesResult]; ``stopped`` is set
        when SIGINT / SIGTERM stopped a stage after a checkpoint (the same command
        continues it).

    Raises:
        ConfigError: A stage's own checks (its folder, its records, the model).
        TrainingError: A stage failed to train or to write its model.
    """
    overwrite = bool(getattr(config, "overwrite", False))
    result = StagesResult(model_dir=pretrained, models={"pretrained": pretrained})
    for name, stage in _sections(config):
        if not stage.enabled:
            statuses[name] = "skipped"
            result.runs.append(StageRun(name=name, status="skipped"))
            continue
        out_dir = run_dir / name
        source = result.model_dir
        assert source is not None
        files: tuple[Path, Path] | None = None
        if isinstance(stage, (SFTStage, DPOStage)):
            train, held, test_rows = write_stage_data(run_dir, name, stage)
            files = (train, held)
            if isinstance(stage, SFTStage):
                result.qa_test = test_rows
            else:
                result.pairs_test = test_rows
        done = out_dir / MODEL_DIR
        if statuses.get(name) == _DONE and done.is_dir():
            echo(f"{name}: done earlier ({done})")
            result.runs.append(StageRun(name=name, status="done earlier", model_dir=done))
            result.model_dir = result.models[name] = done
            continue
        statuses[name] = "running"
        save()
        echo(f"{name}: from {source} in {out_dir}")
        start = time.perf_counter()
        seed_everything(stage.seed)  # a stage starts the same after any history (LoRA's init)
        tuning = _build(
            name, stage, model=source, out_dir=out_dir, files=files, overwrite=overwrite
        )
        tuned = tuning.run()
        seconds = time.perf_counter() - start
        if not tuned.finished or tuned.model_dir is None:
            run = StageRun(name=name, status="stopped", seconds=seconds, state=tuned.state)
            result.runs.append(run)
            result.stopped = run
            return result
        statuses[name] = _DONE
        save()
        result.runs.append(
            StageRun(
                name=name,
                status=_DONE,
                model_dir=tuned.model_dir,
                seconds=seconds,
                state=tuned.state,
            )
        )
        result.model_dir = result.models[name] = tuned.model_dir
    return result
