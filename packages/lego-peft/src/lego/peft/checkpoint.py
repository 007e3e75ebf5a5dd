"""Adapter checkpoints: the adapter in PEFT's format plus a reference to its base model.

A checkpoint of an adapted model needs only what trains: the adapter (megabytes), not the
base (gigabytes). [`save_pretrained()`][lego.peft.checkpoint.save_pretrained] writes a model
directory that holds

```
adapter_config.json        PEFT's config (loads in peft.PeftModel.from_pretrained)
adapter_model.safetensors  the adapter's tensors under PEFT's keys
base_model.json            the base model: its path (when known) and the SHA-256 of its weights
```

and [`load_weights()`][lego.peft.checkpoint.load_weights] reads it back into the same adapted
model, bit-exactly, after checking that the base model in memory is the one the adapter was
trained on. [`LoraModel`][lego.peft.model.LoraModel] exposes both as ``save_pretrained`` /
``load_weights``, the [`PretrainedModel`][lego.protocols.PretrainedModel] protocol, so
lego-train's ``Trainer`` checkpoints an adapted model this way without knowing lego-peft
(its optimizer already holds only the trainable parameters, the adapter's).

The SHA-256 is taken over the base model's tensors in memory (name, dtype, shape and bytes
of every tensor of the base, in name order; the adapter and the trained copies left out), so
it identifies the weights however they were loaded; an NF4 base is hashed in its packed form.

    >>> import tempfile
    >>> import torch
    >>> from torch import nn
    >>> from lego.peft import LoraConfig, apply_lora
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> adapted = apply_lora(nn.Sequential(nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = adapted.save_pretrained(folder)
    ...     adapted.load_weights(folder)  # checks the base's SHA-256, then loads the adapter
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lego.peft.peft_format import ADAPTER_WEIGHTS_NAME, read_adapter_weights
from lego.protocols import (
    CompatibilityError,
    FormatError,
    atomic_write_text,
    check_envelope,
    read_json,
)

if TYPE_CHECKING:
    from lego.peft.model import LoraModel

__all__ = [
    "BASE_REFERENCE_NAME",
    "BASE_REFERENCE_FORMAT",
    "base_weights_sha256",
    "save_pretrained",
    "load_weights",
]

BASE_REFERENCE_NAME = "base_model.json"
"""The file naming the base model in an adapter checkpoint."""

BASE_REFERENCE_FORMAT = "lego-peft-base"
"""The ``format`` field of ``base_model.json`` (version 1)."""

_CHUNK = 1 << 26  # hash 64 MiB at a time


def _tensor_bytes(tensor: Tensor) -> Iterator[memoryview]:
    """The raw bytes of a tensor, without copying a contiguous CPU tensor."""
    flat = tensor.detach().to("cpu").contiguous()
    size = flat.numel() * flat.element_size()
    if size == 0:
        return
    buffer = (ctypes.c_ubyte * size).from_address(flat.data_ptr())
    view = memoryview(buffer).cast("B")
    for start in range(0, size, _CHUNK):
        yield view[start : start + _CHUNK]


def base_weights_sha256(model: LoraModel) -> str:
    """The SHA-256 of the base model's weights, as they are without the adapter.

    Args:
        model: The adapted model (merged or not: a merged adapter is left out too).

    Returns:
        64 hex digits over the name, dtype, shape and bytes of every tensor of the base
        model (adapter tensors and trainable copies excluded), in name order.
    """
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    digest = hashlib.sha256()
    with model.disabled():  # unmerges a merged adapter, and merges it again afterwards
        state = model.model.state_dict(keep_vars=True)
        for name in sorted(state):
            tensor = state[name]
            if id(tensor) in trainable or _is_adapter_key(name):
                continue
            header = f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0"
            digest.update(header.encode())
            for piece in _tensor_bytes(tensor):
                digest.update(piece)
    return digest.hexdigest()


def _is_adapter_key(name: str) -> bool:
    parts = name.split(".")
    adapter_parts = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"}
    return (
        bool(adapter_parts & set(parts))
        or "lora_magnitude_vector" in parts
        or ("modules_to_save" in parts)
    )


@contextmanager
def _swapped(model: LoraModel, state_dict: Mapping[str, Tensor] | None) -> Iterator[None]:
    """Let the trainable parameters hold ``state_dict``'s values (e.g. fp32 master weights)."""
    if state_dict is None:
        yield
        return
    saved: list[tuple[torch.nn.Parameter, Tensor]] = []
    try:
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and name in state_dict:
                saved.append((parameter, parameter.data))
                parameter.data = state_dict[name].detach().to(parameter.device)
        yield
    finally:
        for parameter, data in saved:
            parameter.data = data


