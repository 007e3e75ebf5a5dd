"""The HuggingFace name of each weight: how adapters and tools speak transformers' names.

A model whose modules are named its own way (lego-arch's ``blocks.0.attention.q_proj``) but
whose checkpoints follow a transformers architecture (``model.layers.0.self_attn.q_proj``)
tells the mapping through [`HFNamedModel`][lego.protocols.HFNamedModel]. lego-peft reads and
writes adapters in PEFT's layout with it, so PEFT's key names come from the model itself and
lego-peft needs no model brick::

    >>> class Tiny:
    ...     def hf_parameter_name(self, name: str) -> tuple[str, bool]:
    ...         return "model." + name.replace("blocks.", "layers."), False
    >>> isinstance(Tiny(), HFNamedModel)
    True
    >>> Tiny().hf_parameter_name("blocks.0.q_proj.weight")
    ('model.layers.0.q_proj.weight', False)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["HFNamedModel"]


@runtime_checkable
class HFNamedModel(Protocol):
    """A model that knows the HuggingFace (transformers) name of each of its parameters."""

    def hf_parameter_name(self, name: str, /) -> tuple[str, bool]:
        """Translate one parameter name into the transformers checkpoint's name.

        Args:
            name: A key of the model's own ``state_dict()``, e.g.
                ``"blocks.0.attention.qkv_proj.weight"``.

        Returns:
            ``(hf_name, transposed)``: the name transformers stores the tensor under (e.g.
            ``"transformer.h.0.attn.c_attn.weight"``), and whether it stores the transpose of
            this model's tensor (GPT-2's ``Conv1D`` keeps ``(in, out)`` where ``nn.Linear``
            keeps ``(out, in)``; PEFT calls such layers ``fan_in_fan_out``).

        Raises:
            CompatibilityError: The parameter has no HuggingFace name (a part the
                architecture does not have, or a tensor stacked from several HF tensors).
        """
        ...
