r"""Preference and reward losses as pure functions of sequence log-probabilities.

Every function takes per-sequence log-probabilities (from
[`sequence_logprobs()`][lego.align.logprobs.sequence_logprobs]: ``.sum`` for the DPO family
and KTO, ``.mean`` for SimPO and ORPO) or rewards, and returns a
[`LossOutput`][lego.align.losses.LossOutput]: the scalar loss to back-propagate, the
per-example terms, the rewards, and the metrics TRL logs under TRL's names.

Notation: for a pair ``(y_w, y_l)`` (chosen, rejected) given prompt ``x``,
``\log\pi(y|x)`` is the policy's summed log-probability of the completion,
``\log\pi_{ref}(y|x)`` the reference model's, ``h_w = \log\pi(y_w|x) - \log\pi_{ref}(y_w|x)``
and ``h_l`` likewise (the log-ratios), ``\Delta = h_w - h_l``, ``\sigma`` the logistic
function and ``|y|`` the number of completion tokens. Each formula is written in the
docstring of its function, with its paper; the docs page (docs/bricks/align.md) collects
them. The values and gradients equal TRL 1.16's for the same log-probabilities
(tests-integration/test_align_loss_oracles.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor

from lego.protocols import ConfigError, check_choice, check_float

__all__ = [
    "LossOutput",
    "DPO_LOSS_TYPES",
    "F_DIVERGENCES",
    "dpo_loss",
    "simpo_loss",
    "orpo_loss",
    "kto_loss",
    "reward_loss",
]

DPO_LOSS_TYPES = (
    "sigmoid",
    "robust",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
    "sft",
)
"""The ``loss_type`` values of [`dpo_loss()`][lego.align.losses.dpo_loss] (TRL 1.16's list)."""

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
"""The ``f_divergence`` values of [`dpo_loss()`][lego.align.losses.dpo_loss] (f-DPO)."""

_F_DIVERGENCE_TYPES = frozenset(
    {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
)
_LENGTH_TYPES = frozenset({"ipo", "sigmoid_norm", "sft"})


@dataclasses.dataclass(frozen=True)
class LossOutput:
    """What every loss function returns.

    Attributes:
        loss: The scalar to back-propagate, ``()``.
        losses: The per-example terms, ``(B,)`` (per pair; for KTO the desirable then the
            undesirable examples); ``loss`` is their mean (plus any batch-level term such
            as an NLL or reward centering, added to every entry here as well).
        chosen_rewards: The implicit (or explicit) rewards of the chosen / desirable
            completions, detached, ``(B,)``.
        rejected_rewards: The same for the rejected / undesirable ones.
        metrics: Detached 0-dim tensors under the names TRL logs (``"rewards/chosen"``,
            ``"rewards/rejected"``, ``"rewards/accuracies"``, ``"rewards/margins"``,
            ``"logps/chosen"``, ``"logps/rejected"`` and loss-specific ones).
    """

    loss: Tensor
    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    metrics: Mapping[str, Tensor]

    def floats(self) -> dict[str, float]:
        """The metrics as Python floats (one device sync), e.g. for ``metrics.jsonl``.

        Returns:
            ``{name: value}`` in the order of ``metrics``.
        """
        return {name: float(value) for name, value in self.metrics.items()}


# -- checks -------------------------------------------------------------------------------


def _check_logps(**tensors: object) -> int:
    """Every given tensor is a 1-D floating tensor of one common length; returns it."""
    size: int | None = None
    first = ""
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor):
            raise ConfigError(
                f"{name} must be a tensor, got {type(tensor).__name__}", key=name, tensor=name
            )
        if tensor.dim() != 1 or not tensor.is_floating_point():
            raise ConfigError(
                f"{name} must be a 1-D floating tensor (one value per sequence), got shape "
                f"{tuple(tensor.shape)} {tensor.dtype}",
                key=name,
                tensor=name,
                hint="pass SequenceLogprobs.sum / .mean (B,), not per-token values",
            )
        if size is None:
            size, first = int(tensor.shape[0]), name
        elif int(tensor.shape[0]) != size:
            raise ConfigError(
                f"{name} has {int(tensor.shape[0])} values but {first} has {size}",
                key=name,
                tensor=name,
                hint="pass one value per pair for every input",
            )
    if not size:
        raise ConfigError(
            f"{first or 'the inputs'}: empty batch", key=first or None, tensor=first or None
        )
    return size


def _check_lengths(name: str, lengths: object, size: int, why: str) -> Tensor:
    if lengths is None:
        raise ConfigError(
            f"{name} is required {why}",
            key=name,
            hint=f"pass SequenceLogprobs.count of the {name.split('_')[0]} rows",
        )
    if not isinstance(lengths, Tensor) or tuple(lengths.shape) != (size,):
        shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ConfigError(f"{name} has shape {shape}, expected ({size},)", key=name, tensor=name)
    return lengths


def _beta(beta: float) -> float:
    return check_float("beta", beta, low=0.0, low_open=True, hint="pass beta > 0 (e.g. 0.1)")


def _pair_metrics(
    chosen_rewards: Tensor, rejected_rewards: Tensor, chosen_logps: Tensor, rejected_logps: Tensor
) -> dict[str, Tensor]:
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }


