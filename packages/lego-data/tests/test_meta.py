from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.data.meta import (
    SourceInfo,
    SplitFile,
    SplitInfo,
    TokenizerInfo,
    TokenMeta,
    dtype_for_vocab,
    open_split,
    read_meta,
    write_meta,
)
from lego.protocols import CompatibilityError, ConfigError, DataError, FormatError

SHA = "ab" * 32


def make_meta(**changes: Any) -> TokenMeta:
    meta = TokenMeta(
        dtype="uint16",
        vocab_size=50257,
        eot_id=50256,
        tokenizer=TokenizerInfo(kind="tiktoken", name="gpt2", sha256=SHA),
        source=SourceInfo(corpus="tiny_shakespeare", documents=1, bytes=1115394),
        split=SplitInfo(method="characters", val_fraction=0.1, seed=0),
        splits={
            "train": SplitFile(file="train.bin", tokens=5, documents=1),
            "val": SplitFile(file="val.bin", tokens=3, documents=1),
        },
    )
    return replace(meta, **changes) if changes else meta


def write_dataset(folder: Path, meta: TokenMeta) -> None:
    write_meta(folder, meta)
    for name, entry in meta.splits.items():
        ids = np.arange(entry.tokens, dtype=meta.numpy_dtype) + (100 if name == "val" else 0)
        ids.tofile(folder / entry.file)


def test_round_trip_through_file(tmp_path: Path) -> None:
    meta = make_meta()
    path = write_meta(tmp_path, meta)
    assert path == tmp_path / "meta.json"
    assert read_meta(tmp_path) == meta
    assert read_meta(path) == meta
    data = json.loads(path.read_text())
    assert list(data) == [
        "format",
        "version",
        "dtype",
        "vocab_size",
        "eot_id",
        "tokenizer",
        "source",
        "split",
        "splits",
    ]
    assert data["splits"]["train"] == {"file": "train.bin", "tokens": 5, "documents": 1}
    assert not list(tmp_path.glob("*.tmp"))


def test_numpy_dtype_is_little_endian() -> None:
    assert make_meta().numpy_dtype == np.dtype("<u2")
    big = make_meta(dtype="uint32", vocab_size=100277, eot_id=100257)
    assert big.numpy_dtype == np.dtype("<u4")
    assert big.itemsize == 4


@pytest.mark.parametrize(
    ("vocab_size", "expected"),
    [(1, "uint16"), (50257, "uint16"), (65536, "uint16"), (65537, "uint32"), (2**32, "uint32")],
)
def test_dtype_for_vocab(vocab_size: int, expected: str) -> None:
    assert dtype_for_vocab(vocab_size) == expected


@pytest.mark.parametrize("vocab_size", [0, -5, 2**32 + 1])
def test_dtype_for_vocab_refuses(vocab_size: int) -> None:
    with pytest.raises(DataError):
        dtype_for_vocab(vocab_size)


def _corrupt(tmp_path: Path, edit: Any) -> FormatError:
    data = make_meta().to_dict()
    edit(data)
    (tmp_path / "meta.json").write_text(json.dumps(data))
    with pytest.raises(FormatError) as info:
        read_meta(tmp_path)
    return info.value


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d.pop("eot_id"), "eot_id"),
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=0), "version"),
        (lambda d: d.update(dtype="int32"), "dtype"),
        (lambda d: d.update(vocab_size=70000), "dtype"),
        (lambda d: d.update(vocab_size=True), "vocab_size"),
        (lambda d: d.update(eot_id=50257), "eot_id"),
        (lambda d: d["tokenizer"].update(sha256="xyz"), "tokenizer.sha256"),
        (lambda d: d["tokenizer"].update(kind=""), "tokenizer.kind"),
        (lambda d: d["source"].update(documents=-1), "source.documents"),
        (lambda d: d["split"].update(method="random"), "split.method"),
        (lambda d: d["split"].update(val_fraction=1.0), "split.val_fraction"),
        (lambda d: d["split"].update(seed=1.5), "split.seed"),
        (lambda d: d["splits"].pop("train"), "splits.train"),
        (lambda d: d["splits"]["val"].update(file="../x.bin"), "splits.val.file"),
        (lambda d: d["splits"]["val"].update(file="train.bin"), "splits.val.file"),
        (lambda d: d["splits"]["val"].update(tokens="3"), "splits.val.tokens"),
        (lambda d: d["splits"]["val"].pop("documents"), "splits.val.documents"),
    ],
)
def test_invalid_fields_name_their_key(tmp_path: Path, edit: Any, key: str) -> None:
    err = _corrupt(tmp_path, edit)
    assert err.key == key
    assert err.path == str(tmp_path / "meta.json")


def test_unknown_key_is_named(tmp_path: Path) -> None:
    err = _corrupt(tmp_path, lambda d: d.update(vocab_sise=3))
    assert err.key == "vocab_sise"
    assert "unknown TokenMeta key 'vocab_sise'" in err.message
    assert "meta.json" in err.message


@pytest.mark.parametrize("key", ["format", "version"])
def test_the_envelope_is_required(tmp_path: Path, key: str) -> None:
    err = _corrupt(tmp_path, lambda d: d.pop(key))
    assert err.key == key


def test_a_newer_version_is_refused_before_its_fields(tmp_path: Path) -> None:
    err = _corrupt(tmp_path, lambda d: d.update(version=2, new_field=1))
    assert err.key == "version"
    assert "upgrade" in (err.hint or "")


