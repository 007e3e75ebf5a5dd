"""Model size estimation: parameters by part, and the memory to run or train a model.

[`estimate_size()`][lego.arch.size.estimate_size] takes a preset name, a
[`DecoderConfig`][lego.arch.config.DecoderConfig] or a built
[`DecoderLM`][lego.arch.decoder.DecoderLM] (a config is built on the meta device: nothing is
allocated, an 8B model costs milliseconds) and returns a
[`SizeEstimate`][lego.arch.size.SizeEstimate]; [`size_tables()`][lego.arch.size.size_tables]
renders it as two rich tables (``lego-arch info`` prints them).

Parameters are counted from the model's own tensors, so custom components count too:
``embeddings`` (token and learned position tables), ``attention`` (q/k/v/out projections and
QK-norm), ``ffn`` (the dense feed-forward, or the router plus every expert), ``norms`` (the
block norms and the final norm), ``head`` (0 when tied: a tied head is the embedding, counted
once). For a mixture of experts ``active`` counts what one token uses: everything but the
``(n_experts - top_k) / n_experts`` share of the experts.

Memory conventions, per dtype row (bytes; ``N`` trainable parameters):

- **weights**: ``fp32`` 4 and ``bf16`` 2 bytes per parameter. ``int8``: every matrix (a
  parameter with 2 or more dimensions, embeddings and head included) takes 1 byte per
  weight plus one fp32 absmax scale per row (vector-wise quantization, as bitsandbytes'
  LLM.int8); ``nf4``: 0.5 byte per weight plus one fp32 absmax scale per block of 64 weights
  (QLoRA without double quantization: 0.5625 byte per weight). Vectors (norm scales,
  biases) stay in bf16 in both.
- **gradients**: one per trainable parameter in the training dtype (4 or 2 bytes). None
  for ``int8`` / ``nf4``: quantized weights are not trained directly (train adapters).
- **optimizer** (AdamW): two fp32 moments per parameter (8 bytes); training in ``bf16``
  also keeps an fp32 master copy of the weights (4 more bytes), the usual mixed-precision
  recipe: 2 + 2 + 12 = 16 bytes per parameter in total. None for ``int8`` / ``nf4``.
- **activations** saved for the backward pass at ``batch_size x seq_len``, in the compute
  dtype (``fp32``: 4 bytes; ``bf16``, ``int8``, ``nf4``: 2, weights are dequantized to
  bf16). Per block and token, following the accounting of Korthikanti et al. (2022,
  "Reducing Activation Recomputation in Large Transformer Models"), generalized to GQA,
  QK-norm, gated feed-forwards and experts (``e`` bytes per element, ``d`` width, ``q`` and
  ``kv`` the query and key/value widths, ``f`` the feed-forward width)::

      attention  e * (2d + 2q + 2kv)   norm input, q/k/v input, Q and K, V, out-proj input
                 + e * (q + kv)        with QK-norm: the normalized Q and K
                 + e * n_heads * T     math backend: the softmax probabilities
                                       (+ 1 + e per score with attention dropout)
      ffn        e * d                 norm input
                 + e * (d + 2f)        GELU MLP: input, activation input and output
                 + e * (d + 4f)        gated MLP: input, gate, act(gate), up, product
                 + MoE: e * d + 4 * n_experts + top_k * e * (2d + 4 f_expert)
      dropout    1 byte per element of each mask (residuals, attention) when dropout > 0

  For GPT-2 shapes with the math backend and dropout this is their ``34 s b h + 5 a s^2 b``
  exactly. The ``sdpa`` backend is assumed to run a fused kernel that keeps no ``T x T``
  scores. Outside the blocks: the final-norm input and the logits (``e`` bytes) plus the
  fp32 log-probabilities the cross-entropy keeps, ``B * T * vocab * (e + 4)``. With
  activation checkpointing each block keeps only its input (``e * d`` per token) and one
  block's full activations are alive again while it is recomputed.
- **kv_cache** (inference): keys and values of every layer for ``batch_size x seq_len``
  positions, ``2 * n_layers * kv * e`` bytes per token.

These are estimates of the tensors the model itself needs: allocator fragmentation, the
CUDA context, temporary buffers and communication buffers come on top.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch

from lego.arch.config import DecoderConfig
from lego.arch.decoder import DecoderLM
from lego.arch.loading import SkipInit
from lego.arch.registry import resolve_config
from lego.protocols import ConfigError, did_you_mean

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "MEMORY_DTYPES",
    "MemoryEstimate",
    "ParameterCounts",
    "SizeEstimate",
    "count_parameters_by_part",
    "estimate_size",
    "format_bytes",
    "format_count",
    "size_tables",
]

MEMORY_DTYPES: tuple[str, ...] = ("fp32", "bf16", "int8", "nf4")
"""The dtype rows of a memory estimate, in order."""

_WEIGHT_BYTES = {"fp32": 4, "bf16": 2}
_ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "int8": 2, "nf4": 2}
_NF4_BLOCK = 64
_SCALE_BYTES = 4  # one fp32 absmax scale
_VECTOR_BYTES = 2  # norm scales and biases stay bf16 in the quantized rows


@dataclasses.dataclass(frozen=True)
class ParameterCounts:
    """Parameters by part (tied weights counted once).

    Attributes:
        embeddings: Token embedding and learned position table.
        attention: Query/key/value/output projections (and QK-norm scales).
        ffn: Dense feed-forwards, or routers plus every expert.
        experts: The routed experts alone (0 for a dense model); part of ``ffn``.
        norms: Block norms and the final norm.
        head: The output head; 0 when tied to the embedding.
        other: Anything a custom component added outside these parts.
        total: Every parameter.
        active: Parameters one token goes through (``total`` for a dense model).
    """

    embeddings: int
    attention: int
    ffn: int
    experts: int
    norms: int
    head: int
    other: int
    total: int
    active: int


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Memory for one dtype, in bytes (see the module notes for the conventions).

    Attributes:
        dtype: ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"nf4"``.
        weights: The parameters.
        gradients: One gradient per trainable parameter; None when not trainable as is.
        optimizer: AdamW state (and fp32 master weights for bf16); None when not trainable.
        activations: Activations kept for the backward pass.
        activations_checkpointed: The same with activation checkpointing.
        kv_cache: Keys and values of every layer for the whole batch and sequence.
    """

    dtype: str
    weights: int
    gradients: int | None
    optimizer: int | None
    activations: int
    activations_checkpointed: int
    kv_cache: int

    @property
    def inference(self) -> int:
        """Weights plus the KV cache."""
        return self.weights + self.kv_cache

    @property
    def training(self) -> int | None:
        """Weights, gradients, optimizer state and activations; None when not trainable."""
        if self.gradients is None or self.optimizer is None:
            return None
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def training_checkpointed(self) -> int | None:
        """``training`` with activation checkpointing; None when not trainable."""
        if self.gradients is None or self.optimizer is None:
            return None
        return self.weights + self.gradients + self.optimizer + self.activations_checkpointed


