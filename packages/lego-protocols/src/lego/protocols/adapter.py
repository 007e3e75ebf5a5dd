"""Parameter-efficient fine-tuning contract (LoRA, QLoRA and their kin).

An adapter wraps a base [`CausalLM`][lego.protocols.CausalLM] and trains a small set of extra
weights. Its state is saved in PEFT's layout (``adapter_config.json`` +
``adapter_model.safetensors``), so adapters move between LegoLLM and PEFT. Alignment
(DPO, PPO) uses [`Adapter.disabled()`][lego.protocols.Adapter.disabled] to get the frozen reference
model for free.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor  # TYPE_CHECKING only: never imported at run time

__all__ = ["Adapter"]


@runtime_checkable
class Adapter(Protocol):
    """Extra trainable weights attached to a frozen base model."""

    @property
    def adapter_config(self) -> dict[str, Any]:
        """The adapter's settings, in PEFT's ``adapter_config.json`` vocabulary.

        Keys such as ``peft_type``, ``r``, ``lora_alpha`` and ``target_modules``.
        """
        ...

    @property
    def merged(self) -> bool:
        """Whether the adapter's weights are currently folded into the base weights."""
        ...

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """Return only the adapter's tensors, under PEFT-compatible names."""
        ...

    def load_adapter_state_dict(self, state_dict: dict[str, Tensor], /) -> None:
        """Load tensors returned by ``Adapter.adapter_state_dict()`` (all names must match)."""
        ...

    def merge(self) -> None:
        """Fold the adapter into the base weights (faster inference; reversible)."""
        ...

    def unmerge(self) -> None:
        """Undo [`Adapter.merge()`][lego.protocols.Adapter.merge], restoring the base weights."""
        ...

    def disabled(self) -> AbstractContextManager[None]:
        """Return a context manager inside which the model behaves as the bare base model."""
        ...

    def save_adapter(self, path: str | os.PathLike[str]) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``path``.

        Args:
            path: A directory (created if missing).
        """
        ...
