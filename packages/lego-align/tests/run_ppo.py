"""Subprocess entry for the kill / torchrun tests: PPO on the unit tests' TinyLM.

python run_ppo.py OUT_DIR MAX_STEPS RESUME STRATEGY KL_COEF [DELAY] [STOP_AT]

Rollouts of 8 prompts (over all ranks), 2 PPO epochs of 2 minibatches (grad_accum 2): one
rollout serves 4 optimizer steps, so a checkpoint can fall inside a rollout. ``STOP_AT``
stops the run after that step (a checkpoint is saved), as a signal would. Each rank writes
its final weights to ``OUT_DIR/final-<rank>.pt`` and prints one line per step
(``STEP <n>``) and the prompts of its rollouts (``PROMPTS <rank> <rollout> <lines>``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest

from lego.align import PPOConfig, PPOTrainer
from lego.train import TrainConfig

LETTERS = "abcdefghijk"


class Letters:
    """One id per letter after two special tokens: 13 ids, TinyLM's vocabulary."""

    def __init__(self) -> None:
        self.special_tokens = {"<|endoftext|>": 0, "<|pad|>": 1}
        self.vocab_size = 2 + len(LETTERS)

    def encode(self, text: str) -> list[int]:
        return [2 + LETTERS.index(c) for c in text]

    def decode(self, ids: Any) -> str:
        return "".join("" if int(i) < 2 else LETTERS[int(i) - 2] for i in ids)


def count_a(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    return [float(c.count("a")) for c in completions]


class Announce:
    def __init__(self, delay: float, trainer: PPOTrainer, stop_at: int) -> None:
        self.delay = delay
        self.trainer = trainer
        self.stop_at = stop_at

    def on_step_end(self, state: object) -> None:
        source = self.trainer.source
        lines = " ".join(str(p.line) for p in source.last_prompts)
        step = state.step  # type: ignore[attr-defined]
        # one write per line: two ranks share the pipe (a short write is not interleaved)
        sys.stdout.write(f"PROMPTS {source.rank} {source.rollouts} {lines}\nSTEP {step}\n")
        sys.stdout.flush()
        if self.delay:
            time.sleep(self.delay)
        if step == self.stop_at:
            state.should_stop = True  # type: ignore[attr-defined]


def main() -> None:
    out_dir, max_steps, resume, strategy, kl_coef = sys.argv[1:6]
    delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    stop_at = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    torch.manual_seed(0)
    trainer = PPOTrainer(
        model=conftest.TinyLM(),
        tokenizer=Letters(),
        train_data=[{"prompt": c * k} for c in "bcdefghijk" for k in (1, 2)],
        reward_model=count_a,
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
        train=TrainConfig(
            out_dir=out_dir,
            max_steps=int(max_steps),
            grad_accum=2 if strategy == "single" else 1,
            checkpoint_every=1,
            keep_last=2,
            progress="none",
            peak_flops=1e12,
            resume=resume if resume != "-" else "",
            strategy=strategy,  # type: ignore[arg-type]
            optim={"lr": 3e-2, "min_lr": 1e-3},  # type: ignore[arg-type]
            schedule={"warmup_steps": 1},  # type: ignore[arg-type]
        ),
    )
    trainer.trainer.callbacks.append(Announce(delay, trainer, stop_at))  # type: ignore[arg-type]
    trainer.fit()
    rank = trainer.trainer.dist.rank
    state = {k: v.detach().clone() for k, v in trainer.trainer.unwrapped.state_dict().items()}
    torch.save(state, Path(out_dir) / f"final-{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
