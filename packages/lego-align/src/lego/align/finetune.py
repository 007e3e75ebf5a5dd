"""Which weights a fine-tuning run trains: all of them, a LoRA adapter, or QLoRA (lego-peft).

[`prepare_model()`][lego.align.finetune.prepare_model] turns the ``finetune`` setting of a
trainer's config into the model to train:

- ``"full"``: the model as given (every parameter trained);
- ``"lora"``: lego-peft's [`apply_lora()`][lego.peft.apply_lora] with the config's
  [`LoraConfig`][lego.peft.LoraConfig]: the base frozen, only the adapter trained; the
  checkpoints hold the adapter (PEFT's layout) and the reference model of a preference loss
  is the same model with its adapter disabled;
- ``"qlora"``: lego-peft's [`quantize_model()`][lego.peft.quantize_model] (NF4, QLoRA's
  frozen base) first, then the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from lego.peft import LoraConfig, apply_lora, quantize_model
from lego.protocols import Config, ConfigError

__all__ = ["FinetuneMethod", "FinetuneSettings", "prepare_model"]

FinetuneMethod = Literal["full", "lora", "qlora"]
"""What a run trains: every weight, a LoRA adapter, or a LoRA adapter on an NF4 base."""


def _default_lora() -> LoraConfig:
    return LoraConfig(target_modules="all-linear", r=16, lora_alpha=32.0)


@dataclass(frozen=True, kw_only=True)
class FinetuneSettings(Config):
    """The ``finetune`` fields every lego-align trainer config shares (a mixin).

    Attributes:
        finetune: ``"full"``, ``"lora"`` or ``"qlora"``.
        lora: The adapter's settings (lego-peft's ``LoraConfig``, PEFT's names) for
            ``"lora"`` and ``"qlora"``; default ``all-linear``, ``r=16``, ``alpha=32``.
        qlora_block_size: Values per NF4 block (QLoRA: 64).
        qlora_double_quant: Quantize the NF4 scales too (QLoRA: true).
    """

    finetune: FinetuneMethod = "full"
    lora: LoraConfig = field(default_factory=_default_lora)
    qlora_block_size: int = 64
    qlora_double_quant: bool = True

    def validate(self) -> None:
        """Check the block size."""
        super().validate()
        if self.qlora_block_size < 1:
            raise ConfigError(
                f"qlora_block_size must be at least 1, got {self.qlora_block_size}",
                key="qlora_block_size",
            )


def prepare_model(model: nn.Module, settings: FinetuneSettings) -> nn.Module:
    """The model a run trains, from its ``finetune`` setting.

    Args:
        model: The base model (a ``CausalLM``, or a reward model around one), not yet
            adapted.
        settings: Any config with the [`FinetuneSettings`][lego.align.finetune.FinetuneSettings]
            fields.

    Returns:
        ``model`` itself for ``"full"``; a lego-peft ``LoraModel`` for ``"lora"`` and
        ``"qlora"`` (the base quantized to NF4 in place first for ``"qlora"``).

    Raises:
        ConfigError: A LoRA target or module to save that matches nothing, a model that
            already holds adapters (lego-peft's messages).
    """
    if settings.finetune == "full":
        return model
    if settings.finetune == "qlora":
        quantize_model(
            model,
            block_size=settings.qlora_block_size,
            double_quant=settings.qlora_double_quant,
        )
    return apply_lora(model, settings.lora)
