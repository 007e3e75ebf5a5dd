"""Run the ``legollm`` command under ``torchrun`` with 2 CPU ranks (gloo), for recipe tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun_legollm(
    workdir: Path, *args: str, port: int = 29500
) -> subprocess.CompletedProcess[str]:
    """``legollm ARGS`` under ``torchrun --nproc_per_node 2`` in ``workdir``; asserts exit 0.

    Args:
        workdir: The working directory (a config's relative paths resolve there).
        args: The command's arguments (``align grpo --config ...``).
        port: The rendezvous port's base (the test's process id is added).

    Returns:
        The finished process (its ``stdout`` and ``stderr``).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port + os.getpid() % 1000),
        "-m",
        "lego.recipes.cli",
        *args,
    ]
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
