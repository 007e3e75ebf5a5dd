from __future__ import annotations

import math

import pytest
import torch

from lego.align import ADVANTAGE_SCALES, gae, group_advantages, whiten
from lego.align.advantages import nanstd
from lego.protocols import ConfigError

NAN = float("nan")


def test_nanstd_is_unbiased_and_ignores_nan() -> None:
    assert float(nanstd(torch.tensor([2.0, 4.0, NAN, 6.0]))) == pytest.approx(2.0)
    rows = nanstd(torch.tensor([[1.0, 3.0], [5.0, NAN]]), dim=1)
    assert float(rows[0]) == pytest.approx(math.sqrt(2.0))
    assert math.isnan(float(rows[1]))  # one value: no deviation


# -- group advantages ---------------------------------------------------------------------------


def test_group_scale_by_hand() -> None:
    # groups [1, 2, 3] (mean 2, std 1) and [4, 4, 10] (mean 6, std sqrt(12))
    out = group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 10.0]), 3, eps=0.0)
    s = math.sqrt(12.0)
    expected = [-1.0, 0.0, 1.0, -2 / s, -2 / s, 4 / s]
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.mean.tolist() == pytest.approx([2, 2, 2, 6, 6, 6])
    assert out.std.tolist() == pytest.approx([1, 1, 1, s, s, s], abs=1e-6)
    assert float(out.metrics["frac_reward_zero_std"]) == 0.0
    assert float(out.metrics["reward"]) == pytest.approx(4.0)


def test_eps_is_added_to_the_std() -> None:
    out = group_advantages(torch.tensor([0.0, 2.0]), 2, eps=0.5)
    s = math.sqrt(2.0)
    assert out.advantages.tolist() == pytest.approx([-1 / (s + 0.5), 1 / (s + 0.5)], abs=1e-6)


def test_batch_scale_uses_the_std_of_all_rewards_and_the_group_means() -> None:
    rewards = torch.tensor([1.0, 3.0, 10.0, 14.0])
    out = group_advantages(rewards, 2, scale="batch", eps=0.0)
    s = float(torch.std(rewards))  # unbiased, over all four rewards
    assert out.advantages.tolist() == pytest.approx([-1 / s, 1 / s, -2 / s, 2 / s], abs=1e-6)
    assert out.std.tolist() == pytest.approx([s] * 4)


def test_none_scale_only_centres() -> None:
    out = group_advantages(torch.tensor([1.0, 3.0, 10.0, 14.0]), 2, scale="none")
    assert out.advantages.tolist() == pytest.approx([-1.0, 1.0, -2.0, 2.0])


def test_equal_group_is_counted_and_gets_zero_advantage() -> None:
    out = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5]), 3)
    assert out.advantages[:3].tolist() == [0.0, 0.0, 0.0]
    assert out.std_zero.tolist() == [True, True, True, False, False, False]
    assert float(out.metrics["frac_reward_zero_std"]) == pytest.approx(0.5)


def test_nan_rewards_are_left_out_and_get_zero_advantage() -> None:
    out = group_advantages(torch.tensor([1.0, NAN, 3.0, 0.0]), 4, scale="none")
    assert out.advantages.tolist() == pytest.approx([-0.3333333, 0.0, 1.6666666, -1.3333333])
    assert float(out.metrics["reward"]) == pytest.approx(4 / 3)


def test_group_size_one_has_zero_advantage() -> None:
    out = group_advantages(torch.tensor([0.3, 5.0]), 1)
    assert out.advantages.tolist() == [0.0, 0.0]
    assert float(out.metrics["frac_reward_zero_std"]) == 1.0


def test_rewards_are_detached() -> None:
    rewards = torch.tensor([0.0, 1.0], requires_grad=True)
    assert not group_advantages(rewards, 2).advantages.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"group_size": 3}, "group_size"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": 2, "scale": "grop"}, "scale"),
        ({"group_size": 2, "eps": -1.0}, "eps"),
    ],
)
def test_bad_settings_name_the_argument(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        group_advantages(torch.zeros(4), **kwargs)  # type: ignore[arg-type]
    assert caught.value.key == key


@pytest.mark.parametrize(
    "rewards", [torch.zeros(2, 2), torch.zeros(4, dtype=torch.long), torch.zeros(0)]
)
def test_bad_rewards_name_the_tensor(rewards: torch.Tensor) -> None:
    with pytest.raises(ConfigError) as caught:
        group_advantages(rewards, 2)
    assert caught.value.tensor == "rewards"


def test_scales_are_listed() -> None:
    assert ADVANTAGE_SCALES == ("group", "batch", "none")


# -- GAE ------------------------------------------------------------------------------------------


def test_gae_by_hand() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [1.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: deltas d2 = 1 - 0.4 = 0.6; d1 = 0 + 0.9*0.4 - 0.2 = 0.16; d0 = 0.9*0.2 - 0.5 = -0.32
    a2 = 0.6
    a1 = 0.16 + 0.45 * a2
    a0 = -0.32 + 0.45 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.4], abs=1e-6)
    # row 1 ends after its first token: no bootstrap from the padded values
    assert adv[1].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert ret[1].tolist() == pytest.approx([2.0, 0.0, 0.0])


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert adv.tolist() == [[5.5, 4.5, 2.5]]
    assert ret.tolist() == [[6.0, 5.0, 3.0]]


def test_gae_refuses_bad_input() -> None:
    ones = torch.ones(2, 3)
    with pytest.raises(ConfigError) as caught:
        gae(ones, torch.ones(2, 4), ones)
    assert caught.value.tensor == "values"
    with pytest.raises(ConfigError) as caught:
        gae(ones, ones, torch.tensor([[1, 0, 1], [1, 1, 1]]))
    assert caught.value.key == "mask"
    with pytest.raises(ConfigError) as caught:
        gae(ones, ones, ones, gamma=1.5)
    assert caught.value.key == "gamma"


# -- whitening ------------------------------------------------------------------------------------


def test_whiten_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = whiten(x, mask, eps=0.0)
    # masked values 1, 2, 3: mean 2, unbiased variance 1
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    kept = whiten(x, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(kept, torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]))


def test_whiten_ignores_non_finite_padding() -> None:
    x = torch.tensor([[1.0, 3.0, float("inf")]])
    out = whiten(x, torch.tensor([[1, 1, 0]]))
    assert torch.isfinite(out).all()


def test_whiten_needs_two_tokens() -> None:
    with pytest.raises(ConfigError) as caught:
        whiten(torch.ones(1, 3), torch.tensor([[1, 0, 0]]))
    assert caught.value.key == "mask"
