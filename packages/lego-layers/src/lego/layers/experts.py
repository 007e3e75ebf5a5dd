"""Banks of experts for [`MoEFeedForward`][lego.layers.MoEFeedForward].

An expert bank receives the routed token copies already sorted by expert, with the count
for each expert, and returns their outputs in the same order. Two banks:

- [`GatedExperts`][lego.layers.GatedExperts]: SwiGLU / GeGLU experts with their weights
  stacked in three ``(n_experts, ...)`` parameters, the layout of Qwen 3 MoE, Mixtral and
  DeepSeek; each expert runs as three matmuls on its contiguous slice.
- [`ExpertList`][lego.layers.ExpertList]: any [`FeedForward`][lego.protocols.FeedForward]
  modules, one per expert, for experiments with heterogeneous experts.

The loop runs over experts (a few dozen at most), never over tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from lego.layers.activations import canonical_activation, get_activation
from lego.protocols import ConfigError, DataError, check_int

if TYPE_CHECKING:
    from lego.protocols import FeedForward

__all__ = ["GatedExperts", "ExpertList"]


def _check_counts(x: torch.Tensor, counts: Sequence[int], n_experts: int, owner: str) -> None:
    if len(counts) != n_experts or sum(counts) != x.shape[0]:
        raise DataError(
            f"{owner}: counts must give one size per expert ({n_experts}) summing to the "
            f"{x.shape[0]} rows of x, got {len(counts)} sizes summing to {sum(counts)}",
            tensor="counts",
        )


class GatedExperts(nn.Module):
    """``n_experts`` gated MLPs (SwiGLU by default) with stacked weights.

    Expert ``e`` computes ``down_proj[e] @ (act(gate_proj[e] @ x) * (up_proj[e] @ x))``,
    the same function as a bias-free [`GatedMLP`][lego.layers.GatedMLP] whose linear
    weights are ``gate_proj[e]``, ``up_proj[e]`` and ``down_proj[e]``.

    Args:
        n_experts: Number of experts.
        d_model: Width of the tokens.
        d_ff: Hidden width of each expert (Qwen 3 MoE's ``moe_intermediate_size``).
        activation: Activation of the gate (``"silu"`` for SwiGLU, ``"gelu_tanh"`` or
            ``"gelu"`` for GeGLU).

    Attributes:
        gate_proj: Shape ``(n_experts, d_ff, d_model)``.
        up_proj: Shape ``(n_experts, d_ff, d_model)``.
        down_proj: Shape ``(n_experts, d_model, d_ff)``.

    Raises:
        ConfigError: Sizes below 1 or an unknown activation.
    """

    def __init__(
        self, *, n_experts: int, d_model: int, d_ff: int, activation: str = "silu"
    ) -> None:
        super().__init__()
        owner = "GatedExperts"
        self.n_experts = check_int("n_experts", n_experts, minimum=1, owner=owner)
        self.d_model = check_int("d_model", d_model, minimum=1, owner=owner)
        self.d_ff = check_int("d_ff", d_ff, minimum=1, owner=owner)
        self.activation = canonical_activation(activation)
        self.act = get_activation(self.activation)
        self.gate_proj = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.up_proj = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        for weight, fan_in in (
            (self.gate_proj, d_model),
            (self.up_proj, d_model),
            (self.down_proj, d_ff),
        ):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default, per expert
            nn.init.uniform_(weight, -bound, bound)

    def expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run expert ``index`` on tokens ``x``.

        Args:
            index: The expert, ``0 <= index < n_experts``.
            x: Tokens, shape ``(M, d_model)``.

        Returns:
            Outputs, shape ``(M, d_model)``.
        """
        gate = self.act(F.linear(x, self.gate_proj[index]))  # (M, d_ff)
        up = F.linear(x, self.up_proj[index])  # (M, d_ff)
        return F.linear(gate * up, self.down_proj[index])  # (M, d_model)

    def forward(self, x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """Run each expert on its contiguous slice of the sorted tokens.

        Args:
            x: Token copies sorted by expert, shape ``(M, d_model)``.
            counts: How many rows belong to each expert, ``n_experts`` ints summing to ``M``.

        Returns:
            Outputs in the same order, shape ``(M, d_model)``.

        Raises:
            DataError: ``counts`` does not match ``x``.
        """
        _check_counts(x, counts, self.n_experts, "GatedExperts")
        out = torch.empty_like(x)  # (M, d_model)
        start = 0
        for index, count in enumerate(counts):
            if count:
                out[start : start + count] = self.expert(index, x[start : start + count])
            start += count
        return out  # (M, d_model)

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return (
            f"n_experts={self.n_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
            f"activation={self.activation!r}"
        )


class ExpertList(nn.Module):
    """Any feed-forward modules as experts, one module per expert.

    Each expert receives its tokens as a ``(1, M_e, d_model)`` batch, so any
    [`FeedForward`][lego.protocols.FeedForward] works (an [`MLP`][lego.layers.MLP], a
    [`GatedMLP`][lego.layers.GatedMLP], your own).

    Args:
        experts: The experts, at least one.

    Attributes:
        experts: The experts, as an ``nn.ModuleList``.

    Raises:
        ConfigError: No experts, or an expert that is not a ``torch.nn.Module``.
    """

    def __init__(self, *, experts: Sequence[FeedForward]) -> None:
        super().__init__()
        if len(experts) < 1:
            raise ConfigError("ExpertList: needs at least one expert", key="experts")
        modules: list[nn.Module] = []
        for i, expert in enumerate(experts):
            if isinstance(expert, nn.Module):
                modules.append(expert)
            else:
                raise ConfigError(
                    f"ExpertList: expert {i} ({type(expert).__name__}) is not a FeedForward "
                    "nn.Module",
                    key=f"experts[{i}]",
                    hint="pass modules such as lego.layers.MLP or GatedMLP",
                )
        self.experts = nn.ModuleList(modules)

    @property
    def n_experts(self) -> int:
        """Number of experts."""
        return len(self.experts)

    def expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run expert ``index`` on tokens ``x`` ``(M, d_model)``; returns ``(M, d_model)``."""
        out: torch.Tensor = self.experts[index](x.unsqueeze(0))  # (1, M, d_model)
        return out.squeeze(0)  # (M, d_model)

    def forward(self, x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """Run each expert on its contiguous slice of the sorted tokens.

        Args:
            x: Token copies sorted by expert, shape ``(M, d_model)``.
            counts: How many rows belong to each expert, ``n_experts`` ints summing to ``M``.

        Returns:
            Outputs in the same order, shape ``(M, d_model)``.

        Raises:
            DataError: ``counts`` does not match ``x``.
        """
        _check_counts(x, counts, self.n_experts, "ExpertList")
        out = torch.empty_like(x)  # (M, d_model)
        start = 0
        for index, count in enumerate(counts):
            if count:
                out[start : start + count] = self.expert(index, x[start : start + count])
            start += count
        return out  # (M, d_model)