def test_an_old_meta_json_still_loads(tmp_path: Path) -> None:
    # written by lego-data 0.1 (before the sections were Configs), byte for byte
    text = (
        '{\n  "format": "lego-tokens",\n  "version": 1,\n  "dtype": "uint16",\n'
        '  "vocab_size": 50257,\n  "eot_id": 50256,\n  "tokenizer": {\n'
        '    "kind": "tiktoken",\n    "name": "gpt2",\n    "sha256": "' + SHA + '"\n  },\n'
        '  "source": {\n    "corpus": "tiny_shakespeare",\n    "documents": 1,\n'
        '    "bytes": 1115394\n  },\n  "split": {\n    "method": "characters",\n'
        '    "val_fraction": 0.1,\n    "seed": 0\n  },\n  "splits": {\n'
        '    "train": {\n      "file": "train.bin",\n      "tokens": 5,\n'
        '      "documents": 1\n    },\n    "val": {\n      "file": "val.bin",\n'
        '      "tokens": 3,\n      "documents": 1\n    }\n  }\n}\n'
    )
    (tmp_path / "meta.json").write_text(text)
    assert read_meta(tmp_path) == make_meta()
    write_meta(tmp_path / "again", make_meta())
    assert (tmp_path / "again" / "meta.json").read_text() == text


def test_newer_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    err = _corrupt(tmp_path, lambda d: d.update(version=2))
    assert "upgrade" in (err.hint or "")


def test_invalid_json_reports_the_line(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text('{\n  "format": "lego-tokens",\n  oops\n}')
    with pytest.raises(FormatError) as info:
        read_meta(tmp_path)
    assert info.value.line == 3


def test_missing_meta_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"meta\.json is missing"):
        read_meta(tmp_path)


def test_constructor_validates_too() -> None:
    with pytest.raises(ConfigError) as info:
        make_meta(eot_id=-1)
    assert info.value.key == "eot_id"
    with pytest.raises(ConfigError):
        SplitFile("../train.bin", 1, 1)


def test_check_tokenizer_accepts_the_same_tokenizer() -> None:
    make_meta().check_tokenizer(50257, 50256, SHA)
    make_meta().check_tokenizer(50257, 50256, None)
    make_meta(tokenizer=TokenizerInfo("python", "Bytes", None)).check_tokenizer(50257, 50256, SHA)


@pytest.mark.parametrize(
    ("vocab", "eot", "sha", "key"),
    [
        (50000, 50256, None, "vocab_size"),
        (50257, 0, None, "eot_id"),
        (50257, 50256, "cd" * 32, "tokenizer.sha256"),
    ],
)
def test_check_tokenizer_refuses_a_mismatch(
    vocab: int, eot: int, sha: str | None, key: str
) -> None:
    with pytest.raises(CompatibilityError) as info:
        make_meta().check_tokenizer(vocab, eot, sha)
    assert info.value.key == key


def test_open_split_maps_the_file(tmp_path: Path) -> None:
    write_dataset(tmp_path, make_meta())
    train = open_split(tmp_path, "train")
    val = open_split(tmp_path / "meta.json", "val")
    assert train.dtype == np.dtype("<u2")
    assert train.tolist() == [0, 1, 2, 3, 4]
    assert val.tolist() == [100, 101, 102]


def test_open_split_checks_the_size(tmp_path: Path) -> None:
    write_dataset(tmp_path, make_meta())
    with open(tmp_path / "train.bin", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(FormatError) as info:
        open_split(tmp_path, "train")
    assert info.value.key == "splits.train.tokens"
    assert "11 bytes" in info.value.message


def test_open_split_unknown_split_and_missing_file(tmp_path: Path) -> None:
    write_dataset(tmp_path, make_meta())
    with pytest.raises(DataError) as info:
        open_split(tmp_path, "vall")
    assert "'val'" in (info.value.hint or "")
    (tmp_path / "val.bin").unlink()
    with pytest.raises(DataError, match="missing"):
        open_split(tmp_path, "val")


def test_open_split_empty(tmp_path: Path) -> None:
    meta = make_meta(
        splits={"train": SplitFile("train.bin", 2, 1), "val": SplitFile("val.bin", 0, 0)}
    )
    write_dataset(tmp_path, meta)
    assert open_split(tmp_path, "val").size == 0


names = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(
    vocab=st.integers(1, 2**20),
    data=st.data(),
    fraction=st.floats(0.0, 0.999),
    seed=st.integers(-(2**31), 2**31),
    tokens=st.integers(0, 10**9),
    sha=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory,
    vocab: int,
    data: st.DataObject,
    fraction: float,
    seed: int,
    tokens: int,
    sha: str | None,
) -> None:
    meta = TokenMeta(
        dtype=dtype_for_vocab(vocab),
        vocab_size=vocab,
        eot_id=data.draw(st.integers(0, vocab - 1)),
        tokenizer=TokenizerInfo(kind=data.draw(names), name=data.draw(names), sha256=sha),
        source=SourceInfo(corpus=data.draw(names), documents=tokens, bytes=tokens * 3),
        split=SplitInfo(
            method=data.draw(st.sampled_from(["documents", "characters"])),
            val_fraction=fraction,
            seed=seed,
        ),
        splits={"train": SplitFile("train.bin", tokens, 1), "val": SplitFile("val.bin", 0, 0)},
    )
    folder = tmp_path_factory.mktemp("meta")
    write_meta(folder, meta)
    assert read_meta(folder) == meta
