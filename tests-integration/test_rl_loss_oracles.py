"""lego-align's GRPO and PPO mathematics against TRL 1.16 (the oracle), on CPU in float32.

GRPO: TRL 1.16 has no standalone GRPO loss or advantage function; both live inside
``GRPOTrainer``. So each test builds a real ``GRPOTrainer`` (a tiny random Llama saved to
disk, so that ``beta > 0`` can load its reference copy offline, a word-level tokenizer and
``bf16=False`` on CPU) with the settings under test, then:

- advantages: calls ``_generate_and_score_completions`` (TRL's own rollout on the tiny
  model, then its reward and advantage code) with a reward function that returns fixed
  rewards, and compares the advantages and logged ``frac_reward_zero_std`` / ``reward`` /
  ``reward_std`` with ``group_advantages`` on the same rewards;
- the loss: calls ``_compute_loss(model, inputs)`` on hand-built inputs (left-padded
  prompts, right-padded completions, advantages, old and reference log-probabilities,
  ``num_items_in_batch``). A subclass keeps TRL's per-token log-probabilities (the tensor
  ``_get_per_token_logps_and_entropies`` returns) and their gradient; ours are computed
  from the same model's logits on the same ids with ``lego.align.token_logprobs`` and fed
  to ``grpo_loss`` as a leaf. Loss, gradient w.r.t. the per-token log-probabilities and the
  logged clip ratios and KL must agree to 1e-6 for every loss type x beta (0, > 0) x
  on-policy / ``num_iterations=2`` x ``epsilon_high`` (unset, 0.28).

PPO: TRL 1.16 no longer ships a PPO trainer (neither ``trl.trainer.ppo_trainer`` nor a
``trl.experimental`` PPO module is importable), so GAE, whitening, the per-token rewards and
the clipped losses are checked against the formulas of TRL's last PPOTrainer (v0.x,
``trl/trainer/ppo_trainer.py``: ``masked_whiten``, the reverse GAE loop, ``pg_loss`` and
``vf_loss``) written out below in our own words, one loop or line per formula.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

trl = pytest.importorskip("trl", reason="trl is not installed (the integration group)")
datasets = pytest.importorskip("datasets", reason="datasets is not installed (trl needs it)")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from tiny_hf import VOCAB, tiny_llama  # noqa: E402

from lego.align import (  # noqa: E402
    GRPO_LOSS_TYPES,
    gae,
    group_advantages,
    grpo_loss,
    kl_penalty,
    ppo_policy_loss,
    ppo_rewards,
    ppo_value_loss,
    token_logprobs,
    whiten,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

TOL = {"rtol": 1e-6, "atol": 1e-6}
PAD, EOS = 0, 1
MAX_COMPLETION = 8


# -- the trainer --------------------------------------------------------------------------------


def word_tokenizer() -> Any:
    """A word-level tokenizer over ``VOCAB`` words: ``<pad>`` 0, ``<eos>`` 1, ``w2`` ... ."""
    words = ["<pad>", "<eos>", *(f"w{i}" for i in range(2, VOCAB))]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w2")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="w2"
    )


class KeepingGRPOTrainer(trl.GRPOTrainer):  # type: ignore[misc]
    """TRL's trainer, keeping the per-token log-probabilities its loss is a function of."""

    kept: Tensor | None = None

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if logps.requires_grad:
            logps.retain_grad()
            self.kept = logps
        return logps, entropies, aux


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("grpo") / "llama"
    tiny_llama(bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD).save_pretrained(folder)
    return folder


def grpo_trainer(
    tmp: Path, model_dir: Path, *, batch: int, generations: int, **settings: Any
) -> Any:
    """A real ``GRPOTrainer`` with ``settings`` (GRPOConfig fields), never trained."""
    args = trl.GRPOConfig(
        output_dir=str(tmp / "trl"),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=batch,
        num_generations=generations,
        max_completion_length=MAX_COMPLETION,
        **settings,
    )
    rows = [{"prompt": "w3 w4"}, {"prompt": "w5"}, {"prompt": "w6 w7 w8"}]
    trainer = KeepingGRPOTrainer(
        model=str(model_dir),
        reward_funcs=lambda prompts, completions, **columns: [0.0] * len(prompts),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=word_tokenizer(),
    )
    trainer.model.train()  # TRL logs under "train" and normalises as in training
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop in training
    return trainer


# -- group advantages ------------------------------------------------------------------------

