"""What the Trainer minimises: an [`Objective`][lego.train.objective.Objective].

By default the Trainer minimises the next-token cross-entropy of an
[`LMBatch`][lego.protocols.LMBatch] ([`TokenObjective`][lego.train.objective.TokenObjective]).
Any other loss (a reward model's Bradley-Terry loss, DPO, a distillation term) plugs in as
an object with two methods:

- ``units(batch)``: how many *units* the micro-batch weighs: trained tokens for a language
  model, pairs for a preference loss. Counted before any forward pass, so the Trainer knows
  the whole step's total (all micro-batches, all ranks) up front;
- ``objective(model, batch)``: run the model and return an
  [`ObjectiveOutput`][lego.train.objective.ObjectiveOutput]: the loss **summed** over the
  batch's units, the tokens it processed, and extra metrics, each summed over the units too.

The Trainer divides every sum by the step's total units, so the step's loss is the mean per
unit over the whole step, and ``grad_accum`` micro-batches (or ``W`` ranks) give exactly the
gradient of one big batch, whatever the objective. A metric ``name`` is logged as the mean
``name`` in training records and ``val_name`` after an evaluation.

Example (a loss on the mean of the logits, one unit per row)::

    class MeanLogit:
        perplexity = False

        def units(self, batch):
            return int(batch["input_ids"].shape[0])

        def __call__(self, model, batch):
            logits = model(batch["input_ids"])                    # (B, T, V)
            per_row = logits.float().mean(dim=(1, 2))             # (B,)
            return ObjectiveOutput(per_row.sum(), batch["input_ids"].numel(),
                                   {"positive": (per_row > 0).float().sum()})

    Trainer(model=model, train_data=source, config=config, objective=MeanLogit())
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn import functional as fn

from lego.protocols import IGNORE_INDEX, DataError

__all__ = ["Objective", "ObjectiveOutput", "TokenObjective", "token_loss", "model_inputs"]

Batch = Mapping[str, Tensor]
"""A batch on the device: names to tensors."""


class ObjectiveOutput(NamedTuple):
    """One micro-batch's contribution to a step.

    Attributes:
        loss_sum: The loss summed over the micro-batch's units, a 0-d tensor with a graph.
        tokens: Tokens the micro-batch processed (logged as ``tokens_seen`` and tok/s).
        metrics: Extra values, each a 0-d tensor summed over the units (detached or not:
            the Trainer detaches them); the Trainer logs their mean per unit.
    """

    loss_sum: Tensor
    tokens: int | Tensor
    metrics: Mapping[str, Tensor] = {}


@runtime_checkable
class Objective(Protocol):
    """A loss the Trainer minimises (see the module's docstring).

    Attributes:
        perplexity: Whether ``exp(val_loss)`` means something (a token cross-entropy):
            then evaluation also reports ``val_ppl``.
    """

    perplexity: bool

    def units(self, batch: Batch, /) -> int:
        """How many units (trained tokens, pairs...) the micro-batch weighs.

        Args:
            batch: The micro-batch, on the device.

        Returns:
            A count >= 0; the step's loss is its summed loss over the step's total count.

        Raises:
            DataError: The batch lacks what the objective needs (naming the key).
        """
        ...

    def __call__(self, model: nn.Module, batch: Batch, /) -> ObjectiveOutput:
        """Run ``model`` on ``batch`` and return the summed loss, tokens and metrics.

        Args:
            model: The model to call (wrapped in DDP / FSDP / ``torch.compile`` as
                configured; call it, never its parts, so the wrappers see the forward).
            batch: The micro-batch, on the device.

        Returns:
            The micro-batch's [`ObjectiveOutput`][lego.train.objective.ObjectiveOutput].
        """
        ...


def token_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy and the number of trained labels.

    Args:
        logits: ``(B, T, V)`` (any float dtype; computed in fp32).
        labels: ``(B, T)``, already shifted; [`IGNORE_INDEX`][lego.protocols.IGNORE_INDEX]
            is skipped.

    Returns:
        ``(loss_sum, n_tokens)``: 0-d tensors (float32 and int64).

    Example:
        >>> loss, n = token_loss(torch.zeros(1, 2, 4), torch.tensor([[1, -100]]))
        >>> round(loss.item(), 4), int(n)
        (1.3863, 1)
    """
    vocab = logits.shape[-1]
    loss_sum = fn.cross_entropy(
        logits.float().reshape(-1, vocab),  # (B*T, V)
        labels.reshape(-1),  # (B*T,)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss_sum, (labels != IGNORE_INDEX).sum()


def model_inputs(batch: Batch, extra: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """The keyword arguments of a ``CausalLM`` call found in a batch.

    Args:
        batch: The batch.
        extra: More keys to pass when present (e.g. ``("document_ids",)`` for a model
            that keeps packed documents apart).

    Returns:
        ``attention_mask`` and ``position_ids`` (and the ``extra`` keys) that the batch
        holds.
    """
    return {k: batch[k] for k in ("attention_mask", "position_ids", *extra) if k in batch}


class TokenObjective:
    """Next-token cross-entropy over the trained labels of an ``LMBatch`` (the default).

    One unit per trained label (``labels != -100``), so the step's loss is the mean
    cross-entropy over every trained token of the step.
    """

    perplexity = True

    def units(self, batch: Batch, /) -> int:
        """The trained labels of the batch.

        Args:
            batch: An ``LMBatch`` on the device.

        Returns:
            ``(labels != -100).sum()``.

        Raises:
            DataError: The batch lacks ``input_ids`` or ``labels``.
        """
        if "input_ids" not in batch or "labels" not in batch:
            raise DataError(
                f"a batch must hold input_ids and labels, got keys {sorted(batch)}",
                key="batch",
                hint="yield LMBatch dictionaries",
            )
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def __call__(self, model: nn.Module, batch: Batch, /) -> ObjectiveOutput:
        """The summed cross-entropy of ``model``'s logits against ``labels``.

        Args:
            model: A ``CausalLM`` (possibly wrapped).
            batch: An ``LMBatch``: ``input_ids``, ``labels``, optional ``attention_mask``
                and ``position_ids`` (both passed to the model).

        Returns:
            The summed loss and the trained-token count (no extra metrics).
        """
        logits: Tensor = model(batch["input_ids"], **model_inputs(batch))  # (B, T, V)
        loss_sum, n_tokens = token_loss(logits, batch["labels"])
        return ObjectiveOutput(loss_sum, n_tokens)

    def __repr__(self) -> str:
        return "TokenObjective()"


def as_float(value: int | Tensor) -> float:
    """A count or 0-d tensor as a Python float (one device sync for a tensor).

    Args:
        value: An int or a 0-d tensor.

    Returns:
        The value.
    """
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
