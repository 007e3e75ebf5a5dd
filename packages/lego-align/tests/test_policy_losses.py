from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from lego.align import (
    GRPO_LOSS_TYPES,
    KL_ESTIMATORS,
    PolicyLossOutput,
    grpo_loss,
    kl_penalty,
    ppo_policy_loss,
    ppo_rewards,
    ppo_value_loss,
)
from lego.protocols import ConfigError

# Two completions, lengths 3 and 1 (right-padded to 3).
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])
LOGPS = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -9.0, -9.0]])
ADV = torch.tensor([2.0, -1.0])


def leaf(x: Tensor = LOGPS) -> Tensor:
    return x.clone().requires_grad_(True)


# -- KL --------------------------------------------------------------------------------------------


def test_kl_estimators_by_hand() -> None:
    logps, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    d = 0.5
    assert float(kl_penalty(logps, ref, "k1")) == pytest.approx(d)
    assert float(kl_penalty(logps, ref, "k2")) == pytest.approx(d * d / 2)
    assert float(kl_penalty(logps, ref, "k3")) == pytest.approx(math.exp(-d) + d - 1)
    assert float(kl_penalty(ref, logps, "abs")) == pytest.approx(d)
    assert KL_ESTIMATORS == ("k1", "k2", "k3", "abs")


def test_kl_bad_input() -> None:
    with pytest.raises(ConfigError) as caught:
        kl_penalty(LOGPS, LOGPS, "k4")
    assert caught.value.key == "kind"
    with pytest.raises(ConfigError) as caught:
        kl_penalty(LOGPS, LOGPS[:, :2])
    assert caught.value.key == "ref_logps"


# -- GRPO ---------------------------------------------------------------------------------------


def test_on_policy_normalisations_by_hand() -> None:
    # on-policy: the ratio is 1, each token's loss is -A
    sums = (-2.0 * 3, 1.0 * 1)  # per-row sums of the masked token losses
    expected = {
        "grpo": (sums[0] / 3 + sums[1] / 1) / 2,
        "bnpo": (sums[0] + sums[1]) / 4,
        "dr_grpo": (sums[0] + sums[1]) / (2 * 5),
        "dapo": (sums[0] + sums[1]) / 10,
    }
    for loss_type in GRPO_LOSS_TYPES:
        out = grpo_loss(
            leaf(),
            None,
            ADV,
            MASK,
            loss_type=loss_type,
            max_completion_length=5,
            num_items_in_batch=10,
        )
        assert isinstance(out, PolicyLossOutput)
        assert out.loss.item() == pytest.approx(expected[loss_type]), loss_type


def test_on_policy_gradient_is_minus_advantage_over_normaliser() -> None:
    logps = leaf()
    grpo_loss(logps, None, ADV, MASK, loss_type="grpo").loss.backward()
    assert logps.grad is not None
    expected = [[-2 / 3 / 2] * 3, [1 / 2, 0.0, 0.0]]
    torch.testing.assert_close(logps.grad, torch.tensor(expected))


def test_dapo_without_num_items_equals_bnpo() -> None:
    a = grpo_loss(leaf(), None, ADV, MASK, loss_type="dapo").loss
    b = grpo_loss(leaf(), None, ADV, MASK, loss_type="bnpo").loss
    assert a.item() == pytest.approx(b.item())


def test_clipping_by_hand() -> None:
    # ratios e^0.5 = 1.65 (clipped at 1.2 for A > 0), e^-0.5 = 0.61 (clipped at 0.8 for A < 0)
    logps = leaf(torch.tensor([[0.5], [-0.5]]))
    old = torch.zeros(2, 1)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1)
    out = grpo_loss(logps, old, adv, mask, loss_type="bnpo", epsilon=0.2)
    # min(1.65 * 1, 1.2 * 1) = 1.2; min(0.61 * -1, 0.8 * -1) = -0.8 -> losses -1.2, 0.8
    assert out.loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    out.loss.backward()
    assert logps.grad is not None
    assert logps.grad.tolist() == [[0.0], [0.0]]  # both clipped: no gradient
    assert float(out.metrics["clip_ratio/high_mean"]) == 0.5
    assert float(out.metrics["clip_ratio/low_mean"]) == 0.5
    assert float(out.metrics["clip_ratio/region_mean"]) == 1.0
    assert float(out.metrics["clip_ratio/low_min"]) == 0.0
    assert float(out.metrics["clip_ratio/high_max"]) == 1.0