# three prompts x four completions: spread rewards, a group with equal rewards (zero std), and
# a group where one completion was scored by no reward function (None -> NaN)
REWARDS: list[float | None] = [1.0, 0.0, 2.0, 5.0, 1.0, 1.0, 1.0, 1.0, 0.5, None, 2.0, -1.0]
GROUP = 4


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trl(tmp_path: Path, model_dir: Path, scale: str) -> None:
    trainer = grpo_trainer(
        tmp_path, model_dir, batch=len(REWARDS), generations=GROUP, scale_rewards=scale
    )
    calls: list[int] = []

    def fixed(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        calls.append(len(completions))
        return list(REWARDS)

    trainer.reward_funcs = [fixed]
    prompts = ["w3 w4", "w5", "w6 w7 w8"]
    rows = [{"prompt": p} for p in prompts for _ in range(GROUP)]  # prompt-major, as TRL samples
    theirs = trainer._generate_and_score_completions(rows)
    assert calls == [len(REWARDS)]  # TRL really called the reward function once

    rewards = torch.tensor([float("nan") if r is None else r for r in REWARDS])
    ours = group_advantages(rewards, GROUP, scale=scale)
    torch.testing.assert_close(ours.advantages, theirs["advantages"], **TOL)
    logged = trainer._metrics["train"]
    for name in ("frac_reward_zero_std", "reward", "reward_std"):
        assert float(ours.metrics[name]) == pytest.approx(logged[name][-1], rel=1e-6, abs=1e-6)
    if scale != "batch":  # the equal group is counted, and it has no advantage
        assert float(ours.metrics["frac_reward_zero_std"]) == pytest.approx(1 / 3)
    assert torch.equal(ours.advantages[4:8], torch.zeros(4))
    assert float(ours.advantages[9]) == 0.0  # the unscored completion


# -- the GRPO loss -----------------------------------------------------------------------------


def hand_built_inputs(generator: torch.Generator) -> dict[str, Tensor]:
    """Prompts left-padded, completions right-padded (lengths 6, 3, 1, 5), 4 rows."""
    prompt_ids = torch.tensor([[PAD, 3, 4], [5, 6, 7], [PAD, PAD, 8], [9, 10, 11]])
    completion_ids = torch.randint(2, VOCAB, (4, 6), generator=generator)
    lengths = torch.tensor([6, 3, 1, 5])
    completion_mask = (torch.arange(6)[None, :] < lengths[:, None]).long()
    completion_ids = torch.where(completion_mask.bool(), completion_ids, PAD)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": (prompt_ids != PAD).long(),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.3, -0.7, 0.4, -1.1]),
    }


def our_token_logps(model: Any, inputs: dict[str, Tensor]) -> Tensor:
    """The completion tokens' log-probabilities from the model's logits, with lego.align."""
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention).logits
    prompt_len = inputs["prompt_ids"].shape[1]
    scored = torch.zeros_like(input_ids, dtype=torch.bool)
    scored[:, prompt_len:] = inputs["completion_mask"].bool()
    return token_logprobs(logits.float(), input_ids, scored)[:, prompt_len:]


