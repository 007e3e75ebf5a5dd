from __future__ import annotations

from typing import Any

import torch

from lego.data.collate import PaddingCollator
from lego.data.encode import TokenizedExample
from lego.data.example_loader import ExampleLoader
from lego.data.packing import PackedCollator, pack_examples
from lego.protocols import BatchSource


def examples(n: int) -> list[TokenizedExample]:
    return [TokenizedExample(list(range(i, i + 1 + i % 5)), [-100] * (1 + i % 5)) for i in range(n)]


def firsts(batches: list[Any]) -> list[int]:
    return [row[0] for b in batches for row in b["input_ids"].tolist()]


def test_padded_batches_cover_the_epoch() -> None:
    loader = ExampleLoader(
        examples(23), batch_size=4, collate_fn=PaddingCollator(pad_id=999), seed=0
    )
    assert isinstance(loader, BatchSource)
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    assert sorted(firsts(batches)) == list(range(23))
    assert all(b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max()) for b in batches)


def test_resume_mid_epoch() -> None:
    data = examples(50)
    collate = PaddingCollator(pad_id=999, pad_to_multiple_of=8)
    expected = list(ExampleLoader(data, batch_size=3, collate_fn=collate, seed=5))
    loader = ExampleLoader(data, batch_size=3, collate_fn=collate, seed=5)
    it = iter(loader)
    for _ in range(7):
        next(it)
    state = loader.state_dict()
    loader.close()
    resumed = ExampleLoader(data, batch_size=3, collate_fn=collate, seed=0)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(expected) - 7
    assert all(
        torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(rest, expected[7:], strict=True)
    )


def test_ranks_and_packed_rows() -> None:
    rows = pack_examples(examples(40), max_length=8, pad_id=999)
    per_rank = [
        list(
            ExampleLoader(
                rows,
                batch_size=2,
                collate_fn=PackedCollator(),
                rank=r,
                world_size=2,
                drop_last=True,
            )
        )
        for r in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1])
    assert all("document_ids" in b for b in per_rank[0])
