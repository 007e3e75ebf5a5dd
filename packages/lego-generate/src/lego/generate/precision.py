"""Sampling in another precision than the learner's: a bf16 copy of the policy for rollouts.

A decode step at small batch reads every weight once per token: it is bound by how fast the
weights stream from memory, so weights of half the bytes decode up to twice as fast where
the CPU multiplies bf16 at least as fast as fp32 (AVX512-BF16, AMX). Some CPUs run bf16 at
half the fp32 speed instead, so the choice is measured, not assumed:

- [`probe_bf16()`][lego.generate.precision.probe_bf16] times a decode-shaped product
  (8 rows against a ``4096 x 4096`` weight, on the kernels the decode engine uses) in fp32
  and bf16, alternately, for about a second, once per process and device;
- [`sampling_copy()`][lego.generate.precision.sampling_copy] resolves a ``rollout_dtype``
  (``"auto"``, ``"float32"`` or ``"bfloat16"``) for a model and, where it means another
  dtype than the model's, makes a [`SamplingCopy`][lego.generate.precision.SamplingCopy]:
  the model's weights in that dtype, frozen, in eval mode, refreshed from the learner with
  [`refresh()`][lego.generate.precision.SamplingCopy.refresh] before each use.

The trade-off (vLLM samples in bf16 for an fp32 learner the same way): the completions are
drawn from the bf16 model's distribution, which differs from the fp32 learner's by bf16
rounding (about 3 significant digits per weight); greedy completions agree on most tokens
and differ where two logits are within rounding of each other. A trainer that uses a
sampling copy must take the loss's *old* log-probabilities from the learner's own fp32
forward pass, never from the sampler's: the importance ratio is then exactly 1 on the first
update of a generation, as without a copy (lego-align's GRPO does this).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.generate.native import native_status, prepare_skinny
from lego.protocols import CompatibilityError, ConfigError

__all__ = [
    "AUTO_MIN_PARAMETERS",
    "AUTO_MIN_SPEEDUP",
    "DtypeProbe",
    "ROLLOUT_DTYPES",
    "RolloutDtype",
    "SamplingCopy",
    "probe_bf16",
    "resolve_rollout_dtype",
    "sampling_copy",
]

RolloutDtype = Literal["auto", "float32", "bfloat16"]
"""The precision rollouts sample in: measured (``"auto"``), or the named dtype."""

ROLLOUT_DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")

AUTO_MIN_PARAMETERS = 20_000_000
"""``"auto"`` makes a bf16 copy of models with at least this many parameters (80 MB of fp32
weights, beyond any CPU cache): below it a decode step is bound by per-operator overhead,
not by reading the weights, and a copy gains nothing."""

AUTO_MIN_SPEEDUP = 1.25
"""``"auto"`` samples in bf16 when the probe's bf16 product is at least this much faster."""

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class DtypeProbe:
    """What [`probe_bf16()`][lego.generate.precision.probe_bf16] measured.

    Attributes:
        device: The device measured (``"cpu"``, ``"cuda:0"``...).
        float32_s: The fastest fp32 product, in seconds.
        bfloat16_s: The fastest bf16 product, in seconds.
        repeats: Products timed per dtype.
    """

    device: str
    float32_s: float
    bfloat16_s: float
    repeats: int

    @property
    def speedup(self) -> float:
        """How many times faster bf16 is than fp32 (below 1: slower)."""
        return self.float32_s / max(self.bfloat16_s, 1e-12)


_probes: dict[str, DtypeProbe] = {}
_probe_lock = threading.Lock()


def _product(weight: Tensor) -> Callable[[Tensor], Tensor]:
    """``x -> x @ weight.T`` on the kernel the decode engine would use for 8 rows."""
    if weight.device.type == "cpu" and native_status().available:
        try:
            return prepare_skinny(weight)
        except CompatibilityError:
            pass
    return lambda x: F.linear(x, weight)


