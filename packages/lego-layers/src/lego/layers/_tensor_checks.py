"""Input-tensor checks shared by the modules of lego-layers (private).

Each check raises a [`DataError`][lego.protocols.DataError] for a bad input tensor, naming the
tensor and saying what to do. Scalar constructor arguments are checked with
[`lego.protocols.checks`][lego.protocols.checks] (``check_int``, ``check_float``,
``check_probability``), the one module of scalar checks of every brick.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lego.protocols import DataError

__all__ = ["check_dim", "check_position_range", "default_position_ids"]


def check_dim(
    tensor: torch.Tensor,
    *,
    name: str,
    ndims: Sequence[int] | None,
    last: int | None,
    owner: str,
    layout: str,
) -> None:
    """Check a tensor's rank and, optionally, its last dimension.

    Args:
        tensor: The input to check.
        name: The argument's name, e.g. ``"x"``.
        ndims: The accepted ranks; None accepts any rank of at least 1.
        last: The required size of the last dimension, or None for any.
        owner: The module, for the message.
        layout: The expected layout, e.g. ``"(B, T, d_model)"``.

    Raises:
        DataError: The rank or the last dimension is wrong.
    """
    bad_rank = tensor.ndim < 1 if ndims is None else tensor.ndim not in ndims
    if bad_rank or (last is not None and tensor.shape[-1] != last):
        expected = layout if last is None else f"{layout} with last dimension {last}"
        raise DataError(
            f"{owner}: expected {name} of shape {expected}, got {tuple(tensor.shape)}",
            tensor=name,
            hint="check the tensor's layout and the module's configured size",
        )


def default_position_ids(length: int, *, device: torch.device) -> torch.Tensor:
    """Return ``arange(length)`` as int64 on ``device``, shape ``(T,)``."""
    return torch.arange(length, dtype=torch.long, device=device)


def check_position_range(
    position_ids: torch.Tensor, *, limit: int | None, owner: str, tensor_length: int
) -> int:
    """Check explicit position ids and return the largest one.

    Costs one host synchronization (one ``aminmax`` read back), whatever the device.

    Args:
        position_ids: Positions, shape ``(B, T)`` or ``(T,)``, an integer dtype.
        limit: Exclusive upper bound, or None when any non-negative position is valid.
        owner: The module, for the message.
        tensor_length: ``T`` of the input the positions belong to.

    Returns:
        The largest position id (``-1`` for an empty tensor).

    Raises:
        DataError: Wrong dtype or shape, a negative id, or an id at or above ``limit``.
    """
    if position_ids.dtype.is_floating_point or position_ids.dtype.is_complex:
        raise DataError(
            f"{owner}: position_ids must be an integer tensor, got {position_ids.dtype}",
            tensor="position_ids",
            hint="pass torch.long positions, e.g. torch.arange(T)",
        )
    if position_ids.ndim not in (1, 2) or position_ids.shape[-1] != tensor_length:
        raise DataError(
            f"{owner}: position_ids must have shape (B, {tensor_length}) or "
            f"({tensor_length},), got {tuple(position_ids.shape)}",
            tensor="position_ids",
            hint="give one position per input token",
        )
    if position_ids.numel() == 0:
        return -1
    low, high = (int(v) for v in torch.stack(torch.aminmax(position_ids)).tolist())
    if low < 0:
        raise DataError(
            f"{owner}: position ids must be >= 0, got {low}",
            tensor="position_ids",
            hint="for left padding, clamp the padded positions to 0 (they are masked anyway)",
        )
    if limit is not None and high >= limit:
        raise DataError(
            f"{owner}: position id {high} is out of range: this module has {limit} "
            f"positions (0..{limit - 1})",
            tensor="position_ids",
            hint="shorten the sequence or build the module with a larger max_seq_len",
        )
    return high
