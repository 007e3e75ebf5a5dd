"""Read the tensors of a HuggingFace model directory under lego's state-dict keys.

[`read_hf_state()`][lego.arch.hf.reading.read_hf_state] first checks every tensor's name and
shape against the safetensors headers (every missing, unexpected and mis-shaped tensor in one
[`CompatibilityError`][lego.protocols.CompatibilityError]), then takes the tensors one at a
time through the ``safetensors`` library, whose tensors are views on a copy-on-write memory
map of the file: nothing is read until a page is first used, and writes stay private to the
process. A tensor used as it is stored (same dtype, CPU, no transform) is returned as that
view, so loading copies nothing; GPT-2's ``Conv1D`` weights, stored ``(in, out)``, become
transposed views (``(out, in)`` with swapped strides, not contiguous). Any
other tensor (a cast, a stack of experts, a move to another device) becomes one new
contiguous tensor. The file's pages a copy read stay in the process's resident set (clean
page cache the kernel can drop) until the files are closed at the end of the read.

[`load_hf_weights()`][lego.arch.hf.reading.load_hf_weights] copies a directory into an
existing model, in place. Building a new model from a directory is
[`lego.arch.from_hf()`][lego.arch.loading.from_hf].
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lego.arch.config import parse_dtype
from lego.arch.convert.mapping import TensorPlan, WeightTable
from lego.arch.hf.directory import (
    INDEX_NAME,
    MAX_LISTED,
    HFDirectory,
    listing,
    open_hf_directory,
    open_safetensors,
)
from lego.arch.hf.state import model_config, unique_tensors
from lego.protocols import CompatibilityError, ConfigError, FormatError

__all__ = ["load_hf_weights", "parse_device", "parse_load_dtype", "read_hf_state"]

_IGNORED_FIELDS = frozenset(
    {"dropout", "attention_backend", "initializer_range", "scale_residual_init"}
)
"""Config fields that do not change the weights: a directory may differ in them."""


def parse_load_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """The dtype to load as: None (or ``"auto"``) keeps each tensor's stored dtype.

    Args:
        dtype: A ``torch.dtype``, a name (``"bf16"``, ``"float32"``, ...), ``"auto"`` or None.

    Returns:
        The dtype, or None.

    Raises:
        ConfigError: An unknown name (with the closest valid ones) or a non-floating dtype.
    """
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":
        return None
    return parse_dtype(dtype, key="dtype")


def parse_device(device: torch.device | str | None) -> torch.device:
    """The device to load onto (default: the CPU).

    Args:
        device: A ``torch.device``, a name (``"cpu"``, ``"cuda:1"``) or None.

    Returns:
        The device.

    Raises:
        ConfigError: An unknown device, or CUDA asked for where it is not available.
    """
    if device is None:
        return torch.device("cpu")
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"unknown device {device!r}",
            key="device",
            hint="use 'cpu', 'cuda', 'cuda:1', 'mps' or a torch.device",
        ) from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} asked for, but CUDA is not available",
            key="device",
            hint="load on 'cpu', or install a CUDA build of torch on a machine with a GPU",
        )
    return where


@dataclass
class _Reader:
    """Tensors by name from the open safetensors files (views on their memory maps)."""

    files: Mapping[str, str]
    handles: dict[str, Any]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handles[self.files[name]].get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The stored dtype, as the header names it (``"F32"``, ``"BF16"``, ``"I64"``...)."""
        return str(self.handles[self.files[name]].get_slice(name).get_dtype())

    def get(self, name: str) -> torch.Tensor:
        """The stored tensor: a lazy view on the file's copy-on-write map (nothing read yet)."""
        tensor: torch.Tensor = self.handles[self.files[name]].get_tensor(name)
        return tensor


@contextlib.contextmanager
def _open_reader(directory: HFDirectory) -> Iterator[_Reader]:
    """Open every safetensors file of the directory for the duration of the block."""
    with contextlib.ExitStack() as stack:
        handles = {
            file: stack.enter_context(open_safetensors(directory.path / file))
            for file in sorted(set(directory.files.values()))
        }
        _check_index(directory, handles)
        yield _Reader(files=directory.files, handles=handles)


