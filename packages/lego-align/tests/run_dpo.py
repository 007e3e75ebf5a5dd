"""Subprocess entry for the kill / torchrun tests: DPO on the character kit's WideLM.

python run_dpo.py OUT_DIR MAX_STEPS BATCH RESUME STRATEGY REFERENCE [DELAY]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest

from lego.align import DPOConfig, DPOTrainer
from lego.train import TrainConfig


class Announce:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_step_end(self, state: object) -> None:
        print(f"STEP {state.step}", flush=True)  # type: ignore[attr-defined]
        if self.delay:
            time.sleep(self.delay)


def rows(n: int) -> list[dict[str, str]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        k, j = (int(torch.randint(1, 4, (1,), generator=gen)) for _ in range(2))
        out.append({"prompt": "pick" + "!" * (k - 1), "chosen": "a" * k, "rejected": "b" * j})
    return out


def main() -> None:
    out_dir, max_steps, batch, resume, strategy, reference = sys.argv[1:7]
    delay = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    torch.manual_seed(0)
    trainer = DPOTrainer(
        model=conftest.WideLM(),
        tokenizer=conftest.CharTokenizer(),
        train_data=rows(32),
        config=DPOConfig(
            batch_size=int(batch),
            max_length=48,
            beta=0.5,
            reference=reference,  # type: ignore[arg-type]
        ),
        train=TrainConfig(
            out_dir=out_dir,
            max_steps=int(max_steps),
            checkpoint_every=1,
            keep_last=2,
            progress="none",
            peak_flops=1e12,
            resume=resume if resume != "-" else "",
            strategy=strategy,  # type: ignore[arg-type]
            optim={"lr": 1e-2, "min_lr": 1e-3},  # type: ignore[arg-type]
            schedule={"warmup_steps": 2},  # type: ignore[arg-type]
        ),
        callbacks=[Announce(delay)],  # type: ignore[list-item]
    )
    reference = trainer.objective.reference
    if reference is not None:
        print(f"REFERENCE {type(reference).__name__}", flush=True)
    trainer.fit()
    model = trainer.trainer.unwrapped
    if strategy == "fsdp":  # every rank takes part in gathering the full weights
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = dict(get_model_state_dict(model, options=options))
    else:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if trainer.trainer.dist.is_main:
        torch.save(state, Path(out_dir) / "final.pt")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears gloo down while another still saves
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
