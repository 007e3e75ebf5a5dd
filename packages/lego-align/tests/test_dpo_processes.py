"""DPO in real processes: SIGKILL then resume = an unbroken run; 2 ranks (DDP, FSDP2) = 1 x 2B."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lego.train import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_runs

SCRIPT = Path(__file__).resolve().parent / "run_dpo.py"
STEPS = 8


def _run(out: Path, *args: str) -> None:
    rl_runs.run(SCRIPT, out, *args)


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if r.get("split") == "train"}


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_sigkill_then_resume_matches_an_unbroken_run(tmp_path: Path, reference: str) -> None:
    full = tmp_path / "full"
    _run(full, str(STEPS), "4", "-", "single", reference)

    broken = tmp_path / "broken"
    rl_runs.kill_at(SCRIPT, broken, "STEP 3", str(STEPS), "4", "-", "single", reference, "0.2")
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
    result = rl_runs.torchrun(SCRIPT, multi, 29600, "3", "4", "-", strategy, reference)
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
