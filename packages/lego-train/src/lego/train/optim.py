"""AdamW with decoupled weight decay and the usual no-decay groups.

Norm scales, biases and embeddings are not decayed by default: every parameter with fewer
than two dimensions, and the weight of every ``nn.Embedding`` (a tied output head shares
that tensor, so it is not decayed either). This is what GPT-2/nanoGPT, LLaMA recipes and
transformers' ``Trainer`` do for norms and biases; embeddings follow the Chinchilla/OLMo
practice.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from lego.train.config import OptimConfig

__all__ = ["param_groups", "build_optimizer", "fused_available"]


def param_groups(
    model: nn.Module, *, weight_decay: float, exempt: bool = True
) -> list[dict[str, object]]:
    """Split the trainable parameters into a decayed and a non-decayed group.

    Args:
        model: The model.
        weight_decay: The decay of the decayed group.
        exempt: Put norms, biases and embeddings into the non-decayed group.

    Returns:
        One or two parameter groups (empty groups are left out), each parameter once.
    """
    embedding_params = {
        id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)
    }
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if exempt and (param.ndim < 2 or id(param) in embedding_params):
            no_decay.append(param)
        else:
            decay.append(param)
    groups: list[dict[str, object]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def fused_available(params: list[nn.Parameter]) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` supports these parameters.

    Args:
        params: The parameters to optimize.

    Returns:
        True when AdamW takes ``fused`` and every parameter is a floating tensor on a device
        with a fused kernel (CUDA, CPU in recent torch, MPS).
    """
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    supported = {"cuda", "cpu", "mps", "xpu"}
    return all(p.is_floating_point() and p.device.type in supported for p in params)


def build_optimizer(
    model: nn.Module, config: OptimConfig, *, params: list[nn.Parameter] | None = None
) -> torch.optim.AdamW:
    """Make AdamW for ``model`` from ``config``.

    Args:
        model: The model whose parameters are grouped (see
            [`param_groups()`][lego.train.optim.param_groups]).
        config: Learning rate, betas, eps, weight decay, fused.
        params: Optimize these tensors instead of the model's, in the same order as
            ``model.parameters()`` (e.g. fp32 master copies); the groups follow the model's.

    Returns:
        The optimizer.
    """
    groups = param_groups(
        model, weight_decay=config.weight_decay, exempt=config.no_decay_norms_biases_embeddings
    )
    if params is not None:
        mapping = {id(p): m for p, m in zip(model.parameters(), params, strict=True)}
        for group in groups:
            members = group["params"]
            assert isinstance(members, list)
            group["params"] = [mapping[id(p)] for p in members]
    flat = [p for group in groups for p in group["params"]]  # type: ignore[attr-defined]
    fused = config.fused if config.fused is not None else fused_available(flat)
    options: dict[str, object] = {}
    if fused:
        options["fused"] = True
    return torch.optim.AdamW(
        groups,  # type: ignore[arg-type,unused-ignore]
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
        **options,  # type: ignore[arg-type,unused-ignore]
    )
