"""The sampling copy in another precision: the probe, the choice, the copy, bf16 vs fp32 tokens."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lego.generate import precision, rollout
from lego.generate.precision import (
    DtypeProbe,
    SamplingCopy,
    probe_bf16,
    resolve_rollout_dtype,
    sampling_copy,
)
from lego.protocols import ConfigError


def test_probe_is_measured_once_per_process() -> None:
    first = probe_bf16(seconds=0.01)
    assert first.repeats >= 3
    assert first.float32_s > 0
    assert first.bfloat16_s > 0
    assert first.speedup == pytest.approx(first.float32_s / first.bfloat16_s)
    assert probe_bf16(seconds=0.01) is first
    again = probe_bf16(seconds=0.01, fresh=True)
    assert again is not first
    assert probe_bf16() is again


class Quantized(nn.Module):
    """A packed uint8 weight next to an fp32 one (what an NF4 layer holds)."""

    def __init__(self) -> None:
        super().__init__()
        self.packed = nn.Parameter(torch.zeros(4, dtype=torch.uint8), requires_grad=False)
        self.scale = nn.Parameter(torch.ones(4))


def test_named_dtypes_and_refusals() -> None:
    fp32, bf16 = nn.Linear(3, 3), nn.Linear(3, 3).to(torch.bfloat16)
    assert resolve_rollout_dtype(fp32, "bfloat16") == torch.bfloat16
    assert resolve_rollout_dtype(fp32, "float32") is None
    assert resolve_rollout_dtype(bf16, "bfloat16") is None
    assert resolve_rollout_dtype(bf16, "float32") == torch.float32
    with pytest.raises(ConfigError, match="rollout_dtype") as bad:
        resolve_rollout_dtype(fp32, "half")
    assert bad.value.key == "rollout_dtype"
    with pytest.raises(ConfigError, match="quantized") as packed:
        resolve_rollout_dtype(Quantized(), "bfloat16")
    assert packed.value.key == "rollout_dtype"
    assert resolve_rollout_dtype(Quantized(), "auto") is None


@pytest.mark.parametrize(("speedup", "expected"), [(2.0, torch.bfloat16), (0.5, None)])
def test_auto_follows_the_probe_for_large_fp32_models(
    monkeypatch: pytest.MonkeyPatch, speedup: float, expected: torch.dtype | None
) -> None:
    monkeypatch.setattr(precision, "AUTO_MIN_PARAMETERS", 10)
    monkeypatch.setattr(precision, "_probes", {"cpu": DtypeProbe("cpu", speedup, 1.0, 3)})
    assert resolve_rollout_dtype(nn.Linear(4, 4), "auto") == expected
    # other dtypes are left alone whatever the probe says
    assert resolve_rollout_dtype(nn.Linear(4, 4).to(torch.bfloat16), "auto") is None
    monkeypatch.setattr(precision, "AUTO_MIN_PARAMETERS", 10**9)
    assert resolve_rollout_dtype(nn.Linear(4, 4), "auto") is None  # too small to gain


def test_copy_follows_the_learner_and_leaves_it_alone() -> None:
    torch.manual_seed(0)
    learner = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    learner(torch.randn(3, 4)).sum().backward()
    grads = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
    copy = SamplingCopy(learner, torch.bfloat16)
    model = copy.model
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in learner.parameters())
    for grad, p in zip(grads, learner.parameters(), strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, grad)  # the learner's gradients are kept
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.25)
    stale = [p.float().clone() for p in model.parameters()]
    assert copy.refresh() is model
    assert copy.refreshes == 1
    assert not model.training
    for new, old, p in zip(model.parameters(), stale, learner.parameters(), strict=True):
        assert not torch.equal(new.float(), old)
        torch.testing.assert_close(new.float(), p.detach(), rtol=1e-2, atol=1e-2)
        assert torch.equal(new, p.detach().to(torch.bfloat16))  # exactly the learner, rounded


def test_sampling_copy_none_when_nothing_to_do() -> None:
    assert sampling_copy(nn.Linear(2, 2), "float32") is None
    made = sampling_copy(nn.Linear(2, 2), "bfloat16")
    assert made is not None
    assert made.dtype == torch.bfloat16


def test_greedy_bf16_rollouts_agree_with_fp32_on_most_tokens(model: Any) -> None:
    """Teacher-forced: the fp32 model's greedy choice after each prefix the bf16 copy made."""
    sampler = SamplingCopy(model, torch.bfloat16).refresh()
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9], [10, 11, 12, 13, 14]]
    low = rollout(sampler, prompts, max_new_tokens=12, do_sample=False, use_cache=False)
    high = rollout(model, prompts, max_new_tokens=12, do_sample=False, use_cache=False)
    agree = total = 0
    for row, completion in enumerate(low.completions):
        ids = torch.tensor([prompts[row] + completion])
        with torch.no_grad():
            logits = model(ids)[0]  # (L, V), fp32
        p = len(prompts[row])
        choices = logits[p - 1 : p - 1 + len(completion)].argmax(dim=-1).tolist()
        agree += sum(a == b for a, b in zip(choices, completion, strict=True))
        total += len(completion)
    assert total == 4 * 12
    assert agree / total >= 0.9
    # the whole first token (same prompt, no earlier difference) matches on every row
    assert low.completion_ids[:, 0].tolist() == high.completion_ids[:, 0].tolist()
    # and the log-probs it reports are the bf16 model's: close to fp32's, not equal
    diff = (low.logprobs[:, 0] - high.logprobs[:, 0]).abs()
    assert float(diff.max()) < 0.1
