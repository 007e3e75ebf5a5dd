"""What every LegoLLM tokenizer shares: special-token rules, encode/decode, training, save."""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from lego.protocols import (
    ConfigError,
    DataError,
    Progress,
    SpecialTokens,
    TrainingData,
    check_int,
    make_progress,
)
from lego.tokenize.fileformat import write_tokenizer_file
from lego.tokenize.specials import (
    AllowedSpecial,
    DisallowedSpecial,
    check_disallowed,
    resolve_special_sets,
    split_specials,
)
from lego.tokenize.training import DEFAULT_CHUNK_SIZE, count_pretokens
from lego.tokenize.training.sources import Errors

__all__ = [
    "BaseTokenizer",
    "SpecialTokensArg",
    "VocabSizeNotReachedWarning",
    "place_special_tokens",
]

SpecialTokensArg = Mapping[str, int] | Sequence[str]
"""Special tokens for ``train``: strings to explicit ids, or strings alone (numbered after
the ordinary vocabulary, in the given order)."""

_NONE: frozenset[str] = frozenset()


def place_special_tokens(
    specials: SpecialTokensArg | None,
    vocab_size: int,
    *,
    minimum: int,
    n_ordinary: int | None = None,
) -> SpecialTokens:
    """Check ``vocab_size`` and number the special tokens of a training run.

    Training makes at most ``vocab_size - len(specials)`` ordinary tokens. Explicit special
    ids must be the ``len(specials)`` ids above those (the top of the vocabulary). Strings
    alone are numbered right after the ordinary tokens actually made (``n_ordinary``), so a
    corpus too small to fill the vocabulary leaves no gap.

    Args:
        specials: Strings to ids, strings alone, or None for none.
        vocab_size: The largest size of the id space, special tokens included.
        minimum: The fewest ordinary tokens the tokenizer needs (256 for byte-level BPE).
        n_ordinary: The number of ordinary tokens made (default: the most there can be).

    Returns:
        The validated special tokens.

    Raises:
        ConfigError: When ``vocab_size`` is not an integer, is too small, or an explicit id
            is outside the top range.
    """
    check_int("vocab_size", vocab_size)
    if isinstance(specials, str):
        raise ConfigError(
            "special_tokens must be a mapping or a list of strings, not one string",
            key="special_tokens",
            hint=f"write special_tokens=[{specials!r}]",
        )
    items = list(specials.items()) if isinstance(specials, Mapping) else None
    names = [token for token, _ in items] if items is not None else list(specials or ())
    n_specials = len(names)
    if vocab_size < minimum + n_specials:
        raise ConfigError(
            f"vocab_size {vocab_size} is too small: it must be at least {minimum} "
            f"(the base tokens) + {n_specials} (special tokens) = {minimum + n_specials}",
            key="vocab_size",
            hint=f"use vocab_size >= {minimum + n_specials}",
        )
    first = vocab_size - n_specials
    if items is None:
        start = first if n_ordinary is None else n_ordinary
        if len(set(names)) != n_specials:
            duplicate = next(t for t in names if names.count(t) > 1)
            raise ConfigError(
                f"special token {duplicate!r} is listed twice",
                key="special_tokens",
                hint="list every special token once",
            )
        return SpecialTokens({token: start + i for i, token in enumerate(names)})
    tokens = SpecialTokens(dict(items))
    for token, token_id in tokens.items():
        if not first <= token_id < vocab_size:
            suggestion = ", ".join(f"{t!r}: {first + i}" for i, t in enumerate(names))
            raise ConfigError(
                f"special token {token!r} has id {token_id}, but with vocab_size {vocab_size} "
                f"and {n_specials} special token(s) their ids are {first}..{vocab_size - 1} "
                f"(ordinary tokens use 0..{first - 1})",
                key=token,
                hint=f"use {{{suggestion}}}, or pass the strings alone to number them",
            )
    return tokens


class VocabSizeNotReachedWarning(UserWarning):
    """Training made a smaller vocabulary than asked: the data has too few distinct pieces.

    Args:
        message: What happened and what to do.
        requested: The ``vocab_size`` asked for.
        reached: The ``vocab_size`` the tokenizer has.

    Attributes:
        requested: As given.
        reached: As given.
    """

    def __init__(self, message: str, *, requested: int, reached: int) -> None:
        super().__init__(message)
        self.requested = requested
        self.reached = reached

    @classmethod
    def of(cls, tokenizer: BaseTokenizer, requested: int) -> VocabSizeNotReachedWarning:
        """The warning for a trained tokenizer that has fewer ids than ``requested``.

        Args:
            tokenizer: The trained tokenizer.
            requested: The ``vocab_size`` asked for.

        Returns:
            The warning (warn or print it).
        """
        units = {"char": "characters", "word": "words"}.get(tokenizer.type_name)
        why = (
            f"holds too few distinct {units}"
            if units is not None
            else "has no byte pairs left to merge"
        )
        reached = tokenizer.vocab_size
        return cls(
            f"asked for a vocabulary of {requested} ids, reached {reached}: the training data "
            f"{why} (the tokenizer is complete and usable; train on more varied text, or ask "
            f"for at most {reached})",
            requested=requested,
            reached=reached,
        )


