from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lego.data.dataset import TokenDataset
from lego.data.meta import SourceInfo, SplitFile, SplitInfo, TokenizerInfo, TokenMeta, write_meta
from lego.protocols import ConfigError, DataError, FormatError


def make_prepared(folder: Path, train: np.ndarray, val: np.ndarray, vocab: int = 1000) -> Path:
    dtype = "uint16" if vocab <= 2**16 else "uint32"
    folder.mkdir(parents=True, exist_ok=True)
    train.astype(dtype).tofile(folder / "train.bin")
    val.astype(dtype).tofile(folder / "val.bin")
    write_meta(
        folder,
        TokenMeta(
            dtype=dtype,
            vocab_size=vocab,
            eot_id=vocab - 1,
            tokenizer=TokenizerInfo(kind="python", name="test"),
            source=SourceInfo(corpus="test", documents=1, bytes=1),
            split=SplitInfo(method="documents", val_fraction=0.1, seed=0),
            splits={
                "train": SplitFile(file="train.bin", tokens=len(train), documents=1),
                "val": SplitFile(file="val.bin", tokens=len(val), documents=1),
            },
        ),
    )
    return folder


def bare(tmp_path: Path, values: np.ndarray, dtype: str = "uint16") -> Path:
    path = tmp_path / "tokens.bin"
    values.astype(dtype).tofile(path)
    return path


def test_windows_and_shifted_labels(tmp_path: Path) -> None:
    ds = TokenDataset(bare(tmp_path, np.arange(23)), context_length=5, dtype="uint16")
    assert len(ds) == 4  # (23 - 6) // 5 + 1
    item = ds[0]
    assert item["input_ids"].tolist() == [0, 1, 2, 3, 4]
    assert item["labels"].tolist() == [1, 2, 3, 4, 5]
    assert item["input_ids"].dtype == torch.int64
    assert ds[3]["input_ids"].tolist() == [15, 16, 17, 18, 19]
    assert ds[3]["labels"].tolist() == [16, 17, 18, 19, 20]
    assert ds[-1]["labels"].tolist() == ds[3]["labels"].tolist()
    with pytest.raises(IndexError):
        ds[4]


def test_stride_overlaps_and_skips(tmp_path: Path) -> None:
    path = bare(tmp_path, np.arange(20))
    overlap = TokenDataset(path, context_length=4, stride=2, dtype="uint16")
    assert len(overlap) == 8  # starts 0, 2, ..., 14
    assert overlap[1]["input_ids"].tolist() == [2, 3, 4, 5]
    skip = TokenDataset(path, context_length=3, stride=7, dtype="uint16")
    assert [skip[i]["input_ids"].tolist() for i in range(len(skip))] == [
        [0, 1, 2],
        [7, 8, 9],
        [14, 15, 16],
    ]


def test_prepared_dataset_and_uint32(tmp_path: Path) -> None:
    train = np.arange(50) + 70_000
    folder = make_prepared(tmp_path / "ds", train, np.arange(12), vocab=100_000)
    ds = TokenDataset(folder, context_length=8)
    assert ds.meta is not None
    assert ds.dtype == np.dtype("<u4")
    assert ds[1]["input_ids"].tolist() == list(range(70_008, 70_016))
    val = TokenDataset(folder / "meta.json", split="val", context_length=8)
    assert val.n_tokens == 12
    assert len(val) == 1
    with pytest.raises(DataError, match="no split 'test'"):
        TokenDataset(folder, split="test", context_length=8)
    with pytest.raises(ConfigError, match=r"meta\.json says"):
        TokenDataset(folder, context_length=8, dtype="uint16")


def test_context_longer_than_data(tmp_path: Path) -> None:
    folder = make_prepared(tmp_path / "ds", np.arange(100), np.arange(10))
    with pytest.raises(DataError) as err:
        TokenDataset(folder, split="val", context_length=10)
    message = str(err.value)
    assert "needs at least 11 tokens" in message
    assert "holds 10" in message
    assert err.value.path is not None
    assert err.value.path.endswith("val.bin")
    assert "context_length <= 9" in message
    TokenDataset(folder, split="val", context_length=9)  # exactly enough


def test_bad_inputs(tmp_path: Path) -> None:
    path = bare(tmp_path, np.arange(10))
    with pytest.raises(ConfigError, match="needs its dtype"):
        TokenDataset(path, context_length=2)
    with pytest.raises(ConfigError, match="context_length"):
        TokenDataset(path, context_length=0, dtype="uint16")
    with pytest.raises(ConfigError, match="stride"):
        TokenDataset(path, context_length=2, stride=0, dtype="uint16")
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        TokenDataset(path, context_length=2, mode="randon", dtype="uint16")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no token file"):
        TokenDataset(tmp_path / "missing.bin", context_length=2, dtype="uint16")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 7)
    with pytest.raises(FormatError, match="whole number"):
        TokenDataset(odd, context_length=2, dtype="uint16")


def test_random_mode_is_seeded_and_in_bounds(tmp_path: Path) -> None:
    path = bare(tmp_path, np.arange(1000))
    ds = TokenDataset(path, context_length=16, mode="random", seed=5, dtype="uint16")
    assert len(ds) == len(TokenDataset(path, context_length=16, dtype="uint16"))
    starts = ds.window_starts(np.arange(len(ds)))
    assert starts.min() >= 0
    assert starts.max() <= 1000 - 17
    again = TokenDataset(path, context_length=16, mode="random", seed=5, dtype="uint16")
    assert np.array_equal(starts, again.window_starts(np.arange(len(ds))))
    assert not np.array_equal(starts, ds.window_starts(np.arange(len(ds)), epoch=1))
    assert starts.tolist() != (np.arange(len(ds)) * 16).tolist()
    item = ds[3]  # a window is consecutive tokens starting at its offset
    first = int(item["input_ids"][0])
    assert item["input_ids"].tolist() == list(range(first, first + 16))
    assert item["labels"].tolist() == list(range(first + 1, first + 17))


def test_gather_matches_getitem(tmp_path: Path) -> None:
    ds = TokenDataset(bare(tmp_path, np.arange(300) * 7), context_length=9, dtype="uint16")
    starts = ds.window_starts(np.array([4, 0, 2]))
    windows = ds.gather(starts)
    for row, index in zip(windows, [4, 0, 2], strict=True):
        assert row[:-1].tolist() == ds[index]["input_ids"].tolist()
        assert row[1:].tolist() == ds[index]["labels"].tolist()


def test_pickle_remaps_instead_of_copying(tmp_path: Path) -> None:
    ds = TokenDataset(bare(tmp_path, np.arange(100_000) % 5000), context_length=8, dtype="uint16")
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000  # the 200 kB of tokens are not in the pickle
    clone = pickle.loads(blob)
    assert clone[7]["input_ids"].tolist() == ds[7]["input_ids"].tolist()


def test_release_pages(tmp_path: Path) -> None:
    ds = TokenDataset(bare(tmp_path, np.arange(10_000)), context_length=8, dtype="uint16")
    before = ds[100]["input_ids"].tolist()
    released = ds.release_pages()
    assert isinstance(released, bool)
    assert ds[100]["input_ids"].tolist() == before  # data is read back from the file
