r"""GRPO and PPO objectives as pure functions of per-token log-probabilities.

Notation: for completion ``i`` and its token ``t``, ``\log\pi_\theta`` is the policy's
log-probability of the token (``logps``, differentiable), ``\log\pi_{old}`` the sampling
policy's (``old_logps``, detached), ``\log\pi_{ref}`` the reference model's
(``ref_logps``), ``\rho_{i,t} = \exp(\log\pi_\theta - \log\pi_{old})`` the importance ratio
and ``A`` the advantage (one per completion for GRPO, one per token for PPO). ``mask``
marks the completion tokens that count (``(B, T)``, bool or 0/1); everything else is
ignored. Each function writes its formula and paper in its docstring; the docs page
(docs/bricks/align.md, "GRPO and PPO objectives") collects them. The GRPO values and
gradients equal TRL 1.16's ``GRPOTrainer._compute_loss`` for the same log-probabilities
(tests-integration/test_rl_loss_oracles.py).

Each loss returns a [`PolicyLossOutput`][lego.align.policy_losses.PolicyLossOutput]
``(loss, metrics)``: the scalar of one micro-batch (a trainer divides by its gradient
accumulation steps, as TRL does outside these formulas) and detached 0-dim metrics under
TRL's names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from lego.align.advantages import _check_right_padded, _check_tokens, _float_mask, _shape_of
from lego.protocols import ConfigError, check_choice, check_float, check_int

__all__ = [
    "KL_ESTIMATORS",
    "GRPO_LOSS_TYPES",
    "PolicyLossOutput",
    "PPORewards",
    "kl_penalty",
    "grpo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "ppo_rewards",
]

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
"""The ``kind`` values of [`kl_penalty()`][lego.align.policy_losses.kl_penalty]."""

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
"""The ``loss_type`` values of [`grpo_loss()`][lego.align.policy_losses.grpo_loss]."""


class PolicyLossOutput(NamedTuple):
    """What the policy and value losses return (unpacks as ``loss, metrics``).

    Attributes:
        loss: The scalar to back-propagate, ``()``.
        metrics: Detached 0-dim tensors under TRL's names (see each function).
    """

    loss: Tensor
    metrics: Mapping[str, Tensor]


class PPORewards(NamedTuple):
    """What [`ppo_rewards()`][lego.align.policy_losses.ppo_rewards] returns.

    Attributes:
        rewards: ``(B, T)`` per-token rewards, 0 outside the mask (and the score position).
        kl: ``(B, T)`` the per-token KL estimate, 0 outside the mask.
        metrics: TRL's ``objective/*`` values: ``"objective/kl"`` (summed per row, averaged),
            ``"objective/non_score_reward"`` (likewise), ``"objective/rlhf_reward"`` (score
            plus the row's non-score reward, averaged) and ``"objective/scores"``.
    """

    rewards: Tensor
    kl: Tensor
    metrics: Mapping[str, Tensor]


# -- helpers ----------------------------------------------------------------------------------


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over ``mask`` (0 for an empty mask, as TRL's ``clamp(min=1)``)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def _row_means(x: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` per-row masked means; NaN for a row without tokens (TRL's ``masked_seq_mean``)."""
    return (x * mask).sum(-1) / mask.sum(-1)


def _inside(x: Tensor, keep: Tensor) -> Tensor:
    """``x`` with 0 outside ``keep`` (padded inf / NaN reach neither loss nor gradient)."""
    return torch.where(keep, x, torch.zeros_like(x))


def _nan_extreme(x: Tensor, *, largest: bool) -> Tensor:
    """``max`` / ``min`` ignoring NaNs; NaN when every value is NaN."""
    valid = x[~torch.isnan(x)]
    if valid.numel() == 0:
        return torch.tensor(float("nan"), dtype=x.dtype, device=x.device)
    return valid.max() if largest else valid.min()


def _check_floating(name: str, x: object) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = str(x.dtype) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(
            f"{name} must be a floating (B, T) tensor, got {got}", key=name, tensor=name
        )


# -- KL ---------------------------------------------------------------------------------------


def kl_penalty(logps: Tensor, ref_logps: Tensor, kind: str = "k1") -> Tensor:
    r"""A per-token estimate of ``KL(\pi_\theta \| \pi_{ref})`` from sampled tokens.

    With ``d = \log\pi_\theta - \log\pi_{ref}`` at the sampled token (Schulman 2020,
    "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html):

    - ``"k1"``: ``d`` (unbiased, high variance, can be negative; TRL PPO's default);
    - ``"k2"``: ``d^2 / 2`` (biased, low variance);
    - ``"k3"``: ``e^{-d} + d - 1 = \exp(\log\pi_{ref} - \log\pi_\theta) -
      (\log\pi_{ref} - \log\pi_\theta) - 1`` (unbiased, never negative; GRPO's estimator,
      DeepSeekMath Eq. 4);
    - ``"abs"``: ``|d|``.

    Args:
        logps: Policy log-probabilities, any shape (e.g. ``(B, T)``).
        ref_logps: Reference log-probabilities, the same shape.
        kind: One of ``"k1"``, ``"k2"``, ``"k3"``, ``"abs"``.

    Returns:
        The per-token estimate, ``logps``' shape, differentiable through both inputs.

    Raises:
        ConfigError: Unknown ``kind`` or the shapes differ.

    Example:
        >>> logps, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
        >>> kl_penalty(logps, ref, "k1"), kl_penalty(logps, ref, "k3")
        (tensor([ 0.5000, -1.0000]), tensor([0.1065, 0.7183]))
    """
    check_choice("kind", kind, KL_ESTIMATORS)
    if tuple(ref_logps.shape) != tuple(logps.shape):
        raise ConfigError(
            f"ref_logps has shape {tuple(ref_logps.shape)} but logps has {tuple(logps.shape)}",
            key="ref_logps",
            tensor="ref_logps",
        )
    d = logps - ref_logps
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        return torch.exp(-d) + d - 1
    return d.abs()


# -- GRPO -------------------------------------------------------------------------------------


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logps: Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | Tensor | None = None,
    kl_bias_correction: bool = True,
) -> PolicyLossOutput:
    r"""GRPO's clipped surrogate with its loss normalisations (DeepSeekMath, DAPO, Dr. GRPO).

    Per token (Shao et al. 2024, "DeepSeekMath", Eq. 3; Schulman et al. 2017, PPO, Eq. 7):

    ``\ell_{i,t} = -\min(\rho_{i,t} A_i,\ \mathrm{clip}(\rho_{i,t}, 1-\epsilon_{low},
    1+\epsilon_{high}) A_i) + \beta\,\mathrm{KL}_{i,t}``

    with ``\epsilon_{low} = \epsilon``, ``\epsilon_{high}`` = ``epsilon_high`` or ``\epsilon``
    (DAPO's clip-higher: Yu et al. 2025, "DAPO", §3.1, recommends 0.28), and ``KL`` the k3
    estimator against the reference. ``old_logps=None`` is the on-policy case
    (``num_iterations=1``): ``\rho = \exp(\log\pi_\theta - \mathrm{sg}(\log\pi_\theta))``, 1 in
    value with the policy gradient ``A \nabla\log\pi_\theta``. With ``kl_bias_correction``
    (TRL's ``use_bias_correction_kl``, default True) the KL term is ``\rho\,\mathrm{KL}``:
    1 in value on-policy but it changes the gradient (DeepSeek-V3.2, Eq. 8). ``delta``
    (INTELLECT-2's two-sided clipping) caps ``\rho`` at ``delta`` in the unclipped term.

    Reduction over the ``B`` rows and the mask ``m`` (``loss_type``, TRL's names):

    - ``"grpo"``: ``\frac{1}{B}\sum_i \frac{1}{|o_i|}\sum_t \ell_{i,t}`` (DeepSeekMath Eq. 3;
      length-biased);
    - ``"bnpo"``: ``\sum_{i,t} \ell_{i,t} / \sum_{i,t} m_{i,t}`` (this micro-batch's tokens);
    - ``"dr_grpo"``: ``\sum_{i,t} \ell_{i,t} / (B \cdot L_{max})`` with ``L_{max}`` =
      ``max_completion_length`` (Liu et al. 2025, "Understanding R1-Zero-Like Training");
    - ``"dapo"`` (TRL 1.16's default): ``\sum_{i,t} \ell_{i,t} / N`` with ``N`` =
      ``num_items_in_batch``, the completion tokens of everything one optimizer step
      averages over (DAPO §3.3, token-level loss). TRL passes the generation batch's token
      count over all ranks, divided by the world size (gradients are averaged across ranks)
      and scaled by ``gradient_accumulation_steps / steps_per_generation``; ``None`` uses
      this micro-batch's ``\sum m`` (then "dapo" equals "bnpo").

    TRL also divides "grpo", "bnpo" and "dr_grpo" by the gradient-accumulation steps; that
    belongs to the trainer and is not done here.

    Not implemented, on purpose: TRL's vLLM importance-sampling correction
    (``vllm_importance_sampling_correction``: the loss times a truncated or masked ratio
    ``\pi_{old}/\pi_{vLLM}`` between the trainer's and vLLM's log-probabilities) corrects
    for a *different* engine sampling the rollouts; our rollouts come from the model being
    trained, so that ratio is 1 and the correction is a no-op. Likewise the sequence-level
    ratio (GSPO), the other loss types (cispo, sapo, luspo, vespo), the entropy mask and
    bonus and the off-policy sequence mask are outside this function.

    Args:
        logps: ``(B, T)`` policy log-probabilities of the completion tokens, with gradient.
        old_logps: ``(B, T)`` sampling-policy log-probabilities (``num_iterations > 1``),
            or None for on-policy.
        advantages: ``(B,)`` per completion (or ``(B, T)`` per token).
        mask: ``(B, T)`` bool or 0/1, the completion tokens that count.
        ref_logps: ``(B, T)`` reference log-probabilities; required when ``beta > 0``.
        beta: KL coefficient ``\beta >= 0`` (TRL's default 0.0: no reference needed).
        epsilon: Lower clip ``\epsilon_{low} > 0`` (TRL: 0.2).
        epsilon_high: Upper clip ``\epsilon_{high} > 0``, or None for ``epsilon``.
        delta: Upper cap of ``\rho`` in the unclipped term (``> 1``), or None.
        loss_type: ``"grpo"``, ``"bnpo"``, ``"dr_grpo"`` or ``"dapo"``.
        max_completion_length: ``L_{max}`` for ``"dr_grpo"`` (required there, ``>= T``).
        num_items_in_batch: ``N`` for ``"dapo"`` (a number or 0-dim tensor), or None.
        kl_bias_correction: Multiply the KL term by ``\rho`` (TRL's default True).

    Returns:
        [`PolicyLossOutput`][lego.align.policy_losses.PolicyLossOutput] with the metrics
        TRL logs: ``"clip_ratio/low_mean"``, ``"clip_ratio/high_mean"``,
        ``"clip_ratio/region_mean"`` (token fractions with ``\rho < 1-\epsilon_{low}`` and
        ``A < 0``, ``\rho > 1+\epsilon_{high}`` and ``A > 0``, either), ``"clip_ratio/low_min"``
        and ``"clip_ratio/high_max"`` (over rows of each row's fraction), and ``"kl"`` (the
        masked mean of the KL term, corrected as used) when ``ref_logps`` is given.

    Raises:
        ConfigError: Shapes or dtypes do not fit (naming the tensor), ``epsilon`` /
            ``epsilon_high`` <= 0, ``beta < 0``, ``beta > 0`` without ``ref_logps``, an unknown
            ``loss_type``, ``"dr_grpo"`` without a ``max_completion_length >= T``, or
            ``num_items_in_batch <= 0``.

    Example:
        >>> logps = torch.tensor([[-1.0, -2.0], [-0.5, -1.0]], requires_grad=True)
        >>> mask = torch.tensor([[1, 1], [1, 0]])
        >>> advantages = torch.tensor([1.0, -1.0])
        >>> loss, metrics = grpo_loss(logps, None, advantages, mask, loss_type="grpo")
        >>> loss  # (-(1 + 1) / 2 + 1 / 1) / 2: on-policy the ratio is 1
        tensor(0., grad_fn=<MeanBackward0>)
        >>> loss.backward(); logps.grad
        tensor([[-0.2500, -0.2500],
                [ 0.5000,  0.0000]])
    """
    check_choice("loss_type", loss_type, GRPO_LOSS_TYPES)
    beta = check_float("beta", beta, low=0.0)
    eps_low = check_float("epsilon", epsilon, low=0.0, low_open=True, hint="pass e.g. 0.2")
    eps_high = (
        eps_low
        if epsilon_high is None
        else check_float("epsilon_high", epsilon_high, low=0.0, low_open=True, hint="e.g. 0.28")
    )
    if delta is not None:
        check_float("delta", delta, low=1.0, low_open=True, hint="pass delta > 1 + epsilon_high")
    _check_floating("logps", logps)
    tensors: dict[str, Tensor] = {"logps": logps, "mask": mask}
    if old_logps is not None:
        tensors["old_logps"] = old_logps
    if ref_logps is not None:
        tensors["ref_logps"] = ref_logps
    b, t = _check_tokens(**tensors)
    got = _shape_of(advantages)
    if got not in ((b,), (b, t)):
        raise ConfigError(
            f"advantages has shape {got}, expected ({b},) or ({b}, {t})",
            key="advantages",
            tensor="advantages",
            hint="pass one advantage per completion (group_advantages(...).advantages)",
        )
    if beta > 0 and ref_logps is None:
        raise ConfigError(
            f"beta={beta} needs ref_logps (the reference model's per-token log-probabilities)",
            key="ref_logps",
            hint="pass ref_logps, or beta=0.0 to train without the KL penalty",
        )
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ConfigError(
                'loss_type="dr_grpo" needs max_completion_length (its constant normaliser)',
                key="max_completion_length",
                hint="pass the generation's max_new_tokens",
            )
        check_int(
            "max_completion_length",
            max_completion_length,
            minimum=t,
            hint=f"pass the generation's max_new_tokens (at least the {t} completion positions)",
        )
    m = _float_mask(mask, logps)
    keep = mask.bool()
    adv = advantages.detach().to(logps.dtype)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv  # (B, 1) or (B, T)

    logps = _inside(logps, keep)
    old = logps.detach() if old_logps is None else _inside(old_logps.detach(), keep)
    ratio = torch.exp(logps - old)  # (B, T), rho
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    kl: Tensor | None = None
    if ref_logps is not None:
        kl = kl_penalty(logps, _inside(ref_logps.detach().to(logps.dtype), keep), "k3")
        if kl_bias_correction:
            kl = kl * ratio
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if beta != 0.0:
        assert kl is not None
        per_token = per_token + beta * kl

    total = (per_token * m).sum()
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = total / m.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        assert max_completion_length is not None
        loss = total / (b * max_completion_length)
    else:
        if num_items_in_batch is None:
            normaliser: Tensor = m.sum()
        else:
            normaliser = torch.as_tensor(num_items_in_batch, dtype=logps.dtype).to(logps.device)
            if normaliser.dim() != 0 or not math.isfinite(float(normaliser)) or normaliser <= 0:
                raise ConfigError(
                    f"num_items_in_batch must be one positive number, got {num_items_in_batch}",
                    key="num_items_in_batch",
                    hint="pass the completion-token count one optimizer step averages over",
                )
        loss = total / normaliser.clamp(min=1.0)

    with torch.no_grad():
        low = ((ratio < 1 - eps_low) & (adv < 0)).to(m.dtype)
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(m.dtype)
        region = torch.maximum(low, high)
        metrics: dict[str, Tensor] = {
            "clip_ratio/low_mean": _masked_mean(low, m),
            "clip_ratio/high_mean": _masked_mean(high, m),
            "clip_ratio/region_mean": _masked_mean(region, m),
            "clip_ratio/low_min": _nan_extreme(_row_means(low, m), largest=False),
            "clip_ratio/high_max": _nan_extreme(_row_means(high, m), largest=True),
        }
        if kl is not None:
            metrics["kl"] = _masked_mean(kl.detach(), m)
    return PolicyLossOutput(loss, metrics)


