"""Inputs of ``bench_eval.py``: the model directory, the multiple-choice requests, the text.

Kept apart from the timing code so that the benchmark reads as "build once, check equal,
time side by side". Everything is deterministic (seeded) and offline: GPT-2's
``tokenizer.json`` and tiny shakespeare come from ``../shared/data/`` beside the checkout;
without tiny shakespeare the multiple-choice passages come from the embedded python-stdlib
corpus and the perplexity row is skipped.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from lego.arch import build, to_hf

__all__ = [
    "DATA",
    "SHAKESPEARE",
    "TOKENIZER",
    "mc_requests",
    "passage_words",
    "write_gpt2",
]

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
TOKENIZER = DATA / "hf_gpt2" / "tokenizer.json"
SHAKESPEARE = DATA / "input.txt"


def write_gpt2(folder: Path) -> None:
    """GPT-2 124M with random weights (seed 0) and GPT-2's tokenizer, as an HF directory."""
    torch.manual_seed(0)
    model = build("gpt2")
    to_hf(model, folder)
    del model
    shutil.copyfile(TOKENIZER, folder / "tokenizer.json")
    # the same tokenizer.json, as is, for transformers and lm-eval's HFLM
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1024,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def passage_words() -> tuple[list[str], str]:
    """The words the multiple-choice passages are cut from, and where they come from."""
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8").split(), "tiny shakespeare"
    from benchmarks._corpus import python_stdlib

    words = " ".join(python_stdlib().held_out[:200]).split()
    return words, "python-stdlib corpus (held-out documents)"


def mc_requests(
    words: list[str],
    count_tokens: Callable[[str], int],
    *,
    questions: int,
    choices: int = 4,
    context_tokens: tuple[int, int] = (60, 200),
    choice_words: tuple[int, int] = (3, 12),
    seed: int = 0,
) -> list[tuple[str, str]]:
    """``questions x choices`` ``(context, continuation)`` pairs, as a harness task asks them.

    Each question is a passage of whole words whose token count is drawn uniformly from
    ``context_tokens``; its choices are the words that follow it (the right answer) and
    ``choices - 1`` runs of words from elsewhere, each ``choice_words`` words long, written
    with a leading space (lm-eval's ``target_delimiter``). All choices of a question share
    its context, as in HellaSwag, ARC or MMLU.
    """
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    longest = context_tokens[1] + choice_words[1] + 1
    for _ in range(questions):
        target = rng.randint(*context_tokens)
        start = rng.randrange(len(words) - 4 * longest)
        end = start + max(1, target * 3 // 4)
        while count_tokens(" ".join(words[start:end])) < target:
            end += 1
        while end - start > 1 and count_tokens(" ".join(words[start:end])) > target:
            end -= 1
        context = " ".join(words[start:end])
        n = rng.randint(*choice_words)
        answers = [" " + " ".join(words[end : end + n])]
        while len(answers) < choices:
            n = rng.randint(*choice_words)
            other = rng.randrange(len(words) - n)
            answers.append(" " + " ".join(words[other : other + n]))
        rng.shuffle(answers)
        pairs += [(context, answer) for answer in answers]
    return pairs