class BaseTokenizer(ABC):
    """What every LegoLLM tokenizer shares.

    The base of [`CharTokenizer`][lego.tokenize.CharTokenizer],
    [`WordTokenizer`][lego.tokenize.WordTokenizer],
    [`NaiveBPETokenizer`][lego.tokenize.NaiveBPETokenizer] and
    [`RegexBPETokenizer`][lego.tokenize.RegexBPETokenizer]. Subclasses implement
    ordinary-text encoding, decoding of ids to text, what training learns from the counted
    pieces, and their file fields; special tokens follow tiktoken's rules here for all of
    them, and the corpus is read and counted here for all of them.
    """

    type_name: ClassVar[str]
    """The ``type`` field of this tokenizer's file."""

    min_ordinary_tokens: ClassVar[int] = 1
    """The fewest ordinary tokens a trained vocabulary holds (256 for byte-level BPE)."""

    vocab_size_is_target: ClassVar[bool] = True
    """Whether ``train``'s ``vocab_size`` is a size to reach (BPE: a
    [`VocabSizeNotReachedWarning`][lego.tokenize.VocabSizeNotReachedWarning] when the data
    cannot make that many tokens) or a cap (the char and word tokenizers keep at most that
    many pieces)."""

    _specials: SpecialTokens
    _special_set: frozenset[str]

    def _set_specials(self, specials: SpecialTokens) -> None:
        """Install the special tokens (and the set that ``encode`` disallows by default)."""
        self._specials = specials
        self._special_set = frozenset(specials)

    @property
    def special_tokens(self) -> SpecialTokens:
        """Special-token strings to ids (an immutable mapping, ascending ids)."""
        return self._specials

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of the id space: the largest id (ordinary or special) plus one."""

    @abstractmethod
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special tokens' strings as ordinary text.

        Args:
            text: Any Unicode string.

        Returns:
            The ids.
        """

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text.

        Args:
            ids: Token ids (ordinary or special).

        Returns:
            The text.

        Raises:
            DataError: On an id that is not in the vocabulary.
        """

    @abstractmethod
    def _pretoken_pattern(self) -> str | None:
        """The regex that cuts training text into the pieces counted (None: whole texts)."""

    @abstractmethod
    def _learn(
        self,
        counts: Counter[str],
        vocab_size: int,
        special_tokens: SpecialTokensArg,
        progress: Progress,
    ) -> None:
        """Make the vocabulary from the counted pieces and install it.

        Args:
            counts: Piece to number of occurrences (not empty; the method may consume it).
            vocab_size: The largest id space, special tokens included (already checked).
            special_tokens: The special tokens to register (already checked).
            progress: The display to report the learning phase on (a task of its own).
        """

    def _training_description(self) -> str:
        """What the progress display calls this training run."""
        return self.type_name

    @abstractmethod
    def _fields(self) -> dict[str, Any]:
        """The type's file fields, ``special_tokens`` included."""

    @abstractmethod
    def _vocab_dump(self) -> str:
        """The human-readable ``.vocab`` text."""

    def encode(
        self,
        text: str,
        *,
        allowed_special: AllowedSpecial = frozenset(),
        disallowed_special: DisallowedSpecial = "all",
    ) -> list[int]:
        """Encode text to ids, with tiktoken's special-token rules.

        Args:
            text: Any Unicode string.
            allowed_special: ``"all"`` or the special tokens to encode as their ids where
                their strings appear.
            disallowed_special: ``"all"`` (every special not allowed) or strings whose
                appearance is an error; ``()`` encodes them as ordinary text.

        Returns:
            The ids, each below ``vocab_size``.

        Raises:
            DisallowedSpecialError: When the text holds a disallowed special's string.
        """
        if not allowed_special and disallowed_special == "all":  # the default: no set algebra
            allowed, disallowed = _NONE, self._special_set
        else:
            allowed, disallowed = resolve_special_sets(
                self._specials, allowed_special, disallowed_special
            )
        return self._encode_resolved(text, allowed, disallowed)

    def _encode_resolved(
        self, text: str, allowed: frozenset[str], disallowed: frozenset[str]
    ) -> list[int]:
        """Encode with the special-token sets resolved (see ``encode``).

        Args:
            text: Any Unicode string.
            allowed: Registered specials to encode as their ids.
            disallowed: Strings whose appearance is an error.

        Returns:
            The ids.

        Raises:
            DisallowedSpecialError: When the text holds a disallowed string.
        """
        check_disallowed(text, disallowed)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for piece, is_special in split_specials(text, allowed):
            if is_special:
                ids.append(self._specials[piece])
            else:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def train(
        self,
        data: TrainingData,
        vocab_size: int,
        *,
        special_tokens: SpecialTokensArg | None = None,
        verbose: bool | Progress = False,
        workers: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        errors: Errors = "strict",
    ) -> None:
        """Learn the vocabulary from ``data``, replacing the current one.

        The data is streamed in chunks to ``workers`` processes that cut it into pieces and
        count them (see [`count_pretokens`][lego.tokenize.training.count_pretokens]); then
        the tokenizer makes its vocabulary from the counts: BPE learns
        ``vocab_size - 256 - len(special_tokens)`` merges with the incremental merge loop of
        [`learn_merges`][lego.tokenize.training.learn_merges], the char and word tokenizers
        keep the most frequent pieces. The result depends only on the data and the
        arguments, never on ``workers`` or ``chunk_size``. With more than one worker, a
        script that trains must guard its entry point with ``if __name__ == "__main__":``
        (workers may be started with ``spawn``, which imports the script again).

        Args:
            data: A string (text), a path (a file), or an iterable of both, of any size;
                each string and each file is one document, kept whole.
            vocab_size: The final id space, special tokens included (at least
                ``min_ordinary_tokens`` + the number of special tokens).
            special_tokens: Strings to ids (the top ids of the vocabulary) or strings alone
                (numbered after the ordinary tokens, in order); None keeps the current
                special strings. Their occurrences in the data are cut out before counting.
            verbose: Show progress on standard error (True: a rich bar on a terminal, plain
                lines otherwise, see
                [`make_progress`][lego.protocols.make_progress]), or a
                [`Progress`][lego.protocols.Progress] display to report to (it is left
                open). Two tasks: counting characters, then making tokens.
            workers: Counting processes (None: one per CPU; 1: in-process).
            chunk_size: Characters per chunk handed to a worker.
            errors: ``"strict"``: a file that is not UTF-8 is an error naming the file and
                byte offset; ``"replace"``: bad bytes read as U+FFFD.

        Raises:
            ConfigError: On a too small ``vocab_size`` or bad special tokens (checked before
                any data is read), or a file that does not exist or cannot be read.
            FormatError: With ``errors="strict"``, on a file that is not UTF-8.
            DataError: On an empty corpus.
        """
        specials: SpecialTokensArg = (
            special_tokens if special_tokens is not None else list(self._specials)
        )
        place_special_tokens(specials, vocab_size, minimum=self.min_ordinary_tokens)
        # a caller's display stays open; one made here closes at the end
        with make_progress(verbose) as display:
            with display.task(
                f"{self._training_description()}: counting characters", unit="chars"
            ) as task:
                counts = count_pretokens(
                    data,
                    pattern=self._pretoken_pattern(),
                    special_tokens=tuple(specials),
                    workers=workers,
                    chunk_size=chunk_size,
                    errors=errors,
                    on_chunk=task.advance if display.mode != "none" else None,
                )
            if not counts:
                raise DataError(
                    "the training corpus is empty (no text outside special tokens)",
                    key="data",
                    hint="pass text, files with text, or an iterable of them; a plain str is "
                    "text, use pathlib.Path for a file",
                )
            self._learn(counts, vocab_size, specials, display)
        if self.vocab_size < vocab_size and self.vocab_size_is_target:
            warnings.warn(VocabSizeNotReachedWarning.of(self, vocab_size), stacklevel=2)

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        vocab_file: str | os.PathLike[str] | bool = True,
    ) -> Path | None:
        """Write the tokenizer to one versioned JSON file, and a ``.vocab`` dump beside it.

        The file is described in [`lego.tokenize.fileformat`][lego.tokenize.fileformat];
        [`lego.tokenize.load`][lego.tokenize.load] reads it back. The write is atomic. The
        dump (human-readable, never read back) goes beside the file (``tok.json`` ->
        ``tok.vocab``) and replaces only an earlier dump there: another file of that name is
        an error, raised before anything is written.

        Args:
            path: The file to write, conventionally ``*.json``.
            vocab_file: True: the dump goes beside ``path``; False: no dump; a path: the dump
                goes there (replacing what is there, unless it is ``path``).

        Returns:
            The dump's path, or None when none was written.

        Raises:
            ConfigError: When the file cannot be written (a missing folder, no permission),
                or the dump would replace the tokenizer file or a file that is not a dump.
            CompatibilityError: When the vocabulary cannot be written as merges.
        """
        dump = self._vocab_dump() if vocab_file is not False else None
        named = None if isinstance(vocab_file, bool) else vocab_file
        return write_tokenizer_file(
            path, self.type_name, self._fields(), vocab_dump=dump, vocab_file=named
        )

    def _bad_id(self, token_id: object) -> DataError:
        return DataError(
            f"token id {token_id!r} is not in the vocabulary (vocab_size {self.vocab_size})",
            key=str(token_id),
            hint=f"ids must be integers in 0..{self.vocab_size - 1} that the tokenizer "
            "defines; were the ids made by another tokenizer?",
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, "
            f"special_tokens={dict(self._specials)!r})"
        )
