"""The PPO trainer: objective = the PPO losses, GAE wiring, learning, the value head, errors."""

from __future__ import annotations

import io
import itertools
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lego.align import (
    VALUE_HEAD_FILE,
    PolicyWithValueHead,
    PPOConfig,
    PPOObjective,
    PPOTrainer,
    RewardModel,
    completion_logprobs,
    gae,
    ppo_policy_loss,
    ppo_rewards,
    ppo_value_loss,
    read_value_head,
    whiten,
)
from lego.protocols import CompatibilityError, ConfigError, DataError, FormatError, TrainingError
from lego.train import TrainConfig, read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_runs import Letters, count_a


def rows() -> list[dict[str, Any]]:
    return [{"prompt": c * k} for c in "bcdefghijk" for k in (1, 2)]


def config(**overrides: Any) -> PPOConfig:
    settings: dict[str, Any] = {
        "template": "none",
        "prompts_per_step": 8,
        "num_mini_batches": 2,
        "num_ppo_epochs": 2,
        "max_completion_length": 4,
        "max_prompt_length": 4,
        "temperature": 1.0,
    }
    settings.update(overrides)
    return PPOConfig(**settings)


def train_config(out: Path, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "out_dir": str(out),
        "max_steps": 4,
        "grad_accum": 2,
        "checkpoint_every": 0,
        "progress": "none",
        "peak_flops": 1e12,
        "log_every": 1,
        "optim": {"lr": 3e-2, "min_lr": 3e-2, "weight_decay": 0.0},
        "schedule": {"name": "constant", "warmup_steps": 0},
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def trainer(
    out: Path, model: nn.Module, settings: PPOConfig | None = None, **kwargs: Any
) -> PPOTrainer:
    kwargs.setdefault("reward_model", count_a)
    kwargs.setdefault("train", train_config(out))
    return PPOTrainer(
        model=model,
        tokenizer=Letters(),
        train_data=rows(),
        config=settings or config(),
        **kwargs,
    )


def _train_records(run: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run) if r.get("split") == "train"]


# -- the objective ---------------------------------------------------------------------------


def _hand_batch() -> dict[str, Tensor]:
    torch.manual_seed(1)
    ids = torch.tensor([[1, 1, 5, 6, 7, 8, 1], [1, 4, 5, 6, 9, 3, 2]])  # (2, 4 + 3)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cmask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "completion_mask": cmask,
        "old_logps": -torch.rand(2, 3) * 3,
        "values": torch.randn(2, 3),
        "advantages": torch.randn(2, 3),
        "returns": torch.randn(2, 3),
        "stat/objective/scores": torch.tensor(0.25),
    }


def test_objective_equals_policy_plus_vf_coef_value_loss(tiny: nn.Module) -> None:
    model = PolicyWithValueHead(tiny)
    batch = _hand_batch()
    objective = PPOObjective(cliprange=0.1, cliprange_value=0.05, vf_coef=0.3, temperature=0.7)
    assert objective.units(batch) == 1
    out = objective(model, batch)
    out.loss_sum.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    ids, mask, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    logps = completion_logprobs(
        tiny, ids, mask, cmask, position_ids=batch["position_ids"], temperature=0.7
    ).logps
    _, values = model(
        ids, attention_mask=mask, position_ids=batch["position_ids"], return_values=True
    )
    vpred = values[:, 3:-1]  # the positions that predict the 3 completion tokens
    policy = ppo_policy_loss(logps, batch["old_logps"], batch["advantages"], cmask, cliprange=0.1)
    value = ppo_value_loss(vpred, batch["values"], batch["returns"], cmask, cliprange_value=0.05)
    expected = policy.loss + 0.3 * value.loss
    expected.backward()
    assert out.loss_sum.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.tokens == int(mask.sum())
    assert got.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    assert "value_head.weight" in got  # the value loss trains the value head
    for name, grad in got.items():
        assert torch.allclose(grad, model.get_parameter(name).grad, atol=1e-6), name
    metrics = {k: float(v) for k, v in out.metrics.items()}
    assert metrics["loss/policy_avg"] == pytest.approx(policy.loss.item())
    assert metrics["loss/value_avg"] == pytest.approx(value.loss.item())
    assert metrics["policy/clipfrac_avg"] == pytest.approx(float(policy.metrics["policy/clipfrac"]))
    assert metrics["val/clipfrac_avg"] == pytest.approx(float(value.metrics["val/clipfrac"]))
    assert metrics["objective/scores"] == pytest.approx(0.25)


