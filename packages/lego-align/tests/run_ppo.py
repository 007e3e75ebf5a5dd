"""Subprocess entry for the kill / torchrun tests: PPO on the unit tests' TinyLM.

python run_ppo.py OUT_DIR MAX_STEPS RESUME STRATEGY KL_COEF [DELAY] [STOP_AT]

Rollouts of 8 prompts (over all ranks), 2 PPO epochs of 2 minibatches; ``grad_accum`` 2 in
one process and 1 per rank under ``torchrun``: one rollout serves 4 optimizer steps, so a
checkpoint can fall inside a rollout. ``STOP_AT`` stops the run after that step (a checkpoint
is saved), as a signal would. Each rank writes its final weights to
``OUT_DIR/final-<rank>.pt`` and prints one line per step (``STEP <n>``), the prompts of its
rollouts (``PROMPTS <rank> <rollout> <lines>``) and their completions (``ROWS ...``): see
``rl_runs.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest
import rl_runs

from lego.align import PPOConfig, PPOTrainer


def main() -> None:
    out_dir, max_steps, resume, strategy, kl_coef = sys.argv[1:6]
    delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    stop_at = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    torch.manual_seed(0)
    trainer = PPOTrainer(
        model=conftest.TinyLM(),
        tokenizer=rl_runs.Letters(),
        train_data=[{"prompt": c * k} for c in "bcdefghijk" for k in (1, 2)],
        reward_model=rl_runs.count_a,
        config=PPOConfig(
            template="none",
            prompts_per_step=8,
            num_mini_batches=2,
            num_ppo_epochs=2,
            max_completion_length=4,
            max_prompt_length=4,
            temperature=1.0,
            kl_coef=float(kl_coef),
        ),
        train=rl_runs.train_config(out_dir, max_steps, resume, strategy, lr=3e-2),
    )
    rl_runs.fit_and_save(trainer, "rollouts", delay, stop_at, out_dir)


if __name__ == "__main__":
    main()
