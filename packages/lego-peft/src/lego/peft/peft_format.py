"""PEFT's adapter format, both ways: ``save_adapter()`` and ``load_adapter()``.

An adapter directory holds two files, as PEFT writes them:

- ``adapter_config.json``: the settings in PEFT's vocabulary. lego-peft writes the
  minimal set every PEFT version reads (``peft_type``, ``task_type``, ``r``,
  ``lora_alpha``, ``lora_dropout``, ``target_modules``, ``bias``, ``fan_in_fan_out``,
  ``modules_to_save``, ``init_lora_weights``, ``inference_mode``,
  ``base_model_name_or_path``), plus ``use_rslora``, ``use_dora``, ``rank_pattern`` and
  ``alpha_pattern`` only when they are used. Module names are transformers' names.
- ``adapter_model.safetensors``: the tensors, keyed as PEFT keys them:
  ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` (linear layers),
  ``<module>.lora_embedding_A`` / ``lora_embedding_B`` (embeddings),
  ``<module>.lora_magnitude_vector`` (DoRA), ``<module>.base_layer.bias`` (trained biases
  of adapted layers), ``<module>.<parameter>`` (modules to save, in transformers'
  layout: GPT-2's ``Conv1D`` weights transposed), and, when PEFT would save them, the
  adapted embedding's own table ``<module>.base_layer.weight``.

The names come from the model: a base model that is an
[`HFNamedModel`][lego.protocols.HFNamedModel] (every lego-arch model) gives its
transformers names (``model.layers.0.self_attn.q_proj``, GPT-2's
``transformer.h.0.attn.c_attn``);
any other model is keyed by its own module names, as PEFT keys a plain PyTorch model.

Reading is strict: a field or tensor lego-peft does not reproduce, a missing tensor, a
tensor of another shape or a config for modules this model does not have is a
``CompatibilityError`` naming them all.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from lego.peft.config import LoraConfig
from lego.peft.lora import LoraEmbedding, LoraLinear
from lego.peft.targets import target_matches
from lego.protocols import (
    CompatibilityError,
    ConfigError,
    FormatError,
    HFNamedModel,
    LegoError,
    atomic_write_bytes,
    atomic_write_text,
    read_bytes,
    read_json,
)

if TYPE_CHECKING:
    from lego.peft.model import LoraModel

__all__ = [
    "adapter_parameters",
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "PEFT_PREFIX",
    "adapter_config",
    "adapter_tensors",
    "load_adapter",
    "load_adapter_tensors",
    "lora_config_from_peft",
    "save_adapter",
]

ADAPTER_CONFIG_NAME = "adapter_config.json"
"""PEFT's config file name."""

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
"""PEFT's weights file name."""

PEFT_PREFIX = "base_model.model."
"""What PEFT puts before every module name (``PeftModel.base_model.model``)."""

_EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
"""PEFT saves the tables of these layers when they are targeted (``save_embedding_layers``)."""

_SUPPORTED_FIELDS = frozenset(
    {
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "bias",
        "use_rslora",
        "use_dora",
        "modules_to_save",
        "rank_pattern",
        "alpha_pattern",
        "init_lora_weights",
    }
)
"""Fields that become ``LoraConfig`` fields."""

_INFORMATIONAL_FIELDS = frozenset(
    {
        "peft_type",
        "task_type",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "peft_version",
        "auto_mapping",
        "fan_in_fan_out",  # PEFT derives it per layer from the layer type (Conv1D)
    }
)
"""Fields that describe the adapter without changing what it computes."""

_DEFAULTS = {"megatron_core": "megatron.core", "qalora_group_size": 16, "layers_pattern": None}
"""Fields PEFT writes with these values when the feature is unused."""


# -- the keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """One tensor of the adapter file and where it lives in the model."""

    parameter: nn.Parameter
    transposed: bool = False
    base_table: bool = False  # the adapted embedding's own table: optional when reading


def _parameter(tensor: Tensor) -> nn.Parameter:
    assert isinstance(tensor, nn.Parameter)
    return tensor


def _module_name(model: LoraModel, path: str) -> str:
    name = model.module_names.get(path)
    if name is None:
        raise CompatibilityError(
            f"the adapted module {path!r} has no transformers name, so PEFT's format cannot "
            "name its tensors",
            tensor=path,
            hint="PEFT-format adapters cover the modules of the published architecture; "
            "keep this adapter with torch.save(adapted.state_dict()) instead",
        )
    return name


