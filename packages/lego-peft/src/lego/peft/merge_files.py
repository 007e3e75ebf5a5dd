"""Merge a PEFT adapter into a transformers model directory, at the state-dict level.

[`merge_adapter_files()`][lego.peft.merge_files.merge_adapter_files] is ``lego-peft merge``:
it reads the adapter (``adapter_config.json`` + ``adapter_model.safetensors``, PEFT's keys
``base_model.model.<module>.lora_A.weight``) and the model's weight files, and writes a
model directory that transformers loads, with every adapted weight replaced by its merged
value. No model is built: each adapted weight becomes an ``nn.Linear`` / ``nn.Embedding``
of its own inside a bare container module named like the transformers module, and lego-peft's
own layers merge it (the same arithmetic as ``LoraModel.merge()``: LoRA, rsLoRA, DoRA, rank
and alpha patterns, embedding LoRA). Weights stored transposed (``fan_in_fan_out``:
GPT-2's ``Conv1D``) are transposed in and out. The modules to save replace their tensors,
and trained biases theirs. Every other file of the model directory (tokenizer files,
``generation_config.json``) is copied; shards keep their names and index.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from lego.peft.hf_files import (
    INDEX_NAME,
    OutputDir,
    check_output_dir,
    iter_shards,
    load_shard,
    nbytes,
    read_model_dir,
    shard_index,
    tensor_shapes,
)
from lego.peft.peft_format import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    PEFT_PREFIX,
    lora_config_from_peft,
    read_adapter_weights,
)
from lego.protocols import CompatibilityError, FormatError, read_json

__all__ = ["merge_adapter_files", "read_adapter_dir"]

_LORA_PARTS = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".lora_magnitude_vector",
)


def read_adapter_dir(path: str | os.PathLike[str]) -> tuple[dict[str, object], dict[str, Tensor]]:
    """Read a PEFT adapter directory's config and tensors.

    Args:
        path: The adapter directory.

    Returns:
        ``(adapter_config, tensors)``.

    Raises:
        ConfigError: The folder or a file is missing.
        FormatError: A damaged file.
    """
    folder = Path(path)
    data = read_json(folder / ADAPTER_CONFIG_NAME, what="PEFT adapter config")
    if not isinstance(data, dict):
        raise FormatError(
            "adapter_config.json must hold a JSON object",
            path=folder / ADAPTER_CONFIG_NAME,
            hint="write it with PEFT or lego-peft",
        )
    return data, read_adapter_weights(folder, hint="save the adapter again")


def _module_of(key: str) -> tuple[str, str] | None:
    """``(module, part)`` of a LoRA key, None for other keys."""
    for part in _LORA_PARTS:
        if key.endswith(part):
            return key[len(PEFT_PREFIX) : -len(part)], part
    if key.endswith(".base_layer.weight"):
        return key[len(PEFT_PREFIX) : -len(".base_layer.weight")], ".base_layer.weight"
    return None


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent = root
    parts = path.split(".")
    for part in parts[:-1]:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    parent.add_module(parts[-1], module)


def merge_adapter_files(
    model: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    output: str | os.PathLike[str],
) -> dict[str, int]:
    """Write ``output``: the model directory with the adapter merged into its weights.

    Args:
        model: A transformers model directory (safetensors, one file or shards).
        adapter: A PEFT adapter directory trained on that model.
        output: The new directory (absent or empty).

    Returns:
        ``{"merged": adapted weights merged, "replaced": tensors replaced by the adapter's
        modules to save or trained biases, "tensors": tensors written}``.

    Raises:
        ConfigError: Missing files, or an output that is an input or not empty.
        FormatError: Damaged files.
        CompatibilityError: The adapter names weights the model does not have, or of other
            shapes (every one named), or settings lego-peft does not reproduce.
    """
    model_dir = read_model_dir(model)
    adapter_dir = Path(adapter)
    out = check_output_dir(output, inputs=[model_dir.path, adapter_dir], what="merged model")
    data, tensors = read_adapter_dir(adapter_dir)
    config = lora_config_from_peft(data, path=adapter_dir / ADAPTER_CONFIG_NAME)
    transposed = bool(data.get("fan_in_fan_out", False))

    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, Path] = {}
    for shard in model_dir.shards:
        for name, shape in tensor_shapes(shard).items():
            shapes[name] = shape
            where[name] = shard

    lora_keys: dict[str, Tensor] = {}
    direct: dict[str, Tensor] = {}  # model tensor name -> replacement
    modules: dict[str, str] = {}  # module -> "linear" | "embedding"
    problems: list[str] = []
    for key, tensor in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            problems.append(f"{key}: not a PEFT key (no {PEFT_PREFIX!r} prefix)")
            continue
        found = _module_of(key)
        if found is None:  # a module to save or a trained bias: replaces the model's tensor
            name = key[len(PEFT_PREFIX) :].replace(".base_layer.", ".")
            if name not in shapes:
                problems.append(f"{key}: the model has no tensor {name}")
            elif tuple(tensor.shape) != shapes[name]:
                problems.append(
                    f"{key}: shape {tuple(tensor.shape)}, the model's {name} {shapes[name]}"
                )
            else:
                direct[name] = tensor
            continue
        module, part = found
        lora_keys[key] = tensor
        if part.startswith(".lora_embedding"):
            modules[module] = "embedding"
        else:
            modules.setdefault(module, "linear")
        if f"{module}.weight" not in shapes:
            problems.append(f"{key}: the model has no weight {module}.weight")
    if problems:
        raise CompatibilityError(
            "the adapter does not fit this model:\n    " + "\n    ".join(problems[:20]),
            path=adapter_dir / ADAPTER_WEIGHTS_NAME,
            hint="merge the adapter into the model it was trained on (another architecture "
            "or size?)",
        )

    # The adapted weights, each in a layer of its own named like the transformers module.
    needed: dict[Path, list[str]] = {}
    for module in modules:
        needed.setdefault(where[f"{module}.weight"], []).append(module)
    container = nn.Module()
    dtypes: dict[str, torch.dtype] = {}
    for shard, names in needed.items():
        loaded = load_shard(shard)
        for module in names:
            weight = loaded[f"{module}.weight"]
            dtypes[module] = weight.dtype
            if modules[module] == "embedding":
                rows, width = weight.shape
                layer: nn.Module = nn.Embedding(rows, width, device="meta")
                layer.weight = nn.Parameter(weight.float(), requires_grad=False)
            else:
                value = weight.float().T if transposed else weight.float()
                layer = nn.Linear(value.shape[1], value.shape[0], bias=False, device="meta")
                layer.weight = nn.Parameter(value, requires_grad=False)
            _set_module(container, module, layer)
        del loaded
    lora_config = dataclasses.replace(
        config, target_modules=tuple(sorted(modules)), modules_to_save=None, bias="none"
    )
    from lego.peft.model import apply_lora

    adapted = apply_lora(container, lora_config)
    try:
        adapted.load_adapter_state_dict(lora_keys)
    except CompatibilityError as err:
        raise CompatibilityError(
            f"the adapter does not fit this model: {err.message}",
            path=adapter_dir / ADAPTER_WEIGHTS_NAME,
            tensor=err.tensor,
            hint="merge the adapter into the model it was trained on (another architecture "
            "or size?)",
        ) from None
    plain = adapted.merge_and_unload()
    merged: dict[str, Tensor] = {}
    for module, kind in modules.items():
        parameter = plain.get_submodule(module).weight
        assert isinstance(parameter, Tensor)
        value = parameter.detach()
        if kind == "linear" and transposed:
            value = value.T
        merged[f"{module}.weight"] = value.to(dtypes[module]).contiguous()
    del plain, adapted, container

    written = 0
    weight_map: dict[str, str] = {}
    total = 0
    with OutputDir(out, what="merged model") as target:
        for shard, loaded in iter_shards(model_dir):
            for name in loaded:
                if name in merged:
                    loaded[name] = merged[name]
                elif name in direct:
                    loaded[name] = direct[name].to(loaded[name].dtype)
            target.write_tensors(shard.name, loaded)
            written += len(loaded)
            total += nbytes(loaded)
            weight_map.update(dict.fromkeys(loaded, shard.name))
            del loaded
        if model_dir.sharded:
            target.write_json(INDEX_NAME, shard_index(total, weight_map))
        target.write_json("config.json", model_dir.config)
        target.copy_side_files(model_dir)
    return {"merged": len(merged), "replaced": len(direct), "tensors": written}
