"""Modules trained in full (PEFT's ``modules_to_save``): ``ModulesToSaveWrapper``.

PEFT's ``modules_to_save`` (a new classification head, a norm, the output head): the
module is replaced by a wrapper holding the untouched original and a trainable copy. The
copy computes (and trains, and is saved with the adapter); the original comes back inside
[`LoraModel.disabled()`][lego.peft.model.LoraModel.disabled]. A copy of a head tied to the
embedding is untied (it trains alone), as in PEFT.

    >>> from torch import nn
    >>> head = nn.Linear(4, 3)
    >>> wrapper = ModulesToSaveWrapper(original_module=head)
    >>> wrapper.modules_to_save.weight.requires_grad, head.weight is wrapper.modules_to_save.weight
    (True, False)
    >>> wrapper.out_features  # other attributes come from the module in use
    3
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

__all__ = ["ModulesToSaveWrapper"]


class ModulesToSaveWrapper(nn.Module):
    """The original module and its trainable copy; the copy is used unless ``disabled``.

    Args:
        original_module: The module to train in full. It is kept as it is (frozen by
            [`apply_lora()`][lego.peft.model.apply_lora]); a deep copy of it, every
            parameter trainable, takes its place.

    Attributes:
        original_module: The untouched module.
        modules_to_save: The trainable copy.
        disabled: When True the original computes.
    """

    def __init__(self, *, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = copy.deepcopy(original_module)
        for parameter in self.modules_to_save.parameters():
            parameter.requires_grad_(True)
        self.disabled = False

    @property
    def active_module(self) -> nn.Module:
        """The module that computes now: the copy, or the original while disabled."""
        return self.original_module if self.disabled else self.modules_to_save

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the active module with the same arguments.

        Args:
            *args: Whatever the wrapped module takes.
            **kwargs: Whatever the wrapped module takes.

        Returns:
            What the active module returns.
        """
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper lacks (``weight``, ``out_features``) come from the active one."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            key = "original_module" if self.__dict__.get("disabled", False) else "modules_to_save"
            if key not in modules:
                raise
            return getattr(modules[key], name)