@pytest.mark.parametrize("epsilon_high", [None, 0.28])
@pytest.mark.parametrize("policy", ["on", "off"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_grpo_loss_equals_trl(
    tmp_path: Path,
    model_dir: Path,
    loss_type: str,
    beta: float,
    policy: str,
    epsilon_high: float | None,
) -> None:
    iterations = 1 if policy == "on" else 2
    trainer = grpo_trainer(
        tmp_path,
        model_dir,
        batch=4,
        generations=2,
        loss_type=loss_type,
        beta=beta,
        epsilon=0.2,
        epsilon_high=epsilon_high,
        num_iterations=iterations,
    )
    generator = torch.Generator().manual_seed(7)
    inputs = hand_built_inputs(generator)
    mask = inputs["completion_mask"]
    logps = our_token_logps(trainer.model, inputs)
    # old / reference log-probabilities away from the policy's, so tokens clip on both sides
    old = logps + 0.35 * torch.randn(logps.shape, generator=generator) if iterations > 1 else None
    ref = logps + 0.5 * torch.randn(logps.shape, generator=generator)
    if old is not None:
        inputs["old_per_token_logps"] = old
    if beta > 0:
        inputs["ref_per_token_logps"] = ref
    # DAPO's normaliser is the generation batch's token count, not this micro-batch's
    num_items = mask.sum() + 9
    inputs["num_items_in_batch"] = num_items

    theirs = trainer._compute_loss(trainer.model, dict(inputs))
    theirs.backward()
    kept = trainer.kept
    assert kept is not None
    assert kept.grad is not None
    # the same per-token log-probabilities, from lego.align on the same logits
    keep = mask.bool()
    torch.testing.assert_close(logps[keep], kept.detach()[keep], rtol=1e-5, atol=1e-5)

    leaf = logps.clone().requires_grad_(True)
    loss, metrics = grpo_loss(
        leaf,
        old,
        inputs["advantages"],
        mask,
        ref_logps=ref if beta > 0 else None,
        beta=beta,
        epsilon=0.2,
        epsilon_high=epsilon_high,
        loss_type=loss_type,
        max_completion_length=MAX_COMPLETION,
        num_items_in_batch=num_items,
    )
    loss.backward()
    assert leaf.grad is not None
    assert float(loss) == pytest.approx(float(theirs), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(leaf.grad, kept.grad * mask, **TOL)
    assert bool(leaf.grad[keep].abs().sum() > 0)

    logged = trainer._metrics["train"]
    names = [
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "clip_ratio/low_min",
        "clip_ratio/high_max",
    ]
    if beta > 0:
        names.append("kl")
    for name in names:
        assert float(metrics[name]) == pytest.approx(logged[name][-1], rel=1e-6, abs=1e-6), name
    if policy == "off":  # the inputs do clip: the comparison covers the clipped branches
        assert float(metrics["clip_ratio/region_mean"]) > 0


# -- PPO: TRL's last PPOTrainer formulas, written out ------------------------------------------


def reference_gae(
    rewards: Tensor, values: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """TRL v0.x's loop: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}."""
    length = rewards.shape[1]
    following = torch.zeros(rewards.shape[0])
    reversed_advantages = []
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t < length - 1 else torch.zeros(rewards.shape[0])
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        following = delta + gamma * lam * following
        reversed_advantages.append(following)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    return advantages, advantages + values


def reference_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """TRL's ``masked_whiten``: masked mean, Bessel-corrected masked variance, rsqrt(var + 1e-8)."""
    m = mask.float()
    mean = (x * m).sum() / m.sum()
    var = (((x - mean) ** 2) * m).sum() / m.sum() * (m.sum() / (m.sum() - 1))
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def ppo_batch(generator: torch.Generator) -> dict[str, Tensor]:
    lengths = torch.tensor([5, 2, 4, 1])
    idx = torch.arange(6)[None, :]
    return {
        "lengths": lengths,
        # TRL: sequence_lengths = last real index; padding_mask = idx > it; p1 keeps one more
        "padding_mask": idx > (lengths - 1)[:, None],
        "padding_mask_p1": idx > lengths[:, None],
        "logps": -torch.rand(4, 6, generator=generator) * 3,
        "ref_logps": -torch.rand(4, 6, generator=generator) * 3,
        "values": torch.randn(4, 6, generator=generator),
        "scores": torch.randn(4, generator=generator),
    }


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_ppo_rewards_gae_whiten_equal_trl_formulas(kind: str) -> None:
    batch = ppo_batch(torch.Generator().manual_seed(3))
    pad, pad_p1, lengths = batch["padding_mask"], batch["padding_mask_p1"], batch["lengths"]
    kl_coef, gamma, lam = 0.05, 1.0, 0.95
    # TRL: padded log-probabilities are filled with INVALID_LOGPROB = 1.0 (so the KL is 0 there)
    logps = batch["logps"].masked_fill(pad, 1.0)
    ref_logps = batch["ref_logps"].masked_fill(pad, 1.0)
    values = batch["values"].masked_fill(pad_p1, 0.0)
    logr = ref_logps - logps
    kl = -logr if kind == "k1" else (logr.exp() - 1) - logr
    rewards = -kl_coef * kl
    sequence_lengths = lengths - 1
    end = torch.where(lengths < rewards.shape[1], lengths, sequence_lengths)  # TRL's "+1"
    rewards[torch.arange(4), end] += batch["scores"]
    advantages, returns = reference_gae(rewards, values, gamma, lam)
    advantages = reference_whiten(advantages, ~pad).masked_fill(pad, 0.0)

    ours = ppo_rewards(
        batch["scores"],
        batch["logps"],
        batch["ref_logps"],
        ~pad,
        kl_coef=kl_coef,
        kind=kind,
        score_at="after_last",
    )
    torch.testing.assert_close(ours.rewards, rewards, **TOL)
    torch.testing.assert_close(ours.kl, kl * ~pad, **TOL)
    expected_kl = kl_penalty(batch["logps"], batch["ref_logps"], kind) * ~pad
    torch.testing.assert_close(ours.kl, expected_kl, **TOL)
    assert float(ours.metrics["objective/kl"]) == pytest.approx(float(kl.sum(1).mean()), abs=1e-6)
    our_adv, our_returns = gae(ours.rewards, batch["values"], ~pad_p1, gamma=gamma, lam=lam)
    torch.testing.assert_close(our_returns, returns * ~pad_p1, **TOL)
    torch.testing.assert_close(whiten(our_adv, ~pad), advantages, **TOL)

    # reward whitening (TRL's whiten_rewards): scale only, then zeros past p1
    whitened = reference_whiten(rewards, ~pad_p1, shift_mean=False).masked_fill(pad_p1, 0.0)
    torch.testing.assert_close(whiten(ours.rewards, ~pad_p1, shift_mean=False), whitened, **TOL)

    # score on the last real token (our default): GAE equals the loop on that layout
    last = ppo_rewards(batch["scores"], batch["logps"], batch["ref_logps"], ~pad, kind=kind)
    moved = (-kl_coef * kl).masked_fill(pad, 0.0)
    moved[torch.arange(4), sequence_lengths] += batch["scores"]
    torch.testing.assert_close(last.rewards, moved, **TOL)
    adv_last, _ = gae(last.rewards, batch["values"], ~pad, gamma=0.9, lam=0.8)
    ref_last, _ = reference_gae(moved, batch["values"].masked_fill(pad, 0.0), 0.9, 0.8)
    torch.testing.assert_close(adv_last, ref_last.masked_fill(pad, 0.0), **TOL)


def test_ppo_losses_equal_trl_formulas() -> None:
    generator = torch.Generator().manual_seed(5)
    batch = ppo_batch(generator)
    pad, pad_p1 = batch["padding_mask"], batch["padding_mask_p1"]
    old_logps = batch["logps"]
    new_logps = (old_logps + 0.3 * torch.randn(4, 6, generator=generator)).requires_grad_(True)
    advantages = torch.randn(4, 6, generator=generator).masked_fill(pad, 0.0)
    old_values = batch["values"]
    new_values = (old_values + 0.4 * torch.randn(4, 6, generator=generator)).requires_grad_(True)
    returns = torch.randn(4, 6, generator=generator)
    cliprange, cliprange_value = 0.2, 0.2

    # TRL v0.x: pg_loss = masked_mean(max(-A r, -A clip(r)), ~padding_mask)
    ratio = torch.exp(new_logps - old_logps)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    keep = (~pad).float()
    pg_loss = (torch.max(pg1, pg2) * keep).sum() / keep.sum()
    clipfrac = ((pg2 > pg1).float() * keep).sum() / keep.sum()
    (their_pg_grad,) = torch.autograd.grad(pg_loss, new_logps)
    # vf_loss = 0.5 * masked_mean(max((V - R)^2, (Vclip - R)^2), ~padding_mask_p1)
    vclip = torch.clamp(new_values, old_values - cliprange_value, old_values + cliprange_value)
    vf1, vf2 = (new_values - returns) ** 2, (vclip - returns) ** 2
    keep_p1 = (~pad_p1).float()
    vf_loss = 0.5 * (torch.max(vf1, vf2) * keep_p1).sum() / keep_p1.sum()
    vf_clipfrac = ((vf2 > vf1).float() * keep_p1).sum() / keep_p1.sum()
    (their_vf_grad,) = torch.autograd.grad(vf_loss, new_values)

    pg = ppo_policy_loss(new_logps, old_logps, advantages, ~pad, cliprange=cliprange)
    (our_pg_grad,) = torch.autograd.grad(pg.loss, new_logps)
    assert float(pg.loss) == pytest.approx(float(pg_loss), abs=1e-6)
    torch.testing.assert_close(our_pg_grad, their_pg_grad, **TOL)
    assert float(pg.metrics["policy/clipfrac"]) == pytest.approx(float(clipfrac), abs=1e-6)
    assert 0 < float(clipfrac) < 1
    approxkl = 0.5 * (((new_logps - old_logps) ** 2) * keep).sum() / keep.sum()
    assert float(pg.metrics["policy/approxkl"]) == pytest.approx(float(approxkl), abs=1e-6)

    vf = ppo_value_loss(new_values, old_values, returns, ~pad_p1, cliprange_value=cliprange_value)
    (our_vf_grad,) = torch.autograd.grad(vf.loss, new_values)
    assert float(vf.loss) == pytest.approx(float(vf_loss), abs=1e-6)
    torch.testing.assert_close(our_vf_grad, their_vf_grad, **TOL)
    assert float(vf.metrics["val/clipfrac"]) == pytest.approx(float(vf_clipfrac), abs=1e-6)
    assert 0 < float(vf_clipfrac) < 1
