r"""Translate split patterns between tiktoken's regex dialect and HuggingFace's (Oniguruma).

tiktoken matches split patterns with Rust's ``fancy-regex`` (and lego-tokenize's Python
encoder with the ``regex`` module); HuggingFace ``tokenizers`` compiles ``Split`` patterns
with Oniguruma in its Ruby syntax. The dialects agree on almost everything the split
patterns use (``\p{L}``, ``(?i:...)``, ``?+``/``++``/``*+`` possessive quantifiers,
look-ahead) but not on three things, which are translated here:

- a possessive *interval* ``X{1,3}+`` (used by cl100k's ``\p{N}{1,3}+``) is a repeated
  interval ``(?:X{1,3})+`` in Ruby syntax; it is written as the atomic group
  ``(?>X{1,3})``;
- ``$`` and ``^`` mean end and start of *line* in Ruby syntax, of the *text* in Rust's; they
  are written as ``\z`` and ``\A``.

[`from_onig`][lego.tokenize.interop.hf_regex.from_onig] undoes
[`to_onig`][lego.tokenize.interop.hf_regex.to_onig] exactly, and translates the Ruby forms
found in other tokenizer files (``X{1,3}+``, line anchors) to their meaning.

Example:
    >>> to_onig(r"\p{N}{1,3}+|\s++$")
    '(?>\\p{N}{1,3})|\\s++\\z'
    >>> from_onig(to_onig(r"\p{N}{1,3}+|\s++$"))
    '\\p{N}{1,3}+|\\s++$'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lego.protocols import ConfigError

__all__ = ["to_onig", "from_onig"]

_INTERVAL = re.compile(r"\{(\d*)(,\d*)?\}")
_BRACED_ESCAPE = re.compile(r"\\[pPxuNgk]\{[^}]*\}|\\[pP]\^?[A-Za-z]")


@dataclass(frozen=True)
class _Piece:
    r"""One lexical piece of a pattern.

    Attributes:
        kind: ``"atom"`` (an escape, a class, a literal character, ``.``), ``"open"``,
            ``"close"``, ``"interval"``, ``"quant"`` (``*``, ``+``, ``?``), ``"anchor"``
            (``^``, ``$``, ``\A``, ``\z``) or ``"other"`` (``|``).
        text: The source text.
    """

    kind: str
    text: str


def _class_end(pattern: str, start: int) -> int:
    # pattern[start] == "["; returns the index just after the matching "]".
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1  # a leading "]" is a literal
    depth = 1
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            match = _BRACED_ESCAPE.match(pattern, i)
            i = match.end() if match else i + 2
            continue
        if char == "[":
            if pattern.startswith("[:", i):
                close = pattern.find(":]", i + 2)
                if close != -1:
                    i = close + 2
                    continue
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ConfigError(
        f"the split pattern has an unclosed character class at position {start}",
        key="pattern",
        hint="close every '[' with a ']'",
    )


def _lex(pattern: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    i = 0
    n = len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if pattern.startswith(("\\A", "\\z", "\\Z", "\\G", "\\b", "\\B"), i):
                pieces.append(_Piece("anchor", pattern[i : i + 2]))
                i += 2
                continue
            match = _BRACED_ESCAPE.match(pattern, i)
            end = match.end() if match else min(i + 2, n)
            pieces.append(_Piece("atom", pattern[i:end]))
            i = end
        elif char == "[":
            end = _class_end(pattern, i)
            pieces.append(_Piece("atom", pattern[i:end]))
            i = end
        elif char == "(":
            # "(?" group heads ("(?:", "(?i:", "(?=", "(?<name>", ...) stay with the "(".
            end = i + 1
            if pattern.startswith("(?", i):
                head = re.match(
                    r"\(\?(?:[a-zA-Z\-]*:|[:=!>]|<[=!]|<[A-Za-z_]\w*>|P<\w+>|#)", pattern[i:]
                )
                end = i + (head.end() if head else 2)
            pieces.append(_Piece("open", pattern[i:end]))
            i = end
        elif char == ")":
            pieces.append(_Piece("close", ")"))
            i += 1
        elif char == "{" and (match := _INTERVAL.match(pattern, i)) and match.group(0) != "{}":
            pieces.append(_Piece("interval", match.group(0)))
            i = match.end()
        elif char in "*+?":
            pieces.append(_Piece("quant", char))
            i += 1
        elif char in "^$":
            pieces.append(_Piece("anchor", char))
            i += 1
        elif char == "|":
            pieces.append(_Piece("other", char))
            i += 1
        else:
            pieces.append(_Piece("atom", char))
            i += 1
    return pieces


def _atoms(pieces: list[_Piece]) -> list[tuple[int, int]]:
    """Map each piece index to the start and end piece index of the atom ending there."""
    spans: list[tuple[int, int]] = [(i, i) for i in range(len(pieces))]
    stack: list[int] = []
    for index, piece in enumerate(pieces):
        if piece.kind == "open":
            stack.append(index)
        elif piece.kind == "close" and stack:
            spans[index] = (stack.pop(), index)
    return spans


def _interval_plus(pieces: list[_Piece], i: int) -> bool:
    """Whether piece ``i`` is an interval ``{n,m}`` followed by ``+``, after an atom or group.

    The ``regex`` module reads ``X{n,m}+`` as possessive; Oniguruma (Ruby) as ``(?:X{n,m})+``.
    """
    return (
        pieces[i].kind == "interval"
        and i + 1 < len(pieces)
        and pieces[i + 1] == _Piece("quant", "+")
        and i > 0
        and pieces[i - 1].kind in ("atom", "close")
    )


def _pop_atom(out: list[str], starts: list[int], spans: list[tuple[int, int]], i: int) -> str:
    """Remove from ``out`` and return the text of the atom or group that ends before piece ``i``.

    Args:
        out: The output written so far, one entry per piece (or rewritten group).
        starts: For each piece so far, the index in ``out`` where its text begins.
        spans: For each piece, the ``(first, last)`` piece indices of the atom it ends.
        i: The piece after the atom.

    Returns:
        The atom's output text.
    """
    atom_start = starts[spans[i - 1][0]]
    atom = "".join(out[atom_start:])
    del out[atom_start:]
    return atom


def to_onig(pattern: str) -> str:
    r"""Write a tiktoken / ``regex``-module split pattern for HuggingFace (Oniguruma, Ruby).

    Args:
        pattern: The split regex as tiktoken uses it.

    Returns:
        A pattern that splits every text the same way in ``tokenizers``' ``Split``.

    Raises:
        ConfigError: When the pattern cannot be parsed (an unclosed class).
    """
    pieces = _lex(pattern)
    spans = _atoms(pieces)
    out: list[str] = []
    starts: list[int] = []  # out index where the text of each piece begins
    i = 0
    while i < len(pieces):
        piece = pieces[i]
        starts.append(len(out))
        if _interval_plus(pieces, i):
            atom = _pop_atom(out, starts, spans, i)
            out.append(f"(?>{atom}{piece.text})")
            starts.append(len(out))  # the "+" piece, now consumed
            i += 2
            continue
        if piece.kind == "anchor" and piece.text in ("$", "^"):
            out.append("\\z" if piece.text == "$" else "\\A")
        else:
            out.append(piece.text)
        i += 1
    return "".join(out)


def from_onig(pattern: str) -> str:
    r"""Read a HuggingFace (Oniguruma, Ruby syntax) split pattern as tiktoken's dialect.

    Args:
        pattern: The ``Split`` regex from a ``tokenizer.json``.

    Returns:
        A pattern that splits every text the same way in tiktoken and the ``regex`` module.

    Raises:
        ConfigError: When the pattern cannot be parsed (an unclosed class).
    """
    pieces = _lex(pattern)
    spans = _atoms(pieces)
    out: list[str] = []
    starts: list[int] = []
    i = 0
    while i < len(pieces):
        piece = pieces[i]
        starts.append(len(out))
        # "(?>" atom interval ")" -> atom interval "+"
        if piece == _Piece("open", "(?>"):
            close = next(
                (j for j in range(i + 1, len(pieces)) if spans[j] == (i, j)),
                None,
            )
            if (
                close is not None
                and close >= i + 3
                and pieces[close - 1].kind == "interval"
                and spans[close - 2][0] == i + 1
                and pieces[i + 1].kind in ("atom", "open")
            ):
                inner = from_onig("".join(p.text for p in pieces[i + 1 : close - 1]))
                out.append(f"{inner}{pieces[close - 1].text}+")
                starts.extend(len(out) for _ in range(i + 1, close + 1))
                i = close + 1
                continue
        if _interval_plus(pieces, i):
            # Ruby: "X{n,m}+" is "(?:X{n,m})+", a repeated interval.
            atom = _pop_atom(out, starts, spans, i)
            out.append(f"(?:{atom}{piece.text})+")
            starts.append(len(out))
            i += 2
            continue
        if piece.kind == "anchor":
            out.append(
                {"$": "(?m:$)", "^": "(?m:^)", "\\z": "$", "\\A": "^"}.get(piece.text, piece.text)
            )
        else:
            out.append(piece.text)
        i += 1
    return "".join(out)