# -- DPO and its family ----------------------------------------------------------------------


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    loss_type: str | Sequence[str] = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_weights: Sequence[float] | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    rpo_alpha: float | None = None,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    discopop_tau: float = 0.05,
) -> LossOutput:
    r"""The DPO family: one preference loss, or a weighted sum of several, per pair.

    Inputs are summed log-probabilities of each completion (``SequenceLogprobs.sum``).
    With ``h_w, h_l`` the log-ratios and ``\Delta = h_w - h_l`` (module notation), the
    per-pair loss of each ``loss_type`` is:

    - ``"sigmoid"``, DPO (Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7):
      ``-\log\sigma(\beta\Delta)``. With ``label_smoothing = \epsilon > 0`` it is
      conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences"):
      ``-(1-\epsilon)\log\sigma(\beta\Delta) - \epsilon\log\sigma(-\beta\Delta)``. (TRL 1.16
      ignores ``label_smoothing`` for ``"sigmoid"``; earlier TRL and the note apply it.)
    - ``"robust"``, rDPO (Chowdhury et al. 2024, "Provably Robust DPO", Eq. 8), unbiased for
      labels flipped with probability ``\epsilon``:
      ``[-(1-\epsilon)\log\sigma(\beta\Delta) + \epsilon\log\sigma(-\beta\Delta)] / (1-2\epsilon)``.
    - ``"hinge"``, SLiC (Zhao et al. 2023, "SLiC-HF", Eq. 1 with ``\delta = 1/\beta``):
      ``\max(0, 1 - \beta\Delta)``.
    - ``"ipo"``, IPO (Azar et al. 2023, "A General Theoretical Paradigm...", Eq. 17):
      ``(h_w/|y_w| - h_l/|y_l| - 1/(2\beta))^2``. As in TRL, the log-ratios are divided by
      the completion lengths (per-token averages; TRL checked this with the authors), so
      ``chosen_lengths`` and ``rejected_lengths`` are required.
    - ``"exo_pair"``, EXO (Ji et al. 2024, "Towards Efficient Exact Optimization...", Eq. 16)
      with ``\epsilon`` = ``label_smoothing`` > 0:
      ``\sigma(\beta\Delta)[\log\sigma(\beta\Delta) - \log(1-\epsilon)] +
      \sigma(-\beta\Delta)[\log\sigma(-\beta\Delta) - \log\epsilon]``.
    - ``"nca_pair"``, NCA (Chen et al. 2024, "Noise Contrastive Alignment"):
      ``-\log\sigma(\beta h_w) - \tfrac12\log\sigma(-\beta h_w) - \tfrac12\log\sigma(-\beta h_l)``.
    - ``"bco_pair"``, BCO on pairs (Jung et al. 2024, "Binary Classifier Optimization"),
      without the reward shift: ``-\log\sigma(\beta h_w) - \log\sigma(-\beta h_l)``.
    - ``"sppo_hard"``, SPPO with hard labels (Wu et al. 2024, "Self-Play Preference
      Optimization", Eq. 4.7 with ``P = 1, 0``): ``(h_w - 1/(2\beta))^2 + (h_l + 1/(2\beta))^2``.
    - ``"aot"`` / ``"aot_unpaired"``, AOT (Melnyk et al. 2024, "Distributional Preference
      Alignment of LLMs via Optimal Transport"): the cDPO loss of ``\beta\delta_i`` where
      ``\delta`` pairs up sorted values across the batch: ``sort(\log\pi(y_w) - \log\pi(y_l))
      - sort(\log\pi_{ref}(y_w) - \log\pi_{ref}(y_l))`` (paired) or ``sort(h_w) - sort(h_l)``
      (unpaired).
    - ``"apo_zero"`` / ``"apo_down"``, APO (D'Oosterlinck et al. 2024, "Anchored Preference
      Optimization", Eqs. 7 and 8): ``1 - \sigma(\beta h_w) + \sigma(\beta h_l)`` and
      ``\sigma(\beta h_w) + 1 - \sigma(\beta\Delta)``.
    - ``"discopop"``, DiscoPOP (Chris Lu et al. 2024, "Discovering Preference Optimization
      Algorithms with and for LLMs", Eq. 5), with ``z = \beta\Delta`` and
      ``m = \sigma(z/\tau)``: ``(1-m)(-\log\sigma(z)) + m\,e^{-z}``.
    - ``"sigmoid_norm"``, length-normalised DPO: ``-\log\sigma(\beta(h_w/|y_w| - h_l/|y_l|))``.
    - ``"sft"``: the negative log-likelihood of the chosen tokens, averaged over all chosen
      tokens of the batch, ``-\sum_i \log\pi(y_{w,i}) / \sum_i |y_{w,i}|`` (the same value in
      every entry of ``losses``).

    A list of ``loss_type`` combines them: ``loss = \sum_k w_k \cdot mean_i(\ell_k(i))``
    (MPO-style, TRL's ``loss_weights``). ``rpo_alpha`` adds RPO's NLL term (Pang et al.
    2024, "Iterative Reasoning Preference Optimization"): ``+ \alpha`` times the ``"sft"``
    loss, as TRL does (``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, \alpha]``).

    f-DPO (Wang et al. 2023, "Beyond Reverse KL", Table 1): with ``f_divergence`` other than
    ``"reverse_kl"``, the log-ratios in ``\Delta`` (and in the length-normalised losses) are
    replaced by ``f'(\pi/\pi_{ref})``: ``1 - e^{-h}`` (``"forward_kl"``),
    ``\log 2 + \log\sigma(h)`` (``"js_divergence"``) or ``(e^{(\alpha-1)h} - 1)/(\alpha-1)``
    (``"alpha_divergence"``, ``(\alpha-1)h`` clamped at 80 as in TRL, 11 in float16), for the
    loss types where the normaliser cancels (sigmoid, sigmoid_norm, hinge, ipo, exo_pair,
    robust, discopop, sft).

    Metrics: ``rewards/chosen`` and ``rewards/rejected`` are the means of ``\beta h_w`` and
    ``\beta h_l`` (whatever the loss type, as TRL), ``rewards/accuracies`` the fraction of
    pairs with ``h_w > h_l``, ``rewards/margins`` the mean of ``\beta\Delta``,
    ``logps/chosen`` / ``logps/rejected`` the means of the policy's log-probabilities, and
    ``nll_loss`` when an ``"sft"`` term or ``rpo_alpha`` is used.

    Args:
        policy_chosen: ``\log\pi(y_w|x)``, ``(B,)``.
        policy_rejected: ``\log\pi(y_l|x)``, ``(B,)``.
        ref_chosen: ``\log\pi_{ref}(y_w|x)``, ``(B,)`` (no gradient is needed).
        ref_rejected: ``\log\pi_{ref}(y_l|x)``, ``(B,)``.
        loss_type: One of `DPO_LOSS_TYPES`, or a list of them.
        beta: ``\beta > 0``, the strength of the reference (IPO's ``\tau``).
        label_smoothing: ``\epsilon`` in ``[0, 0.5)`` (sigmoid/cDPO, robust, aot); required
            ``> 0`` by ``"exo_pair"``.
        loss_weights: One weight per loss type (default all 1).
        chosen_lengths: ``|y_w|``, ``(B,)`` (``SequenceLogprobs.count``); required by
            ``"ipo"``, ``"sigmoid_norm"``, ``"sft"`` and ``rpo_alpha``.
        rejected_lengths: ``|y_l|``, ``(B,)``; required by ``"ipo"`` and ``"sigmoid_norm"``.
        rpo_alpha: The weight of RPO's NLL term (``>= 0``), or None.
        f_divergence: One of `F_DIVERGENCES`.
        f_alpha: ``\alpha`` of ``"alpha_divergence"``.
        discopop_tau: ``\tau > 0`` of ``"discopop"``.

    Returns:
        The loss, the per-pair losses, the rewards ``\beta h_w`` / ``\beta h_l`` and the metrics.

    Raises:
        ConfigError: ``beta <= 0``, an unknown ``loss_type`` or ``f_divergence``, a bad
            ``label_smoothing`` / weight, mismatched shapes, or missing lengths (the
            message names the argument).

    Example:
        >>> import torch
        >>> out = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]),
        ...                torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
        >>> round(out.loss.item(), 4), out.floats()["rewards/margins"]  # -log sigmoid(1)
        (0.3133, 1.0)
    """
    size = _check_logps(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
    )
    beta = _beta(beta)
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not types:
        raise ConfigError("loss_type is empty", key="loss_type", hint="pass e.g. 'sigmoid'")
    for name in types:
        check_choice("loss_type", name, DPO_LOSS_TYPES)
    if loss_weights is None:
        weights = [1.0] * len(types)
    else:
        weights = [check_float("loss_weights", w) for w in loss_weights]
        if len(weights) != len(types):
            raise ConfigError(
                f"loss_weights has {len(weights)} values for {len(types)} loss types",
                key="loss_weights",
                hint="pass one weight per loss_type",
            )
    eps = check_float(
        "label_smoothing",
        label_smoothing,
        low=0.0,
        high=0.5,
        high_open=True,
        hint="pass the assumed label-flip rate, in [0, 0.5)",
    )
    if "exo_pair" in types and eps == 0.0:
        raise ConfigError(
            "loss_type 'exo_pair' needs label_smoothing > 0 (it takes log(label_smoothing))",
            key="label_smoothing",
            hint="the EXO paper recommends 1e-3",
        )
    f_div = check_choice("f_divergence", f_divergence, F_DIVERGENCES)
    if f_div != "reverse_kl":
        other = [name for name in types if name not in _F_DIVERGENCE_TYPES]
        if other:
            raise ConfigError(
                f"f_divergence={f_div!r} does not apply to loss_type {other} (their "
                "normaliser does not cancel)",
                key="f_divergence",
                hint=f"use it with {sorted(_F_DIVERGENCE_TYPES)}, or 'reverse_kl'",
            )
    f_alpha = check_float("f_alpha", f_alpha)
    tau = check_float("discopop_tau", discopop_tau, low=0.0, low_open=True)
    alpha = None if rpo_alpha is None else check_float("rpo_alpha", rpo_alpha, low=0.0)
    needs_lengths = _LENGTH_TYPES.intersection(types) or alpha is not None
    if needs_lengths:
        why = f"by loss_type {sorted(_LENGTH_TYPES.intersection(types))}" + (
            " and rpo_alpha" if alpha is not None else ""
        )
        chosen_lengths = _check_lengths("chosen_lengths", chosen_lengths, size, why)
        if {"ipo", "sigmoid_norm"}.intersection(types):
            rejected_lengths = _check_lengths("rejected_lengths", rejected_lengths, size, why)

    chosen_logratios = policy_chosen - ref_chosen  # h_w, (B,)
    rejected_logratios = policy_rejected - ref_rejected  # h_l, (B,)
    chosen_scores = _f_score(chosen_logratios, f_div, f_alpha)
    rejected_scores = _f_score(rejected_logratios, f_div, f_alpha)
    delta = chosen_scores - rejected_scores  # Δ, (B,)

    nll: Tensor | None = None
    if "sft" in types or alpha is not None:
        assert chosen_lengths is not None
        nll = -(policy_chosen.sum() / chosen_lengths.sum().to(policy_chosen.dtype))
    loss: Tensor | None = None
    losses: Tensor | None = None
    for name, weight in zip(types, weights, strict=True):
        per_pair = _dpo_term(
            name,
            beta=beta,
            eps=eps,
            tau=tau,
            delta=delta,
            chosen_scores=chosen_scores,
            rejected_scores=rejected_scores,
            chosen_logratios=chosen_logratios,
            rejected_logratios=rejected_logratios,
            policy_margin=policy_chosen - policy_rejected,
            ref_margin=ref_chosen - ref_rejected,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            nll=nll,
            size=size,
        )
        term = per_pair.mean() * weight
        loss = term if loss is None else loss + term
        losses = per_pair * weight if losses is None else losses + per_pair * weight
    assert loss is not None
    assert losses is not None
    if alpha is not None:
        assert nll is not None
        loss = loss + alpha * nll
        losses = losses + alpha * nll

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    metrics = _pair_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected)
    if nll is not None:
        metrics["nll_loss"] = nll.detach()
    return LossOutput(
        loss=loss,
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        metrics=metrics,
    )


