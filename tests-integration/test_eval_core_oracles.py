"""Oracle tests: lego.eval.core on a lego-arch model against a one-example-at-a-time scorer.

A tiny random ``LlamaForCausalLM`` (tests-integration/tiny_hf.py) is loaded through
``lego.arch.from_hf``. The reference scores each example the way nanochat's ``core_eval``
does, written again here: every prompt of the example in its own forward pass of the
transformers model (no batching, no padding), the continuation found from the common token
prefix (multiple choice) or suffix (schema) or the prompt without it (language modelling),
lowest mean loss or all-greedy. Our batched scorer must give the same verdict for every
example, at batch sizes 1, 3 and 8, with few-shot prompts too.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
import torch
from tiny_hf import tiny_llama
from transformers import PreTrainedModel

from lego.arch import DecoderLM, from_hf
from lego.eval import CoreTask, evaluate_core, load_examples, render_prompts

BOS = 0


class Chars:
    """Printable ASCII as ids 1..95 (the tiny model's vocabulary is 97), BOS = 0."""

    vocab_size = 97
    special_tokens: ClassVar[dict[str, int]] = {"<bos>": BOS}

    def encode(self, text: str) -> list[int]:
        return [min(max(ord(c) - 31, 1), 95) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i + 31) for i in ids)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[DecoderLM, PreTrainedModel]:
    torch.manual_seed(8)
    theirs = tiny_llama(bos_token_id=BOS, eos_token_id=BOS)
    theirs.train(False)
    folder = tmp_path_factory.mktemp("llama")
    theirs.save_pretrained(folder)
    return from_hf(folder), theirs


def _words(gen: torch.Generator, n: int) -> str:
    return (
        "".join("abcde "[int(i)] for i in torch.randint(0, 6, (n,), generator=gen)).strip() or "a"
    )


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> list[CoreTask]:
    folder = tmp_path_factory.mktemp("core")
    gen = torch.Generator().manual_seed(4)
    mc = [
        {
            "query": _words(gen, 6 + i % 5),
            "choices": [_words(gen, 2 + j) for j in range(3)],
            "gold": i % 3,
        }
        for i in range(24)
    ]
    schema = [
        {
            "context_options": [_words(gen, 3 + j) for j in range(2)],
            "continuation": _words(gen, 4),
            "gold": i % 2,
        }
        for i in range(16)
    ]
    lm = [{"context": _words(gen, 8), "continuation": _words(gen, 1)} for i in range(16)]
    made = []
    for name, rows, task_type, shots in (
        ("mc", mc, "multiple_choice", 2),
        ("schema", schema, "schema", 1),
        ("lm", lm, "language_modeling", 0),
    ):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        made.append(
            CoreTask(name=name, path=str(path), task_type=task_type, num_fewshot=shots)  # type: ignore[arg-type]
        )
    return made


def _reference(model: PreTrainedModel, task: CoreTask) -> list[bool]:
    """nanochat's per-example scoring, one unpadded forward pass per prompt."""
    import random

    rows = load_examples(task.path, task.task_type)
    verdicts = []
    for index, item in enumerate(rows):
        shots: list[dict[str, Any]] = []
        if task.num_fewshot:
            others = [i for i in range(len(rows)) if i != index]
            shots = [rows[i] for i in random.Random(1234 + index).sample(others, task.num_fewshot)]
        prompts = render_prompts(item, task.task_type, task.continuation_delimiter, shots)
        tokens = [[BOS, *Chars().encode(p)] for p in prompts]
        if task.task_type == "multiple_choice":
            start = 0
            while all(len(t) > start + 1 for t in tokens) and len({t[start] for t in tokens}) == 1:
                start += 1
            spans = [(t, start, len(t)) for t in tokens]
        elif task.task_type == "schema":
            suffix = 0
            while (
                all(len(t) > suffix + 1 for t in tokens)
                and len({t[-1 - suffix] for t in tokens}) == 1
            ):
                suffix += 1
            spans = [(t, len(t) - suffix, len(t)) for t in tokens]
        else:
            without, with_ = tokens
            assert with_[: len(without)] == without
            spans = [(with_, len(without), len(with_))]
        losses, greedy = [], []
        for ids, start, end in spans:
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].double()  # (T, V)
            targets = torch.tensor(ids[start:end])
            logprobs = torch.log_softmax(logits[start - 1 : end - 1], -1)
            losses.append(-float(logprobs.gather(1, targets[:, None]).mean()))
            greedy.append(bool((logits[start - 1 : end - 1].argmax(-1) == targets).all()))
        if task.task_type == "language_modeling":
            verdicts.append(greedy[0])
        else:
            verdicts.append(losses.index(min(losses)) == item["gold"])
    return verdicts


def test_core_equals_the_one_by_one_reference(
    pair: tuple[DecoderLM, PreTrainedModel], tasks: list[CoreTask]
) -> None:
    ours, theirs = pair
    expected = [_reference(theirs, task) for task in tasks]
    for batch_size in (1, 3, 8):
        result = evaluate_core(ours, Chars(), tasks, bos_id=BOS, batch_size=batch_size)
        assert [list(t.correct) for t in result.tasks] == expected
    # a random model: the verdicts are mixed, so a wrong span or rule would show
    assert any(not all(v) and any(v) for v in expected[:2])
