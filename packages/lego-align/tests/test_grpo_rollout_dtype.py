"""GRPO with a bf16 sampling copy: the loss's old log-probs are the fp32 learner's own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lego.align import GRPOConfig, GRPOTrainer, completion_logprobs
from lego.protocols import ConfigError
from lego.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_runs import Letters, starts_with_a


def trainer(tmp: Path, model: nn.Module, **overrides: Any) -> GRPOTrainer:
    settings: dict[str, Any] = {
        "template": "none",
        "num_generations": 4,
        "prompts_per_step": 4,
        "max_completion_length": 4,
        "max_prompt_length": 4,
        "seed": 3,
    }
    return GRPOTrainer(
        model=model,
        tokenizer=Letters(),
        train_data=[{"prompt": c * k} for c in "bcdefghijk" for k in (1, 2)],
        reward_funcs=[starts_with_a],
        config=GRPOConfig(**{**settings, **overrides}),
        train=TrainConfig(out_dir=str(tmp / "run"), max_steps=2, progress="none"),
    )


def test_bf16_sampler_and_fp32_old_logprobs(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    run = trainer(tmp_path, kit.TinyLM(), rollout_dtype="bfloat16", num_iterations=2)
    source = run.source
    policy = run.model
    sampler = source.sampler
    assert sampler is not None
    assert all(p.dtype == torch.bfloat16 for p in sampler.model.parameters())
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    batches = iter(source)
    batch = next(batches)
    assert sampler.refreshes == 1
    rollout = source.last_rollout
    assert rollout is not None
    mask = batch["completion_mask"]
    # the loss's old log-probs: the fp32 learner's forward over the sampled sequences ...
    policy.eval()
    with torch.no_grad():
        fp32 = completion_logprobs(
            policy,
            batch["input_ids"],
            batch["attention_mask"],
            mask,
            position_ids=batch["position_ids"],
            temperature=1.0,
        ).logps
    torch.testing.assert_close(batch["old_logps"], fp32, rtol=0, atol=1e-6)
    # ... not the bf16 sampler's (close, but off by its rounding)
    sampled = rollout.logprobs[:, : mask.shape[1]]
    gap = ((batch["old_logps"] - sampled).abs() * mask).max()
    assert 1e-5 < float(gap) < 0.2
    # an optimizer step later, the next generation samples from the updated weights
    with torch.no_grad():
        policy.lm_head.bias.add_(0.5)
    assert next(batches) is batch  # the second iteration of the same generation
    next(batches)
    assert sampler.refreshes == 2
    assert torch.equal(sampler.model.lm_head.bias, policy.lm_head.bias.detach().bfloat16())


def test_one_iteration_has_no_sampler_logprobs_in_the_loss(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    run = trainer(tmp_path, kit.TinyLM(), rollout_dtype="bfloat16")
    batch = next(iter(run.source))
    # num_iterations=1: no stored old log-probs; the objective uses the detached current
    # fp32 ones (ratio exactly 1), so the loss is that of an fp32 sampler's batch
    assert "old_logps" not in batch
    out = run.objective(run.model, batch)
    assert torch.isfinite(out.loss_sum)


def test_default_and_named_dtypes(tmp_path: Path, kit: Any) -> None:
    assert GRPOConfig().rollout_dtype == "auto"
    assert trainer(tmp_path / "a", kit.TinyLM()).source.sampler is None  # too small to gain
    assert trainer(tmp_path / "f", kit.TinyLM(), rollout_dtype="float32").source.sampler is None
    with pytest.raises(ConfigError) as bad:
        GRPOConfig(rollout_dtype="half")  # type: ignore[arg-type]
    assert bad.value.key == "rollout_dtype"