@dataclasses.dataclass(frozen=True)
class SizeEstimate:
    """What [`estimate_size()`][lego.arch.size.estimate_size] returns.

    Attributes:
        name: The preset name, or the config's family.
        config: The model's configuration.
        batch_size: The batch size the activations and KV cache are counted for.
        seq_len: The sequence length they are counted for.
        parameters: Parameters by part.
        memory: One estimate per dtype, in [`MEMORY_DTYPES`][lego.arch.size.MEMORY_DTYPES]
            order (or the order asked for).
    """

    name: str
    config: DecoderConfig
    batch_size: int
    seq_len: int
    parameters: ParameterCounts
    memory: tuple[MemoryEstimate, ...]

    def for_dtype(self, dtype: str) -> MemoryEstimate:
        """The memory row of one dtype.

        Args:
            dtype: ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"nf4"``.

        Returns:
            The row.

        Raises:
            ConfigError: No row for that dtype.
        """
        for row in self.memory:
            if row.dtype == dtype:
                return row
        names = [row.dtype for row in self.memory]
        raise ConfigError(
            f"no memory row for {dtype!r}", key="dtype", hint=did_you_mean(dtype, names)
        )


def estimate_size(
    model: str | DecoderConfig | DecoderLM,
    *,
    batch_size: int = 1,
    seq_len: int | None = None,
    dtypes: tuple[str, ...] = MEMORY_DTYPES,
) -> SizeEstimate:
    """Count parameters by part and estimate memory per dtype.

    Args:
        model: A preset name, a config (built on the meta device) or a model.
        batch_size: Sequences per batch, >= 1.
        seq_len: Tokens per sequence, ``1..context_length``; None means
            ``min(context_length, 2048)``.
        dtypes: The rows, from [`MEMORY_DTYPES`][lego.arch.size.MEMORY_DTYPES].

    Returns:
        The estimate.

    Raises:
        ConfigError: An unknown preset or dtype, or a batch size / sequence length out of
            range.
    """
    name = model if isinstance(model, str) else None
    if isinstance(model, DecoderLM):
        built = model
    else:
        config = resolve_config(model)
        with torch.device("meta"), SkipInit():
            built = DecoderLM.from_config(config, initialize=False)
    config = built.config
    if seq_len is None:
        seq_len = min(config.context_length, 2048)
    given: object = batch_size  # checked at run time: the CLI and callers pass anything
    if isinstance(given, bool) or not isinstance(given, int) or given < 1:
        raise ConfigError(f"batch size must be an integer >= 1, got {batch_size!r}", key="batch")
    if isinstance(seq_len, bool) or not 1 <= seq_len <= config.context_length:
        raise ConfigError(
            f"sequence length must be in 1..{config.context_length}, got {seq_len!r}",
            key="seq_len",
            hint=f"the model's context length is {config.context_length}",
        )
    for dtype in dtypes:
        if dtype not in MEMORY_DTYPES:
            raise ConfigError(
                f"unknown memory dtype {dtype!r}",
                key="dtype",
                hint=did_you_mean(dtype, MEMORY_DTYPES),
            )
    counts = count_parameters_by_part(built)
    rows = tuple(
        _memory(built, counts, dtype=dtype, batch_size=batch_size, seq_len=seq_len)
        for dtype in dtypes
    )
    return SizeEstimate(
        name=name if name is not None else config.family,
        config=config,
        batch_size=batch_size,
        seq_len=seq_len,
        parameters=counts,
        memory=rows,
    )