def _slots(model: LoraModel, *, base_tables: bool) -> dict[str, _Slot]:
    """Every adapter tensor under its PEFT key (the adapted tables with ``base_tables``)."""
    slots: dict[str, _Slot] = {}

    def add(key: str, slot: _Slot) -> None:
        if key in slots:
            raise CompatibilityError(
                f"two adapter tensors get the same PEFT key {key!r}",
                tensor=key,
                hint="adapt each transformers module once (tied modules share a name)",
            )
        slots[key] = slot

    for path, layer in model.lora_layers.items():
        module = PEFT_PREFIX + _module_name(model, path)
        if isinstance(layer, LoraLinear):
            add(f"{module}.lora_A.weight", _Slot(_parameter(layer.lora_A.weight)))
            add(f"{module}.lora_B.weight", _Slot(_parameter(layer.lora_B.weight)))
        else:
            add(f"{module}.lora_embedding_A", _Slot(layer.lora_embedding_A))
            add(f"{module}.lora_embedding_B", _Slot(layer.lora_embedding_B))
        if layer.lora_magnitude_vector is not None:
            add(f"{module}.lora_magnitude_vector", _Slot(layer.lora_magnitude_vector))
        if base_tables and _is_embedding_layer(layer, module):
            weight = layer.base_layer.weight
            assert isinstance(weight, nn.Parameter)
            add(f"{module}.base_layer.weight", _Slot(weight, base_table=True))
    for name, parameter in model.biases.items():
        owner = name[: -len(".bias")]
        if owner in model.lora_layers:
            key = f"{PEFT_PREFIX}{_module_name(model, owner)}.base_layer.bias"
        else:
            key = PEFT_PREFIX + _hf_parameter(model, name)[0]
        add(key, _Slot(parameter))
    for path, wrapper in model.saved_modules.items():
        for rel, parameter in wrapper.modules_to_save.named_parameters():
            hf_name, transposed = _hf_parameter(model, f"{path}.{rel}")
            add(PEFT_PREFIX + hf_name, _Slot(parameter, transposed=transposed))
    return slots


def _hf_parameter(model: LoraModel, name: str) -> tuple[str, bool]:
    try:
        return model.hf_parameter_name(name)
    except LegoError as err:
        raise CompatibilityError(
            f"the trained parameter {name!r} has no transformers name: {err.message}",
            tensor=name,
            hint="PEFT-format adapters cover the modules of the published architecture",
        ) from None


def _is_embedding_layer(layer: LoraLinear | LoraEmbedding, module: str) -> bool:
    """The input embedding or output head, whose table PEFT may save with the adapter."""
    return isinstance(layer, LoraEmbedding) or module.rsplit(".", 1)[-1] == "lm_head"


def _peft_saves_tables(target_modules: str | list[str], model: LoraModel) -> bool:
    """PEFT's ``save_embedding_layers="auto"``: an ``embed_tokens`` / ``lm_head`` is targeted."""
    if isinstance(target_modules, str):
        return any(
            re.fullmatch(target_modules, name) is not None
            for name in model.adaptable_names
            if re.match(rf"(.*\.)?({'|'.join(_EMBEDDING_LAYER_NAMES)})$", name)
        )
    return any(name in target_modules for name in _EMBEDDING_LAYER_NAMES)


def adapter_parameters(model: LoraModel) -> dict[str, nn.Parameter]:
    """The adapter's trainable parameters under their PEFT keys (``LoraModel.adapter_parameters``).

    Args:
        model: The adapted model.

    Returns:
        PEFT key -> parameter (the model's own layout).

    Raises:
        CompatibilityError: An adapted module has no transformers name.
    """
    return {key: slot.parameter for key, slot in _slots(model, base_tables=False).items()}


def adapter_tensors(model: LoraModel) -> dict[str, Tensor]:
    """The adapter's tensors as PEFT saves them (``LoraModel.adapter_state_dict()``).

    Args:
        model: The adapted model.

    Returns:
        PEFT key -> tensor (detached, contiguous; transposed where transformers stores the
        transpose; the adapted tables as they were before any merge).

    Raises:
        CompatibilityError: An adapted module has no transformers name.
    """
    target_modules = _written_targets(model)
    slots = _slots(model, base_tables=_peft_saves_tables(target_modules, model))
    tensors: dict[str, Tensor] = {}
    for key, slot in slots.items():
        tensor = slot.parameter.detach()
        if slot.base_table:
            tensor = _unmerged_table(model, slot.parameter)
        tensors[key] = (tensor.T if slot.transposed else tensor).contiguous()
    return tensors


def _unmerged_table(model: LoraModel, parameter: nn.Parameter) -> Tensor:
    for layer in model.lora_layers.values():
        if layer.base_layer.weight is parameter and layer._unmerged_weight is not None:
            return layer._unmerged_weight
    return parameter.detach()


