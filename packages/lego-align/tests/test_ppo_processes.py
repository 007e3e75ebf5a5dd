"""PPO in real processes: SIGKILL then resume = an unbroken run; 2 torchrun ranks = 1 process.

Each rollout serves 4 optimizer steps (2 PPO epochs x 2 minibatches), so the checkpoint of
step 3, the last one before the kill, falls inside the first rollout: the resumed run must
reuse that rollout's saved rows (sampled with the starting weights) in the same seeded
order, then roll out again with the same seeds.

Two ranks with ``grad_accum`` 1 take each rollout's prompts in halves and must compute what one
process with ``grad_accum`` 2 computes: the same completions (one sampler seed per row), the
advantages whitened over both ranks' tokens, the same minibatches, weights and metrics.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_runs

SCRIPT = Path(__file__).resolve().parent / "run_ppo.py"
STEPS = 6


@pytest.mark.slow
@pytest.mark.parametrize("kl_coef", ["0.0", "0.1"])
def test_sigkill_then_resume_matches_an_unbroken_run(tmp_path: Path, kl_coef: str) -> None:
    full = tmp_path / "full"
    rl_runs.run(SCRIPT, full, str(STEPS), "-", "single", kl_coef)

    broken = tmp_path / "broken"
    # before step 4's checkpoint: step 3's is the last
    rl_runs.kill_at(SCRIPT, broken, "STEP 4", str(STEPS), "-", "single", kl_coef, "0.3")
    assert not (broken / "final-0.pt").exists()
    (last,) = [p for p in (broken / "checkpoints").glob("step-*") if p.name.endswith("3")]
    data = torch.load(last / "data.pt", weights_only=True)
    assert data["position"] == 6  # 3 steps x grad_accum 2 of the rollout's 8 micro-batches
    assert data["rollouts"] == 1
    assert data["rows"]["rank0"]["input_ids"].shape[0] == 8
    assert (last / "model" / "value_head.safetensors").is_file()

    resumed = rl_runs.run(SCRIPT, broken, str(STEPS), "latest", "single", kl_coef)
    assert "STEP 3" not in resumed.stdout
    assert "STEP 4" in resumed.stdout
    assert "value_head.weight" in rl_runs.finals(full)
    rl_runs.assert_same_weights(full, broken)
    ra, rb = rl_runs.train_records(full), rl_runs.train_records(broken)
    assert sorted(rb) == list(range(1, STEPS + 1))
    for step in ra:
        for key in ("loss", "objective/scores", "objective/kl", "loss/value_avg", "grad_norm"):
            assert rb[step][key] == ra[step][key], (step, key)
    assert rl_runs.moved(rl_runs.finals(full))


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_prompts(tmp_path: Path) -> None:
    single = tmp_path / "single"
    one = rl_runs.run(SCRIPT, single, "5", "-", "single", "0.05")
    multi = tmp_path / "multi"
    two = rl_runs.torchrun(SCRIPT, multi, 22700, "5", "-", "ddp", "0.05")
    seen, single_seen = (
        rl_runs.announced(two.stdout, "PROMPTS"),
        rl_runs.announced(one.stdout, "PROMPTS"),
    )
    for rollout in ("1", "2"):  # 4 prompts per rank: one process's 8, in halves
        mine, theirs = seen[("0", rollout)], seen[("1", rollout)]
        assert len(mine) == len(theirs) == 4
        assert mine + theirs == single_seen[("0", rollout)]
    rl_runs.assert_one_process_equals_two_ranks(single, multi, one.stdout, two.stdout)


@pytest.mark.slow
def test_two_ranks_roll_out_their_own_prompts_and_resume_in_step(tmp_path: Path) -> None:
    full = tmp_path / "full"
    result = rl_runs.torchrun(SCRIPT, full, 25700, "5", "-", "ddp", "0.05")
    a, b = rl_runs.finals(full, 0), rl_runs.finals(full, 1)
    for name in a:  # DDP: both ranks end with the same weights
        assert torch.equal(a[name], b[name]), name
    assert rl_runs.moved(a)
    seen = rl_runs.announced(result.stdout, "PROMPTS")
    for rollout in ("1", "2"):  # 4 prompts per rank, never the same ones
        mine, theirs = seen[("0", rollout)], seen[("1", rollout)]
        assert len(mine) == len(theirs) == 4
        assert not set(mine) & set(theirs)

    broken = tmp_path / "broken"  # stopped inside the first rollout, then resumed
    rl_runs.torchrun(SCRIPT, broken, 24700, "5", "-", "ddp", "0.05", "0", "2")
    (last,) = [p for p in (broken / "checkpoints").glob("step-*") if p.name.endswith("2")]
    data = torch.load(last / "data.pt", weights_only=True)
    assert sorted(data["rows"]) == ["rank0", "rank1"]
    rl_runs.torchrun(SCRIPT, broken, 23700, "5", "latest", "ddp", "0.05")
    rl_runs.assert_same_weights(full, broken, ranks=(0, 1))
    ra, rb = rl_runs.train_records(full), rl_runs.train_records(broken)
    assert sorted(rb) == [1, 2, 3, 4, 5]
    for step in ra:
        assert rb[step]["loss"] == ra[step]["loss"], step
        assert rb[step]["objective/scores"] == ra[step]["objective/scores"], step
