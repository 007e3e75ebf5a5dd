"""Byte-level BPE: the vocabulary model shared by the naive and the regex BPE tokenizers.

The data model is tiktoken's: ``mergeable_ranks`` maps each ordinary token's bytes to its
id (= rank), ids ``0 .. n-1`` without gaps; the 256 single bytes are tokens (in any order:
GPT-2 and cl100k put them in their own). A token's *merge* is the pair of earlier tokens it
is built from; the ordered merges and the order of the single bytes are what the file
stores, and they rebuild the ranks exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

from lego.protocols import (
    CompatibilityError,
    ConfigError,
    FormatError,
    Progress,
    SpecialTokens,
)
from lego.tokenize.base import BaseTokenizer, SpecialTokensArg, place_special_tokens
from lego.tokenize.bpe import bpe_parts, fix_surrogates
from lego.tokenize.byte_level import str_to_token, token_to_str
from lego.tokenize.fileformat import FieldReader, render_token
from lego.tokenize.specials import validate_special_tokens
from lego.tokenize.training import learn_merges

__all__ = ["ByteLevelBPETokenizer", "validate_ranks"]

_SINGLE_BYTES = frozenset(bytes([b]) for b in range(256))


def validate_ranks(ranks: Mapping[bytes, int]) -> dict[bytes, int]:
    """Check a ``{token bytes: rank}`` map for use as a byte-level BPE vocabulary.

    Args:
        ranks: Token bytes to ids.

    Returns:
        A plain-dict copy.

    Raises:
        ConfigError: On a non-bytes or empty token, a non-integer id, two tokens with one id,
            ids that are not ``0 .. n-1`` or a missing single byte.
    """
    if not isinstance(ranks, Mapping):
        raise ConfigError(
            f"ranks must map token bytes to ids, got {type(ranks).__name__}", key="ranks"
        )
    copy = dict(ranks)
    ids = copy.values()
    # The common case in loops that run in C: exact bytes and ints, ids exactly 0..n-1 (n
    # distinct ints from 0 to n-1), every single byte present. Anything else goes through
    # the loop below, which names the first problem.
    if (
        all(type(token) is bytes and token for token in copy)
        and all(type(rank) is int for rank in ids)
        and (not copy or (min(ids) == 0 and max(ids) == len(copy) - 1))
        and len(set(ids)) == len(copy)
        and _SINGLE_BYTES.issubset(copy)
    ):
        return copy
    result: dict[bytes, int] = {}
    seen: dict[int, bytes] = {}
    items: Iterable[tuple[object, object]] = ranks.items()
    for token, rank in items:
        if not isinstance(token, bytes) or not token:
            raise ConfigError(f"a token must be non-empty bytes, got {token!r}", key="ranks")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise ConfigError(
                f"token {token!r} needs a non-negative integer id, got {rank!r}", key="ranks"
            )
        if rank in seen:
            raise ConfigError(
                f"tokens {seen[rank]!r} and {token!r} share id {rank}",
                key="ranks",
                hint="every token needs its own id",
            )
        seen[rank] = token
        result[token] = rank
    if len(seen) and max(seen) != len(seen) - 1:
        missing = next(i for i in range(len(seen)) if i not in seen)
        raise ConfigError(
            f"token ids must be 0..{len(seen) - 1} without gaps; id {missing} is missing",
            key="ranks",
            hint="renumber the tokens; special tokens go in special_tokens, not in ranks",
        )
    absent = sorted(b[0] for b in _SINGLE_BYTES.difference(result))
    if absent:
        raise ConfigError(
            f"{len(absent)} of the 256 single bytes are not tokens (e.g. byte {absent[0]}); a "
            "byte-level BPE needs all of them to encode any text",
            key="ranks",
            hint="add the missing single bytes to the vocabulary",
        )
    return result


class ByteLevelBPETokenizer(BaseTokenizer):
    """The shared part of byte-level BPE tokenizers: vocabulary, decoding, merges, files.

    Subclasses define how ordinary text is encoded (with or without a split pattern).
    """

    min_ordinary_tokens: ClassVar[int] = 256

    _ranks: dict[bytes, int]
    _tokens: list[bytes]
    _decoder: list[bytes | None]
    _merges: list[tuple[int, int]] | None

    def _init_bytes(self, specials: Mapping[str, int] | None) -> None:
        """Start from the 256 single bytes (id = byte value) and the given specials."""
        ranks = {bytes([b]): b for b in range(256)}
        self._set_vocab(
            ranks, merges=[], specials=validate_special_tokens(specials, n_ordinary=256)
        )

    def _set_vocab(
        self,
        ranks: dict[bytes, int],
        *,
        merges: list[tuple[int, int]] | None,
        specials: SpecialTokens,
    ) -> None:
        """Install a validated vocabulary (``merges`` None: recovered when needed)."""
        tokens: list[bytes] = [b""] * len(ranks)
        for token, rank in ranks.items():
            tokens[rank] = token
        size = max([len(tokens) - 1, *specials.values()]) + 1
        decoder: list[bytes | None] = [*tokens, *([None] * (size - len(tokens)))]
        for special, token_id in specials.items():
            decoder[token_id] = special.encode("utf-8")
        self._ranks = ranks
        self._tokens = tokens
        self._decoder = decoder
        self._merges = merges
        self._set_specials(specials)
        self._vocab_changed()

    def _vocab_changed(self) -> None:
        """Hook: drop whatever a subclass derived from the vocabulary (encoders, caches)."""

    # -- the vocabulary ----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Size of the id space: the largest ordinary or special id plus one."""
        return len(self._decoder)

    @property
    def mergeable_ranks(self) -> Mapping[bytes, int]:
        """Ordinary tokens' bytes to ids (read-only; tiktoken's ``mergeable_ranks``)."""
        return MappingProxyType(self._ranks)

    @property
    def n_ordinary(self) -> int:
        """The number of ordinary (non-special) tokens."""
        return len(self._tokens)

    def token_byte_values(self) -> list[bytes]:
        """The ordinary tokens' bytes, in id order.

        Returns:
            A new list; item ``i`` is token ``i``'s bytes.
        """
        return list(self._tokens)

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The ordered merges: item ``i`` is the pair of ids that token ``256 + i`` joins.

        Recovered from the ranks for a vocabulary that was not trained here (the pair the
        BPE rule itself finds when limited to earlier tokens).

        Raises:
            CompatibilityError: When ids 0..255 are not the single bytes, or a token is not
                the join of two earlier tokens (possible only in foreign vocabularies).
        """
        if self._merges is None:
            self._merges = self._recover_merges()
        return list(self._merges)

    def _check_byte_layout(self) -> None:
        tokens = self._tokens
        for i in range(256):
            if len(tokens[i]) != 1:
                raise CompatibilityError(
                    f"token {i} is {tokens[i]!r}, not a single byte: the merges format needs "
                    "the 256 single bytes at ids 0..255",
                    key=str(i),
                    hint="renumber the vocabulary so that single bytes come first",
                )

    def _recover_merges(self) -> list[tuple[int, int]]:
        self._check_byte_layout()
        tokens = self._tokens
        ranks = self._ranks
        merges: list[tuple[int, int]] = []
        for rank in range(256, len(tokens)):
            token = tokens[rank]
            parts = bpe_parts(token, ranks, max_rank=rank)
            if len(parts) != 2:
                raise CompatibilityError(
                    f"token {rank} ({token!r}) is not the merge of two earlier tokens, so the "
                    "vocabulary cannot be written as ordered merges",
                    key=str(rank),
                    hint="this vocabulary can be used, and exported with to_tiktoken() or a "
                    ".tiktoken file, but not saved in the lego merges format",
                )
            merges.append((ranks[parts[0]], ranks[parts[1]]))
        return merges

    def byte_order(self) -> list[int]:
        """The byte value of each of the ids 0..255 (identity for tokenizers trained here).

        Returns:
            A list of 256 byte values.

        Raises:
            CompatibilityError: When ids 0..255 are not the single bytes.
        """
        self._check_byte_layout()
        return [self._tokens[i][0] for i in range(256)]

    # -- decoding ----------------------------------------------------------------------------

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Decode ids to the raw bytes they stand for.

        Args:
            ids: Token ids (ordinary or special).

        Returns:
            The bytes (special tokens as their UTF-8 strings).

        Raises:
            DataError: On an id that is not in the vocabulary, naming it.
        """
        decoder = self._decoder
        try:
            if ids and min(ids) < 0:
                raise IndexError  # a negative index would silently pick a token
            return b"".join([decoder[i] for i in ids])  # type: ignore[misc]
        except (IndexError, TypeError):
            for i in ids:
                value: object = i  # typed int, but given by the caller: check it
                if (
                    not isinstance(value, int)
                    or isinstance(value, bool)
                    or not 0 <= value < len(decoder)
                    or decoder[value] is None
                ):
                    raise self._bad_id(i) from None
            raise

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text; bytes that are not valid UTF-8 become U+FFFD.

        Args:
            ids: Token ids (ordinary or special).

        Returns:
            The text.

        Raises:
            DataError: On an id that is not in the vocabulary.
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        """Return one token's bytes.

        Args:
            token_id: An ordinary or special id.

        Returns:
            The token's bytes.

        Raises:
            DataError: When the id is not in the vocabulary.
        """
        return self.decode_bytes([token_id])

    def id_to_token(self, token_id: int) -> str:
        """Return one token as readable text (invalid UTF-8 as U+FFFD).

        Args:
            token_id: An ordinary or special id.

        Returns:
            The token's text.
        """
        return self.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")

    # -- training ----------------------------------------------------------------------------

    def _learn(
        self,
        counts: Counter[str],
        vocab_size: int,
        special_tokens: SpecialTokensArg,
        progress: Progress,
    ) -> None:
        n_merges = vocab_size - len(special_tokens) - 256
        words: dict[bytes, int] = {}
        for text, count in counts.items():
            data_bytes = fix_surrogates(text).encode("utf-8")
            words[data_bytes] = words.get(data_bytes, 0) + count
        counts.clear()  # free the pieces' strings before the merge loop
        with progress.task(
            f"{self._training_description()}: making tokens", total=n_merges, unit="tokens"
        ) as task:
            report = task.update if progress.mode != "none" else None
            result = learn_merges(words, n_merges, on_merge=report)
        ranks = {token: i for i, token in enumerate(result.vocab)}
        specials = place_special_tokens(
            special_tokens, vocab_size, minimum=256, n_ordinary=len(ranks)
        )
        self._set_vocab(ranks, merges=list(result.merges), specials=specials)

    # -- files -------------------------------------------------------------------------------

    def _bpe_fields(self) -> dict[str, Any]:
        merges = self.merges
        order = self.byte_order()
        tokens = self._tokens
        fields: dict[str, Any] = {}
        if order != list(range(256)):
            fields["byte_order"] = order
        fields["merges"] = [[token_to_str(tokens[a]), token_to_str(tokens[b])] for a, b in merges]
        fields["special_tokens"] = dict(self._specials)
        return fields

    def _vocab_dump(self) -> str:
        tokens = self._tokens
        try:
            merges: list[tuple[int, int]] | None = self.merges
        except CompatibilityError:
            merges = None
        lines = []
        for token_id, token in enumerate(tokens):
            shown = render_token(token)
            if merges is not None and token_id >= 256:
                a, b = merges[token_id - 256]
                left, right = render_token(tokens[a]), render_token(tokens[b])
                lines.append(f"[{left}][{right}] -> [{shown}] {token_id}")
            else:
                lines.append(f"[{shown}] {token_id}")
        for special, token_id in self._specials.items():
            lines.append(f"[{render_token(special)}] {token_id} (special)")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _read_bpe_fields(
        reader: FieldReader,
    ) -> tuple[dict[bytes, int], list[tuple[int, int]], SpecialTokens]:
        """Rebuild ranks, merges and specials from a file's fields, validating everything."""
        order = reader.fields.get("byte_order")
        if order is None:
            order = list(range(256))
        elif (
            not isinstance(order, list)
            or len(order) != 256
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in order)
            or sorted(order) != list(range(256))
        ):
            raise reader.error(
                "'byte_order' must list each byte value 0..255 exactly once", key="byte_order"
            )
        ranks: dict[bytes, int] = {bytes([b]): i for i, b in enumerate(order)}
        tokens: list[bytes] = [bytes([b]) for b in order]
        merges: list[tuple[int, int]] = []
        raw_merges = reader.get("merges", list)
        for index, item in enumerate(raw_merges):
            key = f"merges[{index}]"
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(part, str) and part for part in item)
            ):
                raise reader.error(
                    f"merge {index} must be a pair of non-empty byte-level strings, got {item!r}",
                    key=key,
                )
            try:
                left = str_to_token(item[0])
                right = str_to_token(item[1])
            except FormatError as exc:
                raise reader.error(exc.message, key=key, hint=exc.hint) from None
            left_id = ranks.get(left)
            right_id = ranks.get(right)
            if left_id is None or right_id is None:
                missing = item[0] if left_id is None else item[1]
                raise reader.error(
                    f"merge {index} uses the token {missing!r}, which no earlier merge or "
                    "single byte defines",
                    key=key,
                    hint="merges must be in order: each part must exist before it is used",
                )
            merged = left + right
            if merged in ranks:
                raise reader.error(
                    f"merge {index} makes the token {token_to_str(merged)!r}, which already has "
                    f"id {ranks[merged]} (duplicate token)",
                    key=key,
                )
            ranks[merged] = len(tokens)
            tokens.append(merged)
            merges.append((left_id, right_id))
        try:
            specials = validate_special_tokens(reader.special_tokens(), n_ordinary=len(tokens))
        except ConfigError as exc:
            raise reader.error(exc.message, key="special_tokens", hint=exc.hint) from None
        return ranks, merges, specials