def test_epsilon_high_widens_the_upper_clip() -> None:
    logps = leaf(torch.tensor([[0.22]]))  # ratio 1.246: between 1.2 and 1.28
    old, adv, mask = torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1)
    clipped = grpo_loss(logps, old, adv, mask, epsilon=0.2)
    higher = grpo_loss(logps, old, adv, mask, epsilon=0.2, epsilon_high=0.28)
    assert clipped.loss.item() == pytest.approx(-1.2)
    assert higher.loss.item() == pytest.approx(-math.exp(0.22))
    assert float(higher.metrics["clip_ratio/high_mean"]) == 0.0


def test_delta_caps_the_unclipped_ratio() -> None:
    logps = leaf(torch.tensor([[1.0]]))  # ratio e, negative advantage: unclipped branch
    out = grpo_loss(logps, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), delta=2.0)
    assert out.loss.item() == pytest.approx(2.0)


def test_kl_term_with_and_without_bias_correction() -> None:
    logps = leaf(torch.tensor([[-1.0]]))
    ref = torch.tensor([[-1.5]])
    old = torch.tensor([[-1.2]])  # ratio e^0.2
    k3 = math.exp(-0.5) + 0.5 - 1
    zero_adv = torch.zeros(1)
    plain = grpo_loss(
        logps, old, zero_adv, torch.ones(1, 1), ref_logps=ref, beta=0.1, kl_bias_correction=False
    )
    assert plain.loss.item() == pytest.approx(0.1 * k3)
    assert float(plain.metrics["kl"]) == pytest.approx(k3)
    corrected = grpo_loss(logps, old, zero_adv, torch.ones(1, 1), ref_logps=ref, beta=0.1)
    assert corrected.loss.item() == pytest.approx(0.1 * k3 * math.exp(0.2))
    # on-policy the correction is 1 in value but doubles the gradient's KL part
    a, b = leaf(torch.tensor([[-1.0]])), leaf(torch.tensor([[-1.0]]))
    grpo_loss(a, None, zero_adv, torch.ones(1, 1), ref_logps=ref, beta=1.0).loss.backward()
    grpo_loss(
        b, None, zero_adv, torch.ones(1, 1), ref_logps=ref, beta=1.0, kl_bias_correction=False
    ).loss.backward()
    assert a.grad is not None
    assert b.grad is not None
    dk3 = 1 - math.exp(-0.5)  # d k3 / d logps
    assert float(b.grad) == pytest.approx(dk3)
    assert float(a.grad) == pytest.approx(dk3 + k3)


def test_per_token_advantages_are_accepted() -> None:
    per_token = ADV[:, None].expand(2, 3)
    a = grpo_loss(leaf(), None, per_token, MASK, loss_type="grpo").loss
    b = grpo_loss(leaf(), None, ADV, MASK, loss_type="grpo").loss
    assert a.item() == pytest.approx(b.item())


def test_padding_never_matters() -> None:
    other = LOGPS.clone()
    other[1, 1:] = 50.0  # padded positions, huge values
    old = LOGPS - 0.1
    old_other = old.clone()
    old_other[1, 1:] = -50.0
    a = grpo_loss(leaf(), old, ADV, MASK, loss_type="dapo")
    b = grpo_loss(leaf(other), old_other, ADV, MASK, loss_type="dapo")
    assert a.loss.item() == pytest.approx(b.loss.item())
    assert float(a.metrics["clip_ratio/region_mean"]) == float(b.metrics["clip_ratio/region_mean"])


GOOD: dict[str, Any] = {"old_logps": None, "advantages": ADV, "mask": MASK}


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"loss_type": "ppo"}, "loss_type"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon_high": -0.1}, "epsilon_high"),
        ({"beta": -0.1}, "beta"),
        ({"beta": 0.1}, "ref_logps"),
        ({"delta": 0.5}, "delta"),
        ({"loss_type": "dr_grpo"}, "max_completion_length"),
        ({"loss_type": "dr_grpo", "max_completion_length": 2}, "max_completion_length"),
        ({"num_items_in_batch": 0}, "num_items_in_batch"),
        ({"advantages": torch.zeros(3)}, "advantages"),
        ({"mask": torch.ones(2, 4)}, "mask"),
        ({"old_logps": torch.zeros(2, 2)}, "old_logps"),
        ({"ref_logps": torch.zeros(3, 3)}, "ref_logps"),
    ],
)
def test_grpo_bad_input_names_the_argument(changes: dict[str, Any], key: str) -> None:
    args = {**GOOD, **changes}
    with pytest.raises(ConfigError) as caught:
        grpo_loss(leaf(), args.pop("old_logps"), args.pop("advantages"), args.pop("mask"), **args)
    assert caught.value.key == key


