"""What the GRPO and PPO tests share: the letters task, the subprocess side, the test side.

The letters task (``test_grpo.py``, ``test_ppo.py`` and the scripts): the tokenizer of
TinyLM's 13 ids and the toy rewards. The subprocess side (``run_grpo.py``, ``run_ppo.py``):
the lego-train settings, the per-step announcements (``PROMPTS``, ``ROWS``, ``STEP`` lines)
and the final weights (``OUT_DIR/final-<rank>.pt``). The test side
(``test_grpo_processes.py``, ``test_ppo_processes.py``; ``test_dpo_processes.py`` too):
running a script in one process or under ``torchrun`` with 2 ranks, killing it at a step,
and comparing what runs wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lego.train import TrainConfig, read_metrics

LETTERS = "abcdefghijk"

METRIC_SKIP = ("time", "sec", "mfu", "tokens", "memory", "lr", "step", "split")
"""Parts of metric names that are not the run's numbers (wall time, throughput, bookkeeping)."""


# -- the subprocess side ------------------------------------------------------------------------


class Letters:
    """One id per letter after two special tokens: 13 ids, TinyLM's vocabulary."""

    def __init__(self, specials: dict[str, int] | None = None) -> None:
        self.special_tokens = {"<|endoftext|>": 0, "<|pad|>": 1} if specials is None else specials
        self.vocab_size = 2 + len(LETTERS)

    def encode(self, text: str) -> list[int]:
        return [2 + LETTERS.index(c) for c in text]

    def decode(self, ids: Any) -> str:
        return "".join("" if int(i) < 2 else LETTERS[int(i) - 2] for i in ids)