def test_objective_needs_a_value_head(tiny: nn.Module) -> None:
    with pytest.raises(ConfigError, match="PolicyWithValueHead"):
        PPOObjective()(_Plain(tiny), _hand_batch())
    with pytest.raises(DataError, match="completion_mask"):
        PPOObjective().units({"input_ids": torch.ones(1, 2)})


class _Plain(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids: Tensor, **kwargs: Any) -> Tensor:
        kwargs.pop("return_values", None)
        out: Tensor = self.inner(ids, **kwargs)
        return out


# -- rollouts: rewards, GAE, whitening -------------------------------------------------------


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_rollout_rows_are_whitened_gae_of_kl_penalised_rewards(
    tmp_path: Path, kit: Any, kind: str
) -> None:
    torch.manual_seed(0)
    settings = config(
        kl_coef=0.2,
        kl_estimator=kind,
        gamma=0.9,
        lam=0.8,
        missing_eos_penalty=0.5,
        temperature=0.8,
    )
    run = trainer(tmp_path, kit.TinyLM(), settings)
    # a reference that differs from the policy: the KL term is not zero
    reference = run.source.reference
    assert reference is not None
    assert run.reference_mode == "copy"
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.3 * torch.randn_like(p))
    first = next(iter(run.source))
    r = run.source.rows
    cmask = r["completion_mask"]
    out = run.source.last_rollout
    assert out is not None
    assert out.texts is not None

    # the scores: the reward function, minus the penalty where no EOS was generated
    stopped = torch.tensor([f == "stop" for f in out.finish_reasons])
    expected_scores = torch.tensor(count_a([], list(out.texts))) - 0.5 * (~stopped).float()
    assert torch.equal(r["scores"], expected_scores)
    # old log-probs and values: the policy's, at the sampling temperature
    args = (r["input_ids"], r["attention_mask"], cmask)
    logps = completion_logprobs(
        run.policy, *args, position_ids=r["position_ids"], temperature=0.8
    ).logps
    ref = completion_logprobs(reference, *args, position_ids=r["position_ids"], temperature=0.8)
    assert torch.allclose(r["old_logps"], logps, atol=1e-6)
    assert torch.allclose(r["ref_logps"], ref.logps, atol=1e-6)
    rewards = ppo_rewards(r["scores"], logps, ref.logps, cmask, kl_coef=0.2, kind=kind)
    assert float(rewards.kl.abs().sum()) > 0
    advantages, returns = gae(rewards.rewards, r["values"], cmask, gamma=0.9, lam=0.8)
    assert torch.allclose(r["advantages"], whiten(advantages, cmask), atol=1e-5)
    assert torch.allclose(r["returns"], returns, atol=1e-6)
    stats = run.source.stats
    assert stats["objective/kl"] == pytest.approx(float(rewards.metrics["objective/kl"]), rel=1e-5)
    assert stats["objective/scores"] == pytest.approx(float(expected_scores.mean()), rel=1e-6)
    # the first micro-batch is on-policy: ratio 1, nothing clipped
    loss = run.objective(run.model, first)
    assert float(loss.metrics["val/ratio"]) == pytest.approx(1.0, abs=1e-6)
    assert float(loss.metrics["policy/clipfrac_avg"]) == 0.0
    run.close()


