"""Subprocess entry for the resume, signal and torchrun tests: train TinyLM on ListSource.

python run_tiny.py OUT_DIR MAX_STEPS BATCH RESUME STRATEGY [DELAY]

TINY_BUDGET=<seconds> sets ``time_budget_s``; TINY_RAGGED=1 gives rank 1 (only) a shorter
batch every third step, so the ranks meet new batch shapes at different steps.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny

from lego.train import TrainConfig, Trainer


class Ragged:
    """A source whose batches lose their last position every third draw."""

    def __init__(self, source: tiny.ListSource) -> None:
        self.source = source
        self.batch_size = source.batch_size
        self.draws = 0

    def __iter__(self) -> object:
        for batch in self.source:
            self.draws += 1
            if self.draws % 3 == 2:
                batch = {key: value[:, :-1] for key, value in batch.items()}
            yield batch

    def state_dict(self) -> dict[str, object]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, object], /) -> None:
        self.source.load_state_dict(state)  # type: ignore[arg-type]


class Announce:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_step_end(self, state: object) -> None:
        print(f"STEP {state.step}", flush=True)  # type: ignore[attr-defined]
        if self.delay:
            time.sleep(self.delay)


def main() -> None:
    out_dir, max_steps, batch, resume, strategy = sys.argv[1:6]
    delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    torch.manual_seed(0)
    model = tiny.TinyLM(dropout=float(os.environ.get("TINY_DROPOUT", "0.1")))
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    source = tiny.ListSource(
        tiny.make_tokens(),
        batch_size=int(batch),
        context=8,
        rank=rank,
        world_size=world,
        ignore_every=3,
    )
    config = TrainConfig(
        out_dir=out_dir,
        max_steps=int(max_steps),
        checkpoint_every=1,
        keep_last=2,
        progress="none",
        peak_flops=1e12,
        resume=resume if resume != "-" else "",
        strategy=strategy,  # type: ignore[arg-type]
        time_budget_s=float(os.environ.get("TINY_BUDGET", "0")),
        optim={"lr": 1e-2, "min_lr": 1e-3},  # type: ignore[arg-type]
        schedule={"warmup_steps": 2},  # type: ignore[arg-type]
    )
    data = Ragged(source) if os.environ.get("TINY_RAGGED") == "1" and rank == 1 else source
    trainer = Trainer(model=model, train_data=data, config=config, callbacks=[Announce(delay)])
    trainer.fit()
    if trainer.dist.is_main:
        torch.save(
            {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()},
            Path(out_dir) / "final.pt",
        )
    if torch.distributed.is_initialized():
        # Every rank done (rank 0 saves above) before any tears the group down: once, on a
        # loaded machine, rank 1 aborted in gloo ("terminate called without an active
        # exception") tearing down while rank 0 was still saving.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
