from __future__ import annotations

import pytest
import torch

from lego.data.collate import PaddingCollator
from lego.data.encode import TokenizedExample
from lego.protocols import ConfigError, DataError

M = -100


def test_right_padding_exact() -> None:
    collate = PaddingCollator(pad_id=0, eos_id=2)
    batch = collate([TokenizedExample([5, 6, 7], [6, 7, 2]), TokenizedExample([8], [M])])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, 2], [M, M, M]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert all(t.dtype == torch.int64 for t in batch.values())


def test_pad_to_multiple_of_and_left_padding() -> None:
    collate = PaddingCollator(pad_id=9, pad_to_multiple_of=4, padding_side="left")
    batch = collate(
        [
            {"input_ids": [1, 2, 3, 4, 5], "labels": [2, 3, 4, 5, M]},
            {"input_ids": torch.tensor([7]), "labels": torch.tensor([8])},
        ]
    )
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"].tolist() == [[9, 9, 9, 1, 2, 3, 4, 5], [9] * 7 + [7]]
    assert batch["labels"].tolist() == [[M, M, M, 2, 3, 4, 5, M], [M] * 7 + [8]]
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1], [0] * 7 + [1]]
    assert batch["position_ids"].tolist() == [[0, 0, 0, 0, 1, 2, 3, 4], [0] * 8]


def test_exact_multiple_is_not_padded_further() -> None:
    collate = PaddingCollator(pad_id=0, pad_to_multiple_of=8)
    batch = collate([TokenizedExample(list(range(1, 9)), [M] * 8)])
    assert batch["input_ids"].shape == (1, 8)


def test_pad_equal_to_eos_is_an_error() -> None:
    with pytest.raises(ConfigError, match="pad_id and eos_id are both 50256") as err:
        PaddingCollator(pad_id=50256, eos_id=50256)
    assert err.value.hint is not None
    assert "distinct" in err.value.hint


def test_bad_settings_and_batches() -> None:
    with pytest.raises(ConfigError, match="pad_id"):
        PaddingCollator(pad_id=-1)
    with pytest.raises(ConfigError, match="pad_to_multiple_of"):
        PaddingCollator(pad_id=0, pad_to_multiple_of=0)
    with pytest.raises(ConfigError, match="padding_side"):
        PaddingCollator(pad_id=0, padding_side="middle")  # type: ignore[arg-type]
    collate = PaddingCollator(pad_id=0)
    with pytest.raises(DataError, match="empty batch"):
        collate([])
    with pytest.raises(DataError, match="lacks 'labels'"):
        collate([{"input_ids": [1]}])
    with pytest.raises(DataError, match="2 input_ids but 1 labels"):
        collate([{"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(DataError, match="not an example"):
        collate([42])
