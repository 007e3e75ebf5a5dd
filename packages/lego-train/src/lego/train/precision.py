"""Mixed precision: autocast contexts, the fp16 GradScaler and bf16 weights with fp32 masters.

- ``fp32``: no autocast.
- ``bf16-mixed`` / ``fp16-mixed``: fp32 weights, matmuls under ``torch.autocast`` (fp16 with a
  ``GradScaler`` against underflow). Autocast re-casts each weight to 16 bits every forward.
- ``bf16-true``: the model's weights *are* bf16 (no re-cast, half the weight memory
  traffic); an fp32 master copy of each parameter lives in the optimizer, gradients are
  copied into it, the update happens in fp32 and is rounded back into the model.
  [`MasterWeights`][lego.train.precision.MasterWeights] holds the copies.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from lego.train.config import Precision

__all__ = ["autocast_context", "make_grad_scaler", "MasterWeights", "compute_dtype"]


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