def load_adapter_tensors(
    model: LoraModel,
    state_dict: Mapping[str, Tensor],
    *,
    path: str | os.PathLike[str] | None = None,
) -> None:
    """Copy PEFT-keyed tensors into the adapter (``LoraModel.load_adapter_state_dict``).

    Every adapter tensor must be present with its shape; the adapted embedding's own table
    (saved by PEFT with an ``embed_tokens`` / ``lm_head`` target) may be, and when it
    differs from the base's it replaces it, as PEFT does.

    Args:
        model: The adapted model (not merged).
        state_dict: PEFT key -> tensor.
        path: The file the tensors came from, for messages.

    Raises:
        CompatibilityError: Unknown, missing or mis-shaped tensors, all listed.
    """
    slots = _slots(model, base_tables=True)
    unexpected = sorted(set(state_dict) - set(slots))
    missing = sorted(
        key for key, slot in slots.items() if key not in state_dict and not slot.base_table
    )
    shapes = []
    for key, tensor in state_dict.items():
        if key not in slots:
            continue
        slot = slots[key]
        expected = tuple(slot.parameter.shape)
        if slot.transposed:
            expected = expected[::-1]
        if tuple(tensor.shape) != expected:
            shapes.append(f"{key}: {tuple(tensor.shape)} in the adapter, {expected} here")
    if unexpected or missing or shapes:
        raise _mismatch(unexpected, missing, shapes, path=path)
    with torch.no_grad():
        for key, tensor in state_dict.items():
            slot = slots[key]
            value = tensor.T if slot.transposed else tensor
            if slot.base_table:
                if not torch.equal(value.to(slot.parameter.dtype), slot.parameter):
                    slot.parameter.data = value.to(slot.parameter.dtype).clone()
                continue
            slot.parameter.copy_(value)


def _mismatch(
    unexpected: list[str],
    missing: list[str],
    shapes: list[str],
    *,
    path: str | os.PathLike[str] | None,
) -> CompatibilityError:
    def listed(names: list[str]) -> str:  # sorted: the same message whatever the file's order
        names = sorted(names)
        return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")

    parts = []
    if unexpected:
        parts.append(
            f"{len(unexpected)} tensor(s) this adapted model has no place for: {listed(unexpected)}"
        )
    if missing:
        parts.append(f"{len(missing)} adapter tensor(s) missing: {listed(missing)}")
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) of another shape: {listed(shapes)}")
    if shapes:
        hint = (
            "the adapter was made for a base model of another shape: load the base it was "
            "trained on"
        )
    elif unexpected and not (set(missing) - set(unexpected)):
        hint = (
            "the adapter was made for another architecture or with other settings: load it "
            "onto the base model it was trained on"
        )
    else:
        hint = (
            "load the adapter onto the base model it was trained on, with its own "
            "adapter_config.json"
        )
    return CompatibilityError(
        "the adapter does not fit this model: " + "; ".join(parts),
        path=path,
        tensor=(unexpected or missing or [shapes[0].split(":")[0]])[0],
        hint=hint,
    )


# -- the config ----------------------------------------------------------------------------------


def _written_targets(model: LoraModel) -> list[str]:
    """``target_modules`` in transformers' names, selecting exactly the adapted modules.

    The modules' last names (``["q_proj", "v_proj"]``) when they select exactly the adapted
    set, else the full names.
    """
    adapted = [_module_name(model, path) for path in model.lora_layers]
    saved = _written_saved(model) or []
    leaves = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    pool = [
        name
        for name in model.adaptable_names
        if not any(re.match(rf"(^|.*\.){re.escape(s)}($|\..*)", name) for s in saved)
    ]
    if sorted(n for n in pool if target_matches(leaves, n)) == sorted(adapted):
        return leaves
    return sorted(adapted)


