"""GRPO in real processes: SIGKILL then resume = an unbroken run; 2 torchrun ranks in step.

The kill lands after the checkpoint of step 3 of runs whose generations serve two steps each
(``num_iterations=2``): the checkpoint of step 3 falls between the two iterations of the
second generation, so the resumed run must reuse that generation's saved micro-batches (its
completions came from the weights of step 2) and then sample the next generations with the
same seeds. With ``num_iterations=1`` every checkpoint is at a generation boundary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lego.train import read_metrics

SCRIPT = Path(__file__).resolve().parent / "run_grpo.py"
STEPS = 6


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"})
    return env


def _run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), str(out), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _train_records(run: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: r for r in read_metrics(run) if r.get("split") == "train"}


@pytest.mark.slow
@pytest.mark.parametrize(("iterations", "beta"), [(2, 0.0), (1, 0.05)])
def test_sigkill_then_resume_matches_an_unbroken_run(
    tmp_path: Path, iterations: int, beta: float
) -> None:
    args = [str(iterations), str(beta), "group"]
    full = tmp_path / "full"
    _run(full, str(STEPS), "-", "single", *args)

    broken = tmp_path / "broken"
    cmd = [sys.executable, str(SCRIPT), str(broken), str(STEPS), "-", "single", *args, "0.3"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env()) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "STEP 4":  # before step 4's checkpoint: step 3's is the last
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (broken / "final-0.pt").exists()
    if iterations == 2:  # the kill fell inside a generation: its batches are in the checkpoint
        (last,) = [p for p in (broken / "checkpoints").glob("step-*") if p.name.endswith("3")]
        data = torch.load(last / "data.pt", weights_only=True)
        assert data["position"] == 2
        assert len(data["buffers"]["rank0"]) == 2

    resumed = _run(broken, str(STEPS), "latest", "single", *args)
    assert "STEP 3" not in resumed.stdout
    assert "STEP 4" in resumed.stdout
    a = torch.load(full / "final-0.pt", weights_only=True)
    b = torch.load(broken / "final-0.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ra, rb = _train_records(full), _train_records(broken)
    assert sorted(rb) == list(range(1, STEPS + 1))
    for step in ra:
        for key in ("loss", "reward", "completions/mean_length", "grad_norm"):
            assert rb[step][key] == ra[step][key], (step, key)
    # and the run did learn something: the weights moved
    torch.manual_seed(0)
    sys.path.insert(0, str(SCRIPT.parent))
    import conftest

    start = conftest.TinyLM().state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in start)


def _torchrun(out: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port + os.getpid() % 1000),
        str(SCRIPT),
        str(out),
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_ranks_generate_their_own_prompts_and_stay_in_step(tmp_path: Path) -> None:
    multi = tmp_path / "multi"
    # "batch": the batch's std is gathered over the ranks
    result = _torchrun(multi, 29700, "3", "-", "ddp", "2", "0.05", "batch")
    # DDP: both ranks end with the same weights, which moved from the start
    a = torch.load(multi / "final-0.pt", weights_only=True)
    b = torch.load(multi / "final-1.pt", weights_only=True)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    torch.manual_seed(0)
    sys.path.insert(0, str(SCRIPT.parent))
    import conftest

    start = conftest.TinyLM().state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in start)
    # each rank generated for its own share of the prompts: two per rank, never the same
    seen: dict[tuple[str, str], list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("PROMPTS "):
            _, rank, generation, *lines = line.split()
            seen[(rank, generation)] = lines
    assert {g for _, g in seen} == {"1", "2"}  # 3 steps, 2 iterations: generations 1 and 2
    for generation in ("1", "2"):
        mine, theirs = seen[("0", generation)], seen[("1", generation)]
        assert len(mine) == len(theirs) == 2
        assert not set(mine) & set(theirs)
    records = _train_records(multi)
    assert sorted(records) == [1, 2, 3]
    # the generation metrics are over both ranks: 2 ranks x 2 prompts x 4 completions
    assert all(0.0 <= r["reward"] <= 1.0 for r in records.values())


@pytest.mark.slow
def test_two_ranks_resume_inside_a_generation(tmp_path: Path) -> None:
    """Stopped after step 3 (between the two iterations of generation 2), then resumed."""
    args = ["ddp", "2", "0.0", "group"]
    full = tmp_path / "full"
    _torchrun(full, 28700, "4", "-", *args)
    broken = tmp_path / "broken"
    _torchrun(broken, 27700, "4", "-", *args, "0", "3")
    assert sorted(_train_records(broken)) == [1, 2, 3]
    (last,) = [p for p in (broken / "checkpoints").glob("step-*") if p.name.endswith("3")]
    data = torch.load(last / "data.pt", weights_only=True)
    assert sorted(data["buffers"]) == ["rank0", "rank1"]  # both ranks' micro-batches
    assert data["position"] == 2
    resumed = _torchrun(broken, 26700, "4", "latest", *args)
    assert "STEP 4" in resumed.stdout
    assert "STEP 3" not in resumed.stdout
    for rank in (0, 1):
        a = torch.load(full / f"final-{rank}.pt", weights_only=True)
        b = torch.load(broken / f"final-{rank}.pt", weights_only=True)
        for name in a:
            assert torch.equal(a[name], b[name]), (rank, name)
    ra, rb = _train_records(full), _train_records(broken)
    assert sorted(rb) == [1, 2, 3, 4]
    for step in ra:
        assert rb[step]["loss"] == ra[step]["loss"], step
        assert rb[step]["reward"] == ra[step]["reward"], step
