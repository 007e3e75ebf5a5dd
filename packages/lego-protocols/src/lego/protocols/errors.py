"""The error hierarchy every LegoLLM brick raises.

Every error says three things: what was wrong, where (file, key, line, tensor name), and
what to do. The "where" and "what to do" parts are keyword arguments, so they stay
machine-readable (``err.path``, ``err.key``, ...) and are rendered into ``str(err)``::

    >>> raise ConfigError(
    ...     "n_head must divide n_embd (768 % 10 != 0)",
    ...     path="configs/tiny.yaml",
    ...     key="model.n_head",
    ...     hint="choose n_head in {1, 2, 3, 4, 6, 8, 12, ...}",
    ... )
    Traceback (most recent call last):
    ...
    lego.protocols.errors.ConfigError: n_head must divide n_embd (768 % 10 != 0)
      where: configs/tiny.yaml, key 'model.n_head'
      what to do: choose n_head in {1, 2, 3, 4, 6, 8, 12, ...}

Errors survive pickling with their context intact, so an error raised in a worker
process (tokenizer training, data preparation) reaches the parent unchanged.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from typing import Any

__all__ = [
    "LegoError",
    "ConfigError",
    "FormatError",
    "CompatibilityError",
    "DataError",
    "TrainingError",
    "closest",
    "did_you_mean",
]


class LegoError(Exception):
    """Base class of every error a LegoLLM brick raises on purpose.

    Catch ``LegoError`` to tell bad input (exit code 2 on the command line) from bugs.

    Args:
        message: What was wrong, as one sentence without a trailing period.
        path: The file or directory involved.
        key: The configuration key, JSON field or dictionary key involved.
        line: The 1-based line number in ``path``.
        column: The 1-based column or byte offset in ``line`` (or in the file when
            ``line`` is None).
        tensor: The tensor (weight name, argument name) involved.
        hint: What the user should do about it.

    Attributes:
        message: The bare message, without location or hint.
        path: As given (converted to ``str``), or None.
        key: As given, or None.
        line: As given, or None.
        column: As given, or None.
        tensor: As given, or None.
        hint: As given, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        key: str | None = None,
        line: int | None = None,
        column: int | None = None,
        tensor: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.key = key
        self.line = line
        self.column = column
        self.tensor = tensor
        self.hint = hint
        super().__init__(self._render())

    @property
    def context(self) -> dict[str, Any]:
        """The non-empty location fields and the hint, as a dictionary."""
        fields = {
            "path": self.path,
            "key": self.key,
            "line": self.line,
            "column": self.column,
            "tensor": self.tensor,
            "hint": self.hint,
        }
        return {name: value for name, value in fields.items() if value is not None}

    @property
    def where(self) -> str | None:
        """The location rendered as one phrase (e.g. ``"a.json, line 3, key 'merges'"``)."""
        parts: list[str] = []
        if self.path is not None:
            parts.append(self.path)
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.column is not None:
            parts.append(
                f"column {self.column}" if self.line is not None else f"byte {self.column}"
            )
        if self.key is not None:
            parts.append(f"key {self.key!r}")
        if self.tensor is not None:
            parts.append(f"tensor {self.tensor!r}")
        return ", ".join(parts) if parts else None

    def _render(self) -> str:
        text = self.message
        where = self.where
        if where is not None:
            text += f"\n  where: {where}"
        if self.hint is not None:
            text += f"\n  what to do: {self.hint}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as ``cls(*self.args)``; keyword-only context would be lost.
        return (_rebuild, (type(self), self.message, self.context))


def _rebuild(cls: type[LegoError], message: str, context: dict[str, Any]) -> LegoError:
    return cls(message, **context)


class ConfigError(LegoError):
    """A configuration value, key or combination of values is invalid."""


class FormatError(LegoError):
    """A file is not what it claims to be: corrupt, truncated, tampered or of another format."""


class CompatibilityError(LegoError):
    """Weights, configuration and tokenizer do not fit together (names, shapes, vocab sizes)."""


class DataError(LegoError):
    """Input data is unusable: an empty corpus, ids out of range, bad batches or records.

    A *file* whose bytes are not what it claims (not UTF-8, not JSON) is a
    [`FormatError`][lego.protocols.FormatError]; see [`lego.protocols.files`][lego.protocols.files].
    """


class TrainingError(LegoError):
    """Training cannot go on: a non-finite loss, a missing or mismatched checkpoint."""


def closest(word: str, choices: Iterable[str], *, n: int = 3) -> list[str]:
    """Return up to ``n`` of ``choices`` that look like ``word``, best first.

    Only names about as close as the best one are kept, so ``"n_heads"`` suggests
    ``"n_head"`` and not also ``"n_embd"``. Case is ignored.

    Args:
        word: The unknown name the user typed.
        choices: The valid names.
        n: How many suggestions at most.

    Returns:
        The close matches (possibly empty), best first.
    """
    matcher = difflib.SequenceMatcher(None)
    matcher.set_seq2(word.lower())  # seq2 is the side SequenceMatcher precomputes
    scored: list[tuple[float, str]] = []
    for choice in choices:
        matcher.set_seq1(choice.lower())
        if matcher.real_quick_ratio() >= 0.6 and matcher.quick_ratio() >= 0.6:
            scored.append((matcher.ratio(), choice))
    scored.sort(key=lambda pair: -pair[0])
    if not scored or scored[0][0] < 0.6:
        return []
    best = scored[0][0]
    return [c for score, c in scored[:n] if score >= 0.6 and score >= best - 0.1]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Build a hint for an unknown name: the closest valid names, or all of them.

    Args:
        word: The unknown name.
        choices: The valid names.

    Returns:
        A sentence such as ``"did you mean 'n_embd'?"`` or ``"valid names: a, b, c"``.
    """
    options = sorted(choices)
    matches = closest(word, options)
    if matches:
        return "did you mean " + " or ".join(repr(m) for m in matches) + "?"
    if not options:
        return "there are no valid names here"
    return "valid names: " + ", ".join(options)
