"""Read and write HuggingFace model directories: ``from_hf``, ``to_hf``, ``read_hf_config``.

A HuggingFace model directory is ``config.json`` plus the weights as safetensors: one
``model.safetensors``, or shards ``model-00001-of-0000N.safetensors`` listed by
``model.safetensors.index.json``.

**Reading** ([`from_hf()`][lego.arch.hf.io.from_hf]) builds the model with its parameters
on the meta device (no memory), checks every tensor's name and shape from the safetensors
headers (``safetensors.safe_open``) before reading any data, and only then takes the
tensors one at a time from a copy-on-write memory map of each file
([`MappedSafetensors`][lego.arch.hf.mapped.MappedSafetensors]), transforms, casts and moves
each as needed and installs it as the parameter. A parameter stored as it is used (same
dtype, CPU) stays a view on the map: nothing is copied and pages are read when first used.
GPT-2's ``Conv1D`` weights, stored ``(in, out)``, become transposed views (``(out, in)``
with swapped strides, not contiguous; ``F.linear`` reads them as fast). Any other tensor
(a cast, a stack of experts, a move to another device) is read as a private copy with plain
file reads, so the file's pages are not held twice. Peak memory is at most one model plus
one tensor, never two models. Every missing, unexpected and mis-shaped tensor is reported in one
[`CompatibilityError`][lego.protocols.CompatibilityError].

Pickle checkpoints (``pytorch_model.bin``, ``*.pt``, ``*.pth``) are refused and never
opened: unpickling runs arbitrary code. Convert them once, where you trust them, with
transformers: ``AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst,
safe_serialization=True)``.

**Writing** ([`to_hf()`][lego.arch.hf.io.to_hf]) produces what transformers' own
``save_pretrained`` would: the Hub's ``config.json`` fields, HF tensor names, contiguous
tensors, ``{"format": "pt"}`` metadata, tied weights written once (no ``lm_head.weight``),
shards above ``max_shard_size``. A new directory appears complete or not at all (written
under a temporary name, then renamed); in an existing directory each file is replaced
atomically, shards before the index and ``config.json``, and weight files of an earlier
save that the new one does not use are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lego.arch.config import DecoderConfig, parse_dtype
from lego.arch.decoder import DecoderLM
from lego.arch.hf.families import HFArchitecture, architecture_for_config, architecture_for_hf
from lego.arch.hf.mapped import MappedSafetensors
from lego.arch.hf.mapping import TensorPlan
from lego.protocols import (
    CompatibilityError,
    ConfigError,
    FormatError,
    atomic_write_text,
    read_json,
)

__all__ = [
    "CONFIG_NAME",
    "INDEX_NAME",
    "SAFETENSORS_NAME",
    "PICKLE_SUFFIXES",
    "from_hf",
    "load_hf_weights",
    "parse_shard_size",
    "read_hf_config",
    "to_hf",
]

CONFIG_NAME = "config.json"
"""The configuration file of a model directory."""

SAFETENSORS_NAME = "model.safetensors"
"""The weights file of an unsharded model directory."""

INDEX_NAME = "model.safetensors.index.json"
"""The index of a sharded model directory (``weight_map``: tensor name -> shard file)."""

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Weight files that are pickles: refused, never opened."""

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
_MAX_LISTED = 20


# -- reading --------------------------------------------------------------------------------


def read_hf_config(path: str | os.PathLike[str]) -> DecoderConfig:
    """Read a HuggingFace ``config.json`` as a [`DecoderConfig`][lego.arch.config.DecoderConfig].

    Args:
        path: A model directory, or its ``config.json``.

    Returns:
        The lego config of the same model.

    Raises:
        ConfigError: The file is missing or unreadable.
        FormatError: It is not JSON.
        CompatibilityError: It describes an architecture lego-arch does not support (named,
            with the supported ones listed) or values lego does not reproduce (naming the key).
    """
    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_NAME
    data = _read_config(file)
    return _translate(architecture_for_hf(data, path=file), data, file)


def _read_config(file: Path) -> dict[str, Any]:
    data = read_json(file, what="HuggingFace config.json")
    if not isinstance(data, dict):
        raise CompatibilityError(
            "config.json is not a JSON object", path=file, hint="is it really a model config?"
        )
    return data


