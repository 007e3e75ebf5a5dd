"""lego.eval.tasks: the shipped offline tasks are what the generator writes, hold held-out
problems with right answers, read malformed rows as DataErrors, and load in lm-eval."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lego.data.tasks import task_split
from lego.eval.tasks import OFFLINE_TASKS, TAG, task_files, tasks_dir, write_tasks
from lego.eval.tasks.jsonl_dataset import read_rows
from lego.protocols import DataError


def rows(name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tasks_dir() / name).read_text("utf-8").splitlines()]


def test_the_shipped_files_are_what_the_generator_writes() -> None:
    for name, text in task_files().items():
        shipped = (tasks_dir() / name).read_text(encoding="utf-8")
        if name == "stdlib_ppl.jsonl" and sys.version_info[:2] != (3, 11):
            continue  # Python's documentation topics change between versions
        assert shipped == text, f"{name}: run lego.eval.tasks.write_tasks(tasks_dir())"
    yamls = sorted(p.stem for p in tasks_dir().glob("*.yaml"))
    assert yamls == sorted(OFFLINE_TASKS)


def test_a_copy_is_a_self_contained_include_folder(tmp_path: Path) -> None:
    written = write_tasks(tmp_path)
    names = {p.name for p in written}
    assert "jsonl_dataset.py" in names
    assert "lego_arithmetic_mc.yaml" in names
    assert (tmp_path / "arithmetic_mc.jsonl").read_bytes() == (
        tasks_dir() / "arithmetic_mc.jsonl"
    ).read_bytes()


def test_multiple_choice_rows_are_held_out_with_one_right_answer() -> None:
    mc = rows("arithmetic_mc.jsonl")
    assert len(mc) == 100
    assert len({r["prompt"] for r in mc}) == 100
    positions = set()
    for row in mc:
        prompt, choices, answer = str(row["prompt"]), row["choices"], row["answer"]
        assert isinstance(choices, list)
        assert isinstance(answer, int)
        assert task_split("arithmetic", prompt, test_fraction=0.2) == "test"
        assert len(choices) == 4
        assert len(set(choices)) == 4
        assert int(choices[answer]) == eval(prompt.rstrip("="))
        positions.add(answer)
    assert positions == {0, 1, 2, 3}  # the right answer is not always in one place


@pytest.mark.parametrize(
    ("name", "task"), [("arithmetic_exact.jsonl", "arithmetic"), ("sort_exact.jsonl", "sort")]
)
def test_exact_answer_rows_are_held_out_and_right(name: str, task: str) -> None:
    exact = rows(name)
    assert len(exact) == 50
    for row in exact:
        prompt, answer = str(row["prompt"]), str(row["answer"])
        assert task_split(task, prompt, test_fraction=0.2) == "test"
        if task == "sort":
            digits = prompt.removeprefix("sort ").removesuffix(" =").split()
            assert answer.split() == sorted(digits)
        else:
            assert int(answer) == eval(prompt.rstrip("="))


def test_perplexity_rows_come_from_the_python_documentation() -> None:
    ppl = rows("stdlib_ppl.jsonl")
    assert len(ppl) == 24
    assert all(isinstance(r["text"], str) and 100 < len(str(r["text"])) <= 1200 for r in ppl)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="\n', "not valid JSON"),
        ('{"prompt": "1+1=", "answer": "2"}\n[1, 2]\n', "a JSON list, not an object"),
        ('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n', "no field 'answer'"),
    ],
)
def test_a_malformed_row_names_file_and_line(tmp_path: Path, line: str, words: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(line, encoding="utf-8")
    with pytest.raises(DataError, match=words) as caught:
        read_rows(data, fields=["prompt", "answer"])
    assert caught.value.line == 2
    assert caught.value.path == str(data)
    assert "line 2" in str(caught.value)
    assert str(data) in str(caught.value)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        read_rows(tmp_path / "empty.jsonl")


def test_lm_eval_finds_and_builds_the_tasks_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    assert set(OFFLINE_TASKS) <= set(manager.all_tasks)
    assert TAG in manager.all_tags
    tasks = manager.load(TAG)["tasks"]  # the tag expands to every offline task
    assert sorted(tasks) == sorted(OFFLINE_TASKS)
    mc = tasks["lego_arithmetic_mc"]
    docs = list(mc.test_docs())
    assert len(docs) == 100
    first = docs[0]
    assert mc.doc_to_text(first) == first["prompt"]
    assert mc.doc_to_choice(first) == first["choices"]
    assert tasks["lego_sort_exact"].config.generation_kwargs["until"] == ["\n", "<|endoftext|>"]
    assert len(list(tasks["lego_stdlib_ppl"].test_docs())) == 24
