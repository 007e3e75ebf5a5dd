"""Exact resume: SIGKILL a real training process, resume it, compare with an unbroken run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lego.train import read_metrics

SCRIPT = Path(__file__).resolve().parent / "run_tiny.py"
STEPS = 12


def _run(out: Path, *extra: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, str(SCRIPT), str(out), str(STEPS), "4", *extra]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300, env=env)


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if r.get("split") == "train"}


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [3, 8])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path, kill_after: int) -> None:
    full = tmp_path / "full"
    _run(full, "-", "single")

    broken = tmp_path / "broken"
    cmd = [sys.executable, str(SCRIPT), str(broken), str(STEPS), "4", "-", "single", "0.2"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == f"STEP {kill_after}":
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (broken / "final.pt").exists()

    _run(broken, "latest", "single")
    a = torch.load(full / "final.pt", weights_only=True)
    b = torch.load(broken / "final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    full_losses, resumed_losses = _losses(full), _losses(broken)
    assert sorted(resumed_losses) == list(range(1, STEPS + 1))
    assert resumed_losses == full_losses


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), str(run), "1000", "4", "-", "single", "0.05"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "STEP 3":
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.stdout.read()
        proc.wait(timeout=60)
    assert proc.returncode == 0
    steps = [int(x.split()[1]) for x in rest.split("\n") if x.startswith("STEP")]
    last = max([3, *steps])
    assert last < 1000
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{last:08d}"
