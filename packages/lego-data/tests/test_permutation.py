from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.data.permutation import FeistelPermutation, derive_key, mix64, random_offsets


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), key=st.integers(0, 2**64 - 1))
def test_feistel_is_a_permutation(n: int, key: int) -> None:
    perm = FeistelPermutation(n, key=key)
    out = perm(np.arange(n))
    assert sorted(out.tolist()) == list(range(n))


def test_feistel_same_key_same_order_and_keys_differ() -> None:
    a = FeistelPermutation(1000, key=derive_key(0, 0))(np.arange(1000))
    b = FeistelPermutation(1000, key=derive_key(0, 0))(np.arange(1000))
    c = FeistelPermutation(1000, key=derive_key(0, 1))(np.arange(1000))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, np.arange(1000))  # it actually shuffles


def test_feistel_evaluates_any_subset_consistently() -> None:
    perm = FeistelPermutation(777, key=42)
    full = perm(np.arange(777))
    picked = np.array([5, 700, 0, 776])
    assert perm(picked).tolist() == full[picked].tolist()
    assert perm(np.array([], dtype=np.int64)).shape == (0,)


def test_feistel_rejects_out_of_range() -> None:
    perm = FeistelPermutation(10, key=1)
    with pytest.raises(IndexError):
        perm(np.array([10]))
    with pytest.raises(ValueError, match="at least one"):
        FeistelPermutation(0, key=1)


def test_mix64_and_derive_key() -> None:
    assert mix64([0, 1]).dtype == np.uint64
    assert mix64([1])[0] != mix64([2])[0]
    assert derive_key(0, 1) != derive_key(1, 0)
    assert derive_key(3, -1) == derive_key(3, 2**64 - 1)


def test_random_offsets_in_range_and_deterministic() -> None:
    out = random_offsets(np.arange(10_000), key=7, high=13)
    assert out.min() >= 0
    assert out.max() < 13
    assert set(out.tolist()) == set(range(13))
    assert np.array_equal(out, random_offsets(np.arange(10_000), key=7, high=13))
