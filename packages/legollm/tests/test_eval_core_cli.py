"""``legollm eval core``: task YAML files, folders, the offline tasks, and bad task files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lego.arch
from lego.recipes.cli import main
from lego.tokenize import RegexBPETokenizer

SPECIALS = {"<|endoftext|>": 256}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama-shaped model with a byte-level tokenizer."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("core-model") / "model"
    model = lego.arch.build(
        "llama-tiny", vocab_size=len(SPECIALS) + 256, context_length=128, rope_scaling=None
    )
    model.save_pretrained(folder)
    RegexBPETokenizer("gpt4", special_tokens=SPECIALS, name="bytes").save(
        folder / "lego-tokenizer.json"
    )
    for extra in folder.glob("*.vocab"):
        extra.unlink()
    return folder


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "core", *args])
    code = exit_.value.code
    assert isinstance(code, int)
    return code


def write_tasks(folder: Path) -> Path:
    mc = [
        {"query": "1+1=", "choices": ["2", "3"], "gold": 0},
        {"query": "2+2=", "choices": ["5", "4", "3"], "gold": 1},
    ]
    lm = [{"context": "abc", "continuation": "d"}, {"context": "xy", "continuation": "z"}]
    data = folder / "data"
    data.mkdir()
    (data / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (data / "lm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lm))
    yaml = folder / "core.yaml"
    yaml.write_text(
        "tasks:\n"
        "  - {name: sums, path: data/mc.jsonl, task_type: multiple_choice}\n"
        "  - name: letters\n"
        "    path: data/lm.jsonl\n"
        "    task_type: language_modeling\n"
        "    continuation_delimiter: ''\n"
    )
    return yaml


def test_a_task_file_is_scored_printed_and_written(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    yaml = write_tasks(tmp_path)
    out = tmp_path / "results"
    code = run("--model", str(model_dir), "--tasks", str(yaml), "--out", str(out),
               "--device", "cpu", "--prefix-token", "<|endoftext|>")  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    data = json.loads((out / "core.json").read_text())
    assert [t["name"] for t in data["tasks"]] == ["sums", "letters"]
    sums = data["tasks"][0]
    assert sums["num_examples"] == 2
    assert sums["random_baseline"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert data["core"] == pytest.approx(sum(t["centered"] for t in data["tasks"]) / 2)
    assert "| **CORE** |" in printed.out
    assert (out / "core.md").read_text().startswith("CORE tasks on")

    # a folder of task files gives the same tasks
    assert run("--model", str(model_dir), "--tasks", str(tmp_path), "--device", "cpu",
               "--prefix-token", "<|endoftext|>") == 0  # fmt: skip
    assert "| sums | multiple_choice | 2 |" in capsys.readouterr().out


def test_the_offline_tasks_run(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--model", str(model_dir), "--tasks", "lego_offline", "--device", "cpu") == 0
    printed = capsys.readouterr().out
    for name in ("| lego_arithmetic_mc | multiple_choice | 100 |", "| lego_arithmetic_exact |",
                 "| lego_sort_exact | language_modeling | 50 |"):  # fmt: skip
        assert name in printed


@pytest.mark.parametrize(
    ("yaml", "phrase"),
    [
        ("tasks:\n  - {name: a, path: data/mc.jsonl, task_typ: multiple_choice}\n", "task_typ"),
        ("tasks:\n  - {name: a, path: data/none.jsonl, task_type: schema}\n", "none.jsonl"),
        ("task:\n  - {name: a}\n", "unknown key 'task'"),
        ("tasks:\n  - {name: a, path: data/mc.jsonl, task_type: schema}\n", "line 1"),
        ("tasks: [\n", "not valid YAML"),
    ],
)
def test_bad_task_files_are_one_message_before_the_model_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml: str, phrase: str
) -> None:
    write_tasks(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml)
    # the model does not exist: the task error must come first
    assert run("--model", str(tmp_path / "absent"), "--tasks", str(bad)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert phrase in err


def test_a_malformed_row_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    yaml = write_tasks(tmp_path)
    with (tmp_path / "data" / "mc.jsonl").open("a") as rows:
        rows.write('{"query": "3+3=", "choices": ["6"], "gold": 0}\n')
    assert run("--model", str(tmp_path / "absent"), "--tasks", str(yaml)) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data' / 'mc.jsonl'}, line 3" in err
    assert "a list of at least two strings" in err
    assert run("--model", str(tmp_path / "absent"), "--tasks", str(tmp_path / "no")) == 2
    assert "no such file or folder" in capsys.readouterr().err