def save_pretrained(
    model: LoraModel,
    path: str | os.PathLike[str],
    *,
    state_dict: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write the adapter (PEFT's format) and ``base_model.json`` into ``path``.

    Args:
        model: The adapted model.
        path: The directory (created with its parents when missing).
        state_dict: Values to write instead of the trainable parameters' own, under the
            adapted model's ``state_dict()`` names (lego-train passes fp32 master weights);
            other entries are ignored: the base is referenced, not written.

    Returns:
        The directory.

    Raises:
        CompatibilityError: An adapted module has no transformers name.
        ConfigError: The directory cannot be written.
    """
    directory = Path(path)
    with _swapped(model, state_dict):
        model.save_adapter(directory, base_model_name_or_path=model.base_model_name_or_path)
    reference = {
        "format": BASE_REFERENCE_FORMAT,
        "version": 1,
        "base_model_name_or_path": model.base_model_name_or_path,
        "sha256": base_weights_sha256(model),
    }
    atomic_write_text(
        directory / BASE_REFERENCE_NAME,
        json.dumps(reference, indent=2) + "\n",
        what="base model reference",
    )
    return directory


def read_base_reference(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the ``base_model.json`` of an adapter checkpoint.

    Args:
        path: The checkpoint's model directory.

    Returns:
        ``{"base_model_name_or_path": str | None, "sha256": str}``.

    Raises:
        ConfigError: The file is missing or unreadable.
        FormatError: It is not a lego-peft base reference.
    """
    file = Path(path) / BASE_REFERENCE_NAME
    data = read_json(file, what="base model reference")
    check_envelope(
        data,
        format=BASE_REFERENCE_FORMAT,
        version=1,
        path=file,
        what="base model reference",
        reader="lego-peft",
    )
    digest = data.get("sha256")
    name = data.get("base_model_name_or_path")
    if (
        not isinstance(digest, str)
        or len(digest) != 64
        or not (name is None or isinstance(name, str))
    ):
        raise FormatError(
            "base_model.json needs 'sha256' (64 hex digits) and 'base_model_name_or_path' "
            "(a string or null)",
            path=file,
            hint="save the checkpoint again",
        )
    return {"base_model_name_or_path": name, "sha256": digest}


def load_weights(model: LoraModel, path: str | os.PathLike[str]) -> None:
    """Load an adapter checkpoint written by ``save_pretrained`` into ``model``, in place.

    The parameters are copied into (an optimizer built on them stays valid), bit-exactly.

    Args:
        model: The adapted model, built on the same base model with the same settings.
        path: The directory.

    Raises:
        ConfigError: A file is missing.
        FormatError: A file is damaged.
        CompatibilityError: The base model in memory is not the one the adapter was trained
            on (another SHA-256), or the adapter's tensors do not fit (every one named).
    """
    directory = Path(path)
    reference = read_base_reference(directory)
    current = base_weights_sha256(model)
    if current != reference["sha256"]:
        named = reference["base_model_name_or_path"]
        raise CompatibilityError(
            f"the adapter was trained on another base model (weights SHA-256 "
            f"{reference['sha256'][:12]}..., this base {current[:12]}...)",
            path=directory / BASE_REFERENCE_NAME,
            hint="load the base model "
            + (f"from {named} " if named else "the adapter was trained on ")
            + "before resuming",
        )
    tensors = read_adapter_weights(directory, hint="resume from another checkpoint")
    try:
        model.load_adapter_state_dict(tensors)
    except CompatibilityError as err:
        raise CompatibilityError(
            err.message, path=directory / ADAPTER_WEIGHTS_NAME, tensor=err.tensor, hint=err.hint
        ) from None
