"""lego-eval's lm-evaluation-harness model against lm-eval's own ``HFLM`` on the same weights.

A tiny random transformers Llama (tiny_hf) with a character-level ``tokenizer.json`` is saved
as a HuggingFace directory; ``HFLM`` reads it with transformers, and ``LegoLM`` runs the same
weights through lego-arch's ``from_hf`` with a lego tokenizer that gives the same ids. On the
brick's offline tasks:

- ``loglikelihood`` equals ``HFLM``'s for every request (1e-5), with the same greedy flags,
  including an empty context, a context ending in spaces and one longer than the model's
  context (cut from the left);
- ``loglikelihood_rolling`` (texts of many windows) equals ``HFLM``'s;
- the task accuracy through ``simple_evaluate`` is identical, document by document, and our
  results do not change with batch size 1, 3 and 8;
- greedy ``generate_until`` writes the same answers as ``HFLM``;
- all four offline tasks run through ``run_harness`` with every socket connection refused.

Everything runs offline, with the Hugging Face caches under the test's temporary folder.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from tiny_hf import tiny_llama
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

import lego.arch
from lego.eval.harness import LegoLM, run_harness
from lego.eval.tasks import OFFLINE_TASKS, tasks_dir
from lego.eval.tasks.jsonl_dataset import read_rows

SPECIALS = {"<|im_start|>": 256, "<|im_end|>": 257, "<|endoftext|>": 258}
CONTEXT = 96


class CharTokenizer:
    """The lego side of the HF tokenizer below: one id per Latin-1 character."""

    vocab_size = 259
    special_tokens = SPECIALS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("latin-1"))

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids if i < 256)


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "HF_HOME": str(home),
            "HF_DATASETS_CACHE": str(home / "datasets"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_llama")
    characters = Tokenizer(models.BPE(vocab={chr(i): i for i in range(256)}, merges=[]))
    characters.decoder = decoders.Fuse()
    characters.add_special_tokens(list(SPECIALS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=characters, eos_token="<|endoftext|>")
    assert tokenizer("12+7=").input_ids == CharTokenizer().encode("12+7=")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=259, max_position_embeddings=CONTEXT, eos_token_id=258)
    with torch.no_grad():  # weights large enough that the choices get distinct scores
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, 0.3 if "embed" in name else 0.15)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hflm(model_dir: Path) -> Any:
    return HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def lego_model(model_dir: Path) -> Any:
    model = lego.arch.from_hf(model_dir)
    assert model.config.context_length == CONTEXT
    return model.eval()


@pytest.fixture(scope="module")
def manager() -> Any:
    return TaskManager(include_path=str(tasks_dir()), include_defaults=False)


def requests(kind: str, arguments: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [
        Instance(request_type=kind, doc={}, arguments=args, idx=i)
        for i, args in enumerate(arguments)
    ]


def test_loglikelihood_equals_hflm(hflm: Any, lego_model: Any) -> None:
    rows = read_rows("arithmetic_mc.jsonl")[:15]
    pairs = [(row["prompt"], choice) for row in rows for choice in row["choices"]]
    pairs += [
        ("", "12+7=19"),  # empty context: the end-of-text id goes first
        ("The answer is ", "19"),  # trailing spaces move to the continuation
        ("1+1=2 " * 30 + "12+7=", "19"),  # longer than the context: cut from the left
        ("x", "a continuation of several tokens"),
    ]
    theirs = hflm.loglikelihood(requests("loglikelihood", pairs))
    runs = {
        b: LegoLM(lego_model, CharTokenizer(), batch_size=b).loglikelihood(
            requests("loglikelihood", pairs)
        )
        for b in (1, 3, 8)
    }
    for ours in runs.values():
        for (logprob, greedy), (expected, expected_greedy) in zip(ours, theirs, strict=True):
            assert logprob == pytest.approx(expected, abs=1e-5)
            assert greedy == expected_greedy
    for b in (3, 8):
        for (a, flag_a), (c, flag_c) in zip(runs[1], runs[b], strict=True):
            assert a == pytest.approx(c, rel=1e-6, abs=1e-6)
            assert flag_a == flag_c
    # the scores really differ between the choices: not a comparison of constants
    assert len({round(lp, 3) for lp, _ in theirs[:4]}) == 4


def test_loglikelihood_rolling_equals_hflm(hflm: Any, lego_model: Any) -> None:
    texts = [(row["text"],) for row in read_rows("stdlib_ppl.jsonl")[:3]]
    assert all(len(text) > 4 * CONTEXT for (text,) in texts)  # many windows each
    theirs = hflm.loglikelihood_rolling(requests("loglikelihood_rolling", texts))
    for b in (1, 3, 8):
        ours = LegoLM(lego_model, CharTokenizer(), batch_size=b).loglikelihood_rolling(
            requests("loglikelihood_rolling", texts)
        )
        assert ours == pytest.approx(theirs, rel=1e-6)


def evaluate(model: Any, manager: Any, task: str, limit: int) -> dict[str, Any]:
    results = simple_evaluate(
        model=model,
        tasks=[task],
        task_manager=manager,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
    )
    assert results is not None
    return {
        "results": results["results"][task],
        "samples": sorted(results["samples"][task], key=lambda s: s["doc_id"]),
    }


def test_task_accuracy_equals_hflm_at_every_batch_size(
    hflm: Any, lego_model: Any, manager: Any
) -> None:
    theirs = evaluate(hflm, manager, "lego_arithmetic_mc", limit=40)
    for b in (1, 3, 8):
        ours = evaluate(
            LegoLM(lego_model, CharTokenizer(), batch_size=b), manager, "lego_arithmetic_mc", 40
        )
        assert ours["results"]["acc,none"] == theirs["results"]["acc,none"]
        assert ours["results"]["acc_norm,none"] == theirs["results"]["acc_norm,none"]
        assert len(ours["samples"]) == 40
        for mine, other in zip(ours["samples"], theirs["samples"], strict=True):
            assert mine["acc"] == other["acc"]
            scores = [float(r[0][0]) for r in mine["resps"]]
            expected = [float(r[0][0]) for r in other["resps"]]
            assert scores == pytest.approx(expected, abs=1e-5)


def test_generate_until_equals_hflm(hflm: Any, lego_model: Any, manager: Any) -> None:
    theirs = evaluate(hflm, manager, "lego_arithmetic_exact", limit=12)
    ours = evaluate(
        LegoLM(lego_model, CharTokenizer(), batch_size=5), manager, "lego_arithmetic_exact", 12
    )
    assert [s["resps"] for s in ours["samples"]] == [s["resps"] for s in theirs["samples"]]
    assert ours["results"]["exact_match,none"] == theirs["results"]["exact_match,none"]
    assert any(s["resps"][0][0] for s in ours["samples"])  # something was generated


def test_the_offline_tasks_need_no_network(
    lego_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    results = run_harness(
        lego_model,
        CharTokenizer(),
        tasks=["lego_offline"],
        limit=4,
        batch_size=4,
        bootstrap_iters=0,
    )
    assert sorted(results["results"]) == sorted(OFFLINE_TASKS)
    assert 0.0 <= results["results"]["lego_arithmetic_mc"]["acc,none"] <= 1.0
    assert results["results"]["lego_stdlib_ppl"]["bits_per_byte,none"] > 0.0
