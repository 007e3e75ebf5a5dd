"""GRPO in real processes: SIGKILL then resume = an unbroken run; 2 torchrun ranks = 1 process.

The kill lands after the checkpoint of step 3 of runs whose generations serve two steps each
(``num_iterations=2``): the checkpoint of step 3 falls between the two iterations of the
second generation, so the resumed run must reuse that generation's saved micro-batches (its
completions came from the weights of step 2) and then sample the next generations with the
same seeds. With ``num_iterations=1`` every checkpoint is at a generation boundary.

Two ranks with ``grad_accum`` 1 take each generation's prompts in halves and must compute what
one process with ``grad_accum`` 2 computes: the same completions (one sampler seed per row),
advantages (group or batch statistics over both ranks), weights and logged metrics.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_runs

SCRIPT = Path(__file__).resolve().parent / "run_grpo.py"
STEPS = 6


@pytest.mark.slow
@pytest.mark.parametrize(("iterations", "beta"), [(2, 0.0), (1, 0.05)])
def test_sigkill_then_resume_matches_an_unbroken_run(
    tmp_path: Path, iterations: int, beta: float
) -> None:
    args = [str(iterations), str(beta), "group"]
    full = tmp_path / "full"
    rl_runs.run(SCRIPT, full, str(STEPS), "-", "single", *args)

    broken = tmp_path / "broken"
    # before step 4's checkpoint: step 3's is the last
    rl_runs.kill_at(SCRIPT, broken, "STEP 4", str(STEPS), "-", "single", *args, "0.3")
    assert not (broken / "final-0.pt").exists()
    if iterations == 2:  # the kill fell inside a generation: its batches are in the checkpoint
        (last,) = [p for p in (broken / "checkpoints").glob("step-*") if p.name.endswith("3")]
        data = torch.load(last / "data.pt", weights_only=True)
        assert data["position"] == 2
        assert len(data["buffers"]["rank0"]) == 2

    resumed = rl_runs.run(SCRIPT, broken, str(STEPS), "latest", "single", *args)
    assert "STEP 3" not in resumed.stdout
    assert "STEP 4" in resumed.stdout
    rl_runs.assert_same_weights(full, broken)
    ra, rb = rl_runs.train_records(full), rl_runs.train_records(broken)
    assert sorted(rb) == list(range(1, STEPS + 1))
    for step in ra:
        for key in ("loss", "reward", "completions/mean_length", "grad_norm"):
            assert rb[step][key] == ra[step][key], (step, key)
    assert rl_runs.moved(rl_runs.finals(full))  # and the run did learn something


@pytest.mark.slow
@pytest.mark.parametrize(("iterations", "beta", "scale"), [(2, 0.05, "batch"), (1, 0.0, "group")])
def test_two_ranks_equal_one_process_with_the_same_prompts(
    tmp_path: Path, iterations: int, beta: float, scale: str
) -> None:
    args = ["3", "-"]
    setting = [str(iterations), str(beta), scale]
    single = tmp_path / "single"
    one = rl_runs.run(SCRIPT, single, *args, "single", *setting)
    multi = tmp_path / "multi"
    two = rl_runs.torchrun(SCRIPT, multi, 29700, *args, "ddp", *setting)
    # DDP: both ranks end with the same weights
    for name, value in rl_runs.finals(multi, 0).items():
        assert torch.equal(value, rl_runs.finals(multi, 1)[name]), name
    # each rank generated for its own half of the generation's prompts
    seen = rl_runs.announced(two.stdout, "PROMPTS")
    single_seen = rl_runs.announced(one.stdout, "PROMPTS")
    generations = {g for _, g in seen}
    assert generations == ({"1", "2"} if iterations == 2 else {"1", "2", "3"})
    for generation in generations:
        mine, theirs = seen[("0", generation)], seen[("1", generation)]
        assert len(mine) == len(theirs) == 2
        assert mine + theirs == single_seen[("0", generation)]
    # the same completions, weights and metrics as the one process
    rl_runs.assert_one_process_equals_two_ranks(single, multi, one.stdout, two.stdout)


@pytest.mark.slow
def test_two_ranks_resume_inside_a_generation(tmp_path: Path) -> None:
    """Stopped after step 3 (between the two iterations of generation 2), then resumed."""
    args = ["ddp", "2", "0.0", "group"]
    full = tmp_path / "full"
    rl_runs.torchrun(SCRIPT, full, 28700, "4", "-", *args)
    broken = tmp_path / "broken"
    rl_runs.torchrun(SCRIPT, broken, 27700, "4", "-", *args, "0", "3")
    assert sorted(rl_runs.train_records(broken)) == [1, 2, 3]
    (last,) = [p for p in (broken / "checkpoints").glob("step-*") if p.name.endswith("3")]
    data = torch.load(last / "data.pt", weights_only=True)
    assert sorted(data["buffers"]) == ["rank0", "rank1"]  # both ranks' micro-batches
    assert data["position"] == 1  # grad_accum 1: one of the generation's two passes
    resumed = rl_runs.torchrun(SCRIPT, broken, 26700, "4", "latest", *args)
    assert "STEP 4" in resumed.stdout
    assert "STEP 3" not in resumed.stdout
    rl_runs.assert_same_weights(full, broken, ranks=(0, 1))
    ra, rb = rl_runs.train_records(full), rl_runs.train_records(broken)
    assert sorted(rb) == [1, 2, 3, 4]
    for step in ra:
        assert rb[step]["loss"] == ra[step]["loss"], step
        assert rb[step]["reward"] == ra[step]["reward"], step
