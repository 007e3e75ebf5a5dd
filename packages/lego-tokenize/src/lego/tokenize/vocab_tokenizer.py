"""Tokenizers over a string [`Vocabulary`][lego.tokenize.Vocabulary]: the char and word kinds.

Text is cut into pieces with a regex (one character; or words, punctuation and whitespace
runs), each piece is looked up in the vocabulary (``<unk>`` when absent) and decoding joins
the pieces back, so text made only of known pieces round-trips exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from lego.protocols import ConfigError, DataError, Progress, check_int
from lego.tokenize.base import BaseTokenizer, SpecialTokensArg
from lego.tokenize.fileformat import FieldReader, render_token
from lego.tokenize.patterns import compile_pattern
from lego.tokenize.vocabulary import UNK, Vocabulary

__all__ = ["VocabularyTokenizer"]


class VocabularyTokenizer(BaseTokenizer):
    """A tokenizer that cuts text with a regex and looks the pieces up in a vocabulary.

    The base of [`CharTokenizer`][lego.tokenize.CharTokenizer] and
    [`WordTokenizer`][lego.tokenize.WordTokenizer].

    Args:
        vocabulary: The vocabulary (default: empty but for ``<unk>`` and
            ``<|endoftext|>``).
        min_frequency: What ``train`` keeps: pieces seen at least this often.
    """

    vocab_size_is_target: ClassVar[bool] = False
    """``vocab_size`` caps the vocabulary: keep the most frequent pieces, up to that many."""

    split_pattern: ClassVar[str]
    """The regex that cuts text into pieces."""

    def __init__(self, *, vocabulary: Vocabulary | None = None, min_frequency: int = 1) -> None:
        check_int("min_frequency", min_frequency, minimum=1, owner=type(self).__name__)
        self._findall = compile_pattern(self.split_pattern).findall
        self.min_frequency = min_frequency
        self._set_vocabulary(vocabulary or Vocabulary.build({}))

    def _set_vocabulary(self, vocabulary: Vocabulary) -> None:
        self._check_vocabulary(vocabulary)
        self._vocab = vocabulary
        self._set_specials(vocabulary.special_tokens)
        self._ids = {token: i for i, token in enumerate(vocabulary.tokens)}
        self._unk = vocabulary.unk_id

    def _check_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Hook: reject tokens this kind of tokenizer cannot produce."""

    @property
    def vocabulary(self) -> Vocabulary:
        """The vocabulary."""
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """Size of the id space: the largest id plus one."""
        return self._vocab.size

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special tokens' strings as ordinary text.

        Args:
            text: Any Unicode string.

        Returns:
            The ids; pieces not in the vocabulary get the ``<unk>`` id.

        Raises:
            DataError: On an unknown piece when the vocabulary has no ``<unk>``.
        """
        ids = self._ids
        unk = self._unk
        pieces = self._findall(text)
        if unk is not None:
            return [ids.get(piece, unk) for piece in pieces]
        try:
            return [ids[piece] for piece in pieces]
        except KeyError as exc:
            piece = exc.args[0]
            raise DataError(
                f"{piece!r} is not in the vocabulary, which has no {UNK!r} token",
                key=piece,
                column=text.find(piece),
                hint="train on text that contains it, or build the vocabulary with an unk_token",
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text (special tokens as their strings).

        Args:
            ids: Token ids.

        Returns:
            The text.

        Raises:
            DataError: On an id that is not in the vocabulary.
        """
        token_for = self._vocab.token_for
        out = []
        for token_id in ids:
            value: object = token_id  # typed int, but given by the caller: check it inline
            ok = isinstance(value, int) and not isinstance(value, bool)
            token = token_for(token_id) if ok else None
            if token is None:
                raise self._bad_id(token_id)
            out.append(token)
        return "".join(out)

    def _pretoken_pattern(self) -> str:
        return self.split_pattern

    def _learn(
        self,
        counts: Counter[str],
        vocab_size: int,
        special_tokens: SpecialTokensArg,
        progress: Progress,
    ) -> None:
        unk = UNK if UNK in special_tokens else None
        self._set_vocabulary(
            Vocabulary.build(
                counts,
                max_size=vocab_size,
                min_frequency=self.min_frequency,
                special_tokens=special_tokens,
                unk_token=unk,
            )
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "tokens": list(self._vocab.tokens),
            "unk_token": self._vocab.unk_token,
            "special_tokens": dict(self._specials),
        }

    def _vocab_dump(self) -> str:
        lines = [f"[{render_token(token)}] {i}" for i, token in enumerate(self._vocab.tokens)]
        lines += [f"[{render_token(t)}] {i} (special)" for t, i in self._specials.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def _from_fields(cls, reader: FieldReader) -> VocabularyTokenizer:
        reader.check_keys({"tokens", "unk_token", "special_tokens"})
        tokens = reader.get("tokens", list)
        for i, token in enumerate(tokens):
            if not isinstance(token, str):
                raise reader.error(
                    f"token {i} must be a string, got {type(token).__name__}", key=f"tokens[{i}]"
                )
        unk = reader.fields["unk_token"]
        if unk is not None and not isinstance(unk, str):
            raise reader.error("'unk_token' must be a string or null", key="unk_token")
        try:
            vocabulary = Vocabulary(
                tokens=tokens, special_tokens=reader.special_tokens(), unk_token=unk
            )
            return cls(vocabulary=vocabulary)
        except ConfigError as exc:
            raise reader.error(exc.message, key=exc.key, hint=exc.hint) from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, vocabulary={self._vocab!r})"