# -- PPO --------------------------------------------------------------------------------------


def ppo_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    cliprange: float = 0.2,
) -> PolicyLossOutput:
    r"""PPO's clipped policy loss over tokens (Schulman et al. 2017, "PPO", Eq. 7).

    ``L = \mathrm{mean}_m \max(-A_t \rho_t,\ -A_t\,\mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon))``
    with ``\rho_t = \exp(\log\pi_\theta - \log\pi_{old})`` and ``\epsilon`` = ``cliprange``,
    the mean over the masked tokens (TRL's ``pg_loss``; its default ``cliprange`` is 0.2).

    Args:
        logps: ``(B, T)`` policy log-probabilities, with gradient.
        old_logps: ``(B, T)`` the rollout policy's, detached.
        advantages: ``(B, T)`` per-token advantages (e.g. whitened GAE).
        mask: ``(B, T)`` bool or 0/1, the completion tokens.
        cliprange: ``\epsilon > 0``.

    Returns:
        [`PolicyLossOutput`][lego.align.policy_losses.PolicyLossOutput] with
        ``"loss/policy"``, ``"policy/clipfrac"`` (fraction of tokens where the clipped term
        is the larger), ``"policy/approxkl"`` (``\frac{1}{2}(\log\rho)^2``, masked mean) and
        ``"val/ratio"`` (mean ``\rho``). TRL logs their averages over the epoch's
        minibatches with an ``_avg`` suffix; its ``approxkl`` and ``ratio`` average over the
        padded positions too (where ``\rho = 1``), ours over the mask only.

    Raises:
        ConfigError: Shapes differ or ``cliprange <= 0``.

    Example:
        >>> logps = torch.tensor([[0.0, 0.5]], requires_grad=True)
        >>> out = ppo_policy_loss(logps, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
        >>> out.loss, out.metrics["policy/clipfrac"]
        (tensor(-1.1000, grad_fn=<DivBackward0>), tensor(0.5000))
    """
    eps = check_float("cliprange", cliprange, low=0.0, low_open=True, hint="pass e.g. 0.2")
    _check_floating("logps", logps)
    _check_tokens(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask)
    m = _float_mask(mask, logps)
    keep = mask.bool()
    adv = _inside(advantages.detach().to(logps.dtype), keep)
    log_ratio = _inside(logps, keep) - _inside(old_logps.detach().to(logps.dtype), keep)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - eps, 1 + eps)
    loss = _masked_mean(torch.max(unclipped, clipped), m)
    with torch.no_grad():
        metrics = {
            "loss/policy": loss.detach(),
            "policy/clipfrac": _masked_mean((clipped > unclipped).to(m.dtype), m),
            "policy/approxkl": _masked_mean(0.5 * log_ratio.detach() ** 2, m),
            "val/ratio": _masked_mean(ratio.detach(), m),
        }
    return PolicyLossOutput(loss, metrics)


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    cliprange_value: float = 0.2,
) -> PolicyLossOutput:
    r"""PPO's clipped value loss (as in OpenAI's baselines and TRL's PPO).

    ``V^{clip} = V_{old} + \mathrm{clip}(V - V_{old}, -\epsilon_v, \epsilon_v)`` and
    ``L = \frac{1}{2}\,\mathrm{mean}_m \max((V - R)^2, (V^{clip} - R)^2)`` with ``R`` the
    returns from [`gae()`][lego.align.advantages.gae] and ``\epsilon_v`` =
    ``cliprange_value`` (TRL's default 0.2). TRL masks it with ``~padding_mask_p1`` (one
    position past the completion); pass the mask you used for ``gae``.

    Args:
        values: ``(B, T)`` the value head's predictions, with gradient.
        old_values: ``(B, T)`` its predictions at rollout time, detached.
        returns: ``(B, T)`` value targets.
        mask: ``(B, T)`` bool or 0/1.
        cliprange_value: ``\epsilon_v > 0``.

    Returns:
        [`PolicyLossOutput`][lego.align.policy_losses.PolicyLossOutput] with
        ``"loss/value"`` and ``"val/clipfrac"`` (fraction of tokens where the clipped error
        is the larger).

    Raises:
        ConfigError: Shapes differ or ``cliprange_value <= 0``.

    Example:
        >>> values = torch.tensor([[1.0, 0.0]], requires_grad=True)
        >>> out = ppo_value_loss(values, torch.zeros(1, 2), torch.tensor([[0.0, 2.0]]),
        ...                      torch.ones(1, 2), cliprange_value=0.5)
        >>> out.loss  # 0.5 * mean(max(1, 0.25), max(4, 4))
        tensor(1.2500, grad_fn=<MulBackward0>)
    """
    eps = check_float("cliprange_value", cliprange_value, low=0.0, low_open=True)
    _check_floating("values", values)
    _check_tokens(values=values, old_values=old_values, returns=returns, mask=mask)
    m = _float_mask(mask, values)
    keep = mask.bool()
    values = _inside(values, keep)
    old = _inside(old_values.detach().to(values.dtype), keep)
    target = _inside(returns.detach().to(values.dtype), keep)
    clipped_values = torch.clamp(values, old - eps, old + eps)
    error = (values - target) ** 2
    clipped_error = (clipped_values - target) ** 2
    loss = 0.5 * _masked_mean(torch.max(error, clipped_error), m)
    with torch.no_grad():
        metrics = {
            "loss/value": loss.detach(),
            "val/clipfrac": _masked_mean((clipped_error > error).to(m.dtype), m),
        }
    return PolicyLossOutput(loss, metrics)