def _written_saved(model: LoraModel) -> list[str] | None:
    if not model.saved_modules:
        return None
    return sorted(_module_name(model, path) for path in model.saved_modules)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def adapter_config(
    model: LoraModel, *, base_model_name_or_path: str | None = None
) -> dict[str, Any]:
    """The ``adapter_config.json`` mapping of an adapted model (``LoraModel.adapter_config``).

    Args:
        model: The adapted model.
        base_model_name_or_path: Recorded as PEFT's field of that name.

    Returns:
        The mapping (JSON-compatible).

    Raises:
        CompatibilityError: An adapted module has no transformers name, or the adapted
            linear layers mix transposed (``Conv1D``) and plain layouts.
    """
    config = model.lora_config
    layouts = {
        model.hf_parameter_name(f"{path}.weight")[1]
        for path, layer in model.lora_layers.items()
        if isinstance(layer, LoraLinear)
    }
    if len(layouts) > 1:
        raise CompatibilityError(
            "the adapted linear layers mix transformers' Conv1D and Linear layouts, which one "
            "PEFT config (fan_in_fan_out) cannot describe",
            key="fan_in_fan_out",
            hint="adapt layers of one kind per adapter",
        )
    data: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.r,
        "lora_alpha": _number(config.lora_alpha),
        "lora_dropout": config.lora_dropout,
        "target_modules": _written_targets(model),
        "bias": config.bias,
        "fan_in_fan_out": layouts == {True},
        "modules_to_save": _written_saved(model),
        "init_lora_weights": config.init_lora_weights,
        "inference_mode": True,
    }
    if config.use_rslora:
        data["use_rslora"] = True
    if config.use_dora:
        data["use_dora"] = True
    ranks: dict[str, int] = {}
    alphas: dict[str, int | float] = {}
    for path, layer in model.lora_layers.items():
        pattern = re.escape(_module_name(model, path))
        if layer.r != config.r:
            ranks[pattern] = layer.r
        if layer.lora_alpha != config.lora_alpha:
            alphas[pattern] = _number(layer.lora_alpha)
    if ranks:
        data["rank_pattern"] = ranks
    if alphas:
        data["alpha_pattern"] = alphas
    return data


def lora_config_from_peft(
    data: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None
) -> LoraConfig:
    """Read a PEFT ``adapter_config.json`` mapping into a ``LoraConfig`` (transformers' names).

    Args:
        data: The parsed file.
        path: The file, for messages.

    Returns:
        The config; its module names are transformers' names (use it with
        ``apply_lora(..., hf_names=True)``).

    Raises:
        CompatibilityError: Another PEFT method or task, or fields whose values lego-peft
            does not reproduce (all named), or an initialization that changes the base
            model (PiSSA, OLoRA, LoftQ, ...).
        FormatError: A supported field of the wrong type or out of range.
    """
    where = os.fspath(path) if path is not None else None
    if data.get("peft_type") != "LORA":
        raise CompatibilityError(
            f"the adapter is a {data.get('peft_type')!r} adapter; lego-peft loads LoRA (and DoRA)",
            path=where,
            key="peft_type",
            hint="load it with PEFT",
        )
    if data.get("task_type") not in (None, "CAUSAL_LM"):
        raise CompatibilityError(
            f"the adapter is for the task {data.get('task_type')!r}; lego-peft adapts causal "
            "language models",
            path=where,
            key="task_type",
            hint="load a CAUSAL_LM adapter",
        )
    init = data.get("init_lora_weights", True)
    if not (isinstance(init, bool) or init == "gaussian"):
        raise CompatibilityError(
            f"init_lora_weights={init!r}: this initialization changes the base model's "
            "weights, so the adapter only works on the base PEFT modified",
            path=where,
            key="init_lora_weights",
            hint="save it from PEFT with path_initial_model_for_weight_conversion (a plain "
            "LoRA of the original base), then load that",
        )
    unsupported = []
    for key, value in data.items():
        if key in _SUPPORTED_FIELDS or key in _INFORMATIONAL_FIELDS:
            continue
        if value in (None, False, "", [], {}) or (key in _DEFAULTS and value == _DEFAULTS[key]):
            continue
        unsupported.append(f"{key}={value!r}")
    if unsupported:
        raise CompatibilityError(
            "the adapter uses PEFT features lego-peft does not reproduce: "
            + ", ".join(unsupported),
            path=where,
            key=unsupported[0].split("=")[0],
            hint="load it with PEFT, or train an adapter without these settings",
        )
    if data.get("target_modules") is None:
        raise CompatibilityError(
            "adapter_config.json names no target_modules (PEFT fills them in from the model type)",
            path=where,
            key="target_modules",
            hint="write the adapted modules' names into target_modules",
        )
    fields = {key: data[key] for key in _SUPPORTED_FIELDS if key in data and data[key] is not None}
    fields["init_lora_weights"] = init
    return LoraConfig.from_header(
        fields,
        path=where or ADAPTER_CONFIG_NAME,
        what="PEFT adapter config",
        hint="write it with PEFT or lego-peft",
    )


# -- files ---------------------------------------------------------------------------------------


