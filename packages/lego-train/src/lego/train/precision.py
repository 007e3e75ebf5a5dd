"""Mixed precision: autocast contexts, the fp16 GradScaler and bf16 weights with fp32 masters.

- ``fp32``: no autocast.
- ``bf16-mixed`` / ``fp16-mixed``: fp32 weights, matmuls under ``torch.autocast`` (fp16 with a
  ``GradScaler`` against underflow). Autocast re-casts each weight to 16 bits every forward.
- ``bf16-true``: the model's weights *are* bf16 (no re-cast, half the weight memory
  traffic); an fp32 master copy of each parameter lives in the optimizer, gradients are
  copied into it, the update happens in fp32 and is rounded back into the model.
  [`MasterWeights`][lego.train.precision.MasterWeights] holds the copies.
- ``auto``: measured when the trainer starts
  ([`choose_precision()`][lego.train.precision.choose_precision]): ``bf16-mixed`` where it
  is faster than ``fp32`` on this device, else ``fp32``. Some CPUs multiply bf16 about four
  times faster than fp32 (AVX512-BF16, AMX), others at half the fp32 rate; on a GPU with
  bf16 support it is ``bf16-mixed``. A resumed run keeps the precision its checkpoint
  recorded, so a run never changes precision half-way.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lego.train.config import Precision

__all__ = [
    "autocast_context",
    "make_grad_scaler",
    "MasterWeights",
    "compute_dtype",
    "PrecisionChoice",
    "choose_precision",
    "decide_precision",
    "time_training_products",
]

AUTO_MIN_SPEEDUP = 1.05
"""``auto`` picks ``bf16-mixed`` on a CPU when its products run at least this much faster."""


def compute_dtype(precision: Precision) -> torch.dtype:
    """The dtype matmuls run in under ``precision``."""
    if precision in ("bf16-mixed", "bf16-true"):
        return torch.bfloat16
    if precision == "fp16-mixed":
        return torch.float16
    return torch.float32


def autocast_context(
    precision: Precision, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    """The context a forward pass runs in.

    Args:
        precision: The precision mode.
        device: The training device.

    Returns:
        ``torch.autocast`` for the ``*-mixed`` modes, a null context otherwise.
    """
    if precision in ("bf16-mixed", "fp16-mixed"):
        return torch.autocast(device_type=device.type, dtype=compute_dtype(precision))
    return contextlib.nullcontext()


def make_grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for ``fp16-mixed``, else None."""
    if precision != "fp16-mixed":
        return None
    return torch.amp.GradScaler(device.type)