def test_epochs_visit_every_row_in_a_new_order(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    run = trainer(tmp_path, kit.TinyLM())
    source = run.source
    batches = list(itertools.islice(source, source.per_rollout))
    assert source.per_rollout == 2 * 2 * 2
    assert source.micro_size == 2
    key = [tuple(map(tuple, b["input_ids"].tolist())) for b in batches]
    rows_of = source.rows["input_ids"].tolist()
    for epoch in range(2):
        seen = sorted(row for part in key[epoch * 4 : epoch * 4 + 4] for row in part)
        assert seen == sorted(map(tuple, rows_of))  # each epoch: every row exactly once
    assert not torch.equal(source.order(0), source.order(1))
    run.close()


def test_ppo_raises_the_score_of_a_toy_reward(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    run = trainer(tmp_path, kit.TinyLM(), train=train_config(tmp_path / "run", max_steps=40))
    run.fit()
    scores = [r["objective/scores"] for r in _train_records(tmp_path / "run")]
    assert len(scores) == 40
    early, late = sum(scores[:8]) / 8, sum(scores[-8:]) / 8
    assert late > early + 1.0, (early, late)  # count of "a" in 4 tokens: from ~0.3 to > 2
    assert late > 2.0


# -- state -----------------------------------------------------------------------------------


def test_state_dict_resumes_inside_a_rollout(tmp_path: Path, kit: Any) -> None:
    def build(out: str) -> PPOTrainer:
        torch.manual_seed(0)
        return trainer(tmp_path, kit.TinyLM(), train=train_config(tmp_path / out))

    first = build("a")
    batches = iter(first.source)
    for _ in range(5):  # inside the second epoch of rollout 1
        next(batches)
    saved = io.BytesIO()
    state = first.source.state_dict()
    assert state["position"] == 5
    assert state["rollouts"] == 1
    torch.save(state, saved)
    expected = [next(batches) for _ in range(6)]  # the rest of it, and the next rollout

    second = build("b")
    second.source.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    got = list(itertools.islice(second.source, 6))
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    other = trainer(
        tmp_path, kit.TinyLM(), config(num_ppo_epochs=1), train=train_config(tmp_path / "c")
    )
    with pytest.raises(DataError, match="micro-batches per rollout"):
        other.source.load_state_dict(state)
    for run in (first, second, other):
        run.close()


# -- the value head --------------------------------------------------------------------------


def test_value_head_is_saved_beside_the_policy(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    model = PolicyWithValueHead(kit.TinyLM(), init_std=0.5)
    assert model.value_head.bias is None
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / VALUE_HEAD_FILE).is_file()
    torch.manual_seed(1)
    other = PolicyWithValueHead(kit.TinyLM())
    other.load_weights(tmp_path / "m")
    for name, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[name]), name
    assert read_value_head(tmp_path / "m", 6).shape == (1, 6)
    with pytest.raises(CompatibilityError, match="expected \\(1, 8\\)"):
        read_value_head(tmp_path / "m", 8)
    (tmp_path / "m" / VALUE_HEAD_FILE).write_bytes(b"broken")
    with pytest.raises(FormatError, match="value head"):
        other.load_weights(tmp_path / "m")
    with pytest.raises(ConfigError, match="head_name"):
        PolicyWithValueHead(kit.TinyLM(), head_name="nothing")


def test_lora_trains_the_adapter_and_value_head_against_the_disabled_adapter(
    tmp_path: Path, kit: Any
) -> None:
    torch.manual_seed(0)
    model = kit.TinyLM()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = config(finetune="lora", lora={"target_modules": ["mix", "lm_head"], "r": 2})
    run = trainer(tmp_path, model, settings, train=train_config(tmp_path / "run", max_steps=4))
    assert run.reference_mode == "adapter"
    head = run.model.value_head.weight.detach().clone()
    run.fit()
    kl = [r["objective/kl"] for r in _train_records(tmp_path / "run")]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # rollout 1: the adapter is still zero
    assert not torch.equal(head, run.model.value_head.weight)  # the value head trained
    base = run.policy.model  # type: ignore[union-attr]
    for name, value in base.state_dict().items():
        if "lora_" not in name and name.replace(".base_layer", "") in before:
            assert torch.equal(value, before[name.replace(".base_layer", "")]), name


# -- reward models ---------------------------------------------------------------------------


def test_a_reward_model_scores_the_completion_tokens(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(3)
    reward = RewardModel(kit.TinyLM(), init_std=1.0)
    torch.manual_seed(0)
    run = trainer(
        tmp_path, kit.TinyLM(), config(value_init="reward", kl_coef=0.0), reward_model=reward
    )
    assert run.reference_mode == "none"
    assert torch.equal(run.model.value_head.weight, reward.score.weight)
    next(iter(run.source))
    r = run.source.rows
    with torch.no_grad():
        expected = reward(
            r["input_ids"], attention_mask=r["attention_mask"], position_ids=r["position_ids"]
        )
    assert torch.allclose(r["scores"], expected)
    assert torch.equal(r["ref_logps"], r["old_logps"])  # kl_coef 0: no reference
    run.close()

    # the same reward model from its directory (around a copy of the policy)
    reward.save_pretrained(tmp_path / "rm")
    torch.manual_seed(0)
    again = trainer(tmp_path, kit.TinyLM(), config(kl_coef=0.0), reward_model=str(tmp_path / "rm"))
    next(iter(again.source))
    assert torch.allclose(again.source.rows["scores"], expected)
    again.close()


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"kl_estimator": "k2"}, "kl_estimator"),
        ({"cliprange": 0.0}, "cliprange"),
        ({"cliprange_value": -1.0}, "cliprange_value"),
        ({"vf_coef": -0.5}, "vf_coef"),
        ({"gamma": 1.5}, "gamma"),
        ({"lam": -0.1}, "lam"),
        ({"num_ppo_epochs": 0}, "num_ppo_epochs"),
        ({"num_mini_batches": 0}, "num_mini_batches"),
        ({"missing_eos_penalty": -1.0}, "missing_eos_penalty"),
        ({"temperature": 0.0}, "temperature"),
        ({"reference": "adapter"}, "reference"),
        ({"value_init": "zeros"}, "value_init"),
    ],
)
def test_bad_settings_name_their_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(**overrides)
    assert err.value.key == key