def starts_with_a(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """GRPO's toy reward: 1 for a completion that starts with ``a``."""
    return [1.0 if c.startswith("a") else 0.0 for c in completions]


def count_a(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """PPO's toy reward: the number of ``a`` in the completion."""
    return [float(c.count("a")) for c in completions]


def train_config(
    out_dir: str, max_steps: str, resume: str, strategy: str, lr: float
) -> TrainConfig:
    """lego-train's settings of a test run: ``grad_accum`` 2 in one process, 1 per rank."""
    return TrainConfig(
        out_dir=out_dir,
        max_steps=int(max_steps),
        grad_accum=2 if strategy == "single" else 1,
        checkpoint_every=1,
        keep_last=2,
        progress="none",
        peak_flops=1e12,
        resume=resume if resume != "-" else "",
        strategy=strategy,  # type: ignore[arg-type]
        optim={"lr": lr, "min_lr": 1e-3},  # type: ignore[arg-type]
        schedule={"warmup_steps": 1},  # type: ignore[arg-type]
    )


class Announce:
    """Prints, after each step, the rank's prompts and completions of its last rollout.

    ``PROMPTS <rank> <count> <lines>``, ``ROWS <rank> <count> <json texts>`` and
    ``STEP <n>``, in one write (two ranks share the pipe; a short write is not interleaved);
    then sleeps ``delay`` and stops the run after step ``stop_at`` (a checkpoint is saved).
    """

    def __init__(self, trainer: Any, counter: str, delay: float, stop_at: int) -> None:
        self.trainer = trainer
        self.counter = counter
        self.delay = delay
        self.stop_at = stop_at

    def on_step_end(self, state: Any) -> None:
        source = self.trainer.source
        count = getattr(source, self.counter)
        lines = " ".join(str(p.line) for p in source.last_prompts)
        rows = ""
        if source.last_rollout is not None:  # None after resuming inside a rollout
            rows = f"ROWS {source.rank} {count} {json.dumps(list(source.last_rollout.texts))}\n"
        sys.stdout.write(f"PROMPTS {source.rank} {count} {lines}\n{rows}STEP {state.step}\n")
        sys.stdout.flush()
        if self.delay:
            time.sleep(self.delay)
        if state.step == self.stop_at:
            state.should_stop = True


def fit_and_save(trainer: Any, counter: str, delay: float, stop_at: int, out_dir: str) -> None:
    """Run the trainer with the announcements; write ``final-<rank>.pt``; leave the group."""
    trainer.trainer.callbacks.append(Announce(trainer, counter, delay, stop_at))
    trainer.fit()
    rank = trainer.trainer.dist.rank
    state = {k: v.detach().clone() for k, v in trainer.trainer.unwrapped.state_dict().items()}
    torch.save(state, Path(out_dir) / f"final-{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears gloo down while another still saves
        torch.distributed.destroy_process_group()


# -- the test side ------------------------------------------------------------------------------


def env() -> dict[str, str]:
    """The environment of a test subprocess (one thread, the local rendezvous)."""
    out = dict(os.environ)
    out.update({"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"})
    return out


def run(script: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``script OUT ARGS`` in one process; asserts it exits 0."""
    cmd = [sys.executable, str(script), str(out), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def torchrun(script: Path, out: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``script OUT ARGS`` under ``torchrun --nproc_per_node 2``; asserts it exits 0."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port + os.getpid() % 1000),
        str(script),
        str(out),
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_at(script: Path, out: Path, line: str, *args: str) -> None:
    """Run ``script OUT ARGS`` in one process and SIGKILL it when it prints ``line``."""
    cmd = [sys.executable, str(script), str(out), *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env()) as proc:
        assert proc.stdout is not None
        for printed in proc.stdout:
            if printed.strip() == line:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def train_records(run_dir: Path) -> dict[int, dict[str, float]]:
    """The run's train records by step."""
    return {r["step"]: r for r in read_metrics(run_dir) if r.get("split") == "train"}


def finals(run_dir: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    """The final weights a rank wrote."""
    return torch.load(run_dir / f"final-{rank}.pt", weights_only=True)  # type: ignore[no-any-return]


def assert_same_weights(a: Path, b: Path, *, ranks: tuple[int, ...] = (0,)) -> None:
    """The runs' final weights are equal to the bit, rank by rank."""
    for rank in ranks:
        x, y = finals(a, rank), finals(b, rank)
        assert x.keys() == y.keys()
        for name in x:
            assert torch.equal(x[name], y[name]), (rank, name)


def start_weights() -> dict[str, torch.Tensor]:
    """TinyLM's starting weights (``torch.manual_seed(0)``, as the scripts build it)."""
    torch.manual_seed(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import conftest

    return conftest.TinyLM().state_dict()  # type: ignore[no-any-return]


def moved(final: dict[str, torch.Tensor]) -> bool:
    """Whether the run's policy weights left TinyLM's start (PPO's are under ``policy.``)."""
    start = start_weights()
    return any(
        not torch.equal(v, final.get(k, final.get(f"policy.{k}", v))) for k, v in start.items()
    )


def announced(stdout: str, kind: str) -> dict[tuple[str, str], Any]:
    """The ``kind`` lines (``PROMPTS``, ``ROWS``) by ``(rank, count)``."""
    seen: dict[tuple[str, str], Any] = {}
    for line in stdout.splitlines():
        if line.startswith(kind + " "):
            _, rank, count, rest = [*line.split(" ", 3), ""][:4]
            seen[(rank, count)] = json.loads(rest) if kind == "ROWS" else rest.split()
    return seen


def assert_one_process_equals_two_ranks(single: Path, multi: Path, one: str, two: str) -> None:
    """Two ranks did what one process did: completions, weights (1e-5) and metrics.

    Args:
        single: The one-process run's folder; ``one`` its stdout.
        multi: The 2-rank run's folder; ``two`` its stdout.
    """
    rows_one, rows_two = announced(one, "ROWS"), announced(two, "ROWS")
    counts = sorted({c for _, c in rows_one})
    assert counts
    assert counts == sorted({c for _, c in rows_two})
    for count in counts:  # the union of the ranks' completions, rank-major, is one process's
        assert rows_two[("0", count)] + rows_two[("1", count)] == rows_one[("0", count)], count
    a, b = finals(single), finals(multi)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5, msg=name)
    assert moved(a)
    ra, rb = train_records(single), train_records(multi)
    assert sorted(ra) == sorted(rb)
    compared = 0
    for step, record in ra.items():
        for key, value in record.items():
            if any(part in key for part in METRIC_SKIP) or not isinstance(value, float):
                continue
            assert rb[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)
            compared += 1
    assert compared >= 5 * len(ra)
