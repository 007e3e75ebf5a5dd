from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lego.data.records import (
    Record,
    load_records,
    read_jsonl,
    require_str,
    select_split,
    split_indices,
)
from lego.protocols import ConfigError, DataError


def test_reads_objects_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n', encoding="utf-8")
    records = list(read_jsonl(path))
    assert [(r.data["a"], r.line) for r in records] == [(1, 1), (2, 4)]
    assert records[0].path == str(path)


def test_corrupt_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON") as err:
        list(read_jsonl(path))
    assert err.value.path == str(path)
    assert err.value.line == 2
    assert f"{path}, line 2" in str(err.value)


def test_non_object_and_non_utf8_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match="holds a JSON list") as err:
        list(read_jsonl(path))
    assert err.value.line == 2
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match="not UTF-8") as err:
        list(read_jsonl(path))
    assert err.value.line == 2
    assert err.value.column == 8
    with pytest.raises(DataError, match="does not exist"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_require_str() -> None:
    record = Record(data={"a": "x", "n": 3}, path="f.jsonl", line=7)
    assert require_str(record, "a") == "x"
    assert require_str(record, "b", optional=True) == ""
    with pytest.raises(DataError, match="lacks the field 'b'") as err:
        require_str(record, "b")
    assert err.value.key == "b"
    assert err.value.line == 7
    assert err.value.path == "f.jsonl"
    with pytest.raises(DataError, match="must be a string"):
        require_str(record, "n")


def test_load_records_in_memory(tmp_path: Path) -> None:
    assert [r.line for r in load_records([{"a": 1}, {"b": 2}])] == [1, 2]
    with pytest.raises(DataError, match="not a mapping"):
        load_records([{"a": 1}, "oops"])  # type: ignore[list-item]
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(json.dumps({"i": i}) for i in range(3)), encoding="utf-8")
    assert [r.data["i"] for r in load_records(path)] == [0, 1, 2]


@given(n=st.integers(2, 500), fraction=st.floats(0.0, 0.5), seed=st.integers(0, 10))
def test_split_is_a_deterministic_partition(n: int, fraction: float, seed: int) -> None:
    train, val = split_indices(n, val_fraction=fraction, seed=seed)
    assert sorted(train + val) == list(range(n))
    assert not set(train) & set(val)
    assert train == sorted(train)
    assert val == sorted(val)
    assert (train, val) == split_indices(n, val_fraction=fraction, seed=seed)
    if fraction > 0:
        assert len(val) >= 1


def test_split_errors_and_selection() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        split_indices(10, val_fraction=1.0)
    with pytest.raises(DataError, match="no training data"):
        split_indices(1, val_fraction=0.5)
    records = [Record(data={"i": i}, path=None, line=i + 1) for i in range(20)]
    train = select_split(records, "train", val_fraction=0.25, seed=0)
    val = select_split(records, "val", val_fraction=0.25, seed=0)
    assert len(train) == 15
    assert len(val) == 5
    assert {r.line for r in train} | {r.line for r in val} == set(range(1, 21))
    assert len(select_split(records, "all", val_fraction=0.25, seed=0)) == 20
    with pytest.raises(DataError, match="val split is empty"):
        select_split(records, "val", val_fraction=0.0, seed=0)
    with pytest.raises(ConfigError, match="split"):
        select_split(records, "test", val_fraction=0.0, seed=0)  # type: ignore[arg-type]
