from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from lego.align import (
    DPO_LOSS_TYPES,
    F_DIVERGENCES,
    LossOutput,
    dpo_loss,
    kto_loss,
    orpo_loss,
    reward_loss,
    simpo_loss,
)
from lego.protocols import ConfigError

# Three pairs: summed log-probs of the policy and the reference, and completion lengths.
PC = [-4.0, -7.5, -2.2]  # no ties among the log-ratios (AOT sorts them)
PR = [-6.0, -5.0, -9.0]
RC = [-5.0, -7.0, -3.0]
RR = [-5.5, -6.0, -8.0]
LC = [4, 5, 2]
LR = [3, 6, 7]
BETA = 0.3
EPS = 0.1


def ls(x: float) -> float:
    """log sigmoid."""
    return -math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def t(values: list[float], grad: bool = False) -> Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def pairs() -> list[tuple[float, float, float, float, float, float]]:
    return list(zip(PC, PR, RC, RR, [float(n) for n in LC], [float(n) for n in LR], strict=True))


def expected_dpo(loss_type: str) -> float:
    """Each loss written out from its paper, per pair, then averaged."""
    b, e = BETA, EPS
    out = []
    for pc, pr, rc, rr, lc, lr in pairs():
        hw, hl = pc - rc, pr - rr
        d = hw - hl
        if loss_type == "sigmoid":
            out.append(-ls(b * d))
        elif loss_type == "robust":
            out.append((-(1 - e) * ls(b * d) + e * ls(-b * d)) / (1 - 2 * e))
        elif loss_type == "hinge":
            out.append(max(0.0, 1 - b * d))
        elif loss_type == "ipo":
            out.append((hw / lc - hl / lr - 1 / (2 * b)) ** 2)
        elif loss_type == "exo_pair":
            out.append(
                sig(b * d) * (ls(b * d) - math.log(1 - e))
                + sig(-b * d) * (ls(-b * d) - math.log(e))
            )
        elif loss_type == "nca_pair":
            out.append(-ls(b * hw) - 0.5 * ls(-b * hw) - 0.5 * ls(-b * hl))
        elif loss_type == "bco_pair":
            out.append(-ls(b * hw) - ls(-b * hl))
        elif loss_type == "sppo_hard":
            out.append((hw - 1 / (2 * b)) ** 2 + (hl + 1 / (2 * b)) ** 2)
        elif loss_type == "apo_zero":
            out.append(1 - sig(b * hw) + sig(b * hl))
        elif loss_type == "apo_down":
            out.append(sig(b * hw) + 1 - sig(b * d))
        elif loss_type == "discopop":
            z = b * d
            m = sig(z / 0.05)
            out.append((1 - m) * -ls(z) + m * math.exp(-z))
        elif loss_type == "sigmoid_norm":
            out.append(-ls(b * (hw / lc - hl / lr)))
        elif loss_type == "sft":
            out.append(-sum(PC) / sum(LC))
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            a = sorted(pc - pr for pc, pr, *_ in pairs())
            r = sorted(rc - rr for _, _, rc, rr, *_ in pairs())
        else:
            a = sorted(pc - rc for pc, _, rc, *_ in pairs())
            r = sorted(pr - rr for _, pr, _, rr, *_ in pairs())
        out = [-(1 - e) * ls(b * (x - y)) - e * ls(-b * (x - y)) for x, y in zip(a, r, strict=True)]
    return mean(out)


