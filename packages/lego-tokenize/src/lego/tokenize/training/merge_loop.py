"""The incremental BPE merge loop: learn merges from counted words, never recounting.

Each distinct word (pre-token, or whole document for naive BPE) is a sequence of token
ids with a count, held as a ``str`` with one character per id so that finding and replacing
a pair runs in C. The loop keeps

- ``pair_counts``: how often each adjacent pair occurs, weighted by word counts;
- ``where``: for each pair, the words that contain it (a superset: entries of words that
  lost the pair are dropped lazily);
- a max-heap of ``(count, pair)`` with lazy invalidation: an entry whose count is out of
  date is re-pushed with the current count when it reaches the top; a pair whose count
  grows is pushed again at once.

Merging the best pair rewrites only the words that contain it and adjusts the counts of the
pairs around each occurrence (``(x, a) -> (x, z)`` and ``(b, y) -> (z, y)``); nothing is
recounted. Each step costs about the number of occurrences it rewrites.

Determinism: the pair with the highest count wins; among equal counts, the pair whose
merged bytes sort first, then whose left part's bytes sort first. Both depend only on the
corpus, never on worker count, chunking or dictionary order.

When a merge produces bytes that already are a token (possible when the same string can
be built from two different pairs), the words use the existing token and no new id is made,
as in HuggingFace ``tokenizers``: every token's bytes stay unique, which tiktoken's rank
semantics need.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["MergeResult", "learn_merges"]


@dataclass(frozen=True)
class MergeResult:
    """What the merge loop learned.

    Attributes:
        vocab: Token bytes by id: the 256 single bytes (id = byte value), then one new token
            per merge.
        merges: For each new token ``256 + i``, the ids ``(left, right)`` it was built from.
    """

    vocab: list[bytes]
    merges: list[tuple[int, int]]


def learn_merges(
    words: Mapping[bytes, int],
    n_merges: int,
    *,
    on_merge: Callable[[int], None] | None = None,
) -> MergeResult:
    """Learn up to ``n_merges`` new tokens from word counts.

    Args:
        words: Each distinct word's bytes and its number of occurrences.
        n_merges: How many new tokens to make at most (fewer when no pair is left).
        on_merge: Called with the number of tokens made so far, every 64 tokens and at
            the end (progress).

    Returns:
        The vocabulary and the merges.
    """
    vocab: list[bytes] = [bytes([i]) for i in range(256)]
    token_id: dict[bytes, int] = {token: i for i, token in enumerate(vocab)}
    merges: list[tuple[int, int]] = []

    # A word is a str with one character per token (chr(id)), so finding and replacing a
    # pair runs in C (str.find / str.replace); a pair is the 2-character string of its ids.
    # Words are in a fixed order (sorted by bytes); single-byte words have no pairs.
    seqs: list[str] = []
    freqs: list[int] = []
    for word in sorted(words):
        if len(word) > 1:
            seqs.append(word.decode("latin-1"))  # byte b -> chr(b): token ids 0..255
            freqs.append(words[word])

    pair_counts: defaultdict[str, int] = defaultdict(int)
    where: defaultdict[str, set[int]] = defaultdict(set)
    for index, seq in enumerate(seqs):
        count = freqs[index]
        for pair in map(str.__add__, seq[:-1], seq[1:]):
            pair_counts[pair] += count
            where[pair].add(index)

    def entry(pair: str, count: int) -> tuple[int, bytes, bytes, str]:
        left = vocab[ord(pair[0])]
        return (-count, left + vocab[ord(pair[1])], left, pair)

    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    heappush, heappop = heapq.heappush, heapq.heappop

    while len(merges) < n_merges and heap:
        neg_count, new_bytes, _, pair = heappop(heap)
        current = pair_counts.get(pair, 0)
        if current != -neg_count:
            if current > 0:
                heappush(heap, entry(pair, current))
            continue
        if current <= 0:
            continue
        z = token_id.get(new_bytes)
        if z is None:
            z = len(vocab)
            vocab.append(new_bytes)
            token_id[new_bytes] = z
            merges.append((ord(pair[0]), ord(pair[1])))
            if on_merge is not None and len(merges) % 64 == 0:
                on_merge(len(merges))
        for grown in _apply_merge(pair, chr(z), seqs, freqs, pair_counts, where):
            count = pair_counts.get(grown, 0)
            if count > 0:
                heappush(heap, entry(grown, count))
    if on_merge is not None:
        on_merge(len(merges))
    return MergeResult(vocab=vocab, merges=merges)


def _apply_merge(
    pair: str,
    z: str,
    seqs: list[str],
    freqs: list[int],
    pair_counts: defaultdict[str, int],
    where: defaultdict[str, set[int]],
) -> set[str]:
    """Replace every ``pair`` by ``z`` in the words that hold it; update the pair counts.

    Returns:
        The pairs whose count grew (they need a fresh heap entry).
    """
    a, b = pair[0], pair[1]
    delta: defaultdict[str, int] = defaultdict(int)
    for index in where.pop(pair, ()):
        seq = seqs[index]
        p = seq.find(pair)
        if p < 0:
            continue  # stale index entry: the word lost this pair earlier
        count = freqs[index]
        last = len(seq) - 2
        previous_end = -1
        while p >= 0:
            # Occurrences are found left to right without overlap, as str.replace makes
            # them. The new left neighbour is z itself when the previous occurrence ended
            # here, which cancels the (z, a) counted for that occurrence's right side.
            if p > 0:
                x = z if p == previous_end else seq[p - 1]
                delta[x + a] -= count
                delta[x + z] += count
            if p < last:
                y = seq[p + 2]
                delta[b + y] -= count
                delta[z + y] += count
            previous_end = p + 2
            p = seq.find(pair, previous_end)
        new = seq.replace(pair, z)
        seqs[index] = new
        end = len(new) - 1
        q = new.find(z)
        while q >= 0:
            if q > 0:
                where[new[q - 1] + z].add(index)
            if q < end:
                where[z + new[q + 1]].add(index)
            q = new.find(z, q + 1)
    pair_counts.pop(pair, None)
    grown: set[str] = set()
    for changed, diff in delta.items():
        if changed == pair or diff == 0:
            continue
        value = pair_counts[changed] + diff
        if value > 0:
            pair_counts[changed] = value
            if diff > 0:
                grown.add(changed)
        else:
            del pair_counts[changed]
    return grown
