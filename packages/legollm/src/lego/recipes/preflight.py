"""Checks that run before the long work: a bad setting fails in seconds, not after training.

DESIGN.md §10: "validate the whole configuration, every later stage included, before the
first long step". The recipes call these before they train a tokenizer, prepare data or
take a training step:

- [`early_model_config()`][lego.recipes.preflight.early_model_config]: the model's
  ``DecoderConfig`` from the preset and overrides, with the vocabulary the data will have
  (a bad override fails before the data is prepared);
- [`check_fits_context()`][lego.recipes.preflight.check_fits_context]: a prompt plus its
  ``max_new_tokens`` fits the model's context (before the tokenizer exists, with a
  one-token prompt: the least any prompt takes);
- [`check_fits_memory()`][lego.recipes.preflight.check_fits_memory]: the weights, gradients
  and optimizer state fit the device at all (``vocab_size=10**12`` is refused with the
  memory it would need, from lego-arch's
  [`estimate_size()`][lego.arch.size.estimate_size]);
- [`check_data_tokenizer()`][lego.recipes.preflight.check_data_tokenizer]: the tokenizer
  bundled into checkpoints is the one the data was prepared with.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import lego.arch
import lego.data
from lego.arch.size import format_bytes, format_count
from lego.protocols import CompatibilityError, ConfigError, Tokenizer
from lego.tokenize import tokenizer_fingerprint

if TYPE_CHECKING:
    from lego.data.meta import TokenMeta
    from lego.recipes.pretrain import ModelSpec, PretrainConfig

__all__ = [
    "model_config",
    "early_model_config",
    "check_fits_context",
    "check_fits_memory",
    "check_data_tokenizer",
    "device_memory",
    "allocation_error",
]

_ENDOFTEXT = "<|endoftext|>"


def model_config(spec: ModelSpec, *, vocab_size: int | None) -> lego.arch.DecoderConfig:
    """The ``DecoderConfig`` of a ``model:`` section (nothing is allocated).

    Args:
        spec: The model section.
        vocab_size: The tokenizer's vocabulary size (the default ``vocab_size``); None
            leaves the preset's.

    Returns:
        The validated config.

    Raises:
        ConfigError: An unknown preset or a bad override.
        CompatibilityError: An explicit vocab size smaller than the tokenizer's.
    """
    if spec.config is not None:
        config = lego.arch.DecoderConfig.from_dict(dict(spec.config))
        if vocab_size is not None and "vocab_size" not in spec.config:
            config = config.replace(vocab_size=vocab_size)
    else:
        overrides = dict(spec.overrides)
        if vocab_size is not None:
            overrides.setdefault("vocab_size", vocab_size)
        config = lego.arch.resolve_config(spec.preset, **overrides)
    if vocab_size is not None and config.vocab_size < vocab_size:
        raise CompatibilityError(
            f"the model's vocab_size {config.vocab_size} is smaller than the tokenizer's "
            f"{vocab_size}",
            key="model.overrides.vocab_size",
            hint=f"use vocab_size >= {vocab_size}, or leave it out to take the tokenizer's",
        )
    return config


def early_model_config(config: PretrainConfig) -> lego.arch.DecoderConfig:
    """The model config as it will be, before any data is prepared, and the checks on it.

    The vocabulary is the prepared data's (``data.path``: its ``meta.json``) or the size
    asked of the tokenizer (``data.corpus``). Checks ``data.context_length`` and
    ``sample.max_new_tokens`` against the model's context.

    Args:
        config: The recipe config.

    Returns:
        The model's config.

    Raises:
        ConfigError: A bad model section, a context or ``max_new_tokens`` longer than the
            model's context.
    """
    data = config.data
    vocab = int(lego.data.read_meta(data.path).vocab_size) if data.path else data.vocab_size
    model = model_config(config.model, vocab_size=vocab)
    context = int(model.context_length)
    if data.context_length > context:
        raise ConfigError(
            f"data.context_length {data.context_length} exceeds the model's {context}",
            key="data.context_length",
            hint=f"use data.context_length <= {context}",
        )
    if config.sample.every >= 0:
        check_fits_context(1, config.sample.max_new_tokens, context, key="sample.max_new_tokens")
    return model


def check_fits_context(prompt_tokens: int, max_new_tokens: int, context: int, *, key: str) -> None:
    """Check, before training, that a prompt and its continuation fit the model's context.

    Args:
        prompt_tokens: The prompt's length in tokens.
        max_new_tokens: Tokens to generate after it.
        context: The model's context length.
        key: The setting to name in the error (``sample.max_new_tokens``).

    Raises:
        ConfigError: ``prompt_tokens + max_new_tokens > context``.

    Example:
        >>> check_fits_context(4, 60, 64, key="sample.max_new_tokens")
    """
    if prompt_tokens + max_new_tokens > context:
        raise ConfigError(
            f"a {prompt_tokens}-token prompt plus {key.rsplit('.', 1)[-1]}={max_new_tokens} "
            f"exceeds the model's context of {context} tokens",
            key=key,
            hint=f"use {key} <= {max(context - prompt_tokens, 0)}, a shorter prompt, or a "
            "longer context_length",
        )


def device_memory(device: torch.device) -> int | None:
    """The memory of a training device in bytes, or None when unknown.

    Args:
        device: ``cpu`` (the machine's memory, or its cgroup's limit when lower) or
            ``cuda:N`` (the GPU's).

    Returns:
        Bytes, or None (another device type, or nothing readable).

    Example:
        >>> (device_memory(torch.device("cpu")) or 1) > 0
        True
    """
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    try:
        total: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = ""
    if limit.isdigit():
        total = min(total, int(limit)) if total else int(limit)
    return total


def check_fits_memory(
    config: lego.arch.DecoderConfig,
    *,
    device: torch.device,
    batch_size: int,
    context: int,
    precision: str,
    shards: int = 1,
) -> None:
    """Refuse a model whose weights, gradients and optimizer state cannot fit the device.

    Only what training surely needs is compared (weights, gradients and the AdamW state,
    split over ``shards`` processes with FSDP); activations and allocator overheads come on
    top, so a model that passes may still run out of memory, with the Trainer's advice.

    Args:
        config: The model's config (nothing is allocated: the estimate is built on the meta
            device).
        device: The training device.
        batch_size: Rows per micro-batch, for the message.
        context: Tokens per row, for the message.
        precision: The training precision (``bf16-true`` keeps bf16 weights).
        shards: Processes the state is sharded over (FSDP's world size), else 1.

    Raises:
        ConfigError: The state does not fit, with the memory it would need.
    """
    available = device_memory(device)
    if available is None:
        return
    row = "bf16" if precision == "bf16-true" else "fp32"
    estimate = lego.arch.estimate_size(
        config, batch_size=batch_size, seq_len=context, dtypes=(row,)
    )
    memory = estimate.for_dtype(row)
    state = memory.weights + (memory.gradients or 0) + (memory.optimizer or 0)
    if state // max(shards, 1) <= available:
        return
    parts = (
        f"{format_bytes(memory.weights)} weights, {format_bytes(memory.gradients)} gradients, "
        f"{format_bytes(memory.optimizer)} AdamW state"
    )
    raise ConfigError(
        f"the model has {format_count(estimate.parameters.total)} parameters: training it "
        f"needs about {format_bytes(state // max(shards, 1))} ({parts}"
        f"{'' if shards <= 1 else f', over {shards} processes'}; activations of "
        f"{format_bytes(memory.activations)} at batch {batch_size} x {context} come on top), "
        f"more than the {format_bytes(available)} of memory of the {device.type} device",
        key="model",
        hint="use a smaller model (vocab_size, d_model, n_layers), or a device with more memory",
    )


def allocation_error(
    exc: BaseException, config: lego.arch.DecoderConfig, *, device: torch.device
) -> ConfigError | None:
    """The clear error for a model whose allocation failed, or None for other errors.

    Args:
        exc: What building the model raised.
        config: The model's config.
        device: Where it was built.

    Returns:
        A ConfigError naming the memory the weights need, or None.
    """
    text = str(exc)
    if not isinstance(exc, MemoryError) and "alloc" not in text and "out of memory" not in text:
        return None
    estimate = lego.arch.estimate_size(config, dtypes=("fp32",))
    weights = estimate.for_dtype("fp32").weights
    return ConfigError(
        f"cannot allocate the model: its {format_count(estimate.parameters.total)} parameters "
        f"need {format_bytes(weights)} in fp32 on the {device.type} device "
        f"(available: {format_bytes(device_memory(device))})",
        key="model",
        hint="use a smaller model (vocab_size, d_model, n_layers)",
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_data_tokenizer(
    meta: TokenMeta, tokenizer: Tokenizer, *, file: Path | None, key: str = "data.tokenizer"
) -> None:
    """Refuse a tokenizer other than the one the data was prepared with, before training.

    Compares the vocabulary size, the end-of-text id and the identity digest that
    ``meta.json`` records (the tokenizer file's SHA-256, or lego-tokenize's
    [`tokenizer_fingerprint()`][lego.tokenize.tokenizer_fingerprint]: either matches).

    Args:
        meta: The data's ``meta.json``.
        tokenizer: The tokenizer the run would bundle into its checkpoints.
        file: The tokenizer's file, when it came from one.
        key: The setting that named the tokenizer, for the message.

    Raises:
        CompatibilityError: The tokenizer differs from the data's (naming both).
    """
    known = meta.tokenizer.sha256
    candidates: list[str] = []
    fingerprint = tokenizer_fingerprint(tokenizer)
    if file is not None:
        candidates.append(_file_sha256(file))
    if fingerprint is not None:
        candidates.append(fingerprint)
    if known is not None and known in candidates:
        digest: str | None = known
    elif meta.tokenizer.kind == "lego" and file is not None:
        digest = candidates[0]
    else:
        digest = fingerprint
    eot = tokenizer.special_tokens.get(_ENDOFTEXT, meta.eot_id)
    try:
        meta.check_tokenizer(int(tokenizer.vocab_size), int(eot), digest)
    except CompatibilityError as exc:
        raise CompatibilityError(
            f"{key} is not the tokenizer the data was prepared with: {exc.message}",
            path=file,
            key=key,
            hint="give the tokenizer the data was prepared with (its checkpoints would "
            "decode to garbage otherwise), or prepare the data again with this one",
        ) from None
