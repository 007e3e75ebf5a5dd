"""A mixture-of-experts feed-forward with vectorized top-k dispatch.

[`MoEFeedForward`][lego.layers.MoEFeedForward] satisfies
[`FeedForward`][lego.protocols.FeedForward]. Its semantics are those of transformers'
``Qwen3MoeSparseMoeBlock`` (softmax over all experts, top-k, optional renormalization, the
weighted sum of the chosen experts' outputs), plus an optional shared expert (Qwen 2 MoE,
DeepSeek) and the load-balancing auxiliary loss.

Dispatch, for ``N`` tokens and ``k`` experts per token:

1. the ``N * k`` (token, expert) slots are sorted by expert with one stable ``argsort``;
2. the token rows are gathered in that order, so each expert's tokens are contiguous;
3. the expert bank runs each expert once on its slice (a loop over experts, not tokens);
4. the outputs are put back in slot order by one gather with the inverse permutation and
   mixed with the routing weights by one batched matmul, ``(N, 1, k) @ (N, k, D)``.

There is no scatter-add, so the result is deterministic on every device. One host sync per
call reads the per-expert counts (the slice boundaries).
"""

from __future__ import annotations

import torch
from torch import nn

from lego.layers._tensor_checks import check_dim
from lego.layers.experts import ExpertList, GatedExperts
from lego.layers.router import RouterOutput, TopKRouter, load_balancing_loss
from lego.protocols import ConfigError, FeedForward, check_float

__all__ = ["MoEFeedForward"]


class MoEFeedForward(nn.Module):
    """Top-k mixture of experts: ``y = sum_j w_j * expert_{i_j}(x) [+ shared(x)]``.

    After every forward the module holds, for the last call:

    - ``balance_loss``: the load-balancing loss ``n_experts * sum_e f_e * P_e`` (see
      [`load_balancing_loss()`][lego.layers.router.load_balancing_loss]), a 0-d fp32 tensor
      with a gradient to the router; ``top_k`` for balanced routing;
    - ``aux_loss``: ``aux_loss_coef * balance_loss``, the term a trainer adds to the language
      modeling loss (a trainer sums it over the layers, e.g. over every module that has an
      ``aux_loss``);
    - ``router_logits``: ``(N, n_experts)``, for a z-loss or monitoring;
    - ``expert_counts``: ``(n_experts,)`` int64, how many tokens each expert received.

    Padding tokens are routed and counted like the others; to leave them out of the loss,
    recompute it from ``router_logits`` with a ``token_mask``.

    Args:
        router: The [`TopKRouter`][lego.layers.TopKRouter].
        experts: The expert bank: [`GatedExperts`][lego.layers.GatedExperts] (stacked
            weights) or [`ExpertList`][lego.layers.ExpertList] (any feed-forward modules).
        shared_expert: A feed-forward applied to every token and added to the routed
            output, or None.
        shared_expert_gate: With a shared expert, an optional module mapping
            ``(B, T, d_model)`` to ``(B, T, 1)``; its sigmoid scales the shared output
            (Qwen 2 MoE). None adds the shared output as it is (DeepSeek).
        aux_loss_coef: The weight of the balance loss in ``aux_loss`` (Switch: 0.01,
            Qwen 3 MoE: 0.001, Mixtral: 0.02), >= 0.

    Raises:
        ConfigError: The router and the expert bank disagree on the number of experts, a
            negative coefficient, or a gate without a shared expert.
    """

    balance_loss: torch.Tensor | None
    aux_loss: torch.Tensor | None
    router_logits: torch.Tensor | None
    expert_counts: torch.Tensor | None

    def __init__(
        self,
        *,
        router: TopKRouter,
        experts: GatedExperts | ExpertList,
        shared_expert: FeedForward | None = None,
        shared_expert_gate: nn.Module | None = None,
        aux_loss_coef: float = 0.01,
    ) -> None:
        super().__init__()
        if router.n_experts != experts.n_experts:
            raise ConfigError(
                f"MoEFeedForward: the router has {router.n_experts} experts but the expert "
                f"bank has {experts.n_experts}",
                key="experts",
                hint="build both with the same n_experts",
            )
        if shared_expert_gate is not None and shared_expert is None:
            raise ConfigError(
                "MoEFeedForward: shared_expert_gate given without a shared_expert",
                key="shared_expert_gate",
                hint="pass a shared_expert too, or drop the gate",
            )
        if shared_expert is not None and not isinstance(shared_expert, nn.Module):
            raise ConfigError(
                f"MoEFeedForward: shared_expert must be an nn.Module, got "
                f"{type(shared_expert).__name__}",
                key="shared_expert",
            )
        coef = check_float("aux_loss_coef", aux_loss_coef, low=0.0, owner="MoEFeedForward")
        self.router = router
        self.experts = experts
        self.shared_expert = shared_expert
        self.shared_expert_gate = shared_expert_gate
        self.aux_loss_coef = coef
        self.balance_loss = None
        self.aux_loss = None
        self.router_logits = None
        self.expert_counts = None

    @property
    def n_experts(self) -> int:
        """Number of routed experts."""
        return self.router.n_experts

    @property
    def top_k(self) -> int:
        """Experts per token."""
        return self.router.top_k

    def forward(self, x: torch.Tensor, /) -> torch.Tensor:
        """Route every token to its ``top_k`` experts and mix their outputs.

        Args:
            x: Input, shape ``(B, T, d_model)``.

        Returns:
            Output, shape ``(B, T, d_model)``, dtype of ``x``.

        Raises:
            DataError: The last dimension of ``x`` is not ``d_model``.
        """
        d_model = self.router.d_model
        check_dim(
            x, name="x", ndims=None, last=d_model, owner="MoEFeedForward", layout="(B, T, d_model)"
        )
        flat = x.reshape(-1, d_model)  # (N, D)
        n_tokens, k = flat.shape[0], self.top_k
        route: RouterOutput = self.router(flat)  # weights/indices (N, k), probs/logits (N, E)

        slot_experts = route.indices.reshape(-1)  # (N*k,) expert of each slot
        order = torch.argsort(slot_experts, stable=True)  # (N*k,) slots grouped by expert
        counts = torch.bincount(slot_experts, minlength=self.n_experts)  # (E,)
        tokens_sorted = flat[order // k]  # (N*k, D) token rows, expert-contiguous
        outputs_sorted: torch.Tensor = self.experts(tokens_sorted, counts.tolist())  # (N*k, D)

        inverse = torch.empty_like(order)  # (N*k,)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        outputs = outputs_sorted[inverse].view(n_tokens, k, d_model)  # (N, k, D) slot order
        mixed = torch.bmm(route.weights.unsqueeze(1), outputs).squeeze(1)  # (N, D)
        y = mixed.view_as(x)  # (B, T, D)

        if self.shared_expert is not None:
            shared = self.shared_expert(x)  # (B, T, D)
            if self.shared_expert_gate is not None:
                gate: torch.Tensor = self.shared_expert_gate(x)  # (B, T, 1)
                shared = torch.sigmoid(gate) * shared  # (B, T, D)
            y = y + shared  # (B, T, D)

        self.router_logits = route.logits
        self.expert_counts = counts
        self.balance_loss = load_balancing_loss(
            route.probs, route.indices, n_experts=self.n_experts
        )
        self.aux_loss = self.aux_loss_coef * self.balance_loss
        return y  # (B, T, D)

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"aux_loss_coef={self.aux_loss_coef}"
