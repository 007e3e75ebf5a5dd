"""Top-k token routing for mixtures of experts, and the load-balancing auxiliary loss.

[`TopKRouter`][lego.layers.TopKRouter] follows transformers' Qwen-MoE / Mixtral order:
logits from a bias-free linear layer, a softmax over all experts in fp32, the top ``k``
probabilities, optionally renormalized to sum to 1. The weight is named ``weight`` with
shape ``(n_experts, d_model)``, as the ``gate`` of a Qwen 3 MoE layer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from lego.layers._tensor_checks import check_dim
from lego.protocols import ConfigError, DataError, check_int

__all__ = ["RouterOutput", "TopKRouter", "load_balancing_loss"]


class RouterOutput(NamedTuple):
    """What [`TopKRouter`][lego.layers.TopKRouter] returns for ``N`` tokens.

    Attributes:
        weights: Mixing weights of the chosen experts, shape ``(N, top_k)``, in the input's
            dtype, best expert first.
        indices: The chosen experts, shape ``(N, top_k)``, int64, distinct per token.
        probs: Softmax over all experts, shape ``(N, n_experts)``, fp32 (float64 for a
            float64 input).
        logits: Router logits, shape ``(N, n_experts)``, the input's dtype.
    """

    weights: torch.Tensor
    indices: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor


class TopKRouter(nn.Module):
    """Choose ``top_k`` of ``n_experts`` experts per token, with mixing weights.

    ``probs = softmax(x @ weight.T)`` in fp32 (float64 for float64 input); the ``top_k``
    largest probabilities and their experts are kept. With ``norm_topk_prob`` the kept
    probabilities are divided by their sum (Mixtral, Qwen 3 MoE), else they are used as they
    are (Qwen 1.5/2 MoE), so they sum to the top-k probability mass.

    Args:
        d_model: Width of the tokens.
        n_experts: Number of experts.
        top_k: Experts per token, ``1 <= top_k <= n_experts``.
        norm_topk_prob: Renormalize the kept probabilities to sum to 1.

    Attributes:
        weight: The router's projection, shape ``(n_experts, d_model)``.

    Raises:
        ConfigError: Sizes below 1, or ``top_k > n_experts``.
    """

    def __init__(self, *, d_model: int, n_experts: int, top_k: int, norm_topk_prob: bool) -> None:
        super().__init__()
        owner = "TopKRouter"
        self.d_model = check_int("d_model", d_model, minimum=1, owner=owner)
        self.n_experts = check_int("n_experts", n_experts, minimum=1, owner=owner)
        self.top_k = check_int("top_k", top_k, minimum=1, owner=owner)
        if top_k > n_experts:
            raise ConfigError(
                f"{owner}: top_k ({top_k}) cannot exceed n_experts ({n_experts})",
                key="top_k",
                hint=f"choose top_k in 1..{n_experts}",
            )
        self.norm_topk_prob = bool(norm_topk_prob)
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default

    def forward(self, x: torch.Tensor, /) -> RouterOutput:
        """Route every token.

        Args:
            x: Tokens, shape ``(N, d_model)`` or ``(B, T, d_model)`` (flattened to
                ``N = B * T``).

        Returns:
            The [`RouterOutput`][lego.layers.router.RouterOutput] for the ``N`` tokens.

        Raises:
            DataError: The last dimension of ``x`` is not ``d_model``.
        """
        check_dim(
            x, name="x", ndims=None, last=self.d_model, owner="TopKRouter", layout="(N, d_model)"
        )
        flat = x.reshape(-1, self.d_model)  # (N, d_model)
        logits = F.linear(flat, self.weight.to(flat.dtype))  # (N, E)
        compute = torch.promote_types(logits.dtype, torch.float32)  # fp32 (fp64 stays)
        probs = torch.softmax(logits, dim=-1, dtype=compute)  # (N, E) fp32
        top_probs, indices = torch.topk(probs, self.top_k, dim=-1)  # (N, k) each
        if self.norm_topk_prob:
            top_probs = top_probs / top_probs.sum(dim=-1, keepdim=True)  # (N, k)
        return RouterOutput(top_probs.to(flat.dtype), indices, probs, logits)

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return (
            f"d_model={self.d_model}, n_experts={self.n_experts}, top_k={self.top_k}, "
            f"norm_topk_prob={self.norm_topk_prob}"
        )


def load_balancing_loss(
    probs: torch.Tensor,
    indices: torch.Tensor,
    *,
    n_experts: int,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Switch-Transformer load-balancing loss ``n_experts * sum_e f_e * P_e``.

    ``f_e`` is the fraction of tokens that have expert ``e`` among their top ``k`` (so the
    ``f_e`` sum to ``k``), ``P_e`` the mean router probability of ``e``. This is the value
    transformers' ``load_balancing_loss_func`` gives for one layer. When either the
    probabilities or the assignment are uniform it equals ``k`` (1 for top-1 routing, as in
    the Switch Transformer paper), its value for perfectly balanced routing. Only ``P_e``
    carries a gradient.

    Args:
        probs: Router probabilities, shape ``(N, n_experts)``.
        indices: Chosen experts, shape ``(N, k)``, int64.
        n_experts: Number of experts.
        token_mask: Optional ``(N,)`` mask of 1 (real token) / 0 (padding); padded tokens
            are left out of both averages.

    Returns:
        The loss, a 0-d fp32 tensor (float64 for float64 probabilities).

    Raises:
        DataError: The shapes disagree, or the mask selects no token.
    """
    if probs.ndim != 2 or probs.shape[1] != n_experts or indices.ndim != 2:
        raise DataError(
            f"load_balancing_loss: expected probs (N, {n_experts}) and indices (N, k), got "
            f"{tuple(probs.shape)} and {tuple(indices.shape)}",
            tensor="probs",
        )
    if indices.shape[0] != probs.shape[0]:
        raise DataError(
            f"load_balancing_loss: probs has {probs.shape[0]} tokens, indices {indices.shape[0]}",
            tensor="indices",
        )
    n_tokens, top_k = indices.shape
    probs = probs.to(torch.promote_types(probs.dtype, torch.float32))
    if token_mask is None:
        counts = torch.bincount(indices.reshape(-1), minlength=n_experts).to(torch.float32)  # (E,)
        fraction = counts / max(n_tokens, 1)  # (E,)
        mean_prob = probs.mean(dim=0) if n_tokens else probs.sum(dim=0)  # (E,)
    else:
        if token_mask.shape != (n_tokens,):
            raise DataError(
                f"load_balancing_loss: token_mask must have shape ({n_tokens},), got "
                f"{tuple(token_mask.shape)}",
                tensor="token_mask",
            )
        mask = token_mask.to(torch.float32)  # (N,)
        total = mask.sum()
        if float(total) <= 0:
            raise DataError("load_balancing_loss: token_mask selects no token", tensor="token_mask")
        slot_weights = mask.repeat_interleave(top_k)  # (N*k,)
        counts = torch.bincount(indices.reshape(-1), weights=slot_weights, minlength=n_experts)
        fraction = counts.to(torch.float32) / total  # (E,)
        mean_prob = (probs * mask[:, None]).sum(dim=0) / total  # (E,)
    return n_experts * torch.sum(fraction * mean_prob)
