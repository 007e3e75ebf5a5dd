"""Causal language model contracts: what lego-train, lego-generate and lego-peft need.

lego-generate works on any [`CausalLM`][lego.protocols.CausalLM]; when the model is also a
[`CachedCausalLM`][lego.protocols.CachedCausalLM] it decodes incrementally on the model's own
preallocated cache, otherwise it recomputes the whole prefix each step.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping
    from pathlib import Path

    import torch  # TYPE_CHECKING only: never imported at run time
    from torch import Tensor  # TYPE_CHECKING only: never imported at run time

    from lego.protocols.kv_cache import KVCache

__all__ = [
    "ModelConfigLike",
    "CausalLM",
    "CachedCausalLM",
    "PretrainedModel",
    "accepts_document_ids",
]


@runtime_checkable
class ModelConfigLike(Protocol):
    """What every model configuration tells: vocabulary size, context length, its data.

    [`lego.protocols.ModelConfig`][lego.protocols.ModelConfig] satisfies it; so does any object with
    these members.
    """

    @property
    def vocab_size(self) -> int:
        """Number of token ids the model embeds and predicts."""
        ...

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt plus generated tokens) the model supports."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-compatible data."""
        ...


@runtime_checkable
class CausalLM(Protocol):
    """A decoder-only language model: token ids in, next-token logits out.

    Packed sequences. The ``(B, S)`` ``attention_mask`` marks padding only; it cannot say
    where the documents packed into one row meet. A model that can keep them apart may
    accept one more optional keyword, ``document_ids``: ``(B, T)`` integers, ``0, 1, ...``
    per document of a row and ``-1`` on padding, after which every token attends only to
    the tokens of its own document before it (lego-arch's ``DecoderLM`` does). It is not
    part of this contract: callers check the model's ``forward`` for it
    ([`accepts_document_ids()`][lego.protocols.accepts_document_ids]) and pass it with a
    ``kv_cache`` only when the cache is empty (a packed prefill: the cache then holds the
    packed row, and [`KVCache.copy_rows`][lego.protocols.KVCache.copy_rows] moves each
    document's positions to a row of its own).
    """

    @property
    def config(self) -> ModelConfigLike:
        """The model's configuration."""
        ...

    def __call__(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """Compute next-token logits for every position.

        Args:
            input_ids: Token ids, shape ``(B, T)``, dtype long.
            attention_mask: 1 for real tokens and 0 for padding, shape ``(B, S)`` where
                ``S`` is the cached length plus ``T``; None means no padding.
            position_ids: Positions of the ``T`` tokens, shape ``(B, T)``; None means
                ``cache.seq_len + arange(T)`` (or ``arange(T)`` without a cache).
            kv_cache: A cache from
                [`CachedCausalLM.new_kv_cache()`][lego.protocols.CachedCausalLM.new_kv_cache]; the
                new keys and values are appended to it.

        Returns:
            Logits, shape ``(B, T, vocab_size)``.
        """
        ...

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """Same as calling the model (``torch.nn.Module`` routes ``__call__`` here)."""
        ...


@runtime_checkable
class CachedCausalLM(CausalLM, Protocol):
    """A causal LM that can allocate its own key/value cache for incremental decoding."""

    def new_kv_cache(
        self,
        batch_size: int,
        max_seq_len: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """Allocate an empty cache for ``batch_size`` rows of up to ``max_seq_len`` positions.

        Args:
            batch_size: Number of sequences decoded together.
            max_seq_len: Prompt length plus new tokens, at most ``config.context_length``.
            dtype: Cache dtype; None means the model's parameter dtype.
            device: Cache device; None means the model's device.

        Returns:
            An empty cache (``seq_len == 0``) with one layer cache per block.
        """
        ...


@runtime_checkable
class PretrainedModel(Protocol):
    """A model that writes and reads its own model directory.

    A model directory is ``config.json`` + ``model.safetensors`` (sharded with
    ``model.safetensors.index.json`` above a size), in the model family's own format:
    lego-arch models write HuggingFace-compatible directories that transformers loads.
    lego-train saves checkpoints through this protocol when the model implements it (and a
    plain safetensors state dict otherwise); lego-generate's command line reads the
    directories back.
    """

    def save_pretrained(
        self, path: str | os.PathLike[str], /, *, state_dict: Mapping[str, Tensor] | None = None
    ) -> Path:
        """Write the model directory.

        Args:
            path: The directory (created with its parents when missing).
            state_dict: Tensors to write instead of the module's own, under the module's
                ``state_dict()`` names (e.g. a consolidated FSDP state gathered on rank 0).

        Returns:
            The directory.
        """
        ...

    def load_weights(self, path: str | os.PathLike[str], /) -> None:
        """Load a model directory's weights into this model, in place.

        Args:
            path: A directory written by ``save_pretrained`` (or the family's own tool).

        Raises:
            CompatibilityError: When the directory's configuration or tensors do not fit
                this model (listing every missing, unexpected and mis-shaped tensor).
        """
        ...


def accepts_document_ids(model: object) -> bool:
    """Whether a model keeps packed documents apart: its ``forward`` takes ``document_ids``.

    The ``CausalLM`` contract passes a ``(B, S)`` padding mask only, which cannot say where
    packed documents meet; a model that can keep them apart declares a keyword
    ``document_ids`` (``(B, T)`` integers: ``0, 1, ...`` per document of a row, ``-1`` on
    padding) in its ``forward``. A wrapper whose ``forward`` takes only ``**kwargs``
    (lego-peft's ``LoraModel``) is looked through to its ``model`` attribute. Reads
    signatures only (no torch import).

    Args:
        model: The model.

    Returns:
        True when ``document_ids`` reaches a ``forward`` that names it.

    Example:
        >>> class Packed:
        ...     def forward(self, input_ids, *, kv_cache=None, document_ids=None): ...
        >>> class Wrapper:
        ...     def __init__(self, model): self.model = model
        ...     def forward(self, *args, **kwargs): ...
        >>> class Plain:
        ...     def forward(self, input_ids, *, kv_cache=None): ...
        >>> accepts_document_ids(Wrapper(Packed())), accepts_document_ids(Plain())
        (True, False)
    """
    seen: set[int] = set()
    current: Any = model
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        forward = getattr(current, "forward", None)
        if not callable(forward):
            return False
        try:
            parameters = inspect.signature(forward).parameters
        except (TypeError, ValueError):
            return False
        if "document_ids" in parameters:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return False
        current = getattr(current, "model", None)
    return False
