"""lm-evaluation-harness against lego-serve: ``lm_eval --model local-completions`` with
``tokenizer_backend=remote`` runs a local multiple-choice task through the server and gets
the same accuracy, and the same log-likelihood for every choice, as lm-eval's in-process
``hf`` model on the same weights.

The model is a tiny random transformers Llama saved as a HuggingFace directory (with a
character-level ``tokenizer.json``); the server loads it with lego-arch's ``from_hf`` and
encodes with a lego tokenizer that gives the same ids. Both lm-eval runs are the real
command line, in subprocesses, offline, with every cache under the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import lego.arch
from lego.serve import Engine, create_app

SPECIALS = {"<|im_start|>": 256, "<|im_end|>": 257, "<|endoftext|>": 258}
WAIT = 600.0  # seconds: a hang guard, never a measured time
TASK = "lego_serve_mc"


class CharTokenizer:
    """The lego side of the HF tokenizer below: one id per Latin-1 character."""

    vocab_size = 259
    special_tokens = SPECIALS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("latin-1"))

    def decode(self, ids: Sequence[int]) -> str:
        names = {i: name for name, i in SPECIALS.items()}
        return "".join(names[i] if i >= 256 else chr(i) for i in ids)


def write_model(folder: Path) -> None:
    """A tiny random Llama and a character-level tokenizer, as a HuggingFace directory."""
    characters = Tokenizer(models.BPE(vocab={chr(i): i for i in range(256)}, merges=[]))
    characters.decoder = decoders.Fuse()
    characters.add_special_tokens(list(SPECIALS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=characters, eos_token="<|endoftext|>")
    assert tokenizer("Answer: red").input_ids == CharTokenizer().encode("Answer: red")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=259,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=258,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # weights large enough that the choices get distinct scores
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, 0.3 if "embed" in name else 0.15)
    model.save_pretrained(folder)


def write_task(folder: Path) -> None:
    """A multiple-choice task: a YAML file and its local JSONL data."""
    rng = random.Random(0)
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]
    rows = [
        {
            "question": f"Question {i}: which word comes to mind?",
            "choices": rng.sample(words, 4),
            "answer": rng.randrange(4),
        }
        for i in range(20)
    ]
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / f"{TASK}.yaml").write_text(
        f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}} Answer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""",
        encoding="utf-8",
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_eval")
    out = {name: root / name for name in ("model", "tasks", "results", "home")}
    for folder in out.values():
        folder.mkdir()
    write_model(out["model"])
    write_task(out["tasks"])
    return out


@pytest.fixture(scope="module")
def base_url(folders: dict[str, Path]) -> Iterator[str]:
    model = lego.arch.from_hf(folders["model"])
    engine = Engine(model=model, tokenizer=CharTokenizer(), max_batch=4, eos_token_ids=[258])
    engine.start()
    app = create_app(engine, model_name="tiny", chat_template="chatml")
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(WAIT)
        engine.close()


def lm_eval(folders: dict[str, Path], name: str, *args: str) -> dict[str, Any]:
    """Run the ``lm_eval`` command; return its results and its per-document samples."""
    output = folders["results"] / name
    home = folders["home"]
    env = {
        **os.environ,
        "HF_HOME": str(home),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OPENAI_API_KEY": "unused",
    }
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        *args,
        "--tasks",
        TASK,
        "--include_path",
        str(folders["tasks"]),
        "--output_path",
        str(output),
        "--log_samples",
    ]
    done = subprocess.run(
        command, env=env, cwd=home, capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (results,) = output.rglob("results_*.json")
    (samples,) = output.rglob(f"samples_{TASK}_*.jsonl")
    lines = samples.read_text(encoding="utf-8").splitlines()
    return {
        "results": json.loads(results.read_text(encoding="utf-8"))["results"][TASK],
        "samples": sorted((json.loads(line) for line in lines), key=lambda s: s["doc_id"]),
    }


def test_local_completions_equals_the_in_process_hf_model(
    folders: dict[str, Path], base_url: str
) -> None:
    served = lm_eval(
        folders,
        "served",
        "--model",
        "local-completions",
        "--model_args",
        f"model=tiny,base_url={base_url}/v1/completions,tokenizer_backend=remote,num_concurrent=2",
        "--batch_size",
        "3",
    )
    local = lm_eval(
        folders,
        "hf",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={folders['model']},dtype=float32",
        "--device",
        "cpu",
        "--batch_size",
        "4",
    )
    assert served["results"]["acc,none"] == local["results"]["acc,none"]
    assert len(served["samples"]) == len(local["samples"]) == 20
    for ours, theirs in zip(served["samples"], local["samples"], strict=True):
        assert ours["acc"] == theirs["acc"]
        scores = [float(r[0][0]) for r in ours["resps"]]
        expected = [float(r[0][0]) for r in theirs["resps"]]
        assert scores == pytest.approx(expected, abs=1e-3)
        assert [r[0][1] for r in ours["resps"]] == [r[0][1] for r in theirs["resps"]]
    # the choices really differ: the comparison is not between constant scores
    assert len({round(float(r[0][0]), 3) for r in served["samples"][0]["resps"]}) == 4