def _f_score(logratio: Tensor, divergence: str, alpha: float) -> Tensor:
    """``f'(π/π_ref)`` of f-DPO, from the log-ratio ``h``."""
    if divergence == "reverse_kl":
        return logratio
    if divergence == "forward_kl":
        return 1 - torch.exp(-logratio)
    if divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(logratio)
    if abs(alpha - 1.0) < 1e-6:  # the limit alpha -> 1 is the reverse KL
        return logratio
    scaled = (alpha - 1.0) * logratio
    limit = 11.0 if scaled.dtype == torch.float16 else 80.0  # exp stays finite
    grown = torch.exp(torch.clamp(scaled.float() if scaled.dtype in _HALF else scaled, max=limit))
    return (grown - 1.0).to(scaled.dtype) / (alpha - 1.0)


_HALF = (torch.float16, torch.bfloat16)


def _dpo_term(
    name: str,
    *,
    beta: float,
    eps: float,
    tau: float,
    delta: Tensor,
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    policy_margin: Tensor,
    ref_margin: Tensor,
    chosen_lengths: Tensor | None,
    rejected_lengths: Tensor | None,
    nll: Tensor | None,
    size: int,
) -> Tensor:
    """One loss type's per-pair loss, ``(B,)``."""
    z = beta * delta
    if name == "sigmoid":
        if eps == 0.0:
            return -F.logsigmoid(z)
        return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    if name == "robust":
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    if name == "hinge":
        return torch.relu(1 - z)
    if name in ("ipo", "sigmoid_norm"):
        assert chosen_lengths is not None
        assert rejected_lengths is not None
        per_token = chosen_scores / chosen_lengths.clamp(min=1).to(
            chosen_scores.dtype
        ) - rejected_scores / rejected_lengths.clamp(min=1).to(rejected_scores.dtype)
        if name == "ipo":
            return (per_token - 1 / (2 * beta)) ** 2
        return -F.logsigmoid(beta * per_token)
    if name == "exo_pair":
        log_p_w = math.log1p(-eps)
        log_p_l = math.log(eps)
        return torch.sigmoid(z) * (F.logsigmoid(z) - log_p_w) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - log_p_l
        )
    if name == "nca_pair":
        r_w, r_l = beta * chosen_logratios, beta * rejected_logratios
        return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    if name == "bco_pair":
        return -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-beta * rejected_logratios)
    if name == "sppo_hard":
        return (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    if name in ("aot", "aot_unpaired"):
        if name == "aot":
            gap = torch.sort(policy_margin).values - torch.sort(ref_margin).values
        else:
            gap = torch.sort(chosen_logratios).values - torch.sort(rejected_logratios).values
        return -(1 - eps) * F.logsigmoid(beta * gap) - eps * F.logsigmoid(-beta * gap)
    if name == "apo_zero":
        return 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)
    if name == "apo_down":
        return (
            torch.sigmoid(beta * chosen_logratios)
            + 1
            - torch.sigmoid(beta * (chosen_logratios - rejected_logratios))
        )
    if name == "discopop":
        mix = torch.sigmoid(z / tau)
        return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix
    assert name == "sft"
    assert nll is not None
    return nll.expand(size)