def ppo_rewards(
    scores: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    kl_coef: float = 0.05,
    kind: str = "k1",
    score_at: str = "last",
) -> PPORewards:
    r"""RLHF's per-token rewards: a KL penalty on every token, the score at the end.

    ``r_t = -\beta\,\mathrm{KL}_t + [t = t_{end}]\,s`` (Ziegler et al. 2019, "Fine-Tuning
    Language Models from Human Preferences", Eq. 2; Ouyang et al. 2022, InstructGPT, Eq. 2)
    with ``\beta`` = ``kl_coef`` (TRL: 0.05), ``\mathrm{KL}_t`` from
    [`kl_penalty()`][lego.align.policy_losses.kl_penalty] (TRL offers k1, its default, and
    k3) and ``s`` the reward model's score of the row. ``t_{end}`` is the row's last real
    token (``score_at="last"``). TRL's PPOTrainer puts the score one position later, on the
    first padding position when the row has one (else on the last token), and keeps values
    there too (its ``padding_mask_p1``); ``score_at="after_last"`` reproduces that layout
    (then pass the mask extended by one position to ``gae`` and the value loss).

    Args:
        scores: ``(B,)`` the reward model's (or any function's) score per completion.
        logps: ``(B, T)`` the rollout policy's log-probabilities.
        ref_logps: ``(B, T)`` the reference model's.
        mask: ``(B, T)`` bool or 0/1, right-padded, at least one token per row.
        kl_coef: ``\beta >= 0``.
        kind: The KL estimator (``"k1"``, ``"k2"``, ``"k3"``, ``"abs"``).
        score_at: ``"last"`` or ``"after_last"`` (TRL's layout).

    Returns:
        [`PPORewards`][lego.align.policy_losses.PPORewards] (detached tensors).

    Raises:
        ConfigError: Shapes differ, a row without tokens, the mask is not right-padded,
            ``kl_coef < 0`` or an unknown ``kind`` / ``score_at``.

    Example:
        >>> out = ppo_rewards(torch.tensor([2.0]), torch.tensor([[-1.0, -1.0, 0.0]]),
        ...                   torch.tensor([[-1.5, -1.0, 0.0]]), torch.tensor([[1, 1, 0]]),
        ...                   kl_coef=0.1)
        >>> out.rewards
        tensor([[-0.0500,  2.0000,  0.0000]])
    """
    check_float("kl_coef", kl_coef, low=0.0)
    check_choice("kind", kind, KL_ESTIMATORS)
    check_choice("score_at", score_at, ("last", "after_last"))
    b, t = _check_tokens(logps=logps, ref_logps=ref_logps, mask=mask)
    got = _shape_of(scores)
    if got != (b,):
        raise ConfigError(
            f"scores has shape {got}, expected ({b},): one score per completion",
            key="scores",
            tensor="scores",
        )
    _check_right_padded(mask)
    keep = mask.bool()
    lengths = keep.sum(-1)
    if bool((lengths == 0).any()):
        row = int(torch.nonzero(lengths == 0)[0, 0])
        raise ConfigError(
            f"row {row} of mask has no tokens: it has no position for its score",
            key="mask",
            tensor="mask",
            hint="drop empty completions before computing rewards",
        )
    with torch.no_grad():
        kl = kl_penalty(logps.detach(), ref_logps.detach().to(logps.dtype), kind)
        kl = torch.where(keep, kl, torch.zeros_like(kl))
        non_score = torch.where(keep, -kl_coef * kl, torch.zeros_like(kl))  # no -0.0
        end = lengths - 1
        if score_at == "after_last":
            end = torch.where(lengths < t, lengths, end)
        rewards = non_score.clone()
        rows = torch.arange(b, device=rewards.device)
        rewards[rows, end] += scores.detach().to(rewards.dtype)
        metrics = {
            "objective/kl": kl.sum(-1).mean(),
            "objective/non_score_reward": non_score.sum(-1).mean(),
            "objective/rlhf_reward": (scores.to(rewards.dtype) + non_score.sum(-1)).mean(),
            "objective/scores": scores.detach().to(rewards.dtype).mean(),
        }
    return PPORewards(rewards, kl, metrics)