def _translate(arch: HFArchitecture, data: Mapping[str, Any], file: Path) -> DecoderConfig:
    try:
        return arch.config_from_hf(data)
    except (CompatibilityError, ConfigError) as exc:
        raise type(exc)(exc.message, path=file, **_context_without_path(exc)) from None


def _context_without_path(exc: CompatibilityError | ConfigError) -> dict[str, Any]:
    return {k: v for k, v in exc.context.items() if k != "path"}


def from_hf(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> DecoderLM:
    """Load a HuggingFace model directory as a lego [`DecoderLM`][lego.arch.decoder.DecoderLM].

    Args:
        path: The directory with ``config.json`` and ``model.safetensors`` (or the shards
            and ``model.safetensors.index.json``).
        dtype: The parameters' dtype: a ``torch.dtype`` or a name (``"float32"``, ``"bf16"``,
            ``"bfloat16"``, ``"fp16"``, ...); None or ``"auto"`` keeps each tensor's stored
            dtype.
        device: Where the parameters go (default: CPU); each tensor is moved as it is read.

    Returns:
        The model, in evaluation mode (as transformers' ``from_pretrained``); call
        ``.train()`` to fine-tune it.

    Raises:
        ConfigError: The directory or its ``config.json`` is missing, or ``dtype`` is an
            unknown name (with the closest valid names).
        FormatError: ``config.json`` or the index is not JSON, or a safetensors file is
            corrupt.
        CompatibilityError: The config names an unsupported architecture or value; the
            directory holds only pickle checkpoints (refused, never opened); tensors are
            missing, unexpected or mis-shaped (all listed in one error).
    """
    target = _parse_load_dtype(dtype)
    where = _parse_device(device)
    directory = Path(path)
    _check_directory(directory)
    config_file = directory / CONFIG_NAME
    if not config_file.is_file() and _pickle_files(directory):
        raise _pickle_error(directory)  # a bare pickle dump without a config
    data = _read_config(config_file)
    arch = architecture_for_hf(data, path=config_file)
    config = _translate(arch, data, config_file)
    files = _weight_files(directory)
    with _parameters_on_meta(), _skip_init():
        model = DecoderLM.from_config(config)
    slots = _parameter_slots(model)
    plans = arch.weights.plan(slots, n_layers=config.n_layers, n_experts=config.n_experts or 0)
    with contextlib.ExitStack() as stack:
        handles = {
            file: stack.enter_context(_open_safetensors(directory / file))
            for file in sorted(set(files.values()))
        }
        mapped = {file: MappedSafetensors(directory / file) for file in handles}
        reader = _Reader(files=files, handles=handles, mapped=mapped, directory=directory)
        resolved = _check_tensors(arch, plans, slots, reader, model)
        for plan in plans:
            names = resolved[plan.lego]
            # A view of the file only where the parameter *is* the stored tensor; anything
            # transformed, cast or moved is read as a private copy instead.
            as_stored = (
                plan.is_view
                and where.type == "cpu"
                and (target is None or reader.dtype(names[0]) == target)
            )
            tensor = plan.build(
                [reader.get(name, view=as_stored) for name in names], contiguous=not as_stored
            )
            if target is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype=target)
            _install(slots[plan.lego], tensor.to(device=where))
            del tensor
        if model.tied:
            _check_tied_head(arch, model, reader)
    model.to(where)  # the non-persistent buffers (RoPE tables)
    return model.eval()


def _parse_device(device: torch.device | str | None) -> torch.device:
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


def _open_safetensors(file: Path) -> Any:
    """``safe_open`` with a corrupt or foreign file reported as a FormatError."""
    try:
        return safe_open(str(file), framework="pt")
    except Exception as exc:  # safetensors raises its own SafetensorError (an Exception)
        raise FormatError(
            f"not a valid safetensors file: {exc}",
            path=file,
            hint="the file is truncated or corrupt; download or write it again",
        ) from None


def _parse_load_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":
        return None
    return parse_dtype(dtype, key="dtype")


