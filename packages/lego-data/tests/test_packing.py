from __future__ import annotations

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

from lego.data.encode import TokenizedExample
from lego.data.packing import PackedCollator, document_attention_mask, pack_examples
from lego.protocols import ConfigError, DataError

M = -100


def ex(n: int, base: int) -> TokenizedExample:
    ids = list(range(base, base + n))
    return TokenizedExample(ids, [i + 1 for i in ids[:-1]] + [M])


def test_boundaries_positions_and_labels() -> None:
    examples = [ex(3, 10), ex(5, 20), ex(2, 30), ex(4, 40)]
    rows = pack_examples(examples, max_length=8, pad_id=0)
    assert len(rows) == 2
    first, second = rows
    assert first.input_ids == [10, 11, 12, 20, 21, 22, 23, 24]
    assert first.position_ids == [0, 1, 2, 0, 1, 2, 3, 4]
    assert first.document_ids == [0, 0, 0, 1, 1, 1, 1, 1]
    assert first.labels == [11, 12, M, 21, 22, 23, 24, M]  # no label crosses a boundary
    assert second.input_ids == [30, 31, 40, 41, 42, 43, 0, 0]
    assert second.position_ids == [0, 1, 0, 1, 2, 3, 0, 1]
    assert second.document_ids == [0, 0, 1, 1, 1, 1, -1, -1]
    assert second.labels == [31, M, 41, 42, 43, M, M, M]
    assert second.num_documents == 2
    assert second.num_real == 6


def test_best_fit_beats_greedy_and_keeps_every_document() -> None:
    examples = [ex(5, 0), ex(4, 100), ex(3, 200)]
    greedy = pack_examples(examples, max_length=8, pad_id=0, strategy="greedy")
    best = pack_examples(examples, max_length=8, pad_id=0, strategy="best_fit")
    assert [r.num_real for r in greedy] == [5, 7]
    assert [r.num_real for r in best] == [8, 4]
    for rows in (greedy, best):
        starts = sorted(
            r.input_ids[i]
            for r in rows
            for i, p in enumerate(r.position_ids)
            if p == 0 and r.document_ids[i] >= 0
        )
        assert starts == [0, 100, 200]


def test_too_long_examples() -> None:
    examples = [ex(10, 0), ex(2, 50)]
    truncated = pack_examples(examples, max_length=4, pad_id=0, too_long="truncate")
    assert truncated[0].input_ids == [0, 1, 2, 3]
    dropped = pack_examples(examples, max_length=4, pad_id=0, too_long="drop")
    assert [r.input_ids for r in dropped] == [[50, 51, 0, 0]]
    with pytest.raises(DataError, match="more than max_length 4"):
        pack_examples(examples, max_length=4, pad_id=0, too_long="error")
    with pytest.raises(DataError, match="no examples"):
        pack_examples([ex(10, 0)], max_length=4, pad_id=0, too_long="drop")
    with pytest.raises(ConfigError, match="strategy"):
        pack_examples(examples, max_length=4, pad_id=0, strategy="fast")  # type: ignore[arg-type]


def test_collator_and_mask() -> None:
    rows = pack_examples([ex(2, 1), ex(1, 5)], max_length=4, pad_id=0, strategy="greedy")
    batch = PackedCollator()(rows)
    assert batch["document_ids"].tolist() == [[0, 0, 1, -1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0]]
    mask = document_attention_mask(batch["document_ids"])
    assert mask.shape == (1, 1, 4, 4)
    assert mask.dtype == torch.bool
    assert mask[0, 0].tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [False, False, True, False],
        [False, False, False, True],
    ]
    with pytest.raises(DataError, match="different lengths"):
        PackedCollator()([rows[0], pack_examples([ex(2, 1)], max_length=3, pad_id=0)[0]])
    with pytest.raises(DataError, match=r"\(B, T\)"):
        document_attention_mask(torch.zeros(4, dtype=torch.int64))


def test_mask_keeps_documents_apart_in_sdpa() -> None:
    torch.manual_seed(0)
    lengths = [3, 4, 2]
    documents = torch.tensor([[d for d, n in enumerate(lengths) for _ in range(n)] + [-1]])
    q, k, v = (torch.randn(1, 2, 10, 8) for _ in range(3))  # (B, heads, T, head_dim)
    packed = sdpa(q, k, v, attn_mask=document_attention_mask(documents))
    start = 0
    for n in lengths:  # each document alone, plain causal attention
        sl = slice(start, start + n)
        alone = sdpa(q[:, :, sl], k[:, :, sl], v[:, :, sl], is_causal=True)
        torch.testing.assert_close(packed[:, :, sl], alone)
        start += n
    assert torch.isfinite(packed).all()  # the padding row is not NaN
