"""Write a tiny model directory and small JSONL records for the fine-tuning examples.

Offline and deterministic: nothing is downloaded, the same files come out on every run.

- ``FOLDER/model/``: a Llama-shaped lego-arch model with random weights (2 layers, 64 wide,
  about 0.1M parameters; initialized 5x wider than the preset, so that a LoRA run, whose
  embeddings stay frozen, can still move the logits far), its byte-level tokenizer
  (``lego-tokenizer.json``: the 256 bytes plus ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>`` and ``<|pad|>``) and a ``generation_config.json`` that stops on
  ``<|im_end|>`` and ``<|endoftext|>``;
- ``FOLDER/sft.jsonl`` / ``sft-eval.jsonl``: instruction records in TRL's forms, ``messages``
  and ``prompt`` / ``completion`` (small tasks: repeat, reverse, shout a word);
  ``sft-plain.jsonl``: the same tasks as plain strings only (for ``template: none``);
- ``FOLDER/preferences.jsonl`` / ``preferences-eval.jsonl``: preference pairs, strings and
  conversational rows, where the chosen answer is a calm word and the rejected one a loud
  word, so a preference run can learn it (held-out pairs use other prompts and pairings);
  ``preferences-plain.jsonl``: strings only (for ``template: alpaca``).

Then, from the repository root::

    python examples/align/make_tiny.py runs/align-tiny
    legollm finetune --config examples/align/sft-tiny.yaml
    legollm align dpo --config examples/align/dpo-tiny.yaml
    legollm align reward --config examples/align/reward-tiny.yaml
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import torch

import lego.arch
from lego.tokenize import RegexBPETokenizer

SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258, "<|pad|>": 259}
WORDS = ["cat", "dog", "sun", "tree", "moon", "fish", "bird", "rain", "lamp", "rock", "milk"]
CALM = ["calm", "kind", "soft", "warm", "gentle", "quiet", "sweet", "mild"]
LOUD = ["LOUD", "RUDE", "HARSH", "ANGRY", "NOISY", "WILD", "SHARP", "GRIM"]
TASKS = {
    "repeat": lambda w: w,
    "reverse": lambda w: w[::-1],
    "shout": lambda w: w.upper() + "!",
}


def write_model(folder: Path) -> None:
    """The model directory: random Llama-shaped weights, the tokenizer, the stop tokens."""
    torch.manual_seed(0)
    model = lego.arch.build(
        "llama-tiny",
        vocab_size=len(SPECIALS) + 256,
        context_length=128,
        rope_scaling=None,
        initializer_range=0.1,
    )
    model.save_pretrained(folder)
    tokenizer = RegexBPETokenizer("gpt4", special_tokens=SPECIALS, name="bytes")
    tokenizer.save(folder / "lego-tokenizer.json")
    for extra in folder.glob("*.vocab"):
        extra.unlink()  # the human-readable dump is not part of the model
    stops = {"eos_token_id": [SPECIALS["<|endoftext|>"], SPECIALS["<|im_end|>"]]}
    (folder / "generation_config.json").write_text(json.dumps(stops, indent=2) + "\n")


def sft_rows(words: list[str], *, plain: bool) -> list[dict[str, Any]]:
    """One record per task and word: ``messages`` and ``prompt``/``completion`` rows."""
    rows: list[dict[str, Any]] = []
    pairs = [(task, word) for word in words for task in TASKS]
    for i, (task, word) in enumerate(pairs):
        prompt, completion = f"{task} {word}", TASKS[task](word)
        if plain:
            rows.append({"prompt": prompt + " =", "completion": " " + completion})
        elif i % 2:
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": completion},
                    ]
                }
            )
        else:
            rows.append({"prompt": prompt, "completion": completion})
    return rows


def preference_rows(n: int, seed: int, *, plain: bool) -> list[dict[str, Any]]:
    """``n`` pairs: the chosen answer a calm word, the rejected one a loud word."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        prompt = f"describe the {rng.choice(WORDS)}"
        chosen, rejected = rng.choice(CALM), rng.choice(LOUD)
        if not plain and i % 3 == 2:  # TRL's conversational form
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main(argv: list[str] | None = None) -> int:
    """Write the model and the records into the folder given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write (e.g. runs/align-tiny)")
    args = parser.parse_args(argv)
    folder: Path = args.folder
    (folder / "model").mkdir(parents=True, exist_ok=True)
    write_model(folder / "model")
    train_words, eval_words = WORDS[:8], WORDS[8:]
    write_jsonl(folder / "sft.jsonl", sft_rows(train_words, plain=False))
    write_jsonl(folder / "sft-eval.jsonl", sft_rows(eval_words, plain=False))
    write_jsonl(folder / "sft-plain.jsonl", sft_rows(train_words, plain=True))
    write_jsonl(folder / "preferences.jsonl", preference_rows(96, seed=0, plain=False))
    write_jsonl(folder / "preferences-eval.jsonl", preference_rows(32, seed=1, plain=False))
    write_jsonl(folder / "preferences-plain.jsonl", preference_rows(96, seed=0, plain=True))
    print(f"wrote {folder}/model and the records in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