def _check_directory(directory: Path) -> None:
    if directory.is_file():
        if directory.suffix.lower() in PICKLE_SUFFIXES:
            raise _pickle_error(directory)
        raise ConfigError(
            "from_hf expects a model directory, got a file",
            path=directory,
            hint="give the directory that holds config.json and model.safetensors",
        )
    if not directory.is_dir():
        raise ConfigError(
            "model directory not found",
            path=directory,
            hint="check the path; download a Hub model first (e.g. `hf download <repo> "
            "--local-dir <dir>`)",
        )


def _pickle_files(directory: Path) -> list[str]:
    return sorted(
        p.name for p in directory.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
    )


def _pickle_error(where: Path) -> CompatibilityError:
    names = _pickle_files(where) if where.is_dir() else [where.name]
    return CompatibilityError(
        f"only pickle checkpoints found ({', '.join(names)}): lego-arch never unpickles "
        "weights, because loading a pickle runs whatever code it contains",
        path=where,
        hint="convert them once, in an environment you trust, to safetensors: "
        "`transformers.AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, "
        "safe_serialization=True)`, then load dst",
    )


def _weight_files(directory: Path) -> dict[str, str]:
    """Map every tensor name to the safetensors file (relative to ``directory``) holding it."""
    index = directory / INDEX_NAME
    single = directory / SAFETENSORS_NAME
    if index.is_file():
        data = read_json(index, what="safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CompatibilityError(
                "the safetensors index has no 'weight_map' of tensor name -> file",
                path=index,
                key="weight_map",
                hint="write the model again (to_hf or save_pretrained)",
            )
        absent = sorted({f for f in weight_map.values() if not (directory / f).is_file()})
        if absent:
            raise CompatibilityError(
                f"{len(absent)} shard file(s) listed in the index are missing: "
                + ", ".join(absent),
                path=directory,
                hint="download or copy every shard listed in model.safetensors.index.json",
            )
        return dict(weight_map)
    if single.is_file():
        with _open_safetensors(single) as handle:
            return dict.fromkeys(handle.keys(), SAFETENSORS_NAME)
    if _pickle_files(directory):
        raise _pickle_error(directory)
    raise ConfigError(
        f"no weights in the model directory: neither {SAFETENSORS_NAME} nor {INDEX_NAME}",
        path=directory,
        hint="download the model's .safetensors files too",
    )


@dataclass
class _Reader:
    """Tensors by name from the open safetensors files, one at a time.

    A tensor is a zero-copy view on the file's copy-on-write map where its data is aligned
    (always, for files written by safetensors), else a copy read through ``safe_open``.
    """

    files: dict[str, str]
    handles: dict[str, Any]
    mapped: dict[str, MappedSafetensors]
    directory: Path

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handles[self.files[name]].get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        return self.mapped[self.files[name]].dtype(name)

    def get(self, name: str, *, view: bool) -> torch.Tensor:
        """The tensor: a view on the map if ``view`` (and aligned), else a private copy."""
        mapped = self.mapped[self.files[name]]
        shared = mapped.view(name) if view else None
        return shared if shared is not None else mapped.read(name)


@dataclass
class _Slot:
    """Every (module, attribute) under which one parameter or buffer lives (ties share one)."""

    owners: list[tuple[nn.Module, str]]
    shape: tuple[int, ...]
    is_parameter: bool
    requires_grad: bool


def _parameter_slots(model: nn.Module) -> dict[str, _Slot]:
    """State-dict key (first name of each tensor) -> where it lives, in state-dict order."""
    by_id: dict[int, _Slot] = {}
    slots: dict[str, _Slot] = {}
    modules = dict(model.named_modules(remove_duplicate=False))
    for key, tensor in model.state_dict(keep_vars=True).items():
        module_name, _, attr = key.rpartition(".")
        owner = modules[module_name]
        slot = by_id.get(id(tensor))
        if slot is None:
            slot = _Slot(
                owners=[],
                shape=tuple(tensor.shape),
                is_parameter=isinstance(tensor, nn.Parameter),
                requires_grad=tensor.requires_grad,
            )
            by_id[id(tensor)] = slot
            slots[key] = slot
        slot.owners.append((owner, attr))
    return slots


