"""PPO in real processes: SIGKILL then resume = an unbroken run; 2 torchrun ranks in step.

Each rollout serves 4 optimizer steps (2 PPO epochs x 2 minibatches), so the checkpoint of
step 3, the last one before the kill, falls inside the first rollout: the resumed run must
reuse that rollout's saved rows (sampled with the starting weights) in the same seeded
order, then roll out again with the same seeds.
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

SCRIPT = Path(__file__).resolve().parent / "run_ppo.py"
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


def _start() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sys.path.insert(0, str(SCRIPT.parent))
    import conftest

    return conftest.TinyLM().state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("kl_coef", ["0.0", "0.1"])
def test_sigkill_then_resume_matches_an_unbroken_run(tmp_path: Path, kl_coef: str) -> None:
    full = tmp_path / "full"
    _run(full, str(STEPS), "-", "single", kl_coef)

    broken = tmp_path / "broken"
    cmd = [sys.executable, str(SCRIPT), str(broken), str(STEPS), "-", "single", kl_coef, "0.3"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env()) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "STEP 4":  # before step 4's checkpoint: step 3's is the last
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (broken / "final-0.pt").exists()
    (last,) = [p for p in (broken / "checkpoints").glob("step-*") if p.name.endswith("3")]
    data = torch.load(last / "data.pt", weights_only=True)
    assert data["position"] == 6  # 3 steps x grad_accum 2 of the rollout's 8 micro-batches
    assert data["rollouts"] == 1
    assert data["rows"]["rank0"]["input_ids"].shape[0] == 8
    assert (last / "model" / "value_head.safetensors").is_file()

    resumed = _run(broken, str(STEPS), "latest", "single", kl_coef)
    assert "STEP 3" not in resumed.stdout
    assert "STEP 4" in resumed.stdout
    a = torch.load(full / "final-0.pt", weights_only=True)
    b = torch.load(broken / "final-0.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert "value_head.weight" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ra, rb = _train_records(full), _train_records(broken)
    assert sorted(rb) == list(range(1, STEPS + 1))
    for step in ra:
        for key in ("loss", "objective/scores", "objective/kl", "loss/value_avg", "grad_norm"):
            assert rb[step][key] == ra[step][key], (step, key)
    start = _start()
    assert any(not torch.equal(start[k], a[f"policy.{k}"]) for k in start)


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
def test_two_ranks_roll_out_their_own_prompts_and_resume_in_step(tmp_path: Path) -> None:
    full = tmp_path / "full"
    result = _torchrun(full, 25700, "5", "-", "ddp", "0.05")
    a = torch.load(full / "final-0.pt", weights_only=True)
    b = torch.load(full / "final-1.pt", weights_only=True)
    for name in a:  # DDP: both ranks end with the same weights
        assert torch.equal(a[name], b[name]), name
    start = _start()
    assert any(not torch.equal(start[k], a[f"policy.{k}"]) for k in start)
    seen: dict[tuple[str, str], list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("PROMPTS "):
            _, rank, rollout, *lines = line.split()
            seen[(rank, rollout)] = lines
    for rollout in ("1", "2"):  # 4 prompts per rank, never the same ones
        mine, theirs = seen[("0", rollout)], seen[("1", rollout)]
        assert len(mine) == len(theirs) == 4
        assert not set(mine) & set(theirs)

    broken = tmp_path / "broken"  # stopped inside the first rollout, then resumed
    _torchrun(broken, 24700, "5", "-", "ddp", "0.05", "0", "2")
    (last,) = [p for p in (broken / "checkpoints").glob("step-*") if p.name.endswith("2")]
    data = torch.load(last / "data.pt", weights_only=True)
    assert sorted(data["rows"]) == ["rank0", "rank1"]
    _torchrun(broken, 23700, "5", "latest", "ddp", "0.05")
    for rank in (0, 1):
        x = torch.load(full / f"final-{rank}.pt", weights_only=True)
        y = torch.load(broken / f"final-{rank}.pt", weights_only=True)
        for name in x:
            assert torch.equal(x[name], y[name]), (rank, name)
    ra, rb = _train_records(full), _train_records(broken)
    assert sorted(rb) == [1, 2, 3, 4, 5]
    for step in ra:
        assert rb[step]["loss"] == ra[step]["loss"], step
        assert rb[step]["objective/scores"] == ra[step]["objective/scores"], step
