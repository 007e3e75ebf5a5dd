"""Subprocess entry for the kill / torchrun tests: GRPO on the unit tests' TinyLM.

python run_grpo.py OUT_DIR MAX_STEPS RESUME STRATEGY NUM_ITERATIONS BETA SCALE [DELAY] [STOP_AT]

Generations of 4 prompts (over all ranks) x 4 completions; ``grad_accum`` 2 in one process
and 1 per rank under ``torchrun`` (so 2 ranks take one process's micro-batches).
``STOP_AT`` stops the run after that step (a checkpoint is saved), as a signal would.

Each rank writes its final weights to ``OUT_DIR/final-<rank>.pt`` and prints one line per
step (``STEP <n>``), the prompts of its generations (``PROMPTS <rank> <generation> <lines>``)
and their completions (``ROWS <rank> <generation> <json texts>``): see ``rl_runs.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest
import rl_runs

from lego.align import GRPOConfig, GRPOTrainer


def rows() -> list[dict[str, Any]]:
    return [{"prompt": c * k, "answer": "a"} for c in "bcdefghijk" for k in (1, 2)]


def main() -> None:
    out_dir, max_steps, resume, strategy, iterations, beta, scale = sys.argv[1:8]
    delay = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
    stop_at = int(sys.argv[9]) if len(sys.argv) > 9 else 0
    torch.manual_seed(0)
    trainer = GRPOTrainer(
        model=conftest.TinyLM(),
        tokenizer=rl_runs.Letters(),
        train_data=rows(),
        reward_funcs=[rl_runs.starts_with_a],
        config=GRPOConfig(
            template="none",
            num_generations=4,
            prompts_per_step=4,
            max_completion_length=3,
            max_prompt_length=4,
            num_iterations=int(iterations),
            beta=float(beta),
            scale_rewards=scale,
            loss_type="dapo",
        ),
        train=rl_runs.train_config(out_dir, max_steps, resume, strategy, lr=2e-2),
    )
    rl_runs.fit_and_save(trainer, "generation", delay, stop_at, out_dir)


if __name__ == "__main__":
    main()
