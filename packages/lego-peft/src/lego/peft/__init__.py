"""lego-peft: LoRA, DoRA, NF4 quantization and QLoRA, with adapters in PEFT's format.

With ``model`` any model (a lego-arch model for PEFT's key names)::

    from lego.peft import LoraConfig, apply_lora, load_adapter
    adapted = apply_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    ...                                   # train: only the adapter is trainable
    adapted.save_adapter("out/adapter")   # PEFT's adapter_config.json + adapter_model.safetensors
    adapted = load_adapter(model, "out/adapter")  # or an adapter saved by PEFT
    plain = adapted.merge_and_unload()    # the base model with the adapter folded in

- [`LoraConfig`][lego.peft.LoraConfig]: the settings, with PEFT's names.
- [`apply_lora()`][lego.peft.apply_lora] -> [`LoraModel`][lego.peft.LoraModel] (a
  [`CachedLoraModel`][lego.peft.CachedLoraModel] on a model with a KV cache): still a
  ``CausalLM``, and an ``Adapter``: ``merge()`` / ``unmerge()`` (bit-exact), ``disabled()``,
  ``save_adapter()``, ``merge_and_unload()``.
- The layers: [`LoraLinear`][lego.peft.LoraLinear], [`LoraEmbedding`][lego.peft.LoraEmbedding],
  [`ModulesToSaveWrapper`][lego.peft.ModulesToSaveWrapper].
- PEFT's format: [`save_adapter()`][lego.peft.save_adapter],
  [`load_adapter()`][lego.peft.load_adapter].
- NF4 and QLoRA: [`quantize_nf4()`][lego.peft.quantize_nf4] ->
  [`NF4Tensor`][lego.peft.NF4Tensor] (bitsandbytes' values and state-dict layout),
  [`NF4Linear`][lego.peft.NF4Linear], [`quantize_model()`][lego.peft.quantize_model] (then
  ``apply_lora``), [`merge_and_requantize()`][lego.peft.merge_and_requantize] (only when
  asked; ``merge_and_unload()`` keeps the merged weights in higher precision).
"""

from lego.peft.__about__ import __version__
from lego.peft.config import LoraConfig
from lego.peft.lora import LoraEmbedding, LoraLinear, QuantizedLinear
from lego.peft.model import CachedLoraModel, LoraModel, apply_lora
from lego.peft.modules_to_save import ModulesToSaveWrapper
from lego.peft.nf4 import NF4Tensor, quantize_nf4
from lego.peft.nf4_linear import NF4Linear
from lego.peft.peft_format import load_adapter, save_adapter
from lego.peft.quantize import (
    LayerError,
    QuantizationReport,
    RequantizationWarning,
    merge_and_requantize,
    quantize_model,
)

__all__ = [
    "__version__",
    # LoRA / DoRA
    "LoraConfig",
    "apply_lora",
    "LoraModel",
    "CachedLoraModel",
    "LoraLinear",
    "LoraEmbedding",
    "QuantizedLinear",
    "ModulesToSaveWrapper",
    # PEFT's format
    "save_adapter",
    "load_adapter",
    # NF4 and QLoRA
    "quantize_nf4",
    "NF4Tensor",
    "NF4Linear",
    "quantize_model",
    "merge_and_requantize",
    "QuantizationReport",
    "LayerError",
    "RequantizationWarning",
]
