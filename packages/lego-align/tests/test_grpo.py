"""The GRPO trainer: objective = grpo_loss, units = TRL's normalisation, learning, state, errors."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from lego.align import (
    GRPO_LOSS_TYPES,
    GRPOConfig,
    GRPOObjective,
    GRPOTrainer,
    HeadInputs,
    completion_logprobs,
    encode_prompts,
    evaluate_completions,
    grpo_loss,
)
from lego.protocols import CompatibilityError, ConfigError, DataError, TrainingError
from lego.protocols.chat import get_chat_template
from lego.train import TrainConfig, read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_runs import Letters, starts_with_a


def rows() -> list[dict[str, Any]]:
    return [{"prompt": c * k, "answer": "a"} for c in "bcdefghijk" for k in (1, 2)]


def config(**overrides: Any) -> GRPOConfig:
    settings: dict[str, Any] = {
        "template": "none",
        "num_generations": 4,
        "prompts_per_step": 4,
        "max_completion_length": 3,
        "max_prompt_length": 4,
    }
    return GRPOConfig(**{**settings, **overrides})


def train_config(out: Path, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "out_dir": str(out),
        "max_steps": 2,
        "progress": "none",
        "peak_flops": 1e12,
        "optim": {"lr": 2e-2, "min_lr": 2e-2, "weight_decay": 0.0},
    }
    return TrainConfig(**{**settings, **overrides})


def trainer(tmp: Path, model: nn.Module, cfg: GRPOConfig | None = None, **kw: Any) -> GRPOTrainer:
    train = kw.pop("train", None) or train_config(tmp / "run")
    return GRPOTrainer(
        model=model,
        tokenizer=kw.pop("tokenizer", Letters()),
        train_data=kw.pop("train_data", rows()),
        reward_funcs=kw.pop("reward_funcs", [starts_with_a]),
        config=cfg or config(),
        train=train,
        **kw,
    )


# -- the objective -------------------------------------------------------------------------------


def hand_built_batch(generator: torch.Generator, rows: int = 4) -> dict[str, Tensor]:
    """Left-padded prompts (P = 3) and right-padded completions (N = 4) of TinyLM ids."""
    prompt = torch.randint(2, 13, (rows, 3), generator=generator)
    prompt_mask = torch.ones(rows, 3, dtype=torch.long)
    prompt_mask[::2, 0] = 0  # every other row is left-padded
    prompt = torch.where(prompt_mask.bool(), prompt, 1)
    completion = torch.randint(2, 13, (rows, 4), generator=generator)
    lengths = torch.tensor([4, 2, 1, 3, 1, 1, 2, 3][:rows])
    completion_mask = (torch.arange(4)[None] < lengths[:, None]).long()
    completion = torch.where(completion_mask.bool(), completion, 1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    return {
        "input_ids": torch.cat([prompt, completion], dim=1),
        "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp_min(0),
        "completion_mask": completion_mask,
        "advantages": torch.randn(rows, generator=generator),
    }


def manual_logps(model: nn.Module, batch: dict[str, Tensor], temperature: float) -> Tensor:
    """The completion tokens' log-probs written out: log_softmax(logits / T), gathered."""
    logits = model(
        batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    )
    n = batch["completion_mask"].shape[1]
    scores = F.log_softmax(logits[:, -n - 1 : -1].float() / temperature, dim=-1)  # (B, N, V)
    picked = scores.gather(-1, batch["input_ids"][:, -n:, None]).squeeze(-1)
    return picked * batch["completion_mask"]


