"""Weight initialization: normal init and GPT-2's scaled residual projections.

GPT-2 (and nanoGPT) initialize every matrix from ``N(0, 0.02)``, every bias to zero, every
norm to ones, and the projections that write into the residual stream (attention's output
projection and the MLP's down projection) from ``N(0, 0.02 / sqrt(2 * n_layers))``, so the
residual stream's variance does not grow with depth (each block adds two such writes).

The helpers select parameters by name, so they work on any module tree:

    init_normal_(model, std=0.02)
    scale_residual_projections_(model, n_layers=12, std=0.02)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

import torch
from torch import nn

from lego.protocols import check_float, check_int

__all__ = [
    "RESIDUAL_PROJECTIONS",
    "init_normal_",
    "scale_residual_projections_",
    "init_gpt2_",
    "is_residual_projection",
]

RESIDUAL_PROJECTIONS: frozenset[str] = frozenset(
    {"out_proj", "proj", "down_proj", "c_proj", "o_proj"}
)
"""Names of the modules (or stacked expert parameters) that write into the residual stream:
attention's ``out_proj`` (transformers: ``o_proj`` / ``c_proj``), the MLP's ``proj`` and the
gated MLP's ``down_proj`` (also the stacked ``down_proj`` of
[`GatedExperts`][lego.layers.GatedExperts])."""

ParameterFilter = Callable[[str, nn.Parameter], bool]
"""A predicate on ``(qualified parameter name, parameter)``."""


def is_residual_projection(name: str, names: Collection[str] = RESIDUAL_PROJECTIONS) -> bool:
    """Tell whether a parameter is the weight of a residual projection.

    True for ``"...<module>.weight"`` where ``<module>`` is in ``names``, and for a stacked
    parameter named like one (``"...experts.down_proj"``). Biases are never selected.

    Args:
        name: A qualified parameter name, e.g. ``"blocks.3.attention.out_proj.weight"``.
        names: The module names that count as residual projections.

    Returns:
        Whether the parameter matches.
    """
    parts = name.split(".")
    if parts[-1] == "weight":
        return len(parts) >= 2 and parts[-2] in names
    return parts[-1] in names


@torch.no_grad()
def init_normal_(
    module: nn.Module,
    *,
    std: float = 0.02,
    zero_bias: bool = True,
    select: ParameterFilter | None = None,
) -> nn.Module:
    """Initialize every matrix from ``N(0, std)`` and (optionally) every bias to zero.

    Parameters with two or more dimensions (linear and embedding weights, stacked expert
    weights, router weights) are drawn from the normal distribution; parameters named
    ``bias`` are zeroed; other 1-D parameters (norm scales) are left alone, as are
    parameters rejected by ``select``. The ``padding_idx`` row of an ``nn.Embedding`` is
    zeroed again afterwards. Shared (tied) parameters are initialized once.

    Args:
        module: The module tree to initialize, in place.
        std: Standard deviation, > 0.
        zero_bias: Set biases to zero.
        select: Optional predicate on ``(name, parameter)``; only matching parameters are
            touched.

    Returns:
        ``module``, for chaining.

    Raises:
        ConfigError: ``std <= 0``.
    """
    std = check_float("std", std, low=0.0, low_open=True, owner="init_normal_")
    for name, param in module.named_parameters():
        if select is not None and not select(name, param):
            continue
        if param.ndim >= 2:
            nn.init.normal_(param, mean=0.0, std=std)
        elif zero_bias and name.rsplit(".", 1)[-1] == "bias":
            nn.init.zeros_(param)
    for sub in module.modules():
        if isinstance(sub, nn.Embedding) and sub.padding_idx is not None:
            sub.weight[sub.padding_idx].zero_()
    return module


@torch.no_grad()
def scale_residual_projections_(
    module: nn.Module,
    *,
    n_layers: int,
    std: float = 0.02,
    select: ParameterFilter | Collection[str] = RESIDUAL_PROJECTIONS,
) -> list[str]:
    """Re-draw the residual projections from ``N(0, std / sqrt(2 * n_layers))`` (GPT-2).

    Args:
        module: The module tree, in place.
        n_layers: Number of transformer blocks.
        std: The base standard deviation (the one given to
            [`init_normal_()`][lego.layers.init.init_normal_]).
        select: Module names that count as residual projections (see
            [`is_residual_projection()`][lego.layers.init.is_residual_projection]) or a
            predicate on ``(name, parameter)``.

    Returns:
        The qualified names of the parameters re-drawn (check it: an empty list usually
        means the names did not match).

    Raises:
        ConfigError: ``n_layers < 1`` or ``std <= 0``.
    """
    check_int("n_layers", n_layers, minimum=1, owner="scale_residual_projections_")
    std = check_float("std", std, low=0.0, low_open=True, owner="scale_residual_projections_")
    scaled_std = std / math.sqrt(2 * n_layers)
    if callable(select):
        predicate: ParameterFilter = select
    else:
        names = frozenset(select)

        def predicate(name: str, param: nn.Parameter) -> bool:
            return is_residual_projection(name, names)

    done: list[str] = []
    for name, param in module.named_parameters():
        if predicate(name, param):
            nn.init.normal_(param, mean=0.0, std=scaled_std)
            done.append(name)
    return done


def init_gpt2_(module: nn.Module, *, n_layers: int, std: float = 0.02) -> nn.Module:
    """Initialize a model as GPT-2 does: normal init, then scaled residual projections.

    Runs [`init_normal_()`][lego.layers.init.init_normal_] then
    [`scale_residual_projections_()`][lego.layers.init.scale_residual_projections_].

    Args:
        module: The model, in place.
        n_layers: Number of transformer blocks.
        std: The base standard deviation.

    Returns:
        ``module``, for chaining.

    Raises:
        ConfigError: ``n_layers < 1`` or ``std <= 0``.
    """
    init_normal_(module, std=std)
    scale_residual_projections_(module, n_layers=n_layers, std=std)
    return module
