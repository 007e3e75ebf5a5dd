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

[`OutputHead`][lego.eval.scoring.OutputHead] spares the rest of the logits: a model whose
last step is a linear output head ``lm_head`` (lego-arch's ``DecoderLM``, transformers'
``*ForCausalLM``) is run with the head applied to no position, and the head is then applied
to the chosen positions' last hidden states only. For GPT-2 124M the head is about a third
of a token's multiply-adds, and a ``(B, T, vocab)`` float32 logits tensor (200 MB for 1024
tokens) is never written. Whether a model qualifies is checked on a 3-token probe (the
logits both ways must agree), with a fallback to the full forward.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lego.protocols import CausalLM, CompatibilityError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["DEFAULT_CHUNK_SIZE", "OutputHead", "eval_mode", "model_device", "position_nll"]

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


_VERDICTS: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Linear, bool]] = (
    weakref.WeakKeyDictionary()
)
"""Per model: the head probed and whether it qualified (a probe is a forward pass)."""


class OutputHead:
    """A model's logits at chosen positions only, when its output head allows it.

    Built on a model, it decides once whether the model's logits are exactly its
    ``lm_head`` (an ``nn.Linear``) applied to the hidden state the head receives: a 3-token
    probe is run normally and with the head applied to no position, and the head's logits
    at the probe's positions must match the full ones (1e-4 relative); the verdict is kept
    for the model (while its ``lm_head`` is the same module). If so,
    ``logits_at()`` runs the model with the head
    skipped and applies it to the chosen rows; otherwise it runs the full forward and picks
    the rows (a model without ``lm_head``, one that scales or caps the logits after it).

    Args:
        model: Any causal LM.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Tiny(nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.embed, self.lm_head = nn.Embedding(10, 4), nn.Linear(4, 10)
        ...     def forward(self, ids, **kwargs):
        ...         return self.lm_head(self.embed(ids))
        >>> model = Tiny()
        >>> head = OutputHead(model)  # type: ignore[arg-type]
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> rows = head.logits_at(ids, torch.tensor([0, 2]))  # (2, 10)
        >>> head.partial, torch.allclose(rows, model(ids)[0, [0, 2]])
        (True, True)
    """

    def __init__(self, model: CausalLM) -> None:
        self.model = model
        head = getattr(model, "lm_head", None)
        self._head: nn.Linear | None = None
        if isinstance(model, nn.Module) and isinstance(head, nn.Linear):
            known = _VERDICTS.get(model)
            if known is None or known[0] is not head:
                self._head = head
                known = (head, self._probe(head))
                _VERDICTS[model] = known
            self._head = head if known[1] else None

    @property
    def partial(self) -> bool:
        """Whether the head is applied to the chosen positions only."""
        return self._head is not None

    def _probe(self, head: nn.Linear) -> bool:
        vocab = int(head.out_features)
        device = model_device(self.model)
        ids = (torch.arange(3, device=device) % vocab)[None]  # (1, 3)
        try:
            with torch.inference_mode():
                full = self.model(ids)  # (1, 3, V)
                rows = self.logits_at(ids, torch.arange(3, device=device))  # (3, V)
        except (RuntimeError, IndexError, ValueError, CompatibilityError):
            return False
        if full.shape != (1, 3, rows.shape[-1]):
            return False
        scale = float(full.abs().max()) + 1.0
        return bool(torch.allclose(full[0].float(), rows.float(), rtol=1e-4, atol=1e-5 * scale))

    def logits_at(self, input_ids: Tensor, positions: Tensor, **kwargs: Any) -> Tensor:
        """Logits at flat positions ``b * T + t`` of the forward pass on ``input_ids``.

        Args:
            input_ids: Token ids, shape ``(B, T)``.
            positions: Flat indices into the ``B x T`` positions, shape ``(M,)``, long.
            **kwargs: Passed to the model (``attention_mask``, ``position_ids``,
                ``kv_cache``).

        Returns:
            Logits, shape ``(M, vocab)``, in the model's dtype.

        Raises:
            CompatibilityError: The model returned logits of another shape than
                ``(B, T, vocab)`` (with the head skipped: ``(B, 0, vocab)``).
        """
        b, t = input_ids.shape
        head = self._head
        if head is None:
            logits: Tensor = self.model(input_ids, **kwargs)  # (B, T, V)
            if logits.shape[:2] != (b, t):
                raise CompatibilityError(
                    f"the model returned logits of shape {tuple(logits.shape)} for inputs "
                    f"of shape {(b, t)}",
                    tensor="logits",
                    hint="the model must return (B, T, vocab_size) logits",
                )
            flat = logits.reshape(b * t, -1)  # (B*T, V)
            return flat.index_select(0, positions.to(flat.device))
        seen: list[Tensor] = []

        def skip(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            seen.append(args[0])
            return (args[0][..., :0, :], *args[1:])  # (B, 0, d): the head runs on nothing

        handle = head.register_forward_pre_hook(skip)
        try:
            empty: Tensor = self.model(input_ids, **kwargs)  # (B, 0, V)
        finally:
            handle.remove()
        if len(seen) != 1 or seen[0].shape[:2] != (b, t) or empty.shape[:2] != (b, 0):
            raise CompatibilityError(
                f"the model's lm_head saw hidden states of shape "
                f"{[tuple(h.shape) for h in seen]} for inputs of shape {(b, t)}",
                tensor="lm_head",
                hint="the output head must be applied once, to (B, T, d_model) states",
            )
        hidden = seen[0].reshape(b * t, -1)  # (B*T, d_model)
        out: Tensor = head(hidden.index_select(0, positions.to(hidden.device)))  # (M, V)
        return out