def count_parameters_by_part(model: DecoderLM) -> ParameterCounts:
    """Count a model's parameters by part (see [`ParameterCounts`][lego.arch.size.ParameterCounts]).

    Args:
        model: The model (any device, meta included).

    Returns:
        The counts; tied parameters are counted once.
    """
    parts = {"embeddings": 0, "attention": 0, "ffn": 0, "experts": 0, "norms": 0, "head": 0}
    other = 0
    for name, param in model.named_parameters():  # shared (tied) parameters appear once
        part = _part(name)
        if part is None:
            other += param.numel()
            continue
        parts[part] += param.numel()
        if part == "ffn" and ".feed_forward.experts." in f".{name}":
            parts["experts"] += param.numel()
    total = sum(v for k, v in parts.items() if k != "experts") + other
    config = model.config
    active = total
    if config.is_moe and parts["experts"]:
        assert config.n_experts is not None
        assert config.experts_top_k is not None
        unused = parts["experts"] * (config.n_experts - config.experts_top_k) // config.n_experts
        active = total - unused
    return ParameterCounts(total=total, active=active, other=other, **parts)


def _part(name: str) -> str | None:
    """The part a qualified parameter name belongs to, or None."""
    first = name.split(".", 1)[0]
    if first in ("token_embedding", "position_embedding"):
        return "embeddings"
    if first == "lm_head":
        return "head"
    if first == "final_norm":
        return "norms"
    if first == "blocks":
        section = name.split(".")[2] if name.count(".") >= 2 else ""
        return {
            "attention": "attention",
            "feed_forward": "ffn",
            "attention_norm": "norms",
            "ffn_norm": "norms",
        }.get(section)
    return None


def _weight_bytes(model: DecoderLM, dtype: str) -> int:
    """Bytes of the parameters stored in ``dtype`` (see the module notes)."""
    total = 0
    for param in model.parameters():
        n = param.numel()
        if dtype in _WEIGHT_BYTES:
            total += n * _WEIGHT_BYTES[dtype]
        elif param.ndim < 2:
            total += n * _VECTOR_BYTES
        elif dtype == "int8":
            rows = n // param.shape[-1]
            total += n + rows * _SCALE_BYTES
        else:  # nf4
            total += math.ceil(n / 2) + math.ceil(n / _NF4_BLOCK) * _SCALE_BYTES
    return total


def _block_activation_bytes(config: DecoderConfig, e: int, seq_len: int) -> int:
    """Activation bytes one block keeps per token (see the module notes)."""
    d = config.d_model
    q = config.n_heads * config.head_size
    kv = config.kv_heads * config.head_size
    dropout = config.dropout > 0
    attention = e * (2 * d + 2 * q + 2 * kv)
    if config.qk_norm:
        attention += e * (q + kv)
    if config.attention_backend == "math":
        per_score = e + (1 + e if dropout else 0)
        attention += per_score * config.n_heads * seq_len
    ffn = e * d
    if config.is_moe:
        assert config.n_experts is not None
        assert config.experts_top_k is not None
        assert config.moe_d_ff is not None
        ffn += e * d + 4 * config.n_experts
        ffn += config.experts_top_k * e * (2 * d + 4 * config.moe_d_ff)
    elif config.ffn == "gelu_mlp":
        ffn += e * (d + 2 * config.d_ff)
    else:  # gated feed-forwards (and, as an estimate, custom ones)
        ffn += e * (d + 4 * config.d_ff)
    masks = 2 * d if dropout else 0
    return attention + ffn + masks


