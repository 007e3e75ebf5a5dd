from __future__ import annotations

import pytest

from lego.protocols import CompatibilityError
from lego.tokenize.interop.merges import (
    bpe_parts,
    check_ranks,
    merge_for,
    recover_merges,
    token_splits,
)

BYTES = {bytes([b]): b for b in range(256)}


def test_recover_merges_gives_the_trainers_merges(
    trained: tuple[dict[bytes, int], list[tuple[bytes, bytes]]],
) -> None:
    ranks, merges = trained
    assert len(merges) == 150
    assert recover_merges(ranks) == merges


def test_recover_merges_with_gpt2_byte_order(
    trained_gpt2_order: tuple[dict[bytes, int], list[tuple[bytes, bytes]]],
) -> None:
    ranks, merges = trained_gpt2_order
    assert ranks[b"!"] == 0
    assert recover_merges(ranks) == merges


def test_merge_for_picks_the_split_bpe_ends_with() -> None:
    # "abc" can be "ab"+"c" or "a"+"bc"; "bc" has the lower rank, so BPE forms it first.
    ranks = BYTES | {b"bc": 256, b"ab": 257, b"abc": 258}
    assert merge_for(b"abc", ranks) == (b"a", b"bc")
    assert token_splits(b"abc", ranks) == [(b"a", b"bc"), (b"ab", b"c")]
    assert bpe_parts(b"abc", ranks, below=258) == [b"a", b"bc"]
    assert bpe_parts(b"abc", ranks, below=259) == [b"abc"]


def test_merge_for_falls_back_to_any_earlier_split() -> None:
    # BPE on "abcd" below its rank forms "bc" first and ends in three parts (a, bc, d), but
    # "ab" + "cd" are two earlier tokens that spell it.
    ranks = BYTES | {b"bc": 256, b"ab": 257, b"cd": 258, b"abcd": 259}
    assert bpe_parts(b"abcd", ranks, below=259) == [b"a", b"bc", b"d"]
    assert merge_for(b"abcd", ranks) == (b"ab", b"cd")


def test_merge_for_is_none_when_only_later_tokens_spell_it() -> None:
    ranks = BYTES | {b"ab": 256, b"abcd": 257, b"cd": 258}
    assert token_splits(b"abcd", ranks) == [(b"ab", b"cd")]
    assert merge_for(b"abcd", ranks) is None


def test_recover_merges_rejects_a_token_without_earlier_parts() -> None:
    ranks = BYTES | {b"abc": 256}
    with pytest.raises(CompatibilityError, match="cannot be made by merging"):
        recover_merges(ranks)


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        ({k: v for k, v in BYTES.items() if k != b"\x07"}, "lacks single-byte tokens"),
        (BYTES | {b"ab": 5}, "the same id"),
        (BYTES | {b"ab": -1}, "non-negative"),
        (BYTES | {"ab": 256}, "not non-empty bytes"),
        (BYTES | {b"": 256}, "not non-empty bytes"),
    ],
)
def test_check_ranks_rejects(ranks: dict[bytes, int], message: str) -> None:
    with pytest.raises(CompatibilityError, match=message):
        check_ranks(ranks)