def test_bad_reward_models_are_refused(tmp_path: Path, kit: Any) -> None:
    with pytest.raises(ConfigError, match="needs a reward model") as err:
        trainer(tmp_path, kit.TinyLM(), reward_model=None)
    assert err.value.key == "reward_model"
    with pytest.raises(ConfigError, match="does not exist"):
        trainer(tmp_path, kit.TinyLM(), reward_model=str(tmp_path / "missing"))
    other_vocab = RewardModel(kit.WideLM(vocab=20))
    with pytest.raises(CompatibilityError, match="vocabulary \\(20 ids\\) differs"):
        trainer(tmp_path, kit.TinyLM(), reward_model=other_vocab)
    with pytest.raises(CompatibilityError, match="reference model's vocabulary"):
        trainer(tmp_path, kit.TinyLM(), reference_model=kit.WideLM(vocab=20))
    with pytest.raises(ConfigError, match="value_init: reward needs a reward model"):
        trainer(tmp_path, kit.TinyLM(), config(value_init="reward"))
    with pytest.raises(ConfigError, match="not a reward model"):
        trainer(tmp_path, kit.TinyLM(), reward_model=3)
    wide = RewardModel(kit.WideLM(vocab=13, width=8))
    with pytest.raises(ConfigError, match="expected \\(1, 6\\)"):
        trainer(tmp_path, kit.TinyLM(), config(value_init="reward"), reward_model=wide)


def test_bad_sizes_and_scores_are_refused(tmp_path: Path, kit: Any) -> None:
    with pytest.raises(ConfigError, match="num_mini_batches=2 x grad_accum=3"):
        trainer(tmp_path, kit.TinyLM(), train=train_config(tmp_path / "a", grad_accum=3))
    with pytest.raises(DataError, match="cannot fill one rollout"):
        trainer(tmp_path, kit.TinyLM(), config(prompts_per_step=24, num_mini_batches=1))

    def none_for_some(prompts: list[str], completions: list[str], **kw: Any) -> list[Any]:
        return [None, *([1.0] * (len(completions) - 1))]

    run = trainer(tmp_path, kit.TinyLM(), reward_model=none_for_some)
    with pytest.raises(TrainingError, match="'none_for_some' returned None for row 0"):
        next(iter(run.source))
    run.close()