@pytest.mark.parametrize("old", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_objective_loss_and_gradient_equal_grpo_loss(
    tiny: nn.Module, loss_type: str, beta: float, old: bool
) -> None:
    generator = torch.Generator().manual_seed(3)
    batch = hand_built_batch(generator)
    temperature = 0.7
    with torch.no_grad():
        base = manual_logps(tiny, batch, temperature)
    mask = batch["completion_mask"]
    if old:
        batch["old_logps"] = (base + 0.3 * torch.randn(base.shape, generator=generator)) * mask
    batch["ref_logps"] = (base + 0.5 * torch.randn(base.shape, generator=generator)) * mask
    objective = GRPOObjective(
        loss_type=loss_type,
        beta=beta,
        epsilon_high=0.28,
        temperature=temperature,
        max_completion_length=6,
    )

    out = objective(tiny, batch)
    ours = out.loss_sum / objective.units(batch)
    ours.backward()
    our_grads = {n: p.grad.clone() for n, p in tiny.named_parameters() if p.grad is not None}
    tiny.zero_grad()

    logps = manual_logps(tiny, batch, temperature)
    expected, metrics = grpo_loss(
        logps,
        batch.get("old_logps"),
        batch["advantages"],
        mask,
        ref_logps=batch["ref_logps"] if beta > 0 else None,
        beta=beta,
        epsilon_high=0.28,
        loss_type=loss_type,
        max_completion_length=6,
    )
    expected.backward()
    assert float(ours.detach()) == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-6)
    assert our_grads
    for name, parameter in tiny.named_parameters():
        assert parameter.grad is not None
        torch.testing.assert_close(our_grads[name], parameter.grad, rtol=1e-5, atol=1e-6)
    units = objective.units(batch)
    for name, value in metrics.items():  # TRL's metrics, summed per unit
        assert float(out.metrics[name]) / units == pytest.approx(float(value), abs=1e-6)
    assert ("kl" in out.metrics) == (beta > 0)
    assert 0 < float(out.metrics["entropy"]) / units <= float(torch.log(torch.tensor(13.0)))


def _step(objective: GRPOObjective, model: nn.Module, parts: list[dict[str, Tensor]]) -> Tensor:
    """lego-train's reduction: the micro-batches' summed losses over their summed units."""
    total_units = sum(objective.units(p) for p in parts)
    model.zero_grad()
    loss = sum(objective(model, p).loss_sum for p in parts) / total_units
    assert isinstance(loss, Tensor)
    loss.backward()
    return loss.detach()


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_accumulation_follows_trl(tiny: nn.Module, loss_type: str) -> None:
    generator = torch.Generator().manual_seed(5)
    batch = hand_built_batch(generator, rows=8)
    batch["old_logps"] = 0.2 * torch.randn(8, 4, generator=generator) - 2.0
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    objective = GRPOObjective(loss_type=loss_type, max_completion_length=4)
    whole = _step(objective, tiny, [batch])
    whole_grads = _grads(tiny)
    split = _step(objective, tiny, halves)
    split_grads = _grads(tiny)
    if loss_type == "bnpo":
        # TRL: each micro-batch over its own tokens, averaged over the accumulation steps
        each = []
        for part in halves:
            logps = completion_logprobs(
                tiny,
                part["input_ids"],
                part["attention_mask"],
                part["completion_mask"],
                position_ids=part["position_ids"],
            ).logps
            each.append(
                grpo_loss(
                    logps,
                    part["old_logps"],
                    part["advantages"],
                    part["completion_mask"],
                    loss_type="bnpo",
                ).loss
            )
        mean = sum(e.detach() for e in each) / 2
        assert float(split) == pytest.approx(float(mean), rel=1e-6)
        tokens = [int(p["completion_mask"].sum()) for p in halves]
        assert tokens[0] != tokens[1]  # so one big micro-batch is a different loss
        assert float(split) != pytest.approx(float(whole), rel=1e-4)
        return
    # grpo, dr_grpo, dapo: 2 micro-batches of 4 rows = 1 of 8 (TRL's normalisation)
    assert float(split) == pytest.approx(float(whole), rel=1e-6)
    for a, b in zip(whole_grads, split_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_completion_logprobs_from_head_inputs_equal_logits(tiny: Any) -> None:
    batch = hand_built_batch(torch.Generator().manual_seed(9))
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

    def head(ids: Tensor, **kw: Any) -> HeadInputs:
        hidden = tiny.hidden(ids, kw["attention_mask"], kw["position_ids"])
        return HeadInputs(hidden, tiny.lm_head.weight, tiny.lm_head.bias)

    from_logits = completion_logprobs(
        tiny, *args, position_ids=batch["position_ids"], temperature=0.5, entropy=True
    )
    from_head = completion_logprobs(
        head, *args, position_ids=batch["position_ids"], temperature=0.5, entropy=True
    )
    torch.testing.assert_close(from_head.logps, from_logits.logps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        from_logits.logps, manual_logps(tiny, batch, 0.5), rtol=1e-5, atol=1e-6
    )
    assert from_head.entropy is None  # no logits to take it from
    assert from_logits.entropy is not None
    assert bool((from_logits.entropy[batch["completion_mask"].bool()] > 0).all())


def test_objective_units(tiny: nn.Module) -> None:
    batch = {"completion_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    assert GRPOObjective(loss_type="grpo").units(batch) == 2
    assert GRPOObjective(loss_type="dr_grpo", max_completion_length=3).units(batch) == 2
    assert GRPOObjective(loss_type="bnpo").units(batch) == 1
    assert GRPOObjective(loss_type="dapo").units(batch) == 3
    with pytest.raises(DataError, match="completion_mask"):
        GRPOObjective().units({"input_ids": torch.zeros(1, 2)})
    with pytest.raises(ConfigError, match="max_completion_length"):
        GRPOObjective(loss_type="dr_grpo")


# -- the trainer -------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_accumulating_two_micro_batches_equals_one(
    tmp_path: Path, kit: Any, loss_type: str
) -> None:
    finals = []
    for accum in (1, 2):
        torch.manual_seed(0)
        run = trainer(
            tmp_path,
            kit.TinyLM(),
            config(loss_type=loss_type, beta=0.05, num_iterations=2),
            train=train_config(tmp_path / f"accum{accum}", grad_accum=accum, max_steps=3),
        )
        run.fit()
        finals.append({k: v.clone() for k, v in run.model.state_dict().items()})
        losses = [
            r["loss"] for r in read_metrics(tmp_path / f"accum{accum}") if r.get("split") == "train"
        ]
        finals.append(losses)  # type: ignore[arg-type]
    one, one_losses, two, two_losses = finals
    assert isinstance(one, dict)
    assert isinstance(two, dict)
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-6, msg=name)
    assert one_losses == pytest.approx(two_losses, rel=1e-5, abs=1e-7)