def probe_bf16(
    device: torch.device | str = "cpu", *, seconds: float = 1.0, fresh: bool = False
) -> DtypeProbe:
    """Time a decode-shaped product in fp32 and in bf16 on ``device`` (once per process).

    The product is ``x @ W.T`` for ``x`` of 8 rows and a ``4096 x 4096`` weight (64 MiB in
    fp32, beyond the caches: read from memory, as a decode step reads its weights), on the
    native decode kernels where they run, else ``F.linear``. The two dtypes alternate so
    that a load change on a shared machine touches both; each keeps its fastest time.

    Args:
        device: Where to measure.
        seconds: About how long to measure (at least 3 products per dtype).
        fresh: Measure again instead of returning this process's earlier result.

    Returns:
        The [`DtypeProbe`][lego.generate.precision.DtypeProbe].

    Example:
        >>> probe = probe_bf16(seconds=0.05)
        >>> probe.speedup > 0, probe.repeats >= 3
        (True, True)
    """
    where = torch.device(device)
    key = str(where)
    with _probe_lock:
        if not fresh and key in _probes:
            return _probes[key]
        generator = torch.Generator(device="cpu").manual_seed(0)
        base = torch.randn((4096, 4096), generator=generator).to(where)  # (N, K)
        x32 = torch.randn((8, 4096), generator=generator).to(where)  # (8, K)
        runs = {
            torch.float32: (_product(base), x32),
            torch.bfloat16: (_product(base.to(torch.bfloat16)), x32.to(torch.bfloat16)),
        }
        best = {dtype: float("inf") for dtype in runs}
        repeats = 0
        start = time.perf_counter()
        with torch.no_grad():
            for fn, x in runs.values():  # warm-up: first-call costs, page faults
                fn(x)
            while repeats < 3 or time.perf_counter() - start < seconds:
                for dtype, (fn, x) in runs.items():
                    if where.type == "cuda":
                        torch.cuda.synchronize(where)
                    t0 = time.perf_counter()
                    fn(x)
                    if where.type == "cuda":
                        torch.cuda.synchronize(where)
                    best[dtype] = min(best[dtype], time.perf_counter() - t0)
                repeats += 1
        probe = DtypeProbe(key, best[torch.float32], best[torch.bfloat16], repeats)
        _probes[key] = probe
        return probe


def _float_dtypes(model: nn.Module) -> tuple[set[torch.dtype], bool]:
    """The floating dtypes of the model's parameters; whether any is not floating (packed)."""
    dtypes: set[torch.dtype] = set()
    other = False
    for parameter in model.parameters():
        if parameter.is_floating_point():
            dtypes.add(parameter.dtype)
        else:
            other = True
    return dtypes, other


def resolve_rollout_dtype(model: nn.Module, rollout_dtype: str) -> torch.dtype | None:
    """The dtype a sampling copy of ``model`` should have, or None to sample with the model.

    - ``"float32"`` / ``"bfloat16"``: that dtype; None when the model already has it.
    - ``"auto"``: bf16 for a model of fp32 CPU weights with at least
      [`AUTO_MIN_PARAMETERS`][lego.generate.precision.AUTO_MIN_PARAMETERS] parameters
      when [`probe_bf16()`][lego.generate.precision.probe_bf16] finds bf16 at least
      [`AUTO_MIN_SPEEDUP`][lego.generate.precision.AUTO_MIN_SPEEDUP] times faster; else
      None (other devices, other dtypes, quantized weights, small models).

    Args:
        model: The learner.
        rollout_dtype: ``"auto"``, ``"float32"`` or ``"bfloat16"``.

    Returns:
        The copy's dtype, or None.

    Raises:
        ConfigError: An unknown ``rollout_dtype``, or a named dtype for a model whose
            weights are not all of one floating dtype (quantized weights cannot be cast).

    Example:
        >>> from torch import nn
        >>> print(resolve_rollout_dtype(nn.Linear(4, 4), "bfloat16"))
        torch.bfloat16
        >>> print(resolve_rollout_dtype(nn.Linear(4, 4), "float32"))  # it is fp32 already
        None
        >>> print(resolve_rollout_dtype(nn.Linear(4, 4), "auto"))  # too small to gain
        None
    """
    if rollout_dtype not in ROLLOUT_DTYPES:
        raise ConfigError(
            f"rollout_dtype must be one of {', '.join(ROLLOUT_DTYPES)}, got {rollout_dtype!r}",
            key="rollout_dtype",
            hint="auto measures which is faster here; float32 or bfloat16 force one",
        )
    dtypes, quantized = _float_dtypes(model)
    if rollout_dtype == "auto":
        params = sum(p.numel() for p in model.parameters())
        devices = {p.device.type for p in model.parameters()}
        if dtypes != {torch.float32} or quantized or devices != {"cpu"}:
            return None
        if params < AUTO_MIN_PARAMETERS:
            return None
        return torch.bfloat16 if probe_bf16("cpu").speedup >= AUTO_MIN_SPEEDUP else None
    wanted = _DTYPES[rollout_dtype]
    if dtypes == {wanted} and not quantized:
        return None
    if len(dtypes) != 1 or quantized:
        found = ", ".join(sorted(str(d) for d in dtypes)) or "none"
        raise ConfigError(
            f"rollout_dtype={rollout_dtype} needs a model whose weights are all of one "
            f"floating dtype; this one has {found}"
            + (" and quantized (non-floating) weights" if quantized else ""),
            key="rollout_dtype",
            hint="use rollout_dtype: auto (samples with the model itself here)",
        )
    return wanted


