"""Quantize a transformers model directory to NF4 in bitsandbytes' layout (``lego-peft quantize``).

[`quantize_model_files()`][lego.peft.quantize_files.quantize_model_files] reads the weight
files shard by shard and quantizes the weights of the linear layers with
[`quantize_nf4()`][lego.peft.nf4.quantize_nf4] (block 64, double quantization by default),
writing each under bitsandbytes' keys (``<name>``, ``<name>.absmax``, ``<name>.quant_map``,
``<name>.nested_absmax``, ``<name>.nested_quant_map``,
``<name>.quant_state.bitsandbytes__nf4``) and a ``quantization_config`` in ``config.json``
as transformers writes for ``BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4")``, so transformers (with bitsandbytes) and lego-peft's
``NF4Linear`` load the result.

Without building the model, the linear layers' weights are told apart by name and shape:
every 2-D ``*.weight`` except the embeddings and the output head (transformers keeps those
unquantized too). GPT-2's ``Conv1D`` weights, stored ``(in, out)``, are transposed first,
as transformers' bitsandbytes integration does.
"""

from __future__ import annotations

import os
import re

from torch import Tensor

from lego.peft.hf_files import (
    INDEX_NAME,
    OutputDir,
    check_output_dir,
    iter_shards,
    nbytes,
    read_model_dir,
    shard_index,
)
from lego.peft.nf4 import quantize_nf4
from lego.protocols import CompatibilityError, ConfigError

__all__ = ["quantize_model_files", "is_quantized_weight", "KEEP_PATTERN"]

KEEP_PATTERN = r"(^|\.)(lm_head|embed_tokens|embed_positions|wte|wpe|word_embeddings|score)\."
"""Weights never quantized: embeddings and output heads (matched with ``re.search``)."""

_CONV1D_FAMILIES = frozenset({"gpt2"})


def is_quantized_weight(name: str, tensor: Tensor, *, keep: str = KEEP_PATTERN) -> bool:
    """Whether ``quantize`` turns this tensor into NF4.

    Args:
        name: The tensor's name in the model directory.
        tensor: The tensor.
        keep: A regular expression of names left as they are.

    Returns:
        True for the 2-D floating-point weight of a linear layer.

    Example:
        >>> import torch
        >>> is_quantized_weight("model.layers.0.mlp.up_proj.weight", torch.zeros(8, 4))
        True
        >>> is_quantized_weight("model.embed_tokens.weight", torch.zeros(8, 4))
        False
    """
    return (
        name.endswith(".weight")
        and tensor.ndim == 2
        and tensor.is_floating_point()
        and re.search(keep, name) is None
    )


def quantize_model_files(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    block_size: int = 64,
    double_quant: bool = True,
    compute_dtype: str = "float32",
) -> dict[str, int]:
    """Write ``output``: the model directory with its linear weights in NF4.

    Args:
        model: A transformers model directory (safetensors, one file or shards).
        output: The new directory (absent or empty).
        block_size: Values per NF4 block (64, as QLoRA).
        double_quant: Quantize the absmax scales too (~4.127 bits per weight).
        compute_dtype: ``bnb_4bit_compute_dtype`` recorded in the config.

    Returns:
        ``{"quantized": weights quantized, "kept": tensors kept as they were,
        "bytes_before": ..., "bytes_after": ...}``.

    Raises:
        ConfigError: Missing files, an output that is an input or not empty, bad settings.
        FormatError: Damaged files.
        CompatibilityError: The model is already quantized.
    """
    model_dir = read_model_dir(model)
    out = check_output_dir(output, inputs=[model_dir.path], what="quantized model")
    if "quantization_config" in model_dir.config:
        raise CompatibilityError(
            "the model is already quantized (its config.json has a quantization_config)",
            path=model_dir.path / "config.json",
            key="quantization_config",
            hint="quantize the full-precision model",
        )
    if compute_dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(
            f"unknown compute dtype {compute_dtype!r}",
            key="--compute-dtype",
            hint="use float32, bfloat16 or float16",
        )
    conv1d = model_dir.config.get("model_type") in _CONV1D_FAMILIES
    counts = {"quantized": 0, "kept": 0, "bytes_before": 0, "bytes_after": 0}
    weight_map: dict[str, str] = {}
    total = 0
    with OutputDir(out, what="quantized model") as target:
        for shard, loaded in iter_shards(model_dir):
            counts["bytes_before"] += nbytes(loaded)
            result: dict[str, Tensor] = {}
            for name, tensor in loaded.items():
                if not is_quantized_weight(name, tensor):
                    result[name] = tensor
                    counts["kept"] += 1
                    continue
                weight = tensor.T.contiguous() if conv1d else tensor
                quantized = quantize_nf4(weight, block_size=block_size, double_quant=double_quant)
                result.update(quantized.state_dict(prefix=name))
                counts["quantized"] += 1
            del loaded
            target.write_tensors(shard.name, result)
            size = nbytes(result)
            counts["bytes_after"] += size
            total += size
            weight_map.update(dict.fromkeys(result, shard.name))
            del result
        if model_dir.sharded:
            target.write_json(INDEX_NAME, shard_index(total, weight_map))
        config = dict(model_dir.config)
        config["quantization_config"] = {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "load_in_8bit": False,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": double_quant,
            "bnb_4bit_compute_dtype": compute_dtype,
            "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": None,
            "_load_in_4bit": True,
            "_load_in_8bit": False,
        }
        target.write_json("config.json", config)
        target.copy_side_files(model_dir)
    return counts