def run_dpo(loss_type: str | list[str], **kwargs: object) -> LossOutput:
    options: dict[str, object] = {
        "beta": BETA,
        "label_smoothing": EPS
        if loss_type in ("robust", "exo_pair", "aot", "aot_unpaired")
        else 0.0,
        "chosen_lengths": torch.tensor(LC),
        "rejected_lengths": torch.tensor(LR),
        **kwargs,
    }
    return dpo_loss(t(PC), t(PR), t(RC), t(RR), loss_type=loss_type, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_family_hand_computed(loss_type: str) -> None:
    out = run_dpo(loss_type)
    assert out.loss.shape == ()
    assert out.losses.shape == (3,)
    assert out.loss.item() == pytest.approx(expected_dpo(loss_type), abs=1e-12)
    assert out.losses.mean().item() == pytest.approx(out.loss.item(), abs=1e-12)


def test_dpo_metrics() -> None:
    out = run_dpo("sigmoid")
    chosen = [BETA * (pc - rc) for pc, rc in zip(PC, RC, strict=True)]
    rejected = [BETA * (pr - rr) for pr, rr in zip(PR, RR, strict=True)]
    values = out.floats()
    assert values["rewards/chosen"] == pytest.approx(mean(chosen))
    assert values["rewards/rejected"] == pytest.approx(mean(rejected))
    assert values["rewards/margins"] == pytest.approx(mean(chosen) - mean(rejected))
    assert values["rewards/accuracies"] == pytest.approx(2 / 3)  # pair 2 is wrong
    assert values["logps/chosen"] == pytest.approx(mean(PC))
    assert values["logps/rejected"] == pytest.approx(mean(PR))
    assert "nll_loss" not in values
    assert not out.chosen_rewards.requires_grad
    assert out.chosen_rewards.tolist() == pytest.approx(chosen)


def test_conservative_dpo_is_label_smoothed_sigmoid() -> None:
    out = run_dpo("sigmoid", label_smoothing=EPS)
    expected = mean(
        [
            -(1 - EPS) * ls(BETA * d) - EPS * ls(-BETA * d)
            for d in [(pc - rc) - (pr - rr) for pc, pr, rc, rr, *_ in pairs()]
        ]
    )
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.loss.item() != pytest.approx(run_dpo("sigmoid").loss.item(), abs=1e-6)


def test_rpo_alpha_adds_the_chosen_nll() -> None:
    out = run_dpo("sigmoid", rpo_alpha=0.7)
    nll = -sum(PC) / sum(LC)
    assert out.loss.item() == pytest.approx(expected_dpo("sigmoid") + 0.7 * nll, abs=1e-12)
    assert out.floats()["nll_loss"] == pytest.approx(nll)
    combined = run_dpo(["sigmoid", "sft"], loss_weights=[1.0, 0.7])
    assert combined.loss.item() == pytest.approx(out.loss.item(), abs=1e-12)


def test_weighted_combination() -> None:
    out = run_dpo(["sigmoid", "hinge"], loss_weights=[0.25, 2.0])
    expected = 0.25 * expected_dpo("sigmoid") + 2.0 * expected_dpo("hinge")
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("divergence", F_DIVERGENCES)
def test_f_divergences(divergence: str) -> None:
    def score(h: float) -> float:
        if divergence == "forward_kl":
            return 1 - math.exp(-h)
        if divergence == "js_divergence":
            return math.log(2) + ls(h)
        if divergence == "alpha_divergence":
            return (math.exp(-0.5 * h) - 1) / -0.5
        return h

    out = run_dpo("sigmoid", f_divergence=divergence, f_alpha=0.5)
    expected = mean(
        [-ls(BETA * (score(pc - rc) - score(pr - rr))) for pc, pr, rc, rr, *_ in pairs()]
    )
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    # The rewards stay beta * log-ratio whatever the divergence (TRL's metrics).
    assert out.floats()["rewards/chosen"] == pytest.approx(
        mean([BETA * (pc - rc) for pc, rc in zip(PC, RC, strict=True)])
    )


def test_alpha_divergence_at_one_is_the_reverse_kl() -> None:
    out = run_dpo("sigmoid", f_divergence="alpha_divergence", f_alpha=1.0)
    assert out.loss.item() == pytest.approx(expected_dpo("sigmoid"), abs=1e-12)


def gradcheck(fn: Callable[..., Tensor], *values: list[float]) -> bool:
    inputs = tuple(t(v, grad=True) for v in values)
    return bool(torch.autograd.gradcheck(fn, inputs))


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_gradients(loss_type: str) -> None:
    eps = EPS if loss_type in ("robust", "exo_pair", "aot", "aot_unpaired") else 0.0

    def fn(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
        return dpo_loss(
            pc,
            pr,
            rc,
            rr,
            loss_type=loss_type,
            beta=BETA,
            label_smoothing=eps,
            chosen_lengths=torch.tensor(LC),
            rejected_lengths=torch.tensor(LR),
        ).loss

    assert gradcheck(fn, PC, PR, RC, RR)


@pytest.mark.parametrize("divergence", F_DIVERGENCES)
def test_f_divergence_gradients(divergence: str) -> None:
    def fn(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
        return dpo_loss(
            pc,
            pr,
            rc,
            rr,
            beta=BETA,
            f_divergence=divergence,
            rpo_alpha=0.5,
            chosen_lengths=torch.tensor(LC),
        ).loss

    assert gradcheck(fn, PC, PR, RC, RR)


# -- SimPO, ORPO ----------------------------------------------------------------------------

MC = [-0.8, -1.5, -0.3]  # mean log-probs per token
MR = [-1.2, -1.1, -2.5]


def test_simpo_hand_computed() -> None:
    beta, gamma = 2.5, 1.2
    out = simpo_loss(t(MC), t(MR), beta=beta, gamma=gamma, label_smoothing=EPS)
    expected = mean(
        [
            -(1 - EPS) * ls(beta * (c - r) - gamma) - EPS * ls(-(beta * (c - r) - gamma))
            for c, r in zip(MC, MR, strict=True)
        ]
    )
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([beta * c for c in MC])
    assert out.floats()["rewards/accuracies"] == pytest.approx(2 / 3)
    with_nll = simpo_loss(
        t(MC),
        t(MR),
        beta=beta,
        gamma=gamma,
        label_smoothing=EPS,
        nll_loss=torch.tensor(0.9, dtype=torch.float64),
        nll_weight=0.5,
    )
    assert with_nll.loss.item() == pytest.approx(expected + 0.45, abs=1e-12)
    assert with_nll.floats()["nll_loss"] == pytest.approx(0.9)


def test_orpo_hand_computed() -> None:
    lam = 0.2
    nll = torch.tensor(1.3, dtype=torch.float64)
    out = orpo_loss(t(MC), t(MR), beta=lam, nll_loss=nll)

    def log_odds(x: float) -> float:
        p = math.exp(x)
        return math.log(p / (1 - p))

    rs = [log_odds(c) - log_odds(r) for c, r in zip(MC, MR, strict=True)]
    assert out.loss.item() == pytest.approx(1.3 - lam * mean([ls(r) for r in rs]), abs=1e-12)
    assert out.floats()["log_odds_chosen"] == pytest.approx(mean(rs))
    assert out.floats()["log_odds_ratio"] == pytest.approx(mean([ls(r) for r in rs]))
    assert out.floats()["nll_loss"] == pytest.approx(1.3)


def test_orpo_is_stable_near_zero() -> None:
    # log(1 - e^x) for x -> 0- and x << 0: the two branches of the stable form.
    near = t([-1e-9, -50.0], grad=True)
    far = t([-2.0, -60.0], grad=True)
    out = orpo_loss(near, far, beta=1.0)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert near.grad is not None
    assert bool(torch.isfinite(near.grad).all())


def test_simpo_orpo_gradients() -> None:
    assert gradcheck(
        lambda c, r: simpo_loss(c, r, beta=2.0, gamma=0.5, label_smoothing=EPS).loss, MC, MR
    )
    assert gradcheck(lambda c, r: orpo_loss(c, r, beta=0.3, nll_loss=-c.mean()).loss, MC, MR)


# -- KTO -------------------------------------------------------------------------------------

KP = [-3.0, -4.0, -6.0, -2.0]
KR = [-3.5, -3.0, -5.0, -2.5]
DES = [True, False, False, True]
KLP = [-5.0, -6.0, -4.0]
KLR = [-5.5, -6.5, -4.1]


def test_kto_hand_computed() -> None:
    beta, wd, wu = 0.4, 1.5, 0.7
    out = kto_loss(
        t(KP),
        t(KR),
        torch.tensor(DES),
        policy_kl_logps=t(KLP),
        ref_kl_logps=t(KLR),
        beta=beta,
        desirable_weight=wd,
        undesirable_weight=wu,
    )
    z0 = max(0.0, mean([p - r for p, r in zip(KLP, KLR, strict=True)]))
    h = [p - r for p, r in zip(KP, KR, strict=True)]
    good = [wd * (1 - sig(beta * (x - z0))) for x, d in zip(h, DES, strict=True) if d]
    bad = [wu * (1 - sig(beta * (z0 - x))) for x, d in zip(h, DES, strict=True) if not d]
    assert out.loss.item() == pytest.approx(mean(good + bad), abs=1e-12)
    assert out.losses.tolist() == pytest.approx(good + bad)
    values = out.floats()
    assert values["kl"] == pytest.approx(z0)
    assert values["rewards/chosen"] == pytest.approx(mean([beta * h[0], beta * h[3]]))
    assert values["rewards/rejected"] == pytest.approx(mean([beta * h[1], beta * h[2]]))
    assert values["rewards/margins"] == pytest.approx(
        values["rewards/chosen"] - values["rewards/rejected"]
    )
    assert values["logps/chosen"] == pytest.approx(mean([KP[0], KP[3]]))


def test_kto_reference_point_is_clamped_and_detached() -> None:
    policy_kl = t([-9.0, -9.0], grad=True)  # below the reference: the estimate is negative
    out = kto_loss(
        t(KP, grad=True),
        t(KR),
        torch.tensor(DES),
        policy_kl_logps=policy_kl,
        ref_kl_logps=t([-1.0, -1.0]),
    )
    assert out.floats()["kl"] == 0.0
    out.loss.backward()
    assert policy_kl.grad is None  # no gradient flows through z0
    above = kto_loss(
        t(KP), t(KR), torch.tensor(DES), policy_kl_logps=t([-1.0]), ref_kl_logps=t([-3.0])
    )
    assert above.floats()["kl"] == pytest.approx(2.0)


def test_kto_one_sided_batches_and_apo() -> None:
    only_good = kto_loss(
        t(KP), t(KR), torch.ones(4, dtype=torch.bool), policy_kl_logps=t(KLP), ref_kl_logps=t(KLR)
    )
    assert "rewards/rejected" not in only_good.metrics
    assert "rewards/margins" not in only_good.metrics
    apo = kto_loss(t(KP), t(KR), torch.tensor(DES), loss_type="apo_zero_unpaired", beta=0.4)
    h = [p - r for p, r in zip(KP, KR, strict=True)]
    expected = [1 - sig(0.4 * h[0]), 1 - sig(0.4 * h[3]), sig(0.4 * h[1]), sig(0.4 * h[2])]
    assert apo.losses.tolist() == pytest.approx(expected)


def test_kto_gradients() -> None:
    flags = torch.tensor(DES)
    assert gradcheck(
        lambda p, r: (
            kto_loss(
                p, r, flags, policy_kl_logps=t(KLP), ref_kl_logps=t(KLR), desirable_weight=1.3
            ).loss
        ),
        KP,
        KR,
    )


# -- reward model ----------------------------------------------------------------------------


def test_reward_loss_hand_computed() -> None:
    rw, rl, m, c = [1.0, -0.5, 2.0], [0.0, 0.5, -1.0], [0.5, 0.0, 1.0], 0.01
    out = reward_loss(t(rw), t(rl), margin=t(m), center_rewards_coefficient=c)
    expected = mean([-ls(a - b - g) for a, b, g in zip(rw, rl, m, strict=True)]) + c * mean(
        [(a + b) ** 2 for a, b in zip(rw, rl, strict=True)]
    )
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    values = out.floats()
    assert values["accuracy"] == pytest.approx(2 / 3)
    assert values["margin"] == pytest.approx(mean([1.0, -1.0, 3.0]))
    assert (values["min_reward"], values["max_reward"]) == (-1.0, 2.0)
    assert values["mean_reward"] == pytest.approx(mean(rw + rl))
    plain = reward_loss(t(rw), t(rl), margin=0.5)
    assert plain.loss.item() == pytest.approx(
        mean([-ls(a - b - 0.5) for a, b in zip(rw, rl, strict=True)])
    )


def test_reward_gradients() -> None:
    assert gradcheck(
        lambda a, b: reward_loss(a, b, margin=0.3, center_rewards_coefficient=0.1).loss,
        [1.0, -0.5, 2.0],
        [0.0, 0.5, -1.0],
    )


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"loss_type": "sigmoidd"}, "loss_type"),
        ({"loss_type": []}, "loss_type"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"loss_type": "exo_pair"}, "label_smoothing"),
        ({"loss_type": ["sigmoid", "hinge"], "loss_weights": [1.0]}, "loss_weights"),
        ({"f_divergence": "tv"}, "f_divergence"),
        ({"f_divergence": "forward_kl", "loss_type": "nca_pair"}, "f_divergence"),
        ({"loss_type": "ipo"}, "chosen_lengths"),
        ({"rpo_alpha": 1.0}, "chosen_lengths"),
        ({"rpo_alpha": -1.0}, "rpo_alpha"),
        ({"discopop_tau": 0.0}, "discopop_tau"),
    ],
)
def test_dpo_bad_arguments(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        dpo_loss(t(PC), t(PR), t(RC), t(RR), **kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
    assert key in str(info.value)


def test_unknown_loss_type_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="sigmoid"):
        dpo_loss(t(PC), t(PR), t(RC), t(RR), loss_type="sigmod")


def test_ipo_needs_rejected_lengths() -> None:
    with pytest.raises(ConfigError) as info:
        dpo_loss(t(PC), t(PR), t(RC), t(RR), loss_type="ipo", chosen_lengths=torch.tensor(LC))
    assert info.value.key == "rejected_lengths"
    with pytest.raises(ConfigError) as info:
        dpo_loss(
            t(PC),
            t(PR),
            t(RC),
            t(RR),
            loss_type="ipo",
            chosen_lengths=torch.tensor([1, 2]),
            rejected_lengths=torch.tensor(LR),
        )
    assert info.value.key == "chosen_lengths"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ((t(PC), t(PR[:2]), t(RC), t(RR)), "policy_rejected"),
        ((t(PC), t(PR), t(RC).view(3, 1), t(RR)), "ref_chosen"),
        ((t(PC), t(PR), t(RC), torch.tensor([1, 2, 3])), "ref_rejected"),
        ((t(PC), t(PR), t(RC), [1.0, 2.0, 3.0]), "ref_rejected"),
        ((t([]), t([]), t([]), t([])), "policy_chosen"),
    ],
)
def test_dpo_bad_shapes(args: tuple[object, ...], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        dpo_loss(*args)  # type: ignore[arg-type]
    assert info.value.key == key


def test_other_losses_bad_input() -> None:
    with pytest.raises(ConfigError) as info:
        simpo_loss(t(MC), t(MR), beta=0.0)
    assert info.value.key == "beta"
    with pytest.raises(ConfigError) as info:
        simpo_loss(t(MC), t(MR), nll_loss=t([1.0]))
    assert info.value.key == "nll_loss"
    with pytest.raises(ConfigError) as info:
        orpo_loss(t(MC), t(MR[:2]))
    assert info.value.key == "policy_rejected"
    with pytest.raises(ConfigError) as info:
        kto_loss(t(KP), t(KR), torch.tensor(DES))
    assert info.value.key == "policy_kl_logps"
    with pytest.raises(ConfigError) as info:
        kto_loss(t(KP), t(KR), torch.tensor(DES[:3]), loss_type="apo_zero_unpaired")
    assert info.value.key == "desirable"
    with pytest.raises(ConfigError) as info:
        kto_loss(t(KP), t(KR), torch.tensor(DES), loss_type="kto2")  # type: ignore[arg-type]
    assert info.value.key == "loss_type"
    with pytest.raises(ConfigError) as info:
        kto_loss(t(KP), t(KR), torch.tensor(DES), beta=-1.0, loss_type="apo_zero_unpaired")
    assert info.value.key == "beta"
    with pytest.raises(ConfigError) as info:
        reward_loss(t([1.0, 2.0]), t([1.0, 2.0]), margin=t([1.0, 2.0, 3.0]))
    assert info.value.key == "margin"
    with pytest.raises(ConfigError) as info:
        reward_loss(t([1.0, 2.0]), t([1.0, 2.0]), center_rewards_coefficient=-0.1)
    assert info.value.key == "center_rewards_coefficient"