def _install(slot: _Slot, tensor: torch.Tensor) -> None:
    value: torch.Tensor = (
        nn.Parameter(tensor, requires_grad=slot.requires_grad) if slot.is_parameter else tensor
    )
    for owner, attr in slot.owners:
        if slot.is_parameter:
            owner._parameters[attr] = value  # type: ignore[assignment]
        else:
            owner._buffers[attr] = value


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create every parameter on the meta device; buffers (RoPE tables) stay real.

    Works by wrapping ``nn.Module.register_parameter`` for the duration (as accelerate's
    ``init_empty_weights`` does); not thread-safe with other model construction.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
)


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s initializers no-ops: every value is about to be replaced.

    Initializing meta parameters computes nothing, but the first such call in a process
    costs about a second (torch imports its reference implementations); transformers'
    ``from_pretrained`` skips initialization the same way. Not thread-safe.
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}

    def skip(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return tensor

    for name in _INIT_FUNCTIONS:
        setattr(nn.init, name, skip)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _check_tensors(
    arch: HFArchitecture,
    plans: Sequence[TensorPlan],
    slots: Mapping[str, _Slot],
    reader: _Reader,
    model: DecoderLM,
) -> dict[str, tuple[str, ...]]:
    """Check names and shapes from the headers; return each plan's names as the file spells them.

    Raises:
        CompatibilityError: Listing every missing, unexpected and mis-shaped tensor.
    """
    available = reader.names
    used: set[str] = set()
    missing: list[str] = []
    misshaped: list[str] = []
    resolved: dict[str, tuple[str, ...]] = {}
    for plan in plans:
        names = [arch.weights.resolve(name, available) for name in plan.hf]
        absent = [hf for hf, name in zip(plan.hf, names, strict=True) if name is None]
        if absent:
            missing.extend(absent)
            continue
        found = tuple(name for name in names if name is not None)
        used.update(found)
        resolved[plan.lego] = found
        shapes = [reader.shape(name) for name in found]
        try:
            got = plan.expected_shape(shapes)
        except RuntimeError:  # e.g. experts of different shapes cannot be stacked
            got = None
        expected = slots[plan.lego].shape
        if got != expected:
            shown = shapes[0] if len(shapes) == 1 else f"{len(shapes)} x {shapes[0]}"
            misshaped.append(
                f"{found[0]}{' ...' if len(found) > 1 else ''}: file has {shown}, "
                f"the model needs {expected} (as {plan.lego})"
            )
    if model.tied:
        head = arch.weights.resolve("lm_head.weight", available)
        if head is not None:
            used.add(head)
    unexpected = sorted(
        name for name in available if name not in used and not arch.weights.ignored(name)
    )
    if missing or unexpected or misshaped:
        raise _mismatch_error(reader.directory, missing, unexpected, misshaped)
    return resolved


def _mismatch_error(
    directory: Path, missing: list[str], unexpected: list[str], misshaped: list[str]
) -> CompatibilityError:
    parts: list[str] = []
    for title, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", misshaped),
    ):
        if items:
            shown = items[:_MAX_LISTED]
            more = (
                f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
            )
            parts.append(f"  {len(items)} {title}:\n" + "\n".join(f"    {i}" for i in shown) + more)
    first = (missing or unexpected or misshaped)[0].split(":")[0]
    return CompatibilityError(
        "the checkpoint's tensors do not fit the model its config.json describes:\n"
        + "\n".join(parts),
        path=directory,
        tensor=first,
        hint="check that config.json and the .safetensors files come from the same model "
        "(and that every shard was downloaded)",
    )


def _check_tied_head(arch: HFArchitecture, model: DecoderLM, reader: _Reader) -> None:
    head = arch.weights.resolve("lm_head.weight", reader.names)
    if head is None:
        return
    stored = reader.get(head, view=False)
    embedding = model.token_embedding.weight.detach()
    if not torch.equal(stored.to(device=embedding.device, dtype=embedding.dtype), embedding):
        raise CompatibilityError(
            "config.json ties the output head to the token embedding "
            "(tie_word_embeddings=true) but the checkpoint's lm_head.weight differs from it",
            path=reader.directory,
            tensor=head,
            key="tie_word_embeddings",
            hint="set tie_word_embeddings to false in config.json if the head is separate",
        )


