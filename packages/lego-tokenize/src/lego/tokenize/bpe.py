"""The pure-Python byte-pair encoder: tiktoken's merge rule, readable.

Within one piece of text (a pre-token), start from its single bytes and repeatedly merge
the adjacent pair whose concatenated bytes has the lowest rank in the vocabulary, the
leftmost such pair on ties, until no adjacent pair is in the vocabulary. The result's ids
are the ranks of the remaining parts. This is the rule tiktoken's Rust engine applies, so
both give identical ids by construction.

Short pieces use a list scan (fast in Python for the few bytes of a typical pre-token);
long pieces (a whole document for [`NaiveBPETokenizer`][lego.tokenize.NaiveBPETokenizer])
use a heap over a linked list, ``O(n log n)``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from lego.tokenize.patterns import compile_pattern

__all__ = ["PythonEncoder", "bpe_merge", "bpe_parts", "fix_surrogates", "utf8_bytes"]

_LONG = 64  # pieces at least this long use the heap
_NO_RANK = 1 << 62  # larger than any rank


def bpe_parts(
    piece: bytes, ranks: Mapping[bytes, int], *, max_rank: int | None = None
) -> list[bytes]:
    """Split ``piece`` into the byte strings of its BPE tokens.

    Args:
        piece: The bytes of one pre-token (every single byte must be in ``ranks``).
        ranks: Token bytes to rank (= id).
        max_rank: Only merge into tokens whose rank is below it (None: no limit). Used to
            find the two tokens a token was built from.

    Returns:
        The parts, in order; ``b"".join(parts) == piece``.
    """
    if len(piece) >= _LONG:
        return _parts_heap(piece, ranks, max_rank)
    parts = [piece[i : i + 1] for i in range(len(piece))]
    get = ranks.get
    limit = _NO_RANK if max_rank is None else max_rank
    # pair_ranks[i] is the rank of parts[i] + parts[i + 1] (_NO_RANK: not a usable token);
    # after a merge only the two neighbouring entries change.
    pair_ranks = []
    for i in range(len(parts) - 1):
        rank = get(parts[i] + parts[i + 1], _NO_RANK)
        pair_ranks.append(rank if rank < limit else _NO_RANK)
    while pair_ranks:
        best = min(pair_ranks)
        if best == _NO_RANK:
            break
        i = pair_ranks.index(best)  # the leftmost of the lowest
        parts[i] += parts[i + 1]
        del parts[i + 1]
        del pair_ranks[i]
        if i < len(pair_ranks):
            rank = get(parts[i] + parts[i + 1], _NO_RANK)
            pair_ranks[i] = rank if rank < limit else _NO_RANK
        if i > 0:
            rank = get(parts[i - 1] + parts[i], _NO_RANK)
            pair_ranks[i - 1] = rank if rank < limit else _NO_RANK
    return parts


def bpe_merge(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """Encode one pre-token's bytes to token ids.

    Args:
        piece: The bytes of one pre-token.
        ranks: Token bytes to rank (= id); holds every single byte.

    Returns:
        The ids.
    """
    if len(piece) == 1:
        return [ranks[piece]]
    return [ranks[part] for part in bpe_parts(piece, ranks)]


def _parts_heap(piece: bytes, ranks: Mapping[bytes, int], max_rank: int | None) -> list[bytes]:
    """``bpe_parts`` for long pieces: a heap of (rank, start) over a doubly linked list."""
    n = len(piece)
    # Node i covers piece[start[i]:end[i]]; nodes are identified by their start offset.
    end = list(range(1, n + 1))
    prev = list(range(-1, n - 1))
    nxt = [*range(1, n), -1]
    alive = [True] * n
    get = ranks.get
    limit = max_rank if max_rank is not None else float("inf")
    heap: list[tuple[int, int, int]] = []  # (rank, start of left node, end of right node)
    for i in range(n - 1):
        rank = get(piece[i : i + 2])
        if rank is not None and rank < limit:
            heap.append((rank, i, i + 2))
    heapq.heapify(heap)
    while heap:
        rank, left, right_end = heapq.heappop(heap)
        if not alive[left]:
            continue
        right = nxt[left]
        if right == -1 or end[right] != right_end:
            continue  # stale: one side has changed since this entry was pushed
        # merge right into left
        end[left] = right_end
        alive[right] = False
        after = nxt[right]
        nxt[left] = after
        if after != -1:
            prev[after] = left
            rank2 = get(piece[left : end[after]])
            if rank2 is not None and rank2 < limit:
                heapq.heappush(heap, (rank2, left, end[after]))
        before = prev[left]
        if before != -1:
            rank2 = get(piece[before:right_end])
            if rank2 is not None and rank2 < limit:
                heapq.heappush(heap, (rank2, before, right_end))
    parts = []
    i = 0
    while i != -1:
        parts.append(piece[i : end[i]])
        i = nxt[i]
    return parts


def fix_surrogates(text: str) -> str:
    """Replace unpaired surrogates with U+FFFD, as tiktoken does before encoding.

    Args:
        text: Any Python string.

    Returns:
        ``text`` itself when it has no unpaired surrogate, else the repaired copy.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def utf8_bytes(text: str) -> bytes:
    """Encode text to UTF-8 as tiktoken does: a lone surrogate becomes U+FFFD.

    Args:
        text: Any Python string (possibly with unpaired surrogates).

    Returns:
        The UTF-8 bytes.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


class PythonEncoder:
    """Encode text with a split pattern and BPE ranks, in pure Python.

    Pre-tokens are found with the ``regex`` module; each distinct pre-token's ids are
    cached (up to ``cache_size`` entries; the cache stops growing when full), so running
    text costs mostly one regex pass and one dictionary lookup per pre-token.

    Args:
        ranks: Token bytes to rank (= id); holds every single byte.
        pattern: The split regex.
        cache_size: The most pre-tokens to cache.
    """

    def __init__(self, *, ranks: Mapping[bytes, int], pattern: str, cache_size: int = 1 << 16):
        self._ranks = ranks
        self._findall = compile_pattern(pattern).findall
        self._cache: dict[str, list[int]] = {}
        self._cache_size = cache_size

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text (no special tokens).

        Args:
            text: Any Unicode string.

        Returns:
            The ids, identical to tiktoken's for the same ranks and pattern.
        """
        if not text.isascii():
            text = fix_surrogates(text)
        ranks = self._ranks
        cache = self._cache
        get = cache.get
        room = self._cache_size - len(cache)
        out: list[int] = []
        extend = out.extend
        for piece in self._findall(text):
            ids = get(piece)
            if ids is None:
                data = piece.encode("utf-8")
                rank = ranks.get(data)
                ids = [rank] if rank is not None else bpe_merge(data, ranks)
                if room > 0:
                    cache[piece] = ids
                    room -= 1
            extend(ids)
        return out