# -- reference-free pairs ------------------------------------------------------------------


def simpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
    nll_loss: Tensor | None = None,
    nll_weight: float = 1.0,
) -> LossOutput:
    r"""SimPO: a reference-free margin loss on length-normalised log-probabilities.

    Meng, Xia and Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", Eq. 6. With ``\bar{\ell}(y) = \log\pi(y|x)/|y|`` (``SequenceLogprobs.mean``) and
    ``z = \beta(\bar{\ell}(y_w) - \bar{\ell}(y_l)) - \gamma``:

    ``\ell = -(1-\epsilon)\log\sigma(z) - \epsilon\log\sigma(-z)``

    (``\epsilon = 0`` is the paper's loss; TRL's ``CPOTrainer(loss_type="simpo")`` with
    ``simpo_gamma = \gamma`` computes the same). An optional NLL term (CPO-SimPO, TRL's
    ``cpo_alpha``) adds ``nll_weight * nll_loss``. The rewards are ``\beta\bar{\ell}``. The
    paper's settings: ``\beta`` 2 to 10, ``\gamma/\beta`` 0.3 to 1.6.

    Args:
        policy_chosen: ``\bar{\ell}(y_w)``, mean log-probability per token, ``(B,)``.
        policy_rejected: ``\bar{\ell}(y_l)``, ``(B,)``.
        beta: ``\beta > 0``.
        gamma: ``\gamma``, the target reward margin.
        label_smoothing: ``\epsilon`` in ``[0, 0.5)``.
        nll_loss: A scalar NLL of the chosen completions to add, or None.
        nll_weight: Its weight.

    Returns:
        The loss, the per-pair losses, the rewards and TRL's metrics (``nll_loss`` too when
        given).

    Raises:
        ConfigError: ``beta <= 0``, a bad ``label_smoothing``, mismatched shapes, or an
            ``nll_loss`` that is not a scalar.

    Example:
        >>> import torch
        >>> out = simpo_loss(torch.tensor([-0.5]), torch.tensor([-1.0]), beta=2.0, gamma=1.0)
        >>> round(out.loss.item(), 4)  # z = 2 * 0.5 - 1 = 0: -log sigmoid(0) = log 2
        0.6931
    """
    _check_logps(policy_chosen=policy_chosen, policy_rejected=policy_rejected)
    beta = _beta(beta)
    gamma = check_float("gamma", gamma)
    eps = check_float("label_smoothing", label_smoothing, low=0.0, high=0.5, high_open=True)
    nll_weight = check_float("nll_weight", nll_weight)
    _check_scalar("nll_loss", nll_loss)
    z = beta * (policy_chosen - policy_rejected) - gamma
    losses = -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps
    loss = losses.mean()
    if nll_loss is not None:
        loss = loss + nll_weight * nll_loss
        losses = losses + nll_weight * nll_loss
    chosen_rewards = beta * policy_chosen.detach()
    rejected_rewards = beta * policy_rejected.detach()
    metrics = _pair_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected)
    if nll_loss is not None:
        metrics["nll_loss"] = nll_loss.detach()
    return LossOutput(loss, losses, chosen_rewards, rejected_rewards, metrics)


def orpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    beta: float = 0.1,
    nll_loss: Tensor | None = None,
) -> LossOutput:
    r"""ORPO: supervised NLL plus an odds-ratio preference term, no reference model.

    Hong, Lee and Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference
    Model", Eqs. 4-7. With ``\bar{\ell}(y) = \log\pi(y|x)/|y|`` (``SequenceLogprobs.mean``),
    ``odds(y) = p/(1-p)`` for ``p = e^{\bar{\ell}(y)}``, and the log odds ratio

    ``r = \log\frac{odds(y_w)}{odds(y_l)} = (\bar{\ell}(y_w) - \bar{\ell}(y_l)) -
    (\log(1 - e^{\bar{\ell}(y_w)}) - \log(1 - e^{\bar{\ell}(y_l)}))``:

    ``\mathcal{L} = \mathcal{L}_{NLL} - \lambda \cdot mean(\log\sigma(r))``

    with ``\lambda`` = ``beta`` (TRL's name). ``\log(1-e^x)`` is computed stably (``log1p``
    below ``-\log 2``, ``expm1`` above). ``nll_loss`` is the paper's ``\mathcal{L}_{SFT}``
    on the chosen completion, computed by the caller (TRL's ``ORPOTrainer`` averages the
    cross-entropy over the prompt and the chosen completion of decoder-only models); None
    leaves the odds-ratio term alone. The rewards are ``\lambda\bar{\ell}``; the metrics add
    ``log_odds_ratio`` (mean ``\log\sigma(r)``) and ``log_odds_chosen`` (mean ``r``).

    Args:
        policy_chosen: ``\bar{\ell}(y_w) < 0``, mean log-probability per token, ``(B,)``.
        policy_rejected: ``\bar{\ell}(y_l) < 0``, ``(B,)``.
        beta: ``\lambda > 0``, the weight of the odds-ratio term.
        nll_loss: The scalar NLL of the chosen completions, or None.

    Returns:
        The loss, the per-pair losses (``-\lambda\log\sigma(r)``, plus the NLL), the rewards
        and TRL's metrics.

    Raises:
        ConfigError: ``beta <= 0``, mismatched shapes, or a non-scalar ``nll_loss``.

    Example:
        >>> import torch, math
        >>> p_w, p_l = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)])
        >>> out = orpo_loss(p_w, p_l, beta=1.0)  # odds 1 vs 1/4: r = log 4
        >>> round(out.metrics["log_odds_chosen"].item(), 4), round(out.loss.item(), 4)
        (1.3863, 0.2231)
    """
    _check_logps(policy_chosen=policy_chosen, policy_rejected=policy_rejected)
    beta = _beta(beta)
    _check_scalar("nll_loss", nll_loss)
    log_odds = (policy_chosen - policy_rejected) - (
        _log1mexp(policy_chosen) - _log1mexp(policy_rejected)
    )  # r, (B,)
    ratio = F.logsigmoid(log_odds)  # (B,)
    losses = -beta * ratio
    loss = losses.mean()
    if nll_loss is not None:
        loss = nll_loss + loss
        losses = nll_loss + losses
    chosen_rewards = beta * policy_chosen.detach()
    rejected_rewards = beta * policy_rejected.detach()
    metrics = _pair_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected)
    if nll_loss is not None:
        metrics["nll_loss"] = nll_loss.detach()
    metrics["log_odds_ratio"] = ratio.detach().mean()
    metrics["log_odds_chosen"] = log_odds.detach().mean()
    return LossOutput(loss, losses, chosen_rewards, rejected_rewards, metrics)


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable on both sides of ``-log 2``."""
    cut = -math.log(2)
    low = torch.log1p(-torch.exp(torch.clamp(x, max=cut)))  # x well below 0
    high = torch.log(-torch.expm1(torch.clamp(x, min=cut)))  # x near 0
    return torch.where(x < cut, low, high)


def _check_flags(desirable: object, size: int) -> Tensor:
    if not isinstance(desirable, Tensor) or tuple(desirable.shape) != (size,):
        shape = tuple(desirable.shape) if isinstance(desirable, Tensor) else type(desirable)
        raise ConfigError(
            f"desirable has shape {shape}, expected ({size},) bool",
            key="desirable",
            tensor="desirable",
        )
    return desirable.bool()


def _check_scalar(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, Tensor) or value.dim() != 0):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ConfigError(f"{name} must be a scalar tensor, got {shape}", key=name, tensor=name)


# -- unpaired: KTO -------------------------------------------------------------------------


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    *,
    policy_kl_logps: Tensor | None = None,
    ref_kl_logps: Tensor | None = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto",
) -> LossOutput:
    r"""KTO: prospect-theoretic loss on unpaired desirable / undesirable completions.

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    Eq. 7. With ``h = \log\pi(y|x) - \log\pi_{ref}(y|x)`` and the reference point

    ``z_0 = \max(0, mean_j(\log\pi(y'_j|x_j) - \log\pi_{ref}(y'_j|x_j)))``,

    estimated on mismatched completions ``y'_j`` (TRL pairs each prompt with another
    example's completion) and detached (no gradient flows through it):

    - desirable ``y``: ``\ell = \lambda_D (1 - \sigma(\beta(h - z_0)))``
    - undesirable ``y``: ``\ell = \lambda_U (1 - \sigma(\beta(z_0 - h)))``

    and the loss is the mean of ``\ell`` over all examples. ``loss_type="apo_zero_unpaired"``
    is APO-zero on unpaired data (D'Oosterlinck et al. 2024): ``1 - \sigma(\beta h)`` for
    desirable, ``\sigma(\beta h)`` for undesirable completions, with no reference point.
    The metrics are TRL's: ``kl`` (``z_0``), ``rewards/chosen`` / ``logps/chosen`` (means
    over the desirable examples, when any), ``rewards/rejected`` / ``logps/rejected`` (over
    the undesirable ones) and ``rewards/margins`` (when both kinds are present).

    Args:
        policy_logps: ``\log\pi(y|x)``, summed over the completion, ``(N,)``.
        ref_logps: ``\log\pi_{ref}(y|x)``, ``(N,)``.
        desirable: ``(N,)`` bool: True for desirable completions.
        policy_kl_logps: ``\log\pi(y'|x)`` of the mismatched completions, ``(M,)``; required
            by ``"kto"``.
        ref_kl_logps: ``\log\pi_{ref}(y'|x)``, ``(M,)``.
        beta: ``\beta > 0``.
        desirable_weight: ``\lambda_D \geq 0``.
        undesirable_weight: ``\lambda_U \geq 0``.
        loss_type: ``"kto"`` or ``"apo_zero_unpaired"``.

    Returns:
        The loss, the per-example losses (desirable first, then undesirable), the rewards
        ``\beta h`` of each group and the metrics.

    Raises:
        ConfigError: ``beta <= 0``, a negative weight, an unknown ``loss_type``, mismatched
            shapes, or missing KL log-probabilities for ``"kto"``.

    Example:
        >>> import torch
        >>> out = kto_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -2.0]),
        ...                torch.tensor([True, False]), policy_kl_logps=torch.tensor([-3.0]),
        ...                ref_kl_logps=torch.tensor([-3.0]))
        >>> out.loss.item(), out.floats()["kl"]  # h = 0 and z0 = 0: 1 - sigmoid(0)
        (0.5, 0.0)
    """
    size = _check_logps(policy_logps=policy_logps, ref_logps=ref_logps)
    flags = _check_flags(desirable, size)
    beta = _beta(beta)
    w_d = check_float("desirable_weight", desirable_weight, low=0.0)
    w_u = check_float("undesirable_weight", undesirable_weight, low=0.0)
    kind = check_choice("loss_type", loss_type, ("kto", "apo_zero_unpaired"))
    if kind == "kto":
        if policy_kl_logps is None or ref_kl_logps is None:
            missing = "policy_kl_logps" if policy_kl_logps is None else "ref_kl_logps"
            raise ConfigError(
                f"loss_type 'kto' needs {missing} (the KL reference point)",
                key=missing,
                hint="score each prompt with a mismatched completion under both models",
            )
        _check_logps(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
        kl = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    else:
        kl = torch.zeros((), dtype=policy_logps.dtype, device=policy_logps.device)

    chosen_idx = flags.nonzero().view(-1)
    rejected_idx = (~flags).nonzero().view(-1)
    chosen_logps = policy_logps.index_select(0, chosen_idx)
    rejected_logps = policy_logps.index_select(0, rejected_idx)
    chosen_logratios = chosen_logps - ref_logps.index_select(0, chosen_idx)
    rejected_logratios = rejected_logps - ref_logps.index_select(0, rejected_idx)
    if kind == "kto":
        chosen_losses = 1 - torch.sigmoid(beta * (chosen_logratios - kl))
        rejected_losses = 1 - torch.sigmoid(beta * (kl - rejected_logratios))
    else:
        chosen_losses = 1 - torch.sigmoid(beta * chosen_logratios)
        rejected_losses = torch.sigmoid(beta * rejected_logratios)
    losses = torch.cat((w_d * chosen_losses, w_u * rejected_losses))
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()

    metrics: dict[str, Tensor] = {"kl": kl}
    if chosen_idx.numel():
        metrics["rewards/chosen"] = chosen_rewards.mean()
        metrics["logps/chosen"] = chosen_logps.detach().mean()
    if rejected_idx.numel():
        metrics["rewards/rejected"] = rejected_rewards.mean()
        metrics["logps/rejected"] = rejected_logps.detach().mean()
    if chosen_idx.numel() and rejected_idx.numel():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return LossOutput(losses.mean(), losses, chosen_rewards, rejected_rewards, metrics)


# -- reward model ----------------------------------------------------------------------------


def reward_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> LossOutput:
    r"""Bradley-Terry loss of a reward model on preference pairs.

    Bradley and Terry 1952; for language models Ouyang et al. 2022 ("Training language
    models to follow instructions with human feedback", Eq. 1). With ``r_w, r_l`` the
    rewards of the chosen and rejected completions and an optional margin ``m`` (Llama 2,
    Touvron et al. 2023, Eq. 2):

    ``\mathcal{L} = -mean(\log\sigma(r_w - r_l - m)) + c \cdot mean((r_w + r_l)^2)``

    where the second term (Eisenstein et al. 2023, "Helping or Herding?") with
    ``c`` = ``center_rewards_coefficient`` keeps the rewards centred on 0 (TRL's
    ``RewardTrainer``). The metrics are TRL's: ``accuracy`` (fraction with ``r_w > r_l``),
    ``margin`` (mean ``r_w - r_l``), ``min_reward``, ``mean_reward``, ``max_reward`` (over
    both).

    Args:
        chosen_rewards: ``r_w``, ``(B,)`` (squeeze a score head's ``(B, 1)``).
        rejected_rewards: ``r_l``, ``(B,)``.
        margin: ``m``: a number, ``(B,)``, or None for 0.
        center_rewards_coefficient: ``c \geq 0``, or None.

    Returns:
        The loss, the per-pair losses, the rewards (detached) and the metrics.

    Raises:
        ConfigError: Mismatched shapes, a bad margin, or a negative coefficient.

    Example:
        >>> import torch
        >>> out = reward_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
        >>> round(out.loss.item(), 4), out.floats()["accuracy"]
        (0.5032, 0.5)
    """
    size = _check_logps(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        if isinstance(margin, Tensor):
            if tuple(margin.shape) not in ((size,), ()):
                raise ConfigError(
                    f"margin has shape {tuple(margin.shape)}, expected ({size},) or a scalar",
                    key="margin",
                    tensor="margin",
                )
            diff = diff - margin
        else:
            diff = diff - check_float("margin", margin)
    losses = -F.logsigmoid(diff)
    loss = losses.mean()
    if center_rewards_coefficient is not None:
        c = check_float("center_rewards_coefficient", center_rewards_coefficient, low=0.0)
        centering = c * torch.mean((chosen_rewards + rejected_rewards) ** 2)
        loss = loss + centering
        losses = losses + centering
    both = torch.cat((chosen_rewards, rejected_rewards)).detach()
    metrics = {
        "accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean(),
        "margin": (chosen_rewards - rejected_rewards).detach().mean(),
        "min_reward": both.min(),
        "mean_reward": both.mean(),
        "max_reward": both.max(),
    }
    return LossOutput(loss, losses, chosen_rewards.detach(), rejected_rewards.detach(), metrics)
