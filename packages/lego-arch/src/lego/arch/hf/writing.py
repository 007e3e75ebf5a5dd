"""Write a lego model as a HuggingFace model directory: ``to_hf``.

[`to_hf()`][lego.arch.hf.writing.to_hf] produces what transformers' own ``save_pretrained``
would: the Hub's ``config.json`` fields, HF tensor names, contiguous tensors,
``{"format": "pt"}`` metadata, tied weights written once (no ``lm_head.weight``), shards above
``max_shard_size``. A new directory appears complete or not at all (written under a temporary
name, then renamed); in an existing directory each file is replaced atomically, shards before
the index and ``config.json``, and weight files of an earlier save that the new one does not
use are removed. Temporaries are named by [`temporary_name()`][lego.protocols.temporary_name]
(host and pid), so those of a writer that was killed are removed by the next write. Weight
files get the mode the umask gives (``0o644`` under the usual ``022``), or keep the mode of
the file they replace, as every other file written through lego.protocols; safetensors
alone writes ``0o600``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lego.arch.config import parse_dtype
from lego.arch.convert.mapping import TensorPlan
from lego.arch.hf.directory import CONFIG_NAME, INDEX_NAME, SAFETENSORS_NAME, listing
from lego.arch.hf.families import architecture_for_config
from lego.arch.hf.state import model_config, unique_tensors
from lego.protocols import (
    CompatibilityError,
    ConfigError,
    atomic_write_text,
    remove_stale_temporaries,
    temporary_name,
)

__all__ = ["parse_shard_size", "to_hf"]

_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_shard_size(value: int | str) -> int:
    """Turn ``"5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count into bytes.

    Args:
        value: Bytes as an int, or a number with a unit: B, KB, MB, GB, TB (powers of
            1000, as transformers) or KiB, MiB, GiB, TiB (powers of 1024).

    Returns:
        The size in bytes (at least 1).

    Raises:
        ConfigError: Anything else (``key="max_shard_size"``).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.fullmatch(str(value))
        if match is None:
            raise ConfigError(
                f"cannot read the shard size {value!r}",
                key="max_shard_size",
                hint="give bytes as an integer or a size such as '5GB', '500MB', '2GiB'",
            )
        size = int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])
    if size < 1:
        raise ConfigError(
            f"max_shard_size must be positive, got {value!r}",
            key="max_shard_size",
            hint="e.g. '5GB'",
        )
    return size