def _memory(
    model: DecoderLM, counts: ParameterCounts, *, dtype: str, batch_size: int, seq_len: int
) -> MemoryEstimate:
    config = model.config
    tokens = batch_size * seq_len
    e = _ACTIVATION_BYTES[dtype]
    block = _block_activation_bytes(config, e, seq_len) * tokens
    outside = tokens * (e * config.d_model + config.vocab_size * (e + 4))
    if config.dropout > 0:
        outside += tokens * config.d_model  # the embedding dropout mask
    activations = config.n_layers * block + outside
    checkpointed = config.n_layers * tokens * e * config.d_model + block + outside
    trainable = dtype in _WEIGHT_BYTES
    n = counts.total
    gradients = n * _WEIGHT_BYTES[dtype] if trainable else None
    optimizer = (8 * n + (4 * n if dtype == "bf16" else 0)) if trainable else None
    kv_cache = 2 * config.n_layers * tokens * config.kv_heads * config.head_size * e
    return MemoryEstimate(
        dtype=dtype,
        weights=_weight_bytes(model, dtype),
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        activations_checkpointed=checkpointed,
        kv_cache=kv_cache,
    )


# -- rendering ------------------------------------------------------------------------------


def format_count(n: int) -> str:
    """A parameter count for humans: ``"124.44M"``, ``"8.03B"``, ``"172.29K"``.

    Args:
        n: The count.

    Returns:
        The count with a K / M / B suffix and two decimals (plain below 1000).
    """
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def format_bytes(n: int | None) -> str:
    """A byte count in binary units: ``"1.50 GiB"``; ``"-"`` for None.

    Args:
        n: Bytes, or None.

    Returns:
        The size with B / KiB / MiB / GiB / TiB.
    """
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def size_tables(estimate: SizeEstimate) -> tuple[Table, Table]:
    """Render an estimate as two rich tables: parameters by part, memory by dtype.

    Args:
        estimate: From [`estimate_size()`][lego.arch.size.estimate_size].

    Returns:
        ``(parameters, memory)`` tables, ready for ``rich.console.Console().print``.
    """
    from rich.table import Table  # rendering only: estimating needs no rich

    counts = estimate.parameters
    config = estimate.config
    params = Table(title=f"{estimate.name}: parameters", title_justify="left")
    params.add_column("part")
    params.add_column("parameters", justify="right")
    params.add_column("share", justify="right")
    rows: list[tuple[str, int]] = [
        ("embeddings", counts.embeddings),
        ("attention", counts.attention),
        ("feed-forward" + (" (router + experts)" if config.is_moe else ""), counts.ffn),
        ("norms", counts.norms),
        ("head" + (" (tied: 0)" if counts.head == 0 else ""), counts.head),
    ]
    if counts.other:
        rows.append(("other", counts.other))
    for label, value in rows:
        share = 100.0 * value / counts.total if counts.total else 0.0
        params.add_row(label, f"{value:,}", f"{share:.1f}%")
    params.add_row("total", f"{counts.total:,} ({format_count(counts.total)})", "100.0%")
    if counts.active != counts.total:
        share = 100.0 * counts.active / counts.total
        params.add_row(
            f"active per token (top {config.experts_top_k} of {config.n_experts})",
            f"{counts.active:,} ({format_count(counts.active)})",
            f"{share:.1f}%",
        )

    memory = Table(
        title=f"memory at batch {estimate.batch_size} x {estimate.seq_len} tokens",
        title_justify="left",
        caption="ckpt: with activation checkpointing; training: AdamW (bf16 keeps fp32 "
        "master weights); int8/nf4: weights quantized, activations bf16",
        caption_justify="left",
    )
    memory.add_column("")
    for row in estimate.memory:
        memory.add_column(row.dtype, justify="right")
    lines: list[tuple[str, list[int | None]]] = [
        ("weights", [r.weights for r in estimate.memory]),
        ("gradients", [r.gradients for r in estimate.memory]),
        ("AdamW state", [r.optimizer for r in estimate.memory]),
        ("activations", [r.activations for r in estimate.memory]),
        ("activations (ckpt)", [r.activations_checkpointed for r in estimate.memory]),
        ("KV cache", [r.kv_cache for r in estimate.memory]),
        ("inference (weights + KV)", [r.inference for r in estimate.memory]),
        ("training", [r.training for r in estimate.memory]),
        ("training (ckpt)", [r.training_checkpointed for r in estimate.memory]),
    ]
    for label, values in lines:
        memory.add_row(label, *(format_bytes(v) for v in values))
    return params, memory
