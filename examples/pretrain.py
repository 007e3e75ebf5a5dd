"""Pretrain a GPT from scratch with the library API: tokenizer, token files, model, Trainer.

What ``legollm pipeline`` does from a YAML file, written out brick by brick:

1. lego-tokenize trains a GPT-4-pattern BPE on part of the embedded ``python-stdlib`` corpus;
2. lego-data tokenizes the corpus into ``train.bin`` / ``val.bin`` and batches it
   (``TokenLoader``, a resumable ``BatchSource``);
3. lego-arch builds a small GPT-2-style ``DecoderLM`` whose vocabulary is the tokenizer's;
4. lego-train's ``Trainer`` runs AdamW with warmup and cosine decay, evaluates, and writes
   checkpoints (run it twice: the second run resumes from the last checkpoint);
5. lego-generate continues a prompt with the trained model.

    python examples/pretrain.py [--quick] [--out runs/pretrain-example] [--steps 300]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from lego.arch import build
from lego.data import TokenDataset, TokenLoader, get_corpus
from lego.data.prepare import prepare
from lego.generate import generate
from lego.tokenize import RegexBPETokenizer
from lego.train import TrainConfig, Trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, a few steps")
    parser.add_argument("--out", type=Path, help="run directory (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    steps = 6 if args.quick else args.steps
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = args.out or work / "run"
        # 1. A tokenizer trained on the first documents of the embedded corpus.
        documents = list(get_corpus("python-stdlib").iter_documents())[: 60 if args.quick else 400]
        tokenizer = RegexBPETokenizer("gpt4")
        tokenizer.train(documents, 512 if args.quick else 2048, special_tokens=["<|endoftext|>"])

        # 2. Token files (each document followed by <|endoftext|>) and a batch source: any
        #    list (or re-iterable) of documents is a corpus for prepare().
        meta = prepare(documents, tokenizer, work / "data", val_fraction=0.1, workers=1)
        print(f"{meta.splits['train'].tokens:,} training tokens, vocab {tokenizer.vocab_size}")
        context = 64
        train = TokenLoader(
            TokenDataset(work / "data", split="train", context_length=context),
            batch_size=8,
            shuffle=True,
            seed=0,
            repeat=True,
        )
        val_data = TokenDataset(work / "data", split="val", context_length=context)
        val = TokenLoader(val_data, batch_size=8, shuffle=False, repeat=False)

        # 3. A GPT-2-style model sized for a CPU.
        model = build(
            "gpt2-tiny",
            vocab_size=tokenizer.vocab_size,
            context_length=context,
            d_model=64 if args.quick else 128,
            n_layers=2 if args.quick else 4,
            n_heads=4,
            d_ff=256 if args.quick else 512,
        )

        # 4. Training: AdamW, warmup + cosine, evaluation and checkpoints.
        config = TrainConfig.from_dict(
            {
                "out_dir": str(out),
                "max_steps": steps,
                "eval_every": max(1, steps // 3),
                "eval_batches": 4,
                "checkpoint_every": max(1, steps // 2),
                "log_every": max(1, steps // 6),
                "progress": "plain",
                "resume": "latest",
                "optim": {"lr": 2e-3, "min_lr": 2e-4, "weight_decay": 0.1},
                "schedule": {"name": "cosine", "warmup_steps": max(1, steps // 10)},
            }
        )
        trainer = Trainer(
            model=model, train_data=train, eval_data=val, config=config, tokenizer=tokenizer
        )
        state = trainer.fit()
        train.close()
        val.close()
        counts = np.bincount(np.asarray(val_data.tokens, dtype=np.int64))
        probs = counts[counts > 0] / counts.sum()
        unigram = float(-(probs * np.log(probs)).sum())
        val_loss = state.metrics.get("val_loss", math.nan)
        print(f"val_loss {val_loss:.3f} vs unigram entropy {unigram:.3f} (nats/token)")

        # 5. Generation with the trained model.
        prompt = torch.tensor([tokenizer.encode("def ")])
        ids = generate(model.eval(), prompt, max_new_tokens=24, top_k=20, seed=0)
        print("sample:", repr(tokenizer.decode(ids[0].tolist())))
        print(f"checkpoints in {out / 'checkpoints'}" if args.out else "(temporary run removed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