def save_adapter(
    model: LoraModel,
    path: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``path``.

    Each file is written atomically (a temporary file renamed into place).

    Args:
        model: The adapted model.
        path: The directory (created with its parents when missing).
        base_model_name_or_path: Recorded in the config.

    Raises:
        CompatibilityError: See `lego.peft.peft_format.adapter_config()`.
        ConfigError: The directory cannot be created or written.
    """
    config = adapter_config(model, base_model_name_or_path=base_model_name_or_path)
    tensors = adapter_tensors(model)
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            "the adapter directory is a file", path=directory, hint="choose a directory path"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create the adapter directory ({err.strerror})",
            path=directory,
            hint="choose a writable location",
        ) from None
    blob = save_safetensors(tensors, metadata={"format": "pt"})
    atomic_write_bytes(directory / ADAPTER_WEIGHTS_NAME, blob, what="adapter weights")
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write_text(directory / ADAPTER_CONFIG_NAME, text, what="adapter config")


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> LoraModel:
    """Attach an adapter saved by PEFT or by lego-peft to ``model`` (in place).

    Args:
        model: The base model the adapter was trained on, e.g. a lego-arch model loaded
            with ``lego.arch.from_hf``; its module names are matched in transformers'
            names when it is an [`HFNamedModel`][lego.protocols.HFNamedModel].
        path: The adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).

    Returns:
        The adapted model, its adapter weights loaded (not merged).

    Raises:
        ConfigError: The directory or a file is missing.
        FormatError: A file is damaged, or the weights are only in pickle form
            (``adapter_model.bin``).
        CompatibilityError: Unsupported settings, modules this model does not have,
            unknown, missing or mis-shaped tensors (all named).

    Example:
        >>> import tempfile
        >>> from torch import nn
        >>> from lego.peft import LoraConfig, apply_lora
        >>> model = nn.Sequential(nn.Linear(4, 4))
        >>> adapted = apply_lora(model, LoraConfig(r=2, target_modules=["0"]))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     adapted.save_adapter(folder)
        ...     again = load_adapter(nn.Sequential(nn.Linear(4, 4)), folder)
        >>> sorted(again.adapter_state_dict())
        ['base_model.model.0.lora_A.weight', 'base_model.model.0.lora_B.weight']
    """
    from lego.peft.model import apply_lora  # the model module imports this one

    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(
            "no adapter directory here",
            path=directory,
            hint="pass the folder holding adapter_config.json",
        )
    config_file = directory / ADAPTER_CONFIG_NAME
    data = read_json(config_file, what="PEFT adapter config")
    if not isinstance(data, Mapping):
        raise FormatError(
            "adapter_config.json must hold a JSON object",
            path=config_file,
            hint="write it with PEFT",
        )
    config = lora_config_from_peft(data, path=config_file)
    weights_file = directory / ADAPTER_WEIGHTS_NAME
    if not weights_file.exists() and (directory / "adapter_model.bin").exists():
        raise FormatError(
            "the adapter's weights are only in pickle form (adapter_model.bin), which "
            "lego-peft never loads",
            path=directory / "adapter_model.bin",
            hint="save the adapter again with PEFT's save_pretrained(safe_serialization=True)",
        )
    tensors = read_adapter_weights(directory, hint="save the adapter again")
    try:
        adapted = apply_lora(model, config, hf_names=isinstance(model, HFNamedModel))
    except ConfigError as err:
        raise CompatibilityError(
            f"the adapter does not fit this model: {err.message}",
            path=config_file,
            key=err.key,
            hint=(err.hint + "; " if err.hint else "")
            + "was the adapter made for another architecture?",
        ) from None
    try:
        adapted.load_adapter_state_dict(tensors)
    except CompatibilityError as err:
        adapted.unload()
        raise CompatibilityError(
            err.message, path=weights_file, tensor=err.tensor, hint=err.hint
        ) from None
    base = data.get("base_model_name_or_path")
    adapted.base_model_name_or_path = base if isinstance(base, str) and base else None
    return adapted


def read_adapter_weights(directory: str | os.PathLike[str], *, hint: str) -> dict[str, Tensor]:
    """Read ``adapter_model.safetensors`` of an adapter directory (never a pickle).

    Args:
        directory: The adapter directory.
        hint: What to do when the file is damaged (it depends on who reads it).

    Returns:
        The tensors by PEFT key name.

    Raises:
        ConfigError: The file is missing or unreadable.
        FormatError: The file is not a valid safetensors file.
    """
    weights_file = Path(directory) / ADAPTER_WEIGHTS_NAME
    blob = read_bytes(weights_file, what="adapter weights")
    try:
        return load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise FormatError(
            f"the adapter weights are not a valid safetensors file ({err})",
            path=weights_file,
            hint=hint,
        ) from None