def test_grpo_raises_the_reward_of_a_toy_task(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    run = trainer(
        tmp_path,
        kit.TinyLM(),
        config(num_generations=8, max_completion_length=2, eval_on_start=True),
        train=train_config(tmp_path / "run", max_steps=30, eval_every=15),
        eval_data=rows()[::2],
    )
    state = run.fit()
    records = read_metrics(tmp_path / "run")
    rewards = [r["reward"] for r in records if r.get("split") == "train"]
    assert len(rewards) == 30
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert first < 0.35
    assert last > first + 0.5
    evals = [r for r in records if r.get("split") == "val"]
    assert [r["step"] for r in evals] == [0, 15, 30]
    assert evals[0]["val_accuracy"] < 0.5  # greedy: the untrained model rarely starts with a
    assert evals[-1]["val_accuracy"] == 1.0
    assert state.metrics["val_accuracy"] == 1.0
    assert evals[-1]["val_completions"] == 10  # every held-out prompt once
    train = [r for r in records if r.get("split") == "train"]
    for name in (
        "reward_std",
        "frac_reward_zero_std",
        "rewards/starts_with_a/mean",
        "completions/mean_length",
        "completions/clipped_ratio",
        "entropy",
        "clip_ratio/region_mean",
    ):
        assert name in train[-1], name


def test_batches_carry_rollouts_advantages_and_log_probs(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    run = trainer(tmp_path, kit.TinyLM(), config(beta=0.1, num_iterations=2, seed=3))
    source = run.source
    batches = iter(source)
    batch = next(batches)
    r, n = batch["completion_mask"].shape
    assert r == 16
    assert n <= 3
    rollout = source.last_rollout
    assert rollout is not None
    width = int(rollout.prompt_ids.shape[1]) + n  # the left-padded prompts, then completions
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (16, width)
    assert batch["old_logps"].shape == batch["ref_logps"].shape == (16, n)
    # full fine-tuning: the reference is a frozen copy, equal to the policy before training
    torch.testing.assert_close(batch["old_logps"], batch["ref_logps"])
    assert run.reference_mode == "copy"
    # the old log-probs are the sampling distribution's (temperature 1): the rollout's own
    torch.testing.assert_close(batch["old_logps"], rollout.logprobs, rtol=1e-5, atol=1e-5)
    # group advantages: zero mean within each prompt's 4 completions
    groups = batch["advantages"].view(4, 4)
    torch.testing.assert_close(groups.sum(dim=1), torch.zeros(4), atol=1e-5, rtol=0)
    scores = source.last_scores
    assert scores is not None
    assert float(batch["stat/reward"]) == pytest.approx(float(scores.total.mean()))
    assert float(batch["stat/completions/max_length"]) == n
    # num_iterations=2: the same micro-batch again, then a new generation
    assert next(batches) is batch
    assert source.generation == 1
    third = next(batches)
    assert source.generation == 2
    assert third is not batch


def test_state_dict_resumes_inside_a_generation(tmp_path: Path, kit: Any) -> None:
    def build(out: str) -> GRPOTrainer:
        torch.manual_seed(0)
        return trainer(
            tmp_path,
            kit.TinyLM(),
            config(num_iterations=2),
            train=train_config(tmp_path / out, grad_accum=2),
        )

    first = build("a")
    batches = iter(first.source)
    for _ in range(3):  # generation 1: micro-batches 0, 1, then 0 again (second iteration)
        next(batches)
    saved = io.BytesIO()
    torch.save(first.source.state_dict(), saved)
    expected = [next(batches) for _ in range(5)]

    second = build("b")
    second.source.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    got = [b for b, _ in zip(second.source, range(5), strict=False)]
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    first.close()
    second.close()


def test_a_saved_generation_needs_the_same_accumulation(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    first = trainer(
        tmp_path,
        kit.TinyLM(),
        config(num_iterations=2),
        train=train_config(tmp_path / "a", grad_accum=2),
    )
    batches = iter(first.source)
    next(batches)
    state = first.source.state_dict()
    assert state["position"] == 1
    assert len(state["buffers"]["rank0"]) == 2
    first.close()
    other = trainer(tmp_path, kit.TinyLM(), config(num_iterations=2))
    with pytest.raises(DataError, match="grad_accum=1") as err:
        other.source.load_state_dict(state)
    assert err.value.key == "grad_accum"
    other.close()
    state["world_size"] = 2
    with pytest.raises(DataError, match="2 ranks"):
        other.source.load_state_dict(state)


def test_lora_uses_the_disabled_adapter_as_reference(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    model = kit.TinyLM()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = trainer(
        tmp_path,
        model,
        config(finetune="lora", lora={"target_modules": ["mix", "lm_head"], "r": 2}, beta=0.2),
        train=train_config(tmp_path / "run", optim={"lr": 0.1, "min_lr": 0.1}),
    )
    assert run.reference_mode == "adapter"
    run.fit()
    kl = [r["kl"] for r in read_metrics(tmp_path / "run") if r.get("split") == "train"]
    assert kl[0] == pytest.approx(0.0, abs=1e-7)  # step 1: the policy is its base
    assert kl[1] > 0  # the adapter moved the policy away from its base
    base = run.model.model  # type: ignore[union-attr]
    for name, value in base.state_dict().items():
        if "lora_" not in name and name.replace(".base_layer", "") in before:
            assert torch.equal(value, before[name.replace(".base_layer", "")]), name


def test_chat_template_prompts_and_stops(tmp_path: Path, kit: Any, chars: Any) -> None:
    torch.manual_seed(0)
    records = [{"prompt": f"say {c}", "answer": c} for c in "abcdefgh"]

    def says_answer(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [float(c.strip() == a) for c, a in zip(completions, columns["answer"], strict=True)]

    run = trainer(
        tmp_path,
        kit.WideLM(),
        config(
            template="chatml",
            max_prompt_length=64,
            max_completion_length=4,
            system_prompt="be brief",
        ),
        tokenizer=chars,
        train_data=records,
        reward_funcs=[says_answer],
    )
    specials = chars.special_tokens
    assert run.stop_ids == (specials["<|im_end|>"], specials["<|endoftext|>"])
    assert run.pad_id == specials["<|pad|>"]
    chatml = get_chat_template("chatml")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say a"}]
    assert list(run.train_prompts[0].ids) == chatml.encode(
        chars, messages, add_generation_prompt=True
    )
    state = run.fit()
    assert state.step == 2
    rollout = run.source.last_rollout
    assert rollout is not None
    for ids, length, reason in zip(
        rollout.completion_ids.tolist(),
        rollout.lengths.tolist(),
        rollout.finish_reasons,
        strict=True,
    ):
        if reason == "stop":  # a completion ends with a stop id, which reaches the loss
            assert ids[length - 1] in run.stop_ids


def test_an_explicit_reference_model(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    other = kit.TinyLM()  # other weights: the KL term is positive from the first step
    run = trainer(tmp_path, kit.TinyLM(), config(beta=0.1), reference_model=other)
    assert run.reference_mode == "model"
    run.fit()
    kl = [r["kl"] for r in read_metrics(tmp_path / "run") if r.get("split") == "train"]
    assert kl[0] > 0
    with pytest.raises(CompatibilityError, match="vocabulary"):
        trainer(tmp_path, kit.TinyLM(), config(beta=0.1), reference_model=kit.WideLM())


# -- prompts and evaluation -------------------------------------------------------------------


def test_prompts_are_cut_from_the_left_or_refused(chars: Any) -> None:
    records = [{"prompt": "abcdefgh", "answer": "1"}, {"prompt": "ab", "answer": "2"}]
    prompts, counts = encode_prompts(records, chars, template=None, max_prompt_length=5)
    assert counts == {"prompts": 2, "truncated": 1}
    assert list(prompts[0].ids) == chars.encode("defgh")
    assert prompts[0].truncated
    assert prompts[1].columns == {"answer": "2"}
    assert prompts[1].prompt == "ab"
    with pytest.raises(DataError, match=r"line 1.*max_prompt_length=5") as err:
        encode_prompts(records, chars, template=None, max_prompt_length=5, overflow="error")
    assert err.value.line == 1
    chatml = get_chat_template("chatml")
    (prompt,), _ = encode_prompts(
        [{"prompt": "hi"}], chars, template=chatml, max_prompt_length=64, system_prompt="be nice"
    )
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    assert list(prompt.ids) == chatml.encode(chars, messages, add_generation_prompt=True)
    with pytest.raises(DataError, match="template 'none' needs a string"):
        encode_prompts(
            [{"prompt": [{"role": "user", "content": "x"}]}],
            chars,
            template=None,
            max_prompt_length=8,
        )


def test_evaluate_completions_scores_greedy_and_sampled_completions(kit: Any) -> None:
    torch.manual_seed(0)
    model = kit.TinyLM()
    records = rows()[:6]
    out = evaluate_completions(
        model,
        Letters(),
        records,
        [starts_with_a],
        template=None,
        stop_ids=[0],
        pad_id=1,
        max_new_tokens=3,
    )
    assert len(out.completions) == 6
    correct = [c.startswith("a") for c in out.completions]
    assert out.metrics["accuracy"] == pytest.approx(sum(correct) / 6)
    assert out.metrics["reward"] == pytest.approx(sum(correct) / 6)
    again = evaluate_completions(
        model,
        Letters(),
        records,
        [starts_with_a],
        template=None,
        stop_ids=[0],
        pad_id=1,
        max_new_tokens=3,
    )
    assert again.completions == out.completions  # greedy: deterministic
    sampled = evaluate_completions(
        model,
        Letters(),
        records,
        {"a": starts_with_a},
        template=None,
        stop_ids=[0],
        pad_id=1,
        max_new_tokens=3,
        greedy=False,
        n=3,
        limit=4,
        seed=1,
    )
    assert len(sampled.completions) == 12
    assert sampled.metrics["completions"] == 12
    assert sampled.rewards.shape == (12,)
    assert "rewards/a/mean" in sampled.metrics
    with pytest.raises(ConfigError, match="accuracy_reward"):
        evaluate_completions(
            model,
            Letters(),
            records,
            [starts_with_a],
            template=None,
            stop_ids=[0],
            pad_id=1,
            max_new_tokens=2,
            accuracy_reward="nope",
        )


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"num_generations": 1}, "num_generations"),
        ({"beta": -0.1}, "beta"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"loss_type": "ppo"}, "loss_type"),
        ({"scale_rewards": "rank"}, "scale_rewards"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"reference": "adapter"}, "reference"),
        ({"template": "chatmll"}, "template"),
        ({"num_iterations": 0}, "num_iterations"),
    ],
)
def test_bad_settings_name_their_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(**overrides)
    assert err.value.key == key


