"""Per-token negative log-likelihoods from logits, with the log-softmax taken in chunks.

Both [`perplexity`][lego.eval.perplexity] and [`lego.eval.core`][lego.eval.core] score a few
chosen positions of a ``(B, T, vocab)`` logits tensor. Casting all of it to float32 for a
log-softmax would hold a second ``(B, T, vocab)`` tensor (4 bytes a logit); here only the chosen
rows are cast, ``chunk_size`` rows at a time, so the extra memory is at most
``chunk_size x vocab`` float32 values whatever ``B`` and ``T`` are.

For one chosen position with logits ``z`` (a ``vocab`` vector) and target ``y``:

    nll = logsumexp(z) - z[y] = -log softmax(z)[y]

and ``greedy`` tells whether ``y`` is an argmax of ``z`` (ties count as greedy only for the
first maximal id, as ``torch.argmax`` returns it).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lego.protocols import CausalLM, ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["DEFAULT_CHUNK_SIZE", "eval_mode", "model_device", "position_nll"]

DEFAULT_CHUNK_SIZE = 1024
"""Rows of logits cast to float32 at a time (1024 x a 128k vocabulary is 0.5 GB)."""


def position_nll(
    logits: Tensor,
    positions: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood of ``targets`` at chosen ``positions`` of ``logits``.

    Args:
        logits: Model output, shape ``(B, T, V)``, any floating dtype.
        positions: Flat indices ``b * T + t`` of the chosen rows, shape ``(M,)``, dtype long.
        targets: The token id each chosen row should predict, shape ``(M,)``, dtype long.
        chunk_size: How many chosen rows are cast to float32 at once.

    Returns:
        ``(nll, greedy)``: float64 ``-log p(target)`` per chosen row, shape ``(M,)``, and
        whether the target is the row's argmax, bool, shape ``(M,)``.

    Raises:
        ConfigError: When ``chunk_size`` is below 1.

    Example:
        >>> import math, torch
        >>> logits = torch.zeros(1, 2, 4)  # uniform over 4 ids
        >>> logits[0, 1, 3] = 10.0
        >>> nll, greedy = position_nll(logits, torch.tensor([0, 1]), torch.tensor([2, 3]))
        >>> round(nll[0].item(), 6) == round(math.log(4), 6), greedy.tolist()
        (True, [False, True])
    """
    if chunk_size < 1:
        raise ConfigError(
            f"chunk_size must be at least 1, got {chunk_size}",
            key="chunk_size",
            hint="pass a positive number of rows, e.g. 1024",
        )
    flat = logits.reshape(-1, logits.shape[-1])  # (B*T, V), a view
    positions = positions.to(flat.device)
    targets = targets.to(flat.device)
    nll = torch.empty(positions.shape[0], dtype=torch.float64, device=flat.device)
    greedy = torch.empty(positions.shape[0], dtype=torch.bool, device=flat.device)
    for lo in range(0, positions.shape[0], chunk_size):
        hi = lo + chunk_size
        rows = flat.index_select(0, positions[lo:hi]).float()  # (m, V) float32
        target = targets[lo:hi, None]  # (m, 1)
        picked = rows.gather(1, target).squeeze(1)  # (m,)
        nll[lo:hi] = (torch.logsumexp(rows, dim=-1) - picked).double()
        greedy[lo:hi] = rows.argmax(dim=-1) == target.squeeze(1)
    return nll, greedy


@contextlib.contextmanager
def eval_mode(model: CausalLM) -> Iterator[None]:
    """Run the block with an ``nn.Module`` in eval mode (dropout off), then restore its mode.

    Example:
        >>> from torch import nn
        >>> layer = nn.Dropout(0.5)
        >>> with eval_mode(layer):  # type: ignore[arg-type]
        ...     layer.training
        False
        >>> layer.training
        True
    """
    was_training = bool(getattr(model, "training", False))
    if was_training and isinstance(model, torch.nn.Module):
        model.train(False)
    try:
        yield
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train(True)


def model_device(model: CausalLM, device: torch.device | str | None = None) -> torch.device:
    """``device`` when given, else the model's first parameter's device, else the CPU.

    Example:
        >>> from torch import nn
        >>> model_device(nn.Linear(2, 2)).type  # type: ignore[arg-type]
        'cpu'
    """
    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")
