"""``from_hf``: a HuggingFace model directory as a ready [`DecoderLM`][lego.arch.decoder.DecoderLM].

Loading takes four explicit steps, none of which allocates a second copy of the model:

1. [`open_hf_directory()`][lego.arch.hf.directory.open_hf_directory] checks the directory
   and reads ``config.json`` into a [`DecoderConfig`][lego.arch.config.DecoderConfig];
2. the model is built inside ``with torch.device("meta")`` and without initialization
   (``DecoderLM.from_config(..., initialize=False)``, and the constructors' own initializers
   skipped, see below): every parameter is a shape without memory. Only the position modules
   are built on the target device, because their tables (RoPE's cos/sin, non-persistent
   buffers) are computed, not stored in the checkpoint;
3. [`read_hf_state()`][lego.arch.hf.reading.read_hf_state] checks every tensor name and
   shape against the file headers, then reads the tensors one at a time (views on the
   file's memory map where a tensor is used as stored);
4. ``model.load_state_dict(state, strict=True, assign=True)`` installs those tensors as the
   parameters (no copy), and ``tie_weights()`` ties the head again.

Initializers are skipped by [`SkipInit`][lego.arch.loading.SkipInit], a
``torch.overrides.TorchFunctionMode``: torch's documented way to change what its functions
do inside one ``with`` block and one thread (``with torch.device(...)`` is one too); it
replaces no attribute of torch. On the meta device the initializers would compute nothing
and still cost time (the README's benchmark notes give the figures).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lego.arch.components import build_positions
from lego.arch.config import DecoderConfig
from lego.arch.decoder import DecoderLM
from lego.arch.hf import open_hf_directory, parse_device, parse_load_dtype, read_hf_state
from lego.arch.hf.state import unique_tensors

__all__ = ["SkipInit", "empty_model", "from_hf"]


class SkipInit(TorchFunctionMode):
    """Inside the block, ``torch.nn.init``'s initializers and random fills change nothing.

    For building a model whose every value is about to be replaced (by a checkpoint's):
    ``nn.init.normal_`` / ``uniform_`` / ``constant_`` / ``kaiming_uniform_`` and the tensor
    methods ``normal_`` / ``uniform_`` return their tensor untouched; everything else runs.
    A ``TorchFunctionMode``: it applies to this thread inside the ``with`` block only.
    """

    SKIPPED: frozenset[Callable[..., Any]] = frozenset(
        {
            nn.init.normal_,
            nn.init.uniform_,
            nn.init.constant_,
            nn.init.kaiming_uniform_,
            torch.Tensor.normal_,
            torch.Tensor.uniform_,
        }
    )
    """The functions skipped."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Return the tensor untouched for the skipped functions; run every other one."""
        kwargs = kwargs or {}
        if func in self.SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def empty_model(config: DecoderConfig, *, device: torch.device) -> DecoderLM:
    """A model whose parameters are on the meta device, uninitialized, for a loader to fill.

    Args:
        config: The model's config.
        device: Where the position modules go: their computed tables (RoPE's cos/sin) are
            made there, since no checkpoint stores them.

    Returns:
        The model; every parameter (the learned position table included) must be replaced
        before use, e.g. with ``load_state_dict(state, assign=True)``.
    """
    with torch.device(device), SkipInit():
        positions = build_positions(config)
    with torch.device("meta"), SkipInit():
        return DecoderLM.from_config(config, positions=positions, initialize=False)


def from_hf(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    check_finite: bool = False,
) -> DecoderLM:
    """Load a HuggingFace model directory as a lego [`DecoderLM`][lego.arch.decoder.DecoderLM].

    Args:
        path: The directory with ``config.json`` and ``model.safetensors`` (or the shards
            and ``model.safetensors.index.json``).
        dtype: The parameters' dtype: a ``torch.dtype`` or a name (``"float32"``, ``"bf16"``,
            ``"bfloat16"``, ``"fp16"``, ...); None or ``"auto"`` keeps each tensor's stored
            dtype.
        device: Where the parameters go (default: CPU); each tensor is moved as it is read.
        check_finite: Check every weight for NaN and inf as it is read (a FormatError names
            the first such tensor). Off by default: it reads every page of the weights,
            which otherwise load lazily; turn it on for files you did not write (``legollm
            generate`` does).

    Returns:
        The model, in evaluation mode (as transformers' ``from_pretrained``); call
        ``.train()`` to fine-tune it. Parameters kept as stored are views on the file's
        copy-on-write map, read lazily: replace a model directory atomically (``to_hf``
        does) rather than rewriting its files in place while a model uses them.

    Raises:
        ConfigError: The directory or its ``config.json`` is missing, or ``dtype`` is an
            unknown name (with the closest valid names).
        FormatError: ``config.json`` or the index is not JSON, a safetensors file is
            corrupt, a weight is stored as integers or booleans (named; found from the
            headers, before anything is read), or, with ``check_finite``, holds NaN or inf.
        CompatibilityError: The config names an unsupported architecture or value; the
            directory holds only pickle checkpoints (refused, never opened); tensors are
            missing, unexpected or mis-shaped (all listed in one error).
    """
    target = parse_load_dtype(dtype)
    where = parse_device(device)
    directory = open_hf_directory(path)
    model = empty_model(directory.config, device=where)
    tensors, aliases = unique_tensors(model)
    shapes = {key: tuple(tensor.shape) for key, tensor in tensors.items()}
    state = read_hf_state(
        directory, shapes, aliases=aliases, dtype=target, device=where, check_finite=check_finite
    )
    state.update({alias: state[key] for alias, key in aliases.items()})
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()  # assign=True gave the head and the embedding one Parameter each
    return model.eval()