def _check_index(directory: HFDirectory, handles: Mapping[str, Any]) -> None:
    """Every tensor is in the file the index names for it (from the headers)."""
    stored = {file: set(handle.keys()) for file, handle in handles.items()}
    wrong = sorted(name for name, file in directory.files.items() if name not in stored[file])
    if wrong:
        name = wrong[0]
        raise FormatError(
            f"the safetensors index maps {len(wrong)} tensor(s) to a file that does not hold "
            f"them: {name} is not in {directory.files[name]}",
            path=directory.path / INDEX_NAME,
            key="weight_map",
            tensor=name,
            hint="the index belongs to another save: write the model again (to_hf or "
            "save_pretrained) or download its model.safetensors.index.json again",
        )


@dataclass
class _Mismatch:
    """What does not fit between a model's tensors and a directory's (HF names)."""

    missing: list[str]
    unexpected: list[str]
    misshaped: list[str]
    resolved: dict[str, tuple[str, ...]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)


def read_hf_state(
    directory: HFDirectory,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    aliases: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    check_finite: bool = False,
) -> dict[str, torch.Tensor]:
    """Read the tensors a model needs from a checked directory, one at a time.

    Args:
        directory: From [`open_hf_directory()`][lego.arch.hf.directory.open_hf_directory].
        shapes: The model's state-dict keys to their shapes, each tensor once (see
            [`unique_tensors()`][lego.arch.hf.state.unique_tensors]).
        aliases: Keys that repeat another key's tensor (a tied head); a directory may omit
            them or store them equal to the tensor they repeat.
        dtype: Cast floating tensors to it; None keeps each stored dtype.
        device: Put each tensor there as it is read; None means the CPU.
        check_finite: Check every value as it is read (and after a cast): NaN or inf is an
            error naming the tensor. Off by default, since it reads every page of the files
            (loading is otherwise lazy).

    Returns:
        Key (of ``shapes``) to tensor: a view of the file where the tensor is used as
        stored, else a new contiguous tensor.

    Raises:
        CompatibilityError: Missing, unexpected or mis-shaped tensors (every one listed),
            model keys the family's weight table does not name, or a stored tied head that
            differs from the tensor it repeats.
        FormatError: A corrupt safetensors file; a tensor stored as integers or booleans
            (found from the headers, before anything is read); with ``check_finite``, a
            NaN or inf value.
    """
    where = torch.device("cpu") if device is None else device
    aliases = aliases or {}
    config = directory.config
    table = directory.arch.weights
    plans = table.plan(shapes, n_layers=config.n_layers, n_experts=config.n_experts or 0)
    with _open_reader(directory) as reader:
        mismatch = _compare(table, plans, shapes, aliases, reader)
        if mismatch:
            raise _mismatch_error(directory.path, mismatch)
        _check_floating(directory, reader, [n for p in plans for n in mismatch.resolved[p.lego]])
        state: dict[str, torch.Tensor] = {}
        for plan in plans:
            names = mismatch.resolved[plan.lego]
            stored = [reader.get(name) for name in names]
            if check_finite:
                for name, one in zip(names, stored, strict=True):
                    _check_finite(one, name, directory.path / directory.files[name])
            tensor = plan.build(stored, contiguous=False)  # a view where the plan allows one
            # The parameter *is* the stored tensor only when nothing changes it; anything
            # transformed, stacked, cast or moved becomes one new contiguous tensor.
            as_stored = (
                plan.is_view and where.type == "cpu" and (dtype is None or tensor.dtype == dtype)
            )
            if not as_stored:
                cast = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
                tensor = tensor.to(device=where, dtype=cast, memory_format=torch.contiguous_format)
                if check_finite and cast != stored[0].dtype:  # a narrower dtype may overflow
                    _check_finite(tensor, names[0], directory.path, cast=cast)
            state[plan.lego] = tensor
            del stored, tensor
        for alias, key in aliases.items():
            _check_alias(table, alias, key, state[key], reader, directory.path)
    return state