# -- writing --------------------------------------------------------------------------------


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
    model: DecoderLM,
    path: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | str | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a model as a HuggingFace directory that transformers and ``from_hf`` load.

    Args:
        model: A lego model of a family with an HF architecture (GPT-2, Llama, Qwen 3,
            Qwen 3 MoE).
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
            (naming the field) or has tensors the family's table does not name; a
            ``state_dict`` lacks some of the model's tensors, has others, or has other
            shapes (all listed).
        ConfigError: A bad ``dtype`` or ``max_shard_size``, or an unwritable path.
    """
    limit = parse_shard_size(max_shard_size)
    target = parse_dtype(dtype, key="dtype")
    config = model.config
    arch = architecture_for_config(config)
    hf_config = arch.config_to_hf(config)
    state = _unique_state(model)
    if state_dict is not None:
        state = _replace_state(model, state, state_dict)
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
        work = directory.parent / f".{directory.name}.{secrets.token_hex(4)}.tmp"
        work.mkdir()
    else:
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


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict keys of distinct tensors (a tied head is its embedding, listed once)."""
    seen: set[int] = set()
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            state[key] = tensor.detach()
    return state


def _replace_state(
    model: nn.Module, own: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The tensors of ``given`` under ``own``'s keys, checked against the model's state."""
    allowed = set(model.state_dict().keys())  # tied keys too: either may be given
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
            + _listing({"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped}),
            hint="pass the model's own state_dict() keys (e.g. a consolidated FSDP state)",
        )
    return {key: given[key].detach() for key in own}


def _listing(groups: Mapping[str, Sequence[str]]) -> str:
    """Lines ``missing (N): a, b, ...`` for the non-empty groups, at most 20 names each."""
    lines = []
    for label, names in groups.items():
        if names:
            shown = ", ".join(names[:_MAX_LISTED])
            more = f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
            lines.append(f"  {label} ({len(names)}): {shown}{more}")
    return "\n".join(lines)


def load_hf_weights(model: DecoderLM, path: str | os.PathLike[str]) -> None:
    """Load a model directory's weights into an existing model, in place.

    The directory is read with [`from_hf()`][lego.arch.hf.io.from_hf] (lazily, with every
    check it makes), then each tensor is copied into the model's parameter of the same
    name, cast to the parameter's dtype and device. The model keeps its identity, so an
    optimizer built on its parameters stays valid (lego-train's resume).

    Args:
        model: The model to fill.
        path: A model directory written by ``to_hf`` (or transformers).

    Raises:
        CompatibilityError: The directory's model differs from this one: every differing
            config field and every missing, unexpected or mis-shaped tensor is listed.
        ConfigError: The directory is missing.
        FormatError: A file in it is corrupt.
    """
    loaded = from_hf(path)
    ours, theirs = model.config.to_dict(), loaded.config.to_dict()
    ignored = {"dropout", "attention_backend", "initializer_range", "scale_residual_init"}
    fields = sorted(
        f"{key}: {theirs.get(key)!r} in the directory, {ours.get(key)!r} in the model"
        for key in set(ours) | set(theirs)
        if key not in ignored and ours.get(key) != theirs.get(key)
    )
    own, stored = model.state_dict(), loaded.state_dict()
    missing = sorted(set(own) - set(stored))
    unexpected = sorted(set(stored) - set(own))
    misshaped = sorted(
        f"{key}: {tuple(stored[key].shape)} (the model has {tuple(own[key].shape)})"
        for key in set(own) & set(stored)
        if stored[key].shape != own[key].shape
    )
    if fields or missing or unexpected or misshaped:
        raise CompatibilityError(
            "the model directory holds another model:\n"
            + _listing(
                {
                    "config differs": fields,
                    "missing": missing,
                    "unexpected": unexpected,
                    "mis-shaped": misshaped,
                }
            ),
            path=Path(path),
            hint="load it with lego.arch.from_hf() instead, or build the model from its config",
        )
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(stored[key])


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
        temp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            save_file(tensors, str(temp), metadata={"format": "pt"})
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
