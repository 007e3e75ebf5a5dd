"""The transformer block: attention and feed-forward with residuals and norms.

[`TransformerBlock`][lego.layers.TransformerBlock] wires any conforming attention, norms and
feed-forward (anything satisfying [`Attention`][lego.protocols.Attention],
[`Norm`][lego.protocols.Norm] and [`FeedForward`][lego.protocols.FeedForward]) in one of three
orders:

- pre-norm (GPT-2, Llama, Qwen): ``h = x + attn(norm1(x))``, ``y = h + ffn(norm2(h))``;
- post-norm (the original transformer, BERT): ``h = norm1(x + attn(x))``,
  ``y = norm2(h + ffn(h))``;
- parallel residual (GPT-J, GPT-NeoX, Falcon): ``y = x + attn(norm1(x)) + ffn(norm2(x))``, or
  with one shared norm ``n = norm1(x)``, ``y = x + attn(n) + ffn(n)`` when ``ffn_norm`` is
  None (GPT-J).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lego.protocols import (
    Attention,
    CompatibilityError,
    ConfigError,
    FeedForward,
    LayerKVCache,
    Norm,
    check_probability,
)
from lego.protocols import did_you_mean as _did_you_mean

__all__ = ["NormPosition", "TransformerBlock"]


@functools.cache
def _takes_document_ids(attention_type: type[Attention]) -> bool:
    """Whether ``attention_type.forward`` takes a ``document_ids`` keyword (or ``**kwargs``)."""
    try:
        parameters = inspect.signature(attention_type.forward).parameters.values()
    except (TypeError, ValueError):  # a signature Python cannot read: let the call decide
        return True
    return any(p.name == "document_ids" or p.kind is p.VAR_KEYWORD for p in parameters)


NormPosition = Literal["pre", "post"]
"""Where the norms sit: before each sub-layer (``"pre"``) or after each residual add."""

_NORM_POSITIONS: tuple[str, ...] = ("pre", "post")


class TransformerBlock(nn.Module):
    """One transformer block built from its pieces.

    Args:
        attention: Causal self-attention (any [`Attention`][lego.protocols.Attention]).
        attention_norm: The norm before attention (pre-norm), after the attention residual
            (post-norm), or the first/shared norm (parallel residual).
        feed_forward: The position-wise feed-forward (MLP, gated MLP, mixture of experts).
        ffn_norm: The norm of the feed-forward branch. None only with
            ``parallel_residual=True``, meaning both branches share ``attention_norm``.
            For no norm at all, pass ``torch.nn.Identity()``.
        norm_position: ``"pre"`` or ``"post"``.
        parallel_residual: Add attention and feed-forward of the same input in parallel
            (needs ``norm_position="pre"``).
        dropout: Residual dropout on each branch's output before it is added, in
            ``[0, 1)``; active in training mode only.
        activation_checkpointing: Recompute the block's activations in the backward pass
            instead of storing them (``torch.utils.checkpoint``, non-reentrant). Applied
            only in training mode with gradients enabled and no KV cache; outputs and
            gradients are identical to the plain forward (dropout masks included).

    Raises:
        ConfigError: An unknown ``norm_position``, ``ffn_norm=None`` without parallel
            residual, parallel residual with post-norm, or dropout outside ``[0, 1)``.

    Example:
        >>> from lego.layers import CausalSelfAttention, RMSNorm, GatedMLP
        >>> block = TransformerBlock(
        ...     attention=CausalSelfAttention.build(d_model=64, n_heads=4),
        ...     attention_norm=RMSNorm(dim=64),
        ...     feed_forward=GatedMLP.build(d_model=64, d_ff=128),
        ...     ffn_norm=RMSNorm(dim=64),
        ... )
        >>> block(torch.randn(2, 5, 64)).shape
        torch.Size([2, 5, 64])
    """

    def __init__(
        self,
        *,
        attention: Attention,
        attention_norm: Norm,
        feed_forward: FeedForward,
        ffn_norm: Norm | None,
        norm_position: NormPosition = "pre",
        parallel_residual: bool = False,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if norm_position not in _NORM_POSITIONS:
            raise ConfigError(
                f"{owner}: unknown norm_position {norm_position!r}",
                key="norm_position",
                hint=_did_you_mean(str(norm_position), _NORM_POSITIONS),
            )
        if parallel_residual and norm_position != "pre":
            raise ConfigError(
                f"{owner}: parallel_residual needs norm_position='pre', got {norm_position!r}",
                key="parallel_residual",
                hint="parallel-residual models (GPT-J, GPT-NeoX) normalize before the branches",
            )
        if ffn_norm is None and not parallel_residual:
            raise ConfigError(
                f"{owner}: ffn_norm is None but parallel_residual is False",
                key="ffn_norm",
                hint="only a parallel block can share attention_norm; pass "
                "torch.nn.Identity() for a feed-forward without norm",
            )
        self.dropout = check_probability("dropout", dropout, owner=owner)
        self.norm_position: NormPosition = norm_position
        self.parallel_residual = bool(parallel_residual)
        self.activation_checkpointing = bool(activation_checkpointing)
        self.attention = attention
        self.attention_norm = attention_norm
        self.feed_forward = feed_forward
        self.ffn_norm = ffn_norm

    def extra_repr(self) -> str:
        """The wiring, for ``print(block)``."""
        return (
            f"norm_position={self.norm_position!r}, parallel_residual={self.parallel_residual}, "
            f"dropout={self.dropout}, activation_checkpointing={self.activation_checkpointing}"
        )

    def forward(
        self,
        x: Tensor,
        /,
        *,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Apply the block.

        Args:
            x: Residual stream, shape ``(B, T, d_model)``.
            position_ids: Positions of the ``T`` tokens, ``(B, T)`` or ``(T,)``; passed to
                the attention.
            attention_mask: 1 for real tokens, 0 for padding, ``(B, S)``; passed to the
                attention.
            kv_cache: This block's layer cache; passed to the attention.
            document_ids: The document of each token of packed rows, ``(B, T)`` (negative
                on padding); passed to the attention, which keeps the documents apart (see
                [`CausalSelfAttention`][lego.layers.CausalSelfAttention]). None means one
                sequence per row.

        Returns:
            The new residual stream, shape ``(B, T, d_model)``.

        Raises:
            CompatibilityError: ``document_ids`` given but the attention's ``forward``
                takes no ``document_ids`` keyword.
        """
        if document_ids is not None and not torch.compiler.is_compiling():
            self._check_document_ids_accepted()  # eager only: a signature breaks a graph
        if (
            self.activation_checkpointing
            and self.training
            and kv_cache is None
            and torch.is_grad_enabled()
        ):
            out = checkpoint(
                self._forward,
                x,
                position_ids,
                attention_mask,
                None,
                document_ids,
                use_reentrant=False,
            )  # (B, T, d_model)
            assert isinstance(out, Tensor)
            return out
        return self._forward(
            x, position_ids, attention_mask, kv_cache, document_ids
        )  # (B, T, d_model)

    def _check_document_ids_accepted(self) -> None:
        """Refuse ``document_ids`` for an attention whose forward cannot take them."""
        if not _takes_document_ids(type(self.attention)):
            raise CompatibilityError(
                f"{type(self).__name__}: document_ids were given, but the attention "
                f"{type(self.attention).__name__}.forward takes no document_ids keyword, so "
                "it cannot keep packed documents apart",
                hint="use lego.layers.CausalSelfAttention (or an attention whose forward "
                "takes document_ids), or do not pass document_ids",
            )

    def _drop(self, x: Tensor) -> Tensor:
        """Residual dropout (identity in eval mode or with ``dropout=0``)."""
        if self.dropout and self.training:
            return F.dropout(x, p=self.dropout, training=True)
        return x

    def _forward(
        self,
        x: Tensor,
        position_ids: Tensor | None,
        attention_mask: Tensor | None,
        kv_cache: LayerKVCache | None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        def attend(h: Tensor) -> Tensor:
            if document_ids is None:
                out = self.attention(
                    h, position_ids=position_ids, attention_mask=attention_mask, kv_cache=kv_cache
                )  # (B, T, d_model)
            else:
                # An optional keyword the Attention protocol does not name (checked above).
                packed: Callable[..., Tensor] = self.attention
                out = packed(
                    h,
                    position_ids=position_ids,
                    attention_mask=attention_mask,
                    kv_cache=kv_cache,
                    document_ids=document_ids,
                )  # (B, T, d_model)
            return self._drop(out)

        if self.parallel_residual:
            a_in = self.attention_norm(x)  # (B, T, d_model)
            f_in = a_in if self.ffn_norm is None else self.ffn_norm(x)  # (B, T, d_model)
            return x + attend(a_in) + self._drop(self.feed_forward(f_in))  # (B, T, d_model)
        assert self.ffn_norm is not None  # checked in __init__
        if self.norm_position == "pre":
            h = x + attend(self.attention_norm(x))  # (B, T, d_model)
            return h + self._drop(self.feed_forward(self.ffn_norm(h)))  # (B, T, d_model)
        h = self.attention_norm(x + attend(x))  # (B, T, d_model)
        return self.ffn_norm(h + self._drop(self.feed_forward(h)))  # (B, T, d_model)