def _check_floating(directory: HFDirectory, reader: _Reader, names: Sequence[str]) -> None:
    """Model weights are floating point: an integer or boolean tensor is a damaged file."""
    for name in names:
        stored = reader.dtype(name)
        if not stored.startswith(("F", "BF")):  # F64, F32, F16, BF16, F8_*: the floats
            raise FormatError(
                f"tensor {name} is stored as {stored}, not as floating point: model weights "
                "are floats",
                path=directory.path / directory.files[name],
                tensor=name,
                hint="the file is damaged or holds a quantized model lego-arch does not read; "
                "write the weights again in float32, bfloat16 or float16",
            )


_FINITE_CHUNK = 1 << 22
"""Values checked at a time by ``_check_finite`` (bounded extra memory)."""


def _check_finite(
    tensor: torch.Tensor, name: str, path: Path, *, cast: torch.dtype | None = None
) -> None:
    """Raise a FormatError naming ``name`` when ``tensor`` holds NaN or inf."""
    flat = tensor.reshape(-1)  # contiguous here: a view, no copy
    for start in range(0, flat.numel(), _FINITE_CHUNK):
        chunk = flat[start : start + _FINITE_CHUNK]
        finite = torch.isfinite(chunk)
        if bool(finite.all()):
            continue
        index = start + int((~finite).nonzero()[0, 0])
        value = float(flat[index])
        if cast is not None:
            raise FormatError(
                f"tensor {name} does not fit {cast}: value {index} becomes {value}",
                path=path,
                tensor=name,
                hint="load it in float32 or bfloat16 (dtype=...), whose range is wider",
            )
        raise FormatError(
            f"tensor {name} holds non-finite values (the first, at flat index {index}, is {value})",
            path=path,
            tensor=name,
            hint="the checkpoint is damaged, or training had diverged when it was saved: "
            "use an earlier checkpoint",
        )


