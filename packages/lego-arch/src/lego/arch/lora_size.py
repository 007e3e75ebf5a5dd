"""Memory estimates for LoRA and QLoRA fine-tuning (adapters on a frozen base).

[`estimate_lora_size()`][lego.arch.lora_size.estimate_lora_size] extends
[`estimate_size()`][lego.arch.size.estimate_size] to parameter-efficient training: the base
stays frozen (no gradients, no optimizer state), and rank-``r`` adapters ``A (r, in)`` and
``B (out, r)`` train on every linear layer of the blocks (PEFT's ``"all-linear"``: the
attention and feed-forward projections, not the output head), in fp32. Per row, in bytes
(``N`` base parameters, ``n`` of them in the adapted linear layers, ``a`` adapter
parameters):

- **weights**: the base in its dtype: ``fp32`` 4, ``bf16`` 2 bytes per parameter; ``nf4``
  (QLoRA) quantizes the adapted layers' weights to 4 bits in blocks of 64 with an fp32
  absmax per block, or with double quantization (the default, as QLoRA and bitsandbytes'
  ``compress_statistics``) an 8-bit absmax per block plus one fp32 scale per 256 blocks:
  ``4 + 8/64 + 32/(64 * 256) ~= 4.127`` bits per weight; everything else (embeddings, head,
  norms) stays in the compute dtype.
- **adapter**: ``4 a`` (fp32 adapters); **gradients** ``4 a``; **optimizer** (AdamW) ``8 a``.
- **activations**: what the backward pass keeps, as for full training in the compute dtype
  (the adapters need the gradient of every block's input, so every block's activations are
  kept; see [`lego.arch.size`][lego.arch.size]), plus the ``r`` values of ``A x`` per token
  and adapted layer; at the start of the backward pass the gradients of the fp32
  log-probabilities and of the logits are alive with them (``8 B T vocab`` more bytes: with
  a large vocabulary the peak of a step is there).

    >>> est = estimate_lora_size("llama-3.2-1b", r=16, base="nf4", batch_size=1, seq_len=512)
    >>> round(est.bits_per_quantized_weight, 3)
    4.127
    >>> est.adapter_parameters
    11272192
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from lego.arch.config import DecoderConfig
from lego.arch.decoder import DecoderLM
from lego.arch.loading import SkipInit
from lego.arch.registry import resolve_config
from lego.arch.size import estimate_size
from lego.protocols import ConfigError, check_int

__all__ = ["LORA_BASES", "LoraSizeEstimate", "estimate_lora_size"]

LORA_BASES: tuple[str, ...] = ("fp32", "bf16", "nf4")
"""The base-weight dtypes of a LoRA estimate (``nf4``: QLoRA)."""

_BLOCK = 64
_NESTED_BLOCK = 256


@dataclasses.dataclass(frozen=True)
class LoraSizeEstimate:
    """What [`estimate_lora_size()`][lego.arch.lora_size.estimate_lora_size] returns (bytes).

    Attributes:
        base: ``"fp32"``, ``"bf16"`` or ``"nf4"``.
        r: The adapters' rank.
        base_parameters: Parameters of the base model.
        adapted_parameters: Base parameters inside the adapted linear layers.
        adapter_parameters: Trainable adapter parameters.
        bits_per_quantized_weight: Storage of an adapted layer's weight (32, 16 or ~4.13).
        weights: The base model.
        adapter: The adapters (fp32).
        gradients: The adapters' gradients.
        optimizer: AdamW's two moments for the adapters.
        activations: Kept for the backward pass, the logits' gradient included.
    """

    base: str
    r: int
    base_parameters: int
    adapted_parameters: int
    adapter_parameters: int
    bits_per_quantized_weight: float
    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def training(self) -> int:
        """Everything a training step holds at its peak."""
        return self.weights + self.adapter + self.gradients + self.optimizer + self.activations


def _adapted_linears(model: DecoderLM) -> list[nn.Linear]:
    head = getattr(model, "lm_head", None)
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]


def estimate_lora_size(
    model: str | DecoderConfig | DecoderLM,
    *,
    r: int,
    base: str = "fp32",
    batch_size: int = 1,
    seq_len: int | None = None,
    double_quant: bool = True,
) -> LoraSizeEstimate:
    """Estimate the memory of LoRA (or QLoRA) training on every linear layer of the blocks.

    Args:
        model: A preset name, a config (built on the meta device) or a model.
        r: The adapters' rank, >= 1.
        base: The base weights' dtype, one of [`LORA_BASES`][lego.arch.lora_size.LORA_BASES]
            (``"nf4"``: QLoRA, computing in fp32 on a CPU as the benchmark does).
        batch_size: Sequences per batch, >= 1.
        seq_len: Tokens per sequence; None means ``min(context_length, 2048)``.
        double_quant: With ``nf4``: quantize the absmax scales too (~4.127 bits per weight;
            without, 4.5).

    Returns:
        The estimate.

    Raises:
        ConfigError: An unknown base dtype, ``r < 1``, or what ``estimate_size`` refuses.
    """
    check_int("r", r, minimum=1, owner="estimate_lora_size")
    if base not in LORA_BASES:
        raise ConfigError(
            f"unknown LoRA base dtype {base!r}",
            key="base",
            hint=f"use one of {', '.join(LORA_BASES)}",
        )
    if isinstance(model, DecoderLM):
        built = model
    else:
        with torch.device("meta"), SkipInit():
            built = DecoderLM.from_config(resolve_config(model), initialize=False)
    compute = "bf16" if base == "bf16" else "fp32"
    full = estimate_size(built, batch_size=batch_size, seq_len=seq_len, dtypes=(compute,))
    row = full.for_dtype(compute)
    e = 2 if compute == "bf16" else 4
    linears = _adapted_linears(built)
    adapted = sum(m.weight.numel() for m in linears)
    adapter = sum(r * (m.in_features + m.out_features) for m in linears)
    base_params = sum(p.numel() for p in built.parameters())
    if base == "nf4":
        blocks = sum(math.ceil(m.weight.numel() / _BLOCK) for m in linears)
        nested = 4 * math.ceil(blocks / _NESTED_BLOCK)
        scale_bytes = blocks + nested if double_quant else 4 * blocks
        quantized = sum(math.ceil(m.weight.numel() / 2) for m in linears) + scale_bytes
        bits = 8 * quantized / adapted if adapted else 0.0
        weights = quantized + (base_params - adapted) * 4
    else:
        bits = 8.0 * e
        weights = base_params * e
    tokens = full.batch_size * full.seq_len
    extra = tokens * r * e * len(linears)  # A x, kept for B's gradient
    logits_grad = tokens * built.config.vocab_size * 8  # d log-probs and d logits, fp32
    return LoraSizeEstimate(
        base=base,
        r=r,
        base_parameters=base_params,
        adapted_parameters=adapted,
        adapter_parameters=adapter,
        bits_per_quantized_weight=bits,
        weights=weights,
        adapter=4 * adapter,
        gradients=4 * adapter,
        optimizer=8 * adapter,
        activations=row.activations + extra + logits_grad,
    )
