"""DPO in real processes: SIGKILL then resume = an unbroken run; 2 ranks (DDP, FSDP2) = 1 x 2B."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lego.train import read_metrics

SCRIPT = Path(__file__).resolve().parent / "run_dpo.py"
STEPS = 8


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"})
    return env


def _run(out: Path, *args: str) -> None:
    cmd = [sys.executable, str(SCRIPT), str(out), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if r.get("split") == "train"}


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_sigkill_then_resume_matches_an_unbroken_run(tmp_path: Path, reference: str) -> None:
    full = tmp_path / "full"
    _run(full, str(STEPS), "4", "-", "single", reference)

    broken = tmp_path / "broken"
    cmd = [
        sys.executable,
        str(SCRIPT),
        str(broken),
        str(STEPS),
        "4",
        "-",
        "single",
        reference,
        "0.2",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env()) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "STEP 3":
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (broken / "final.pt").exists()

    _run(broken, str(STEPS), "4", "latest", "single", reference)
    a = torch.load(full / "final.pt", weights_only=True)
    b = torch.load(broken / "final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    resumed = _losses(broken)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == _losses(full)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "reference"),
    [("ddp", "precomputed"), ("fsdp", "copy")],  # FSDP2: full fine-tuning, a frozen reference copy
)
def test_two_ranks_match_one_process_with_double_batch(
    tmp_path: Path, strategy: str, reference: str
) -> None:
    single = tmp_path / "single"
    _run(single, "3", "8", "-", "single", reference)
    multi = tmp_path / "multi"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29600 + os.getpid() % 1000),
        str(SCRIPT),
        str(multi),
        "3",
        "4",
        "-",
        strategy,
        reference,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    if strategy == "fsdp":  # the frozen copy is sharded like the policy (FSDP2 class prefix)
        assert result.stdout.count("REFERENCE FSDPWideLM") == 2, result.stdout
    a = torch.load(single / "final.pt", weights_only=True)
    b = torch.load(multi / "final.pt", weights_only=True)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5, msg=name)
    la, lb = _losses(single), _losses(multi)
    assert sorted(la) == sorted(lb) == [1, 2, 3]
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5)