def _first_step(run: GRPOTrainer) -> None:
    try:
        run.trainer.train_step()
    finally:
        run.close()


def test_reward_function_errors_name_the_function(tmp_path: Path, kit: Any) -> None:
    def short(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [1.0] * (len(completions) - 1)

    def broken(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        raise KeyError("answer")

    def nan(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [float("nan")] * len(completions)

    with pytest.raises(ConfigError, match="'short' returned 15 rewards for 16"):
        _first_step(trainer(tmp_path / "a", kit.TinyLM(), reward_funcs=[short]))
    with pytest.raises(TrainingError, match="'broken' raised KeyError"):
        _first_step(trainer(tmp_path / "b", kit.TinyLM(), reward_funcs=[broken]))
    with pytest.raises(ConfigError, match="'nan' returned nan for row 0"):
        _first_step(trainer(tmp_path / "c", kit.TinyLM(), reward_funcs=[nan]))


def test_equal_rewards_are_counted_not_fatal(tmp_path: Path, kit: Any) -> None:
    def same(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [0.5] * len(completions)

    torch.manual_seed(0)
    run = trainer(tmp_path, kit.TinyLM(), reward_funcs=[same])
    state = run.fit()
    assert state.metrics["frac_reward_zero_std"] == 1.0
    assert state.metrics["loss"] == 0.0


def test_bad_data_and_tokenizers_are_refused(tmp_path: Path, kit: Any) -> None:
    with pytest.raises(DataError, match="empty"):
        trainer(tmp_path, kit.TinyLM(), train_data=[])
    with pytest.raises(DataError, match="lacks the field 'prompt'"):
        trainer(tmp_path, kit.TinyLM(), train_data=[{"question": "ab"}])
    with pytest.raises(DataError, match="cannot fill one step"):
        trainer(tmp_path, kit.TinyLM(), train_data=rows()[:3])
    with pytest.raises(DataError, match=r"line 1.*max_prompt_length=4"):
        trainer(
            tmp_path,
            kit.TinyLM(),
            config(prompt_overflow="error"),
            train_data=[{"prompt": "abcdef"}, *rows()],
        )
    with pytest.raises(ConfigError, match="context of 32") as err:
        trainer(tmp_path, kit.TinyLM(), config(max_completion_length=31))
    assert err.value.key == "max_prompt_length"
    with pytest.raises(ConfigError) as pad:
        trainer(tmp_path, kit.TinyLM(), tokenizer=Letters({"<|endoftext|>": 0}))
    assert pad.value.key == "pad_token"
    with pytest.raises(CompatibilityError, match=re.escape("<|endoftext|>")):
        trainer(tmp_path, kit.TinyLM(), tokenizer=Letters({"<|pad|>": 1}))
    with pytest.raises(ConfigError) as accum:
        trainer(
            tmp_path,
            kit.TinyLM(),
            config(num_generations=3, prompts_per_step=3),
            train=train_config(tmp_path / "run", grad_accum=2),
        )
    assert accum.value.key == "grad_accum"
    with pytest.raises(ConfigError, match="accuracy_reward 'x'"):
        trainer(tmp_path, kit.TinyLM(), config(accuracy_reward="x"))


def test_metrics_file_has_the_data_counts(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    run = trainer(tmp_path, kit.TinyLM(), eval_data=rows()[:4])
    run.fit()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    data = [json.loads(x) for x in lines if json.loads(x).get("split") == "data"]
    assert data == [
        {
            "step": 0,
            "split": "data",
            "train_prompts": 20,
            "train_truncated": 0,
            "eval_prompts": 4,
            "eval_truncated": 0,
        }
    ]
