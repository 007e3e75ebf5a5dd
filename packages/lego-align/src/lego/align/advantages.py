r"""Advantages for policy-gradient training: GRPO's group baseline, PPO's GAE and whitening.

Pure tensor functions, no model and no trainer:

- [`group_advantages()`][lego.align.advantages.group_advantages]: GRPO's group-relative
  advantage (Shao et al. 2024, "DeepSeekMath", §4.1.2, outcome supervision): each
  completion's reward minus the mean reward of the completions of the same prompt, divided
  by the group's standard deviation (or the batch's, or not at all: Dr. GRPO). Equal to
  TRL 1.16's ``GRPOTrainer`` with ``multi_objective_aggregation="sum_then_normalize"``.
- [`gae()`][lego.align.advantages.gae]: generalised advantage estimation (Schulman et al.
  2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
  Eq. 16) over per-token rewards and values, the returns ``A + V`` beside it.
- [`whiten()`][lego.align.advantages.whiten]: masked standardisation as TRL's
  ``masked_whiten`` (used by PPO on the advantages and optionally on the rewards).

Rows are prompt-major throughout: with ``G`` completions per prompt, row ``i * G + j`` is
the ``j``-th completion of prompt ``i`` (the layout TRL's ``RepeatSampler`` produces).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor

from lego.protocols import ConfigError, check_choice, check_float, check_int

__all__ = [
    "ADVANTAGE_SCALES",
    "GroupAdvantages",
    "group_advantages",
    "gae",
    "whiten",
    "nanstd",
]

ADVANTAGE_SCALES = ("group", "batch", "none")
"""The ``scale`` values of [`group_advantages()`][lego.align.advantages.group_advantages]."""


@dataclasses.dataclass(frozen=True)
class GroupAdvantages:
    """What [`group_advantages()`][lego.align.advantages.group_advantages] returns.

    Attributes:
        advantages: ``(N,)`` the advantage of every completion (0 where the reward is NaN).
        mean: ``(N,)`` the mean reward of each row's group (NaN-aware).
        std: ``(N,)`` the standard deviation each row was (or, for ``scale="none"``,
            would have been) divided by: its group's, or the batch's for ``"batch"``.
        std_zero: ``(N,)`` bool, ``std`` is (close to) 0: the group's completions all got
            the same reward, so they carry no learning signal.
        metrics: Detached 0-dim tensors under TRL's names: ``"reward"`` (NaN-aware mean),
            ``"reward_std"`` (NaN-aware unbiased standard deviation over the batch) and
            ``"frac_reward_zero_std"`` (the fraction of rows whose ``std_zero`` is set, i.e.
            the fraction of groups with equal rewards for ``"group"`` and ``"none"``).
    """

    advantages: Tensor
    mean: Tensor
    std: Tensor
    std_zero: Tensor
    metrics: Mapping[str, Tensor]


def nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """The unbiased (Bessel-corrected) standard deviation, ignoring NaNs.

    Args:
        x: Any floating tensor.
        dim: The dimension to reduce, or None for all of them.

    Returns:
        The standard deviation: 0-dim for ``dim=None``, else ``x``'s shape without ``dim``;
        NaN where fewer than two values are not NaN (as TRL's ``nanstd``).

    Example:
        >>> nanstd(torch.tensor([1.0, float("nan"), 3.0]))
        tensor(1.4142)
        >>> nanstd(torch.tensor([[1.0, 1.0], [0.0, 2.0]]), dim=1)
        tensor([0.0000, 1.4142])
    """
    dims = None if dim is None else (dim,)
    valid = ~torch.isnan(x)
    count = valid.sum(dim=dims, keepdim=True).to(x.dtype)
    mean = torch.nanmean(x, dim=dims, keepdim=True)
    squares = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    variance = squares.sum(dim=dims, keepdim=True) / (count - 1)
    variance = torch.where(count > 1, variance, torch.full_like(variance, float("nan")))
    std = variance.sqrt()
    return std.reshape(()) if dim is None else std.squeeze(dim)


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    scale: str = "group",
    eps: float = 1e-4,
) -> GroupAdvantages:
    r"""GRPO's group-relative advantages.

    With ``r_{i,j}`` the reward of completion ``j`` of prompt ``i`` (row ``i * G + j``),
    ``\mu_i`` and ``\sigma_i`` the mean and unbiased standard deviation of group ``i``, and
    ``\sigma`` the unbiased standard deviation of all rewards:

    - ``scale="group"`` (DeepSeekMath, Eq. in §4.1.2; TRL's default ``scale_rewards="group"``):
      ``A_{i,j} = (r_{i,j} - \mu_i) / (\sigma_i + \epsilon)``;
    - ``scale="batch"`` (TRL's ``scale_rewards="batch"``, after "Tricks or Traps? A Deep Dive
      into RL for LLM Reasoning"): ``A_{i,j} = (r_{i,j} - \mu_i) / (\sigma + \epsilon)``; the
      mean is still the group's, the standard deviation is that of the whole batch taken
      over all ``N`` rewards at once (not an average of group deviations), as TRL 1.16
      computes it;
    - ``scale="none"`` (Liu et al. 2025, "Understanding R1-Zero-Like Training", Dr. GRPO):
      ``A_{i,j} = r_{i,j} - \mu_i``.

    NaN rewards (a completion no reward function scored) are left out of the means and
    deviations and get advantage 0, as in TRL. A group whose rewards are all equal gets
    advantage 0 everywhere; it is counted in ``metrics["frac_reward_zero_std"]``.
    ``group_size=1`` gives zero advantages (and zero deviations, as TRL does for one
    generation) - a trainer should refuse it for GRPO.

    Args:
        rewards: ``(N,)`` floating rewards, prompt-major (``N = prompts * group_size``).
        group_size: ``G``, the completions per prompt (>= 1, dividing ``N``).
        scale: ``"group"``, ``"batch"`` or ``"none"``.
        eps: Added to the standard deviation (TRL: ``1e-4``), >= 0.

    Returns:
        A [`GroupAdvantages`][lego.align.advantages.GroupAdvantages].

    Raises:
        ConfigError: ``rewards`` is not a non-empty 1-D floating tensor, ``group_size``
            does not divide its length, an unknown ``scale``, or ``eps < 0``.

    Example:
        >>> out = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
        >>> out.advantages
        tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
        >>> float(out.metrics["frac_reward_zero_std"])
        0.5
    """
    check_int("group_size", group_size, minimum=1, hint="pass the completions per prompt")
    check_choice("scale", scale, ADVANTAGE_SCALES)
    check_float("eps", eps, low=0.0)
    shape = _shape_of(rewards)
    if shape is None or len(shape) != 1 or not rewards.is_floating_point():
        got = shape if shape is not None else type(rewards).__name__
        raise ConfigError(
            f"rewards must be a 1-D floating tensor (one reward per completion), got {got}",
            key="rewards",
            tensor="rewards",
        )
    n = int(rewards.shape[0])
    if n == 0 or n % group_size:
        raise ConfigError(
            f"rewards has {n} values, which is not a positive multiple of group_size={group_size}",
            key="group_size",
            tensor="rewards",
            hint="pass group_size completions for every prompt, prompt-major (row i*G + j)",
        )
    rewards = rewards.detach()
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards) if n > 1 else torch.zeros_like(rewards)
    elif group_size > 1:
        std = nanstd(grouped, dim=1).repeat_interleave(group_size)
    else:
        std = torch.zeros_like(rewards)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + eps)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    std_zero = torch.isclose(std, torch.zeros_like(std))
    metrics = {
        "reward": torch.nanmean(rewards),
        "reward_std": nanstd(rewards),
        "frac_reward_zero_std": std_zero.to(rewards.dtype).mean(),
    }
    return GroupAdvantages(
        advantages=advantages, mean=mean, std=std, std_zero=std_zero, metrics=metrics
    )


# -- PPO ----------------------------------------------------------------------------------


def _shape_of(x: object) -> tuple[int, ...] | None:
    """``x``'s shape when it is a tensor, else None."""
    return tuple(x.shape) if isinstance(x, Tensor) else None


def _check_tokens(**tensors: object) -> tuple[int, int]:
    """Every given tensor is ``(B, T)`` with one common shape; returns it."""
    shape: tuple[int, ...] | None = None
    first = ""
    for name, tensor in tensors.items():
        if not isinstance(tensor, Tensor) or tensor.dim() != 2:
            got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ConfigError(
                f"{name} must be a (B, T) tensor (one value per completion token), got {got}",
                key=name,
                tensor=name,
            )
        if shape is None:
            shape, first = tuple(tensor.shape), name
        elif tuple(tensor.shape) != shape:
            raise ConfigError(
                f"{name} has shape {tuple(tensor.shape)} but {first} has {shape}",
                key=name,
                tensor=name,
                hint="pass every per-token tensor over the same (B, T) completion positions",
            )
    assert shape is not None
    return shape[0], shape[1]


def _float_mask(mask: Tensor, like: Tensor) -> Tensor:
    """``mask`` as ``like``'s floating dtype (bool and 0/1 masks accepted)."""
    return mask.to(like.dtype if like.is_floating_point() else torch.float32)


def _check_right_padded(mask: Tensor) -> None:
    m = mask.to(torch.int8)
    if bool((m[:, 1:] > m[:, :-1]).any()):
        raise ConfigError(
            "mask has a real token after a padded one: rows must be right-padded",
            key="mask",
            tensor="mask",
            hint="pass the completion mask (1 for generated tokens, then 0 for padding)",
        )


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    r"""Generalised advantage estimation over right-padded completions.

    With ``\delta_t = r_t + \gamma V_{t+1} - V_t`` (``V_{t+1} = 0`` after the row's last
    real token: the episode ends there), GAE (Schulman et al. 2016, Eq. 16) is
    ``A_t = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l} = \delta_t + \gamma\lambda A_{t+1}``
    and the value targets are ``R_t = A_t + V_t`` (TRL's ``returns``), both before any
    whitening. Rewards and values outside ``mask`` are taken as 0, so TRL's PPO layout is
    reproduced by passing its ``~padding_mask_p1`` (the completion plus one position).
    TRL's defaults are ``gamma=1.0``, ``lam=0.95``.

    Args:
        rewards: ``(B, T)`` per-token rewards (e.g. from
            [`ppo_rewards()`][lego.align.policy_losses.ppo_rewards]).
        values: ``(B, T)`` the value head's estimates, detached.
        mask: ``(B, T)`` bool or 0/1, right-padded (real tokens first).
        gamma: The discount ``\gamma`` in ``[0, 1]``.
        lam: The GAE ``\lambda`` in ``[0, 1]``.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and 0 outside ``mask``.

    Raises:
        ConfigError: Shapes differ, the mask is not right-padded, or ``gamma`` / ``lam``
            outside ``[0, 1]``.

    Example:
        >>> adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]),
        ...                torch.tensor([[True, True]]), gamma=1.0, lam=1.0)
        >>> adv, ret
        (tensor([[0.5000, 0.5000]]), tensor([[1., 1.]]))
    """
    check_float("gamma", gamma, low=0.0, high=1.0)
    check_float("lam", lam, low=0.0, high=1.0)
    _, t = _check_tokens(rewards=rewards, values=values, mask=mask)
    _check_right_padded(mask)
    keep = mask.bool()
    rewards = torch.where(keep, rewards.detach(), torch.zeros_like(rewards))
    values = torch.where(keep, values.detach().to(rewards.dtype), torch.zeros_like(rewards))
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for step in reversed(range(t)):
        following = values[:, step + 1] if step + 1 < t else torch.zeros_like(running)
        delta = rewards[:, step] + gamma * following - values[:, step]
        running = delta + gamma * lam * running
        advantages[:, step] = running
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    return advantages, torch.where(keep, advantages + values, torch.zeros_like(advantages))


def whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    r"""Standardise ``x`` over the positions in ``mask`` (TRL's ``masked_whiten``).

    ``\mu`` and the unbiased variance ``s^2 = \frac{n}{n-1} \cdot \frac{1}{n}\sum (x - \mu)^2``
    over the ``n`` masked positions give ``(x - \mu) / \sqrt{s^2 + \epsilon}``; with
    ``shift_mean=False`` the mean is added back (only the scale changes: TRL's choice for
    whitening rewards). Positions outside ``mask`` are set to 0 (TRL fills them after
    whitening).

    Args:
        x: ``(B, T)`` values (advantages or rewards).
        mask: ``(B, T)`` bool or 0/1: the positions that count.
        shift_mean: Subtract the mean (True) or keep it (False).
        eps: Added to the variance (TRL: ``1e-8``), >= 0.

    Returns:
        ``(B, T)`` whitened ``x``, 0 outside ``mask``.

    Raises:
        ConfigError: Shapes differ or fewer than two positions are masked in.

    Example:
        >>> whiten(torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[True, True, False]]))
        tensor([[-0.7071,  0.7071,  0.0000]])
    """
    check_float("eps", eps, low=0.0)
    _check_tokens(x=x, mask=mask)
    keep = mask.bool()
    m = _float_mask(mask, x)
    n = m.sum()
    if float(n) < 2:
        raise ConfigError(
            f"whiten needs at least 2 positions in mask, got {int(n)}",
            key="mask",
            tensor="mask",
            hint="whiten over a batch with more than one real token",
        )
    inside = torch.where(keep, x, torch.zeros_like(x))
    mean = inside.sum() / n
    variance = torch.where(keep, (x - mean) ** 2, torch.zeros_like(x)).sum() / n * (n / (n - 1))
    out = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(keep, out, torch.zeros_like(out))