class SamplingCopy:
    """A frozen copy of a model in another dtype, for sampling; refreshed from the model.

    The copy has the model's structure (``copy.deepcopy``), its floating parameters and
    buffers cast to ``dtype``, no gradients, and stays in eval mode. It costs the weights'
    size in ``dtype`` (half the fp32 model for bf16).

    Args:
        model: The learner; it is not changed.
        dtype: The copy's floating dtype.

    Attributes:
        source: The learner.
        model: The copy.
        dtype: Its dtype.
        refreshes: How many times ``refresh()`` copied the weights.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> learner = nn.Linear(4, 2)
        >>> sampler = SamplingCopy(learner, torch.bfloat16)
        >>> with torch.no_grad():
        ...     _ = learner.weight.add_(1.0)
        >>> model = sampler.refresh()
        >>> model.weight.dtype, bool((model.weight.float() - learner.weight).abs().max() < 0.02)
        (torch.bfloat16, True)
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        self.source = model
        self.dtype = dtype
        grads = {name: p.grad for name, p in model.named_parameters()}
        try:  # no gradient is copied along
            for p in model.parameters():
                p.grad = None
            duplicate = copy.deepcopy(model)
        finally:
            for name, p in model.named_parameters():
                p.grad = grads[name]
        duplicate.to(dtype)
        duplicate.requires_grad_(False)
        duplicate.eval()
        self.model = duplicate
        own = dict(duplicate.named_parameters())
        self._pairs = [(own[name], p) for name, p in model.named_parameters() if name in own]
        self.refreshes = 0

    def refresh(self) -> nn.Module:
        """Copy the learner's current weights into the copy (cast); return the copy.

        Returns:
            The copy, in eval mode, its weights the learner's rounded to ``dtype``.
        """
        with torch.no_grad():
            for target, source in self._pairs:
                target.copy_(source)
        self.model.eval()
        self.refreshes += 1
        return self.model


def sampling_copy(model: nn.Module, rollout_dtype: str) -> SamplingCopy | None:
    """A [`SamplingCopy`][lego.generate.precision.SamplingCopy] of ``model`` for rollouts.

    Args:
        model: The learner.
        rollout_dtype: ``"auto"``, ``"float32"`` or ``"bfloat16"``
            (see [`resolve_rollout_dtype()`][lego.generate.precision.resolve_rollout_dtype]).

    Returns:
        The copy, or None when the rollouts should sample with ``model`` itself.

    Raises:
        ConfigError: As ``resolve_rollout_dtype``.

    Example:
        >>> from torch import nn
        >>> sampling_copy(nn.Linear(4, 4), "bfloat16").model.weight.dtype
        torch.bfloat16
        >>> sampling_copy(nn.Linear(4, 4), "auto") is None
        True
    """
    dtype = resolve_rollout_dtype(model, rollout_dtype)
    return None if dtype is None else SamplingCopy(model, dtype)
