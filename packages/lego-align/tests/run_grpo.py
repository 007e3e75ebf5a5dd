"""Subprocess entry for the kill / torchrun tests: GRPO on the unit tests' TinyLM.

python run_grpo.py OUT_DIR MAX_STEPS RESUME STRATEGY NUM_ITERATIONS BETA SCALE [DELAY] [STOP_AT]

``STOP_AT`` stops the run after that step (a checkpoint is saved), as a signal would.

Each rank writes its final weights to ``OUT_DIR/final-<rank>.pt`` and prints one line per
step (``STEP <n>``) and the prompts of its generations (``PROMPTS <rank> <lines>``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest

from lego.align import GRPOConfig, GRPOTrainer
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


def starts_with_a(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    return [1.0 if c.startswith("a") else 0.0 for c in completions]


def rows() -> list[dict[str, Any]]:
    return [{"prompt": c * k, "answer": "a"} for c in "bcdefghijk" for k in (1, 2)]


class Announce:
    def __init__(self, delay: float, trainer: GRPOTrainer, stop_at: int) -> None:
        self.delay = delay
        self.trainer = trainer
        self.stop_at = stop_at

    def on_step_end(self, state: object) -> None:
        source = self.trainer.source
        lines = " ".join(str(p.line) for p in source.last_prompts)
        # one write per line: two ranks share the pipe (a short write is not interleaved)
        step = state.step  # type: ignore[attr-defined]
        sys.stdout.write(f"PROMPTS {source.rank} {source.generation} {lines}\nSTEP {step}\n")
        sys.stdout.flush()
        if self.delay:
            time.sleep(self.delay)
        if state.step == self.stop_at:  # type: ignore[attr-defined]
            state.should_stop = True  # type: ignore[attr-defined]


def main() -> None:
    out_dir, max_steps, resume, strategy, iterations, beta, scale = sys.argv[1:8]
    delay = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
    stop_at = int(sys.argv[9]) if len(sys.argv) > 9 else 0
    torch.manual_seed(0)
    trainer = GRPOTrainer(
        model=conftest.TinyLM(),
        tokenizer=Letters(),
        train_data=rows(),
        reward_funcs=[starts_with_a],
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
        train=TrainConfig(
            out_dir=out_dir,
            max_steps=int(max_steps),
            grad_accum=2,
            checkpoint_every=1,
            keep_last=2,
            progress="none",
            peak_flops=1e12,
            resume=resume if resume != "-" else "",
            strategy=strategy,  # type: ignore[arg-type]
            optim={"lr": 2e-2, "min_lr": 1e-3},  # type: ignore[arg-type]
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