class MasterWeights:
    """fp32 master copies of a bf16 model's parameters (``bf16-true``).

    Args:
        model: The model, still in fp32 (its current values become the masters); it is cast
            to bf16 by this constructor.

    Attributes:
        masters: The fp32 parameters the optimizer updates, in ``model.parameters()`` order.
    """

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.masters = [
            nn.Parameter(p.detach().clone().float(), requires_grad=True) for p in self.params
        ]
        model.to(torch.bfloat16)
        # ``model.to`` replaces ``.data`` in place, so the Parameter objects stay the same.

    def grads_to_masters(self) -> None:
        """Move the model's bf16 gradients into the masters' fp32 ``.grad``."""
        for param, master in zip(self.params, self.masters, strict=True):
            if param.grad is None:
                master.grad = None
            else:
                master.grad = param.grad.float()
                param.grad = None

    @torch.no_grad()
    def masters_to_model(self) -> None:
        """Round the updated masters into the model's bf16 parameters."""
        for param, master in zip(self.params, self.masters, strict=True):
            param.copy_(master)

    def state_dict_of(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's ``state_dict`` with every parameter replaced by its fp32 master.

        Args:
            model: The model the masters belong to.

        Returns:
            Names to tensors (buffers as they are).
        """
        by_id = {id(p): m for p, m in zip(self.params, self.masters, strict=True)}
        named = dict(model.named_parameters(remove_duplicate=False))
        out: dict[str, torch.Tensor] = {}
        for name, tensor in model.state_dict().items():
            param = named.get(name)
            master = by_id.get(id(param)) if param is not None else None
            out[name] = master.detach() if master is not None else tensor
        return out


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``precision: auto`` resolved to, and why.

    Attributes:
        precision: ``fp32`` or ``bf16-mixed``.
        reason: One line for the log (the measured times, or the device's rule).
        fp32_seconds: The fp32 products' time (NaN when nothing was measured).
        bf16_seconds: The bf16 autocast products' time (NaN when nothing was measured).
    """

    precision: Precision
    reason: str
    fp32_seconds: float = float("nan")
    bf16_seconds: float = float("nan")

    @property
    def speedup(self) -> float:
        """fp32 time over bf16 time (above 1: bf16 is faster)."""
        return self.fp32_seconds / self.bf16_seconds


def _linear_shapes(model: nn.Module) -> list[tuple[int, int, int]]:
    """``(in_features, out_features, count)`` of the model's 2-D weights used as products."""
    shapes: Counter[tuple[int, int]] = Counter()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and isinstance(weight, torch.Tensor):
            shapes[(int(weight.shape[1]), int(weight.shape[0]))] += 1
    return [(n_in, n_out, count) for (n_in, n_out), count in sorted(shapes.items())]


def time_training_products(
    shapes: list[tuple[int, int, int]],
    device: torch.device,
    *,
    rows: int = 2048,
    seconds: float = 1.0,
    max_columns: int = 1024,
) -> tuple[float, float]:
    """Estimate a training step's products in fp32 and under bf16 autocast, alternately.

    Each distinct ``(in, out)`` shape is timed once per round: ``x (rows, in) @ W.T``
    forward and its backward (the gradients of ``x`` and ``W``), with an fp32 weight that
    autocast casts, as in training. A weight wider than ``max_columns`` outputs is timed on
    its first ``max_columns`` rows and the time scaled by ``out / max_columns`` (a
    vocabulary head would otherwise take most of the second); a round's estimate weighs each
    shape's time by its ``count``. The two precisions alternate until ``seconds`` have
    passed (at least two rounds each); each side's best round is returned.

    Args:
        shapes: The products, ``(in_features, out_features, count)``.
        device: Where to run them.
        rows: Tokens per product: a micro-batch's rows (the speed-up of bf16 depends on it:
            small products pay more for autocast's casts).
        seconds: The time to spend measuring.
        max_columns: The widest weight timed whole.

    Returns:
        The best round's estimated seconds in fp32 and in bf16 autocast.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)
    products = []
    for n_in, n_out, count in shapes:
        columns = min(n_out, max_columns)
        weight = torch.randn(columns, n_in, generator=generator).to(device).requires_grad_()
        x = torch.randn(rows, n_in, generator=generator).to(device).requires_grad_()
        products.append((weight, x, count * n_out / columns))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def one_round(dtype: torch.dtype | None) -> float:
        total = 0.0
        for weight, x, scale in products:
            context: contextlib.AbstractContextManager[Any] = (
                torch.autocast(device_type=device.type, dtype=dtype)
                if dtype is not None
                else contextlib.nullcontext()
            )
            sync()
            start = time.perf_counter()
            with context:
                out = x @ weight.T  # (rows, columns)
            torch.autograd.backward(out.float().sum())
            sync()
            total += scale * (time.perf_counter() - start)
        return total

    best = {"fp32": float("inf"), "bf16": float("inf")}
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < 2 or time.perf_counter() < deadline:
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            best[name] = min(best[name], one_round(dtype))
        rounds += 1
    for weight, x, _ in products:
        weight.grad = None
        x.grad = None
    return best["fp32"], best["bf16"]


def choose_precision(
    model: nn.Module, device: torch.device, *, rows: int = 2048, seconds: float = 1.0
) -> PrecisionChoice:
    """Resolve ``precision: auto`` for a model on a device.

    On a CPU the model's own linear-layer shapes are timed in fp32 and under bf16 autocast
    ([`time_training_products()`][lego.train.precision.time_training_products]) and
    ``bf16-mixed`` is chosen when it is at least ``AUTO_MIN_SPEEDUP`` times faster. On CUDA
    it is ``bf16-mixed`` where the GPU supports bf16 (else ``fp32``); elsewhere ``fp32``.

    Args:
        model: The model to train.
        device: Its training device.
        rows: Tokens per timed product (a micro-batch of 16 x 128 tokens by default).
        seconds: How long to measure (CPU).

    Returns:
        The [`PrecisionChoice`][lego.train.precision.PrecisionChoice].

    Example:
        >>> choice = choose_precision(nn.Linear(64, 64), torch.device("cpu"), rows=64, seconds=0.05)
        >>> choice.precision in ("fp32", "bf16-mixed"), "fp32" in choice.reason
        (True, True)
    """
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16-mixed", "auto: bf16-mixed (the GPU supports bf16)")
        return PrecisionChoice("fp32", "auto: fp32 (the GPU does not support bf16)")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"auto: fp32 (not measured on {device.type})")
    shapes = _linear_shapes(model)
    if not shapes:
        return PrecisionChoice("fp32", "auto: fp32 (the model has no linear layers to time)")
    fp32, bf16 = time_training_products(shapes, device, rows=rows, seconds=seconds)
    return decide_precision(fp32, bf16)


def decide_precision(fp32: float, bf16: float) -> PrecisionChoice:
    """The choice from two measured times (fp32, bf16 autocast): bf16 when clearly faster.

    Args:
        fp32: The fp32 products' seconds.
        bf16: The bf16 autocast products' seconds.

    Returns:
        The [`PrecisionChoice`][lego.train.precision.PrecisionChoice].

    Example:
        >>> decide_precision(0.4, 0.1).precision, decide_precision(0.1, 0.2).precision
        ('bf16-mixed', 'fp32')
    """
    speedup = fp32 / bf16
    precision: Precision = "bf16-mixed" if speedup >= AUTO_MIN_SPEEDUP else "fp32"
    reason = (
        f"auto: {precision} (the model's products, forward and backward: fp32 "
        f"{fp32 * 1000:.1f} ms, bf16 autocast {bf16 * 1000:.1f} ms, {speedup:.2f}x)"
    )
    return PrecisionChoice(precision, reason, fp32, bf16)
