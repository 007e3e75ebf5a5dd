"""Subprocess entry for the adapter-checkpoint tests: LoRA on a tiny lego-arch Llama.

python peft_train.py OUT_DIR MAX_STEPS RESUME [DELAY]

Trains a rank-4 all-linear LoRA (dropout 0.1, so the RNG state matters) with lego-train's
Trainer, a checkpoint every step, and writes the final adapter to OUT_DIR/final.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import lego.arch
from lego.peft import LoraConfig, apply_lora
from lego.train import TrainConfig, Trainer

VOCAB = 64
CONTEXT = 16


class Stream:
    """A BatchSource over a fixed random token stream (exact position state)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.tokens = torch.randint(0, VOCAB, (4096,), generator=generator)
        self.position = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        while True:
            start = (self.position * 2 * CONTEXT) % (len(self.tokens) - 2 * CONTEXT - 1)
            self.position += 1
            rows = [
                self.tokens[start + i * CONTEXT : start + (i + 1) * CONTEXT + 1] for i in (0, 1)
            ]
            chunk = torch.stack(rows)
            yield {"input_ids": chunk[:, :-1].clone(), "labels": chunk[:, 1:].clone()}

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


class Announce:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_save(self, state: object, path: Path) -> None:
        print(f"SAVED {state.step}", flush=True)  # type: ignore[attr-defined]
        if self.delay:
            time.sleep(self.delay)


def main() -> None:
    out_dir, max_steps, resume = sys.argv[1:4]
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    torch.manual_seed(0)
    model = lego.arch.build(
        "llama-3.2-1b",
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=64,
        vocab_size=VOCAB,
        context_length=CONTEXT,
    )
    adapted = apply_lora(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear")
    )
    adapted.base_model_name_or_path = "tiny-llama-seed-0"
    config = TrainConfig(
        out_dir=out_dir,
        max_steps=int(max_steps),
        checkpoint_every=1,
        keep_last=2,
        progress="none",
        peak_flops=1e12,
        device="cpu",
        resume=resume if resume != "-" else "",
        optim={"lr": 1e-2, "min_lr": 1e-3},  # type: ignore[arg-type]
        schedule={"warmup_steps": 1},  # type: ignore[arg-type]
    )
    trainer = Trainer(
        model=adapted, train_data=Stream(), config=config, callbacks=[Announce(delay)]
    )
    trainer.fit()
    adapted.save_adapter(Path(out_dir) / "final")


if __name__ == "__main__":
    main()
