"""torchrun with 2 CPU ranks x batch B takes the same steps as 1 process x batch 2B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent / "run_tiny.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "TINY_DROPOUT": "0"})
    return env


def _two_ranks(
    out: Path, steps: int, strategy: str, *, port_offset: int = 0, **env: str
) -> subprocess.CompletedProcess[str]:
    """run_tiny.py under torchrun: 2 CPU ranks of batch 2, ``steps`` steps into ``out``."""
    port = 29500 + (os.getpid() + port_offset) % 1000
    command = ["--nproc_per_node", "2", "--master_port", str(port), str(SCRIPT), str(out)]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *command, str(steps), "2", "-", strategy],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(), **env},
    )


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_with_double_batch(tmp_path: Path, strategy: str) -> None:
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, str(SCRIPT), str(single), "4", "4", "-", "single"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    multi = tmp_path / "multi"
    result = _two_ranks(multi, 4, strategy)
    assert result.returncode == 0, result.stderr[-3000:]
    # rank 0 wrote the consolidated (full) weights into an ordinary model directory
    weights = Path("checkpoints") / "step-00000004" / "model" / "model.safetensors"
    a = load_file(str(single / weights))
    b = load_file(str(multi / weights))
    assert a.keys() == b.keys()
    for name in a:
        assert b[name].shape == a[name].shape
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_ranks_that_meet_new_batch_shapes_at_different_steps_size_the_run_together(
    tmp_path: Path,
) -> None:
    # rank 1 meets a shorter batch at step 2 that rank 0 never sees: a step is left out of
    # the timing on every rank when any rank met a new shape, so both size at one step
    result = _two_ranks(tmp_path, 12, "ddp", port_offset=7, TINY_BUDGET="1e6", TINY_RAGGED="1")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (budget,) = [r for r in records if r["split"] == "budget"]
    # steps 1 (both ranks' first) and 2 (rank 1's short batch) are left out: 3 to 7 timed
    assert (budget["step"], budget["max_steps"]) == (7, 12)
    assert max(r["step"] for r in records) == 12


def test_pick_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from lego.train.distributed import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("auto") == torch.device("cuda", 1)


def test_pick_device_refuses_what_this_machine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from lego.protocols import ConfigError
    from lego.train.distributed import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="asks for CUDA") as info:
        pick_device("cuda")
    assert info.value.key == "device"
    with pytest.raises(ConfigError, match="MPS"):
        pick_device("mps")
    with pytest.raises(ConfigError, match="unknown device"):
        pick_device("gpu")


def test_a_lost_peer_is_one_training_error(tmp_path: Path) -> None:
    import torch.distributed as dist

    from lego.protocols import TrainingError
    from lego.train.distributed import peer_errors

    with pytest.raises(RuntimeError, match="closed by peer"), peer_errors():  # no group
        raise RuntimeError("Connection closed by peer [127.0.0.1]:1")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        gone = "another process of the group is gone"
        with pytest.raises(TrainingError, match=gone) as info, peer_errors():
            raise RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1")
        assert "resume=auto" in str(info.value.hint)
        with pytest.raises(RuntimeError, match="shape mismatch"), peer_errors():  # passes
            raise RuntimeError("shape mismatch")
    finally:
        dist.destroy_process_group()


def test_elastic_restarts_on_several_machines_need_a_fresh_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lego.train.distributed import _restarts_need_fresh_store

    env = {
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "1",
        "TORCHELASTIC_MAX_RESTARTS": "2",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _restarts_need_fresh_store()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # the setting the docs give
    assert not _restarts_need_fresh_store()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # one machine
    assert not _restarts_need_fresh_store()
