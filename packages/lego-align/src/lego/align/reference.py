"""The frozen reference a DPO, GRPO or PPO trainer compares its policy with.

Three trainers need one, and build it the same way:

- ``"adapter"`` (LoRA / QLoRA): no second model; the policy with its adapter disabled
  (lego-peft's ``LoraModel.disabled()``) is the reference, so nothing is copied;
- ``"copy"`` (full fine-tuning): a frozen deep copy of the policy as it was given. Under
  ``torchrun`` every rank's copy is made equal to rank 0's (as DDP does with the policy),
  or sharded like the policy under FSDP2;
- an explicit ``reference_model`` (``"model"``): its vocabulary must be the policy's.

DPO also has ``"precomputed"`` (reference log-probabilities cached on disk), which needs no
module here.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from lego.peft import LoraModel
from lego.protocols import CompatibilityError, ConfigError
from lego.train.config import Strategy
from lego.train.distributed import DistInfo, wrap_model

__all__ = ["check_vocabulary", "vocab_size", "frozen_reference"]


def vocab_size(model: nn.Module) -> int | None:
    """A model's ``config.vocab_size``, or None when it has none.

    Args:
        model: Any module.

    Returns:
        The vocabulary size, or None.
    """
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    return value if isinstance(value, int) else None


def check_vocabulary(
    policy: nn.Module,
    reference: nn.Module,
    *,
    key: str = "reference_model",
    what: str = "reference model",
) -> None:
    """Refuse a second model whose vocabulary is not the policy's.

    Args:
        policy: The policy.
        reference: The other model (a reference, a reward model...).
        key: The setting that named it, for the message.
        what: What it is, in words.

    Raises:
        CompatibilityError: A model without ``config.vocab_size``, or another vocabulary
            (their log-probabilities or scores would not be comparable).
    """
    mine, theirs = vocab_size(policy), vocab_size(reference)
    if mine is None or theirs is None:
        raise CompatibilityError(
            f"cannot compare the vocabularies of the policy and the {what} (no config.vocab_size)",
            key=key,
            hint="give models whose config has vocab_size",
        )
    if mine != theirs:
        raise CompatibilityError(
            f"the {what}'s vocabulary ({theirs} ids) differs from the policy's ({mine} ids): "
            "their log-probabilities are not comparable",
            key=key,
            hint="use a model with the policy's tokenizer (e.g. the policy's base model)",
        )


def frozen_reference(
    policy: nn.Module,
    *,
    mode: str,
    reference_model: nn.Module | None,
    adapter: LoraModel | None,
    device: torch.device,
    info: DistInfo,
    strategy: Strategy,
    alternatives: str = "reference: copy",
) -> tuple[str, nn.Module | None]:
    """Resolve the reference: the mode in use and the frozen module (None: none needed).

    Args:
        policy: The prepared policy (a ``LoraModel`` for LoRA / QLoRA), not yet wrapped.
        mode: The configured mode, ``"auto"`` already resolved: ``"adapter"``, ``"copy"``
            or one that needs no module (``"precomputed"``, ``"none"``).
        reference_model: An explicit reference (its vocabulary already checked), or None.
        adapter: The policy's adapter when it has one.
        device: Where the reference runs.
        info: The process group.
        strategy: The resolved training strategy (``single``, ``ddp`` or ``fsdp``).
        alternatives: What else the user may configure, for the message.

    Returns:
        ``(mode, module)``: ``"model"`` with ``reference_model``, ``"copy"`` with a frozen
        copy, ``"adapter"`` / others with None.

    Raises:
        ConfigError: ``"adapter"`` for a policy without a LoRA adapter.
    """
    if reference_model is not None:
        mode, reference = "model", reference_model
    elif mode == "adapter":
        if adapter is None:
            raise ConfigError(
                "reference: adapter, but the model holds no LoRA adapter",
                key="reference",
                hint=f"use finetune: lora / qlora, or {alternatives}",
            )
        return mode, None
    elif mode == "copy":
        reference = copy.deepcopy(policy)
    else:
        return mode, None
    reference.requires_grad_(False).eval().to(device)
    if mode == "copy" and strategy == "fsdp" and info.distributed:
        reference = wrap_model(reference, "fsdp", device)  # 1/world of the copy per rank
    elif mode == "copy" and info.distributed:
        with torch.no_grad():  # every rank holds rank 0's copy, as DDP does with the policy
            for tensor in reference.state_dict().values():
                dist.broadcast(tensor, src=0)
    return mode, reference
