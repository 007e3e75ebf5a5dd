r"""Pre-tokenization split patterns: GPT-2's, GPT-4's (cl100k), o200k's and LLaMA 3's.

A regex BPE tokenizer first splits text into *pre-tokens* with a regular expression
(matched with the ``regex`` module, which knows ``\p{L}`` and possessive quantifiers) and
never merges across their borders. The built-in patterns are the ones tiktoken and Meta's
LLaMA 3 tokenizer use, character for character, so the same merges give the same ids.

Example:
    >>> resolve_pattern("gpt4") == PATTERNS["gpt4"]
    True
    >>> resolve_pattern(r"\w+|\s+")
    '\\w+|\\s+'
"""

from __future__ import annotations

import functools
import re as _stdlib_re
from collections.abc import Mapping
from types import MappingProxyType

import regex

from lego.protocols import ConfigError, did_you_mean

__all__ = ["PATTERNS", "GPT2_PATTERN", "GPT4_PATTERN", "O200K_PATTERN", "LLAMA3_PATTERN"]
__all__ += ["resolve_pattern", "compile_pattern", "pattern_name"]

GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
"""GPT-2's split (tiktoken's ``r50k_base`` form; splits like GPT-2's original pattern)."""

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
"""GPT-4's split (tiktoken's ``cl100k_base``): numbers in groups of up to three digits."""

O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
"""GPT-4o's split (tiktoken's ``o200k_base``): camel-case aware, contractions attached."""

LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""LLaMA 3's split (Meta's ``tokenizer.py``): cl100k's, without possessive quantifiers."""

PATTERNS: Mapping[str, str] = MappingProxyType(
    {
        "gpt2": GPT2_PATTERN,
        "gpt4": GPT4_PATTERN,
        "o200k": O200K_PATTERN,
        "llama3": LLAMA3_PATTERN,
    }
)
"""The built-in split patterns by name (read-only)."""

_NAME_LIKE = _stdlib_re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*\Z")


def resolve_pattern(name_or_regex: str) -> str:
    r"""Turn a pattern name or a custom regex into the regex string.

    A known name (``"gpt2"``, ``"gpt4"``, ``"o200k"``, ``"llama3"``; case-insensitive)
    gives its pattern. A string that looks like a name (letters, digits, ``_``, ``-``, ``.``)
    but is not one is an error with suggestions, so a typo never silently becomes a regex
    that matches the literal word. Anything else must compile as a ``regex`` pattern.

    Args:
        name_or_regex: A pattern name or a regular expression (``regex`` syntax, e.g.
            ``\p{L}``).

    Returns:
        The regex string.

    Raises:
        ConfigError: On an unknown name or a regex that does not compile.
    """
    value: object = name_or_regex
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"a split pattern must be a non-empty string, got {name_or_regex!r}",
            key="pattern",
            hint="use one of " + ", ".join(PATTERNS) + " or a regular expression",
        )
    known = PATTERNS.get(name_or_regex.lower())
    if known is not None:
        return known
    if _NAME_LIKE.match(name_or_regex):
        raise ConfigError(
            f"unknown split pattern {name_or_regex!r}",
            key="pattern",
            hint=did_you_mean(name_or_regex.lower(), PATTERNS)
            + " (a custom regex that is a plain word can be written as (?:word))",
        )
    compile_pattern(name_or_regex)
    return name_or_regex


@functools.lru_cache(maxsize=32)
def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile a split pattern with the ``regex`` module (cached).

    Args:
        pattern: The regex string.

    Returns:
        The compiled pattern.

    Raises:
        ConfigError: When the pattern does not compile or can match the empty string.
    """
    try:
        compiled = regex.compile(pattern)
    except (regex.error, TypeError, ValueError) as exc:
        raise ConfigError(
            f"the split pattern does not compile: {exc}",
            key="pattern",
            hint="write a `regex`-module regular expression (\\p{L} classes and possessive "
            "quantifiers are allowed), or use a named pattern: " + ", ".join(PATTERNS),
        ) from None
    if compiled.fullmatch("") is not None:
        raise ConfigError(
            f"the split pattern {pattern!r} matches the empty string",
            key="pattern",
            hint="make every alternative consume at least one character",
        )
    return compiled


def pattern_name(pattern: str) -> str | None:
    """Return the built-in name of a pattern string, or None for a custom one.

    Args:
        pattern: A regex string.

    Returns:
        ``"gpt2"``, ``"gpt4"``, ``"o200k"``, ``"llama3"`` or None.
    """
    for name, known in PATTERNS.items():
        if known == pattern:
            return name
    return None
