"""Estimate what a model needs before building it: parameters by part, and memory.

``lego.arch.estimate_size`` counts a preset's parameters on the meta device (nothing is
allocated, so even an 8B model is counted in a blink) and estimates the memory of its
weights, gradients, AdamW state, activations and KV cache at a batch size and sequence
length, in fp32, bf16, int8 and nf4. The same table is ``lego-arch info <preset>``.

This script answers a practical question: which of LLaMA 3.2 1B, Qwen 3 1.7B and Llama 3.1
8B can be fine-tuned (full training, AdamW) or only served, within a memory budget?

    python examples/estimate_memory.py [--quick] [--budget-gib 24] [--batch 4] [--seq-len 2048]
"""

from __future__ import annotations

import argparse

from lego.arch import estimate_size
from lego.arch.size import format_bytes, format_count

PRESETS = ("llama-3.2-1b", "qwen3-1.7b", "llama-3.1-8b")
QUICK_PRESETS = ("gpt2", "llama-3.2-1b")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small presets only")
    parser.add_argument("--budget-gib", type=float, default=24.0, help="memory budget, GiB")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    args = parser.parse_args(argv)
    budget = int(args.budget_gib * 2**30)

    for name in QUICK_PRESETS if args.quick else PRESETS:
        # Counting happens on the meta device: no weights are allocated.
        context = estimate_size(name).config.context_length
        seq_len = min(args.seq_len, context)  # GPT-2 reads at most 1024 tokens
        estimate = estimate_size(name, batch_size=args.batch, seq_len=seq_len)
        counts = estimate.parameters
        print(f"\n{name}: {format_count(counts.total)} parameters, batch {args.batch} x {seq_len}")
        print(
            f"  embeddings {format_count(counts.embeddings)}, attention "
            f"{format_count(counts.attention)}, feed-forward {format_count(counts.ffn)}, "
            f"head {format_count(counts.head)} (0 when tied to the embeddings)"
        )
        for dtype in ("fp32", "bf16", "int8", "nf4"):
            memory = estimate.for_dtype(dtype)
            training = memory.training_checkpointed  # None: no training in int8 / nf4 weights
            fits_training = training is not None and training <= budget
            fits_serving = memory.inference <= budget
            verdict = "train" if fits_training else "serve only" if fits_serving else "too big"
            print(
                f"  {dtype:>5}: weights {format_bytes(memory.weights):>10}, "
                f"serve (+KV cache) {format_bytes(memory.inference):>10}, "
                f"train with checkpointing {format_bytes(training):>10} -> {verdict} "
                f"in {args.budget_gib:g} GiB"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
