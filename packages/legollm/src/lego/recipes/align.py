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

    >>> config = DPORecipeConfig.from_dict({"model": "m", "data": {"train": "pairs.jsonl"}})
    >>> config.dpo.loss_type, config.dpo.reference_mode()
    ('sigmoid', 'copy')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lego.align import (
    DPOConfig,
    DPOTrainer,
    RewardConfig,
    RewardTrainer,
    generation_stop_ids,
)
from lego.protocols import ConfigError, FolderLock, Tokenizer
from lego.protocols.chat import get_chat_template
from lego.recipes.report import Curve
from lego.recipes.tuning import (
    EvaluationReport,
    Tuning,
    TuningConfig,
    TuningModel,
    TuningResult,
    build_tuning,
    export_causal_lm,
    record_base_model,
    save_tokenizer,
    trainer_inputs,
)
from lego.train import TrainConfig
from lego.train.checkpoint import save_model_dir

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
