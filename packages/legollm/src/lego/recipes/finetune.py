"""``legollm finetune``: supervised fine-tuning (full, LoRA or QLoRA) from one YAML file.

The recipe hands a model that exists (a lego-arch model directory, a checkpoint, or a run
of ``legollm pipeline`` / ``pretrain``) and local JSON Lines records to lego-align's
[`SFTTrainer`][lego.align.SFTTrainer]: the completions and their end token trained, the
prompts masked (and cut from the left when too long, counted), the stop tokens checked
before the first step, full fine-tuning or a LoRA / QLoRA adapter through lego-peft. The
records are TRL's forms: ``{"messages": [...]}`` or ``{"prompt": ..., "completion": ...}``
(strings or messages), rendered with the chat template (``sft.template``), or plain text
with ``template: none``.

The YAML holds every [`TrainConfig`][lego.train.config.TrainConfig] key at the top level,
the keys every tuning recipe shares ([`TuningConfig`][lego.recipes.tuning.TuningConfig]:
``model``, ``data``, ``tokenizer``, ``add_special_tokens``, ``output``, ``plots``) and an
``sft:`` section, lego-align's [`SFTConfig`][lego.align.SFTConfig] (``template``,
``eos_token``, ``max_length``, ``finetune: full | lora | qlora``, ``lora: {r: ...}``,
``batch_size``, ``val_fraction``, ``packing``...)::

    model: runs/align-tiny/model
    out_dir: runs/sft-tiny
    max_steps: 60
    data: {train: runs/align-tiny/sft.jsonl}
    sft: {template: chatml, finetune: lora, lora: {r: 8}, batch_size: 8}

When ``sft.generation_eos_token_ids`` is not given it is read from the model directory's
``generation_config.json``. At the end ``out_dir/model`` holds the model (merged, or the
adapter with its base reference: ``output``), its tokenizer and its stop tokens, and
``out_dir/curves.png`` the loss curves ([`lego.recipes.tuning`][lego.recipes.tuning]).

    >>> config = FinetuneConfig.from_dict({"model": "m", "data": {"train": "sft.jsonl"}})
    >>> config.sft.finetune, config.output
    ('full', 'merged')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lego.align import SFTConfig, SFTTrainer, generation_stop_ids
from lego.protocols import FolderLock
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
    trainer_inputs,
)
from lego.train import TrainConfig

__all__ = ["FinetuneConfig", "SFT_CURVES", "build_finetune", "run_finetune"]

SFT_CURVES = (Curve("loss", "loss", "val_loss"),)
"""The panels of a fine-tuning run's ``curves.png``: training and validation loss."""


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TuningConfig):
    """A ``legollm finetune`` config: lego-train's keys, the shared keys and ``sft:``.

    Attributes:
        sft: lego-align's [`SFTConfig`][lego.align.SFTConfig].
        out_dir: The run directory.
    """

    sft: SFTConfig = field(default_factory=SFTConfig)
    out_dir: str = "runs/finetune"

    def validate(self) -> None:
        """The shared checks, and an adapter output only for LoRA / QLoRA."""
        super().validate()
        self.check_adapter_output("sft", self.sft.finetune)


def _make(config: FinetuneConfig) -> Any:
    def make(
        source: TuningModel, train: TrainConfig, lock: FolderLock | None
    ) -> tuple[SFTTrainer, Any]:
        sft = config.sft
        if sft.generation_eos_token_ids is None:
            stops = generation_stop_ids(source.model_dir)
            if stops is not None:
                sft = dataclasses.replace(sft, generation_eos_token_ids=stops)
        report = EvaluationReport(())
        trainer = SFTTrainer(config=sft, **trainer_inputs(config, source, train, lock, report))
        report.trainer = trainer.trainer
        record_base_model(trainer.model, source)

        def export(folder: Path) -> None:
            stops = trainer.stops
            eos = list(dict.fromkeys((*stops.generation_ids, stops.trained_end_id)))
            export_causal_lm(
                trainer.model,
                folder,
                output=config.output,
                source=source,
                eos_ids=eos,
                pad_id=trainer.pad_id,
            )

        return trainer, export

    return make


def build_finetune(config: FinetuneConfig) -> Tuning:
    """Check everything, lock ``out_dir``, load the model and the data, build the trainer.

    Args:
        config: The validated recipe config.

    Returns:
        The [`Tuning`][lego.recipes.tuning.Tuning], ready to run.

    Raises:
        ConfigError: A bad setting (stop tokens that disagree, no pad token...), a missing
            file, an ``out_dir`` that holds another run or is being written.
        DataError: A bad record (file and line).
    """
    length = ("sft.max_length", config.sft.max_length)
    return build_tuning(config, _make(config), curves=SFT_CURVES, max_length=length)


def run_finetune(config: FinetuneConfig) -> TuningResult:
    """Fine-tune as ``config`` says and write the model directory.

    Args:
        config: The validated recipe config.

    Returns:
        The [`TuningResult`][lego.recipes.tuning.TuningResult].
    """
    return build_finetune(config).run()
