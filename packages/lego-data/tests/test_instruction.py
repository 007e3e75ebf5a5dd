from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lego.data.instruction import InstructionDataset, record_messages
from lego.data.records import Record
from lego.protocols import IGNORE_INDEX, CompatibilityError, DataError


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


ROWS = [
    {"instruction": "Add.", "input": "1 2", "output": "3"},
    {"instruction": "Greet.", "output": "Hi"},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
]


def test_mixed_records_with_chatml(tmp_path: Path, byte_tokenizer: Any) -> None:
    data = InstructionDataset(write(tmp_path / "d.jsonl", ROWS), byte_tokenizer, split="all")
    assert len(data) == 3
    assert data.lines == [1, 2, 3]
    trained = [bytes(label for label in ex.labels if 0 <= label < 256).decode() for ex in data]
    assert trained == ["3", "Hi", "A"]  # only the answers (plus <|im_end|>) are trained
    assert all(258 in ex.labels for ex in data)
    text = byte_tokenizer.decode(data[0].input_ids)
    assert text.startswith("<|im_start|>user\nAdd.\n\n1 2<|im_end|>")


def test_alpaca_template(tmp_path: Path, byte_tokenizer: Any) -> None:
    data = InstructionDataset(
        write(tmp_path / "d.jsonl", ROWS[:2]), byte_tokenizer, template="alpaca", split="all"
    )
    first = data[0]
    assert "### Input:\n1 2" in byte_tokenizer.decode(first.input_ids)
    assert [label for label in first.labels if label != IGNORE_INDEX] == [ord("3"), 256]
    with pytest.raises(DataError, match="line 3 holds a conversation") as err:
        InstructionDataset(
            write(tmp_path / "e.jsonl", ROWS), byte_tokenizer, template="alpaca", split="all"
        )
    assert err.value.line == 3


def test_split_is_deterministic_and_disjoint(tmp_path: Path, byte_tokenizer: Any) -> None:
    rows = [{"instruction": f"n{i}", "output": str(i)} for i in range(40)]
    path = write(tmp_path / "d.jsonl", rows)
    train = InstructionDataset(path, byte_tokenizer, val_fraction=0.2, seed=1)
    val = InstructionDataset(path, byte_tokenizer, split="val", val_fraction=0.2, seed=1)
    again = InstructionDataset(path, byte_tokenizer, split="val", val_fraction=0.2, seed=1)
    assert len(train) == 32
    assert len(val) == 8
    assert set(train.lines).isdisjoint(val.lines)
    assert sorted(train.lines + val.lines) == list(range(1, 41))
    assert val.lines == again.lines


def test_corrupt_line_and_missing_field(tmp_path: Path, byte_tokenizer: Any) -> None:
    bad = write(tmp_path / "bad.jsonl", [ROWS[0], '{"instruction": "x", "output": ', ROWS[1]])
    with pytest.raises(DataError, match="line 2 is not valid JSON") as err:
        InstructionDataset(bad, byte_tokenizer)
    assert err.value.path == str(bad)
    assert err.value.line == 2
    missing = write(tmp_path / "m.jsonl", [ROWS[0], {"instruction": "x"}])
    with pytest.raises(DataError, match="lacks the field 'output'") as err:
        InstructionDataset(missing, byte_tokenizer)
    assert err.value.key == "output"
    assert err.value.line == 2
    neither = write(tmp_path / "n.jsonl", [{"question": "x"}])
    with pytest.raises(DataError, match="neither a conversation") as err:
        InstructionDataset(neither, byte_tokenizer)
    assert err.value.line == 1
    broken = write(tmp_path / "b.jsonl", [{"messages": [{"role": "user"}]}])
    with pytest.raises(DataError, match="line 1: message 0 lacks the key 'content'") as err:
        InstructionDataset(broken, byte_tokenizer)
    assert err.value.line == 1
    assert err.value.path == str(broken)


def test_untrained_examples_are_skipped(byte_tokenizer: Any) -> None:
    rows = [{"instruction": "x" * 50, "output": "y"}, {"instruction": "s", "output": "t"}]
    data = InstructionDataset(rows, byte_tokenizer, max_length=30, split="all")
    assert data.skipped == [1]
    assert data.lines == [2]
    with pytest.raises(DataError, match="no example"):
        InstructionDataset(rows[:1], byte_tokenizer, max_length=30, split="all")


def test_tokenizer_without_the_specials(byte_tokenizer: Any) -> None:
    class Plain(type(byte_tokenizer)):  # type: ignore[misc]
        @property
        def special_tokens(self) -> dict[str, int]:
            return {"<|endoftext|>": 256}

    with pytest.raises(CompatibilityError, match="'<\\|im_start\\|>', which the chatml"):
        InstructionDataset(ROWS, Plain(), split="all")


def test_system_prompt() -> None:
    record = Record(data=ROWS[2], path=None, line=1)
    messages = record_messages(record, system_prompt="Be brief.")
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert len(messages) == 3
