"""Recover BPE merges from tiktoken-style ranks, and list every way a token splits in two.

tiktoken stores a byte-level BPE as *mergeable ranks* only (token bytes -> id); the merge
that made each token is implicit: within a word, the adjacent pair whose concatenation has
the lowest rank merges first. GPT-2's ``vocab.bpe`` and HuggingFace's ``tokenizer.json`` store
explicit merge *pairs* instead. To write those formats the pairs are recovered here:

- [`merge_for`][lego.tokenize.interop.merges.merge_for] gives the one pair that tiktoken's
  own algorithm ends with when it encodes the token's bytes using only lower ranks (for a
  vocabulary trained by BPE this is exactly the merge the trainer made);
- [`token_splits`][lego.tokenize.interop.merges.token_splits] gives *every* split of a token
  into two tokens, which a pair-priority engine (HuggingFace) needs to behave like the rank
  engine (tiktoken), which merges any such pair at the token's rank.

Example:
    >>> ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257}
    >>> recover_merges(ranks)
    [(b'a', b'b'), (b'ab', b'c')]
"""

from __future__ import annotations

from collections.abc import Mapping

from lego.protocols import CompatibilityError

__all__ = ["bpe_parts", "merge_for", "token_splits", "recover_merges", "check_ranks"]


def check_ranks(ranks: Mapping[bytes, int], *, what: str = "the vocabulary") -> None:
    """Check that ranks form a byte-level BPE vocabulary that can be written out.

    Args:
        ranks: Token bytes to ids.
        what: How to name the vocabulary in messages.

    Raises:
        CompatibilityError: When a key is not non-empty ``bytes``, an id is not a
            non-negative ``int``, two tokens share an id, or a single byte has no token.
    """
    seen: dict[int, bytes] = {}
    items: list[tuple[object, object]] = list(ranks.items())
    for token, rank in items:
        if not isinstance(token, bytes) or not token:
            raise CompatibilityError(
                f"{what} has a token that is not non-empty bytes: {token!r}",
                hint="mergeable ranks map token bytes to ids, e.g. {b'ab': 256}",
            )
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise CompatibilityError(
                f"{what} gives token {token!r} the id {rank!r}, not a non-negative integer",
                hint="ids are the integers 0..n-1",
            )
        if rank in seen:
            raise CompatibilityError(
                f"{what} gives tokens {seen[rank]!r} and {token!r} the same id {rank}",
                hint="every token needs its own id",
            )
        seen[rank] = token
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        shown = ", ".join(f"0x{b:02x}" for b in missing[:8])
        raise CompatibilityError(
            f"{what} lacks single-byte tokens for {len(missing)} byte value(s) ({shown}"
            + (", ..." if len(missing) > 8 else "")
            + ")",
            hint="a byte-level BPE needs one token for each of the 256 byte values, so any "
            "text can be encoded",
        )


def bpe_parts(token: bytes, ranks: Mapping[bytes, int], *, below: int) -> list[bytes]:
    """Encode a token's own bytes with tiktoken's rule, using only ranks below a bound.

    Args:
        token: The bytes to encode.
        ranks: Token bytes to ids.
        below: Only tokens with an id below this may be formed.

    Returns:
        The parts the bytes end up as (one part only when ``token`` itself is below the
        bound).
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    get = ranks.get
    while len(parts) > 1:
        best_rank = below
        best_index = -1
        for index in range(len(parts) - 1):
            rank = get(parts[index] + parts[index + 1])
            if rank is not None and rank < best_rank:
                best_rank = rank
                best_index = index
        if best_index < 0:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts


def token_splits(token: bytes, ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """List every split of a token into two tokens of the vocabulary.

    Args:
        token: The token's bytes.
        ranks: Token bytes to ids.

    Returns:
        The ``(left, right)`` pairs with ``left + right == token`` and both in ``ranks``,
        left part shortest first.
    """
    return [
        (token[:cut], token[cut:])
        for cut in range(1, len(token))
        if token[:cut] in ranks and token[cut:] in ranks
    ]


def merge_for(token: bytes, ranks: Mapping[bytes, int]) -> tuple[bytes, bytes] | None:
    """Return the merge that creates a token, or None when no two earlier tokens make it.

    The pair is the one tiktoken's algorithm is left with when it encodes the token's bytes
    with every lower rank: for a vocabulary trained by BPE this is the trainer's merge. When
    that encoding ends in more than two parts (possible only in vocabularies not made by
    BPE), the split into two lower-ranked tokens whose higher id is smallest is returned.

    Args:
        token: The token's bytes (at least two bytes long).
        ranks: Token bytes to ids; must contain ``token``.

    Returns:
        ``(left, right)`` with ``left + right == token`` and both ranked below ``token``,
        or None.
    """
    rank = ranks[token]
    parts = bpe_parts(token, ranks, below=rank)
    if len(parts) == 2:
        return parts[0], parts[1]
    earlier = [
        (max(ranks[left], ranks[right]), left, right)
        for left, right in token_splits(token, ranks)
        if ranks[left] < rank and ranks[right] < rank
    ]
    if not earlier:
        return None
    _, left, right = min(earlier)
    return left, right


def recover_merges(
    ranks: Mapping[bytes, int], *, what: str = "the vocabulary"
) -> list[tuple[bytes, bytes]]:
    """Recover one merge per multi-byte token, in rank order.

    Args:
        ranks: Token bytes to ids (a byte-level BPE vocabulary).
        what: How to name the vocabulary in messages.

    Returns:
        ``(left, right)`` pairs: the i-th creates the i-th multi-byte token by rank.

    Raises:
        CompatibilityError: When the ranks are malformed (see
            [`check_ranks`][lego.tokenize.interop.merges.check_ranks]) or a token cannot be
            made by merging two tokens of lower rank.
    """
    check_ranks(ranks, what=what)
    merges: list[tuple[bytes, bytes]] = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        pair = merge_for(token, ranks)
        if pair is None:
            raise CompatibilityError(
                f"token {token!r} (id {ranks[token]}) of {what} cannot be made by merging "
                "two tokens of lower id",
                hint="this format stores a BPE as a list of merges; only vocabularies in "
                "which every token is the merge of two earlier tokens can be written",
            )
        merges.append(pair)
    return merges