def test_grpo_refuses_integer_logps() -> None:
    with pytest.raises(ConfigError) as caught:
        grpo_loss(torch.zeros(2, 3, dtype=torch.long), None, ADV, MASK)
    assert caught.value.key == "logps"


# -- PPO ----------------------------------------------------------------------------------------


def test_ppo_policy_loss_by_hand() -> None:
    logps = leaf(torch.tensor([[0.5, -0.5, 0.0]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = ppo_policy_loss(logps, old, adv, mask, cliprange=0.2)
    # token 0: max(-1.65, -1.2) = -1.2 (clipped); token 1: max(-0.61, -0.8) = -0.61
    r1 = math.exp(-0.5)
    assert out.loss.item() == pytest.approx((-1.2 - r1) / 2)
    assert float(out.metrics["policy/clipfrac"]) == 0.5
    assert float(out.metrics["policy/approxkl"]) == pytest.approx(0.5 * 0.25)
    assert float(out.metrics["val/ratio"]) == pytest.approx((math.exp(0.5) + r1) / 2)
    out.loss.backward()
    assert logps.grad is not None
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, -r1 / 2, 0.0]]))


def test_ppo_value_loss_by_hand() -> None:
    values = leaf(torch.tensor([[1.0, 0.3, 7.0]]))
    old = torch.zeros(1, 3)
    returns = torch.tensor([[0.0, 1.0, 0.0]])
    out = ppo_value_loss(values, old, returns, torch.tensor([[1, 1, 0]]), cliprange_value=0.2)
    # token 0: max((1-0)^2, (0.2-0)^2) = 1; token 1: max(0.49, 0.64) = 0.64 (clipped)
    assert out.loss.item() == pytest.approx(0.5 * (1.0 + 0.64) / 2)
    assert float(out.metrics["val/clipfrac"]) == 0.5
    out.loss.backward()
    assert values.grad is not None
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0, 0.0]]))


def test_ppo_losses_bad_input() -> None:
    ones = torch.ones(1, 3)
    with pytest.raises(ConfigError) as caught:
        ppo_policy_loss(ones, ones, ones, ones, cliprange=0.0)
    assert caught.value.key == "cliprange"
    with pytest.raises(ConfigError) as caught:
        ppo_policy_loss(ones, ones, torch.ones(1, 2), ones)
    assert caught.value.key == "advantages"
    with pytest.raises(ConfigError) as caught:
        ppo_value_loss(ones, ones, ones, ones, cliprange_value=-1.0)
    assert caught.value.key == "cliprange_value"
    with pytest.raises(ConfigError) as caught:
        ppo_value_loss(ones, torch.ones(2, 3), ones, ones)
    assert caught.value.key == "old_values"


def test_ppo_rewards_by_hand() -> None:
    scores = torch.tensor([1.0, -2.0])
    logps = torch.tensor([[-1.0, -2.0, -1.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = ppo_rewards(scores, logps, ref, mask, kl_coef=0.1, kind="k1")
    torch.testing.assert_close(out.rewards, torch.tensor([[-0.05, 0.1, 1.0], [-2.05, 0.0, 0.0]]))
    torch.testing.assert_close(out.kl, torch.tensor([[0.5, -1.0, 0.0], [0.5, 0.0, 0.0]]))
    assert float(out.metrics["objective/kl"]) == pytest.approx((-0.5 + 0.5) / 2)
    assert float(out.metrics["objective/rlhf_reward"]) == pytest.approx((1.05 - 2.05) / 2)
    after = ppo_rewards(scores, logps, ref, mask, kl_coef=0.1, score_at="after_last")
    # a full row keeps its score on the last token; row 1 gets it one position later
    expected = torch.tensor([[-0.05, 0.1, 1.0], [-0.05, -2.0, 0.0]])
    torch.testing.assert_close(after.rewards, expected)


def test_ppo_rewards_bad_input() -> None:
    ones = torch.ones(2, 3)
    with pytest.raises(ConfigError) as caught:
        ppo_rewards(torch.ones(3), ones, ones, ones)
    assert caught.value.key == "scores"
    with pytest.raises(ConfigError) as caught:
        ppo_rewards(torch.ones(2), ones, ones, torch.tensor([[1, 1, 1], [0, 0, 0]]))
    assert "row 1" in caught.value.message
    with pytest.raises(ConfigError) as caught:
        ppo_rewards(torch.ones(2), ones, ones, ones, kl_coef=-1.0)
    assert caught.value.key == "kl_coef"
    with pytest.raises(ConfigError) as caught:
        ppo_rewards(torch.ones(2), ones, ones, ones, score_at="first")
    assert caught.value.key == "score_at"