def load_hf_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a model directory's weights into an existing model, in place.

    The directory is checked as [`read_hf_state()`][lego.arch.hf.reading.read_hf_state]
    does, then each tensor is copied into the model's parameter of the same key, cast to the
    parameter's dtype and device. The model keeps its parameter objects, so an optimizer
    built on them stays valid (lego-train's resume).

    Args:
        model: The model to fill (a ``DecoderLM``).
        path: A model directory written by ``to_hf`` (or transformers).

    Raises:
        CompatibilityError: The directory's model differs from this one: every differing
            config field (but dropout, attention backend and initialization) and every
            missing, unexpected or mis-shaped tensor is listed; nothing is loaded.
        ConfigError: The directory is missing.
        FormatError: A file in it is corrupt.
    """
    ours = model_config(model)
    directory = open_hf_directory(path)
    mine, theirs = ours.to_dict(), directory.config.to_dict()
    fields = sorted(
        f"{key}: {theirs.get(key)!r} in the directory, {mine.get(key)!r} in the model"
        for key in set(mine) | set(theirs)
        if key not in _IGNORED_FIELDS and mine.get(key) != theirs.get(key)
    )
    tensors, aliases = unique_tensors(model)
    shapes = {key: tuple(tensor.shape) for key, tensor in tensors.items()}
    if fields:
        groups: dict[str, list[str]] = {"config differs": fields}
        with contextlib.suppress(CompatibilityError):  # a model the directory's family lacks
            groups.update(_tensor_groups(directory, shapes, aliases))
        raise CompatibilityError(
            "the model directory holds another model:\n" + listing(groups),
            path=directory.path,
            hint="load it with lego.arch.from_hf() instead, or build the model from its config",
        )
    state = read_hf_state(directory, shapes, aliases=aliases)
    with torch.no_grad():
        for key, tensor in tensors.items():
            tensor.copy_(state[key])


def _tensor_groups(
    directory: HFDirectory, shapes: Mapping[str, tuple[int, ...]], aliases: Mapping[str, str]
) -> dict[str, list[str]]:
    """The missing, unexpected and mis-shaped tensors of a directory for a model's shapes."""
    config = directory.config
    table = directory.arch.weights
    plans = table.plan(shapes, n_layers=config.n_layers, n_experts=config.n_experts or 0)
    with _open_reader(directory) as reader:
        found = _compare(table, plans, shapes, aliases, reader)
    return {
        "missing": found.missing,
        "unexpected": found.unexpected,
        "mis-shaped": found.misshaped,
    }


def _compare(
    table: WeightTable,
    plans: Sequence[TensorPlan],
    shapes: Mapping[str, tuple[int, ...]],
    aliases: Mapping[str, str],
    reader: _Reader,
) -> _Mismatch:
    """Check names and shapes from the headers; spell each plan's names as the file does."""
    available = reader.names
    used: set[str] = set()
    found = _Mismatch(missing=[], unexpected=[], misshaped=[], resolved={})
    for plan in plans:
        names = [table.resolve(name, available) for name in plan.hf]
        absent = [hf for hf, name in zip(plan.hf, names, strict=True) if name is None]
        if absent:
            found.missing.extend(absent)
            continue
        spelled = tuple(name for name in names if name is not None)
        used.update(spelled)
        found.resolved[plan.lego] = spelled
        stored = [reader.shape(name) for name in spelled]
        try:
            got = plan.expected_shape(stored)
        except RuntimeError:  # e.g. experts of different shapes cannot be stacked
            got = None
        if got != shapes[plan.lego]:
            shown = stored[0] if len(stored) == 1 else f"{len(stored)} x {stored[0]}"
            found.misshaped.append(
                f"{spelled[0]}{' ...' if len(spelled) > 1 else ''}: file has {shown}, "
                f"the model needs {shapes[plan.lego]} (as {plan.lego})"
            )
    for alias in aliases:  # a tied head may be stored (equal to what it repeats) or not
        for name in _alias_names(table, alias):
            spelled_alias = table.resolve(name, available)
            if spelled_alias is not None:
                used.add(spelled_alias)
    found.unexpected.extend(
        sorted(name for name in available if name not in used and not table.ignored(name))
    )
    return found


def _alias_names(table: WeightTable, alias: str) -> tuple[str, ...]:
    """The HF names of an aliased lego key (e.g. ``lm_head.weight``)."""
    (plan,) = table.plan([alias], n_layers=0)
    return plan.hf


def _check_alias(
    table: WeightTable,
    alias: str,
    key: str,
    tensor: torch.Tensor,
    reader: _Reader,
    path: Path,
) -> None:
    """A stored tied tensor must equal the one it repeats (else the tie is wrong)."""
    for name in _alias_names(table, alias):
        spelled = table.resolve(name, reader.names)
        if spelled is None:
            continue
        stored = reader.get(spelled)
        if not torch.equal(stored.to(device=tensor.device, dtype=tensor.dtype), tensor):
            raise CompatibilityError(
                f"config.json ties {alias} to {key} (tie_word_embeddings=true) but the "
                f"checkpoint's {spelled} differs from it",
                path=path,
                tensor=spelled,
                key="tie_word_embeddings",
                hint="set tie_word_embeddings to false in config.json if the head is separate",
            )


def _mismatch_error(directory: Path, mismatch: _Mismatch) -> CompatibilityError:
    parts: list[str] = []
    for title, items in (
        ("missing", mismatch.missing),
        ("unexpected", mismatch.unexpected),
        ("mis-shaped", mismatch.misshaped),
    ):
        if items:
            shown = items[:MAX_LISTED]
            left = len(items) - len(shown)
            more = f"\n    ... and {left} more" if left else ""
            parts.append(f"  {len(items)} {title}:\n" + "\n".join(f"    {i}" for i in shown) + more)
    first = (mismatch.missing or mismatch.unexpected or mismatch.misshaped)[0].split(":")[0]
    return CompatibilityError(
        "the checkpoint's tensors do not fit the model its config.json describes:\n"
        + "\n".join(parts),
        path=directory,
        tensor=first,
        hint="check that config.json and the .safetensors files come from the same model "
        "(and that every shard was downloaded)",
    )
