from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.layers import build_attention_mask, causal_mask, position_ids_from_padding
from lego.protocols import ConfigError, DataError


def _brute_force(t: int, s: int, window: int | None) -> torch.Tensor:
    mask = torch.zeros(t, s, dtype=torch.bool)
    for i in range(t):
        query = s - t + i  # the query's slot
        for j in range(s):
            mask[i, j] = j <= query and (window is None or query - j < window)
    return mask


@given(
    t=st.integers(0, 6),
    extra=st.integers(0, 6),
    window=st.none() | st.integers(1, 8),
)
@settings(max_examples=60, deadline=None)
def test_causal_mask_matches_brute_force(t: int, extra: int, window: int | None) -> None:
    s = t + extra
    assert torch.equal(causal_mask(t, s, sliding_window=window), _brute_force(t, s, window))


def test_causal_mask_examples() -> None:
    assert causal_mask(3, 3).tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]
    assert causal_mask(1, 4).tolist() == [[True, True, True, True]]  # a decode step
    assert causal_mask(2, 4, sliding_window=2).tolist() == [
        [False, True, True, False],
        [False, False, True, True],
    ]


def test_padding_removes_keys_and_padding_queries_see_themselves() -> None:
    padding = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask = build_attention_mask(q_len=4, kv_len=4, padding_mask=padding)
    assert mask.shape == (2, 1, 4, 4)
    assert mask.dtype == torch.bool
    assert mask[0, 0].tolist() == [
        [True, False, False, False],  # padding query: only itself
        [False, True, False, False],
        [False, False, True, False],  # real queries: real keys only
        [False, False, True, True],
    ]
    assert torch.equal(mask[1, 0], causal_mask(4, 4))
    assert mask.any(dim=-1).all()  # no row is empty


def test_padding_with_cached_prefix() -> None:
    padding = torch.tensor([[0, 1, 1, 1, 1]])
    mask = build_attention_mask(q_len=2, kv_len=5, padding_mask=padding, sliding_window=3)
    assert mask[0, 0].tolist() == [
        [False, True, True, True, False],
        [False, False, True, True, True],
    ]


def test_without_padding_the_mask_broadcasts() -> None:
    mask = build_attention_mask(q_len=3, kv_len=5)
    assert mask.shape == (1, 1, 3, 5)
    assert torch.equal(mask[0, 0], causal_mask(3, 5))


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="at least 1, got 0") as info:
        causal_mask(2, 2, sliding_window=0)
    assert info.value.key == "sliding_window"
    with pytest.raises(ConfigError):
        causal_mask(2, 2, sliding_window=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="q_len=3, kv_len=2"):
        causal_mask(3, 2)
    with pytest.raises(DataError) as data_info:
        build_attention_mask(q_len=2, kv_len=3, padding_mask=torch.ones(2, 2))
    assert data_info.value.tensor == "attention_mask"


def test_position_ids_from_padding() -> None:
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_padding(padding).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert position_ids_from_padding(padding, past_length=3).tolist() == [[1, 2], [3, 4]]
    assert position_ids_from_padding(padding.bool()).dtype == torch.long
    with pytest.raises(DataError):
        position_ids_from_padding(torch.ones(5))
    with pytest.raises(DataError):
        position_ids_from_padding(padding, past_length=6)