def to_hf(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | str | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a model as a HuggingFace directory that transformers and ``from_hf`` load.

    Args:
        model: A lego model (a [`DecoderLM`][lego.arch.decoder.DecoderLM]) of a family with
            an HF architecture (GPT-2, Llama, Qwen 3, Qwen 3 MoE).
        path: The directory (created if missing, with its parents).
        max_shard_size: Largest shard in bytes (``"5GB"``, ``"500MB"`` or an int); above
            it the weights are split into ``model-0000i-of-0000N.safetensors`` files with a
            ``model.safetensors.index.json``. A single tensor larger than it gets a shard
            of its own.
        dtype: Cast the weights when writing (``torch.dtype`` or name); None keeps the
            model's dtype. ``config.json``'s ``torch_dtype`` records it.
        state_dict: Write these tensors instead of the model's own, under the model's
            ``state_dict()`` keys, e.g. a full state gathered from an FSDP-sharded model on
            rank 0 (a tied head may be present or absent; it is written once).

    Returns:
        The directory.

    Raises:
        CompatibilityError: The model's config cannot be expressed by its HF architecture
            (naming the field) or has tensors the family's table does not name; the model
            has no ``DecoderConfig``; a
            ``state_dict`` lacks some of the model's tensors, has others, or has other
            shapes (all listed).
        ConfigError: A bad ``dtype`` or ``max_shard_size``, or an unwritable path.
    """
    limit = parse_shard_size(max_shard_size)
    target = parse_dtype(dtype, key="dtype")
    config = model_config(model)
    arch = architecture_for_config(config)
    hf_config = arch.config_to_hf(config)
    tensors, aliases = unique_tensors(model)
    state = {key: tensor.detach() for key, tensor in tensors.items()}
    if state_dict is not None:
        state = _replace_state(state, aliases, state_dict)
    plans = arch.weights.plan(state, n_layers=config.n_layers, n_experts=config.n_experts or 0)
    out_dtype = target if target is not None else state["token_embedding.weight"].dtype
    hf_config["torch_dtype"] = str(out_dtype).removeprefix("torch.")
    shards = _assign_shards(plans, state, out_dtype, limit)
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            "to_hf writes a directory, but the path is a file",
            path=directory,
            hint="give a directory path",
        )
    fresh = not directory.exists()
    if fresh:
        directory.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(directory.parent)  # of writers that were killed
        work = temporary_name(directory)
        work.mkdir()
    else:
        remove_stale_temporaries(directory)
        work = directory
    try:
        _write_weights(work, shards, state, out_dtype)
        atomic_write_text(work / CONFIG_NAME, _dump(hf_config), what="config.json")
        if fresh:
            os.replace(work, directory)
    except BaseException:
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return directory


def _replace_state(
    own: Mapping[str, torch.Tensor], aliases: Mapping[str, str], given: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The tensors of ``given`` under ``own``'s keys, checked against the model's state."""
    allowed = set(own) | set(aliases)  # tied keys too: either may be given
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - allowed)
    misshaped = sorted(
        f"{key}: {tuple(given[key].shape)} (the model has {tuple(own[key].shape)})"
        for key in set(own) & set(given)
        if given[key].shape != own[key].shape
    )
    if missing or unexpected or misshaped:
        raise CompatibilityError(
            "to_hf: the state_dict does not fit the model:\n"
            + listing({"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped}),
            hint="pass the model's own state_dict() keys (e.g. a consolidated FSDP state)",
        )
    return {key: given[key].detach() for key in own}


def _assign_shards(
    plans: Sequence[TensorPlan], state: Mapping[str, torch.Tensor], dtype: torch.dtype, limit: int
) -> list[list[TensorPlan]]:
    """Group plans into shards of at most ``limit`` bytes (sizes from shapes, no data)."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for plan in plans:
        tensor = state[plan.lego]
        nbytes = tensor.numel() * (
            dtype.itemsize if tensor.is_floating_point() else tensor.element_size()
        )
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(plan)
        size += nbytes
    return shards


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor that owns its whole storage (safetensors refuses shared ones)."""
    tensor = tensor.contiguous()
    whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole and tensor.storage_offset() == 0 else tensor.clone()


def _file_mode(target: Path) -> int:
    """The permission bits a weight file gets: those of the file it replaces, else the umask's.

    A new file gets ``0o666`` minus the umask, as every other file we write
    ([`atomic_write_bytes()`][lego.protocols.files.atomic_write_bytes]); safetensors alone
    would make it ``0o600``.
    """
    with contextlib.suppress(OSError):
        return stat.S_IMODE(target.stat().st_mode)
    mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return 0o666 & ~mask


def _write_weights(
    directory: Path,
    shards: Sequence[Sequence[TensorPlan]],
    state: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
) -> None:
    names = (
        [SAFETENSORS_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    total = 0
    for name, shard in zip(names, shards, strict=True):
        tensors: dict[str, torch.Tensor] = {}
        for plan in shard:
            tensor = state[plan.lego].to(device="cpu")
            if tensor.is_floating_point():
                tensor = tensor.to(dtype=dtype)
            for hf_name, part in plan.split(tensor).items():
                tensors[hf_name] = _owned(part)
                weight_map[hf_name] = name
                total += part.numel() * part.element_size()
        temp = temporary_name(directory / name)
        try:
            save_file(tensors, str(temp), metadata={"format": "pt"})
            os.chmod(temp, _file_mode(directory / name))  # safetensors writes 0o600
            os.replace(temp, directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(directory / INDEX_NAME, _dump(index), what="safetensors index")
    stale = [
        p
        for p in directory.iterdir()
        if p.is_file()
        and p.name not in names
        and (p.name == SAFETENSORS_NAME or _SHARD.fullmatch(p.name) or p.name == INDEX_NAME)
        and not (p.name == INDEX_NAME and len(shards) > 1)
    ]
    for old in stale:
        old.unlink()


def _dump(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
