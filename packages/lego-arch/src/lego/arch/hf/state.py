"""A model's config and tensors as the HF readers and writers see them.

The readers and writers of [`lego.arch.hf`][lego.arch.hf] work on any ``nn.Module`` whose
``config`` is a [`DecoderConfig`][lego.arch.config.DecoderConfig] and whose state-dict keys
are lego's (a [`DecoderLM`][lego.arch.decoder.DecoderLM]), so they need not import the model
class, and the model's ``save_pretrained`` / ``load_weights`` can call them.
"""

from __future__ import annotations

import torch
from torch import nn

from lego.arch.config import DecoderConfig
from lego.protocols import CompatibilityError

__all__ = ["model_config", "unique_tensors"]


def model_config(model: nn.Module) -> DecoderConfig:
    """The model's ``config``, checked to be a ``DecoderConfig``.

    Args:
        model: A lego model (``DecoderLM``).

    Returns:
        Its config.

    Raises:
        CompatibilityError: The module has no ``DecoderConfig`` as ``config``.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, DecoderConfig):
        raise CompatibilityError(
            f"a {type(model).__name__} has no lego.arch DecoderConfig as its .config",
            hint="save and load lego.arch models (DecoderLM), e.g. from lego.arch.build()",
        )
    return config


def unique_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every distinct tensor of the state dict once, and the keys that alias another.

    A tied head is the token embedding's tensor under a second key: it is listed once
    (under its first key, ``token_embedding.weight``) and its other key is an alias.

    Args:
        model: The model.

    Returns:
        ``(tensors, aliases)``: first key to the tensor (parameters as they are, not
        detached), in state-dict order; alias key to the key it repeats.
    """
    first: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(tensor), key)
        if owner == key:
            tensors[key] = tensor
        else:
            aliases[key] = owner
    return tensors, aliases
