"""The tokenizer of ``prepare`` and ``summary``: lego-tokenize's spec, ``meta.json``'s identity.

lego-data names tokenizers the way every brick does, with lego-tokenize's one resolver
([`lego.tokenize.resolve_tokenizer`][lego.tokenize.resolve_tokenizer]): ``tiktoken:gpt2`` or
a bare encoding name (``gpt2``, ``cl100k_base``), a lego tokenizer ``.json`` file (or
``lego:PATH``), ``hf:tokenizer.json``, ``gpt2:FOLDER``. Any
[`Tokenizer`][lego.protocols.Tokenizer] object or ``tiktoken.Encoding`` works too. This
module adds what a prepared dataset records about its tokenizer
([`tokenizer_info()`][lego.data.tokenizers.tokenizer_info]) and the end-of-text id appended
after every document ([`find_eot_id()`][lego.data.tokenizers.find_eot_id]).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from lego.data.download import sha256_file
from lego.data.meta import TokenizerInfo
from lego.protocols import ENDOFTEXT, ConfigError, Tokenizer, check_int
from lego.tokenize import (
    TokenizerSpec,
    parse_tokenizer_spec,
    resolve_tokenizer,
    tokenizer_fingerprint,
)

__all__ = ["resolve_with_spec", "resolve_for_prepare", "tokenizer_info", "find_eot_id"]


def resolve_with_spec(
    tokenizer: Tokenizer | TokenizerSpec | str | os.PathLike[str] | object,
) -> tuple[Tokenizer, TokenizerSpec | None]:
    """Resolve what ``prepare`` or ``summary`` was given.

    Args:
        tokenizer: A tokenizer object, a ``tiktoken.Encoding``, or a spec.

    Returns:
        The tokenizer, and the parsed spec when one was given (worker processes re-create
        the tokenizer from it; ``meta.json`` names it).

    Raises:
        ConfigError: An invalid spec, a missing file, or an object that is no tokenizer.
        FormatError: A tokenizer file that is not what the spec says.
        DataError: tiktoken cannot fetch an encoding's file.

    Example:
        >>> from lego.tokenize import RegexBPETokenizer
        >>> tok, spec = resolve_with_spec(RegexBPETokenizer("gpt2"))
        >>> tok.vocab_size, spec
        (256, None)
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        spec = parse_tokenizer_spec(tokenizer)
        return resolve_tokenizer(spec), spec
    if isinstance(tokenizer, TokenizerSpec):
        return resolve_tokenizer(tokenizer), tokenizer
    return resolve_tokenizer(tokenizer), None  # type: ignore[arg-type]  # it checks


def resolve_for_prepare(
    tokenizer: Tokenizer | TokenizerSpec | str | os.PathLike[str] | object,
) -> tuple[Tokenizer, TokenizerSpec | None, TokenizerInfo]:
    """Resolve a tokenizer for reading only, with its ``meta.json`` description.

    As [`resolve_with_spec()`][lego.data.tokenizers.resolve_with_spec] followed by
    [`tokenizer_info()`][lego.data.tokenizers.tokenizer_info], except that a tiktoken encoding
    named by a spec (``tiktoken:gpt2``, ``gpt2``) is resolved and fingerprinted once per
    process and shared, as tiktoken shares its encodings: repeated ``prepare`` calls pay no
    setup. The caller must not change the tokenizer (``prepare`` only encodes with it).

    Args:
        tokenizer: A tokenizer object, a ``tiktoken.Encoding``, or a spec.

    Returns:
        The tokenizer, the parsed spec (or None), and its description for ``meta.json``.
    """
    spec: TokenizerSpec | None = None
    if isinstance(tokenizer, (str, os.PathLike)):
        spec = parse_tokenizer_spec(tokenizer)
    elif isinstance(tokenizer, TokenizerSpec):
        spec = tokenizer
    if spec is not None and spec.scheme == "tiktoken" and not spec.is_file:
        tok, info = _named_tiktoken(spec.target)
        return tok, spec, info
    tok, spec = resolve_with_spec(tokenizer if spec is None else spec)
    return tok, spec, tokenizer_info(tok, spec, given=tokenizer)


@functools.lru_cache(maxsize=2)
def _named_tiktoken(name: str) -> tuple[Tokenizer, TokenizerInfo]:
    spec = TokenizerSpec("tiktoken", name)
    tokenizer = resolve_tokenizer(spec)
    return tokenizer, tokenizer_info(tokenizer, spec)


def tokenizer_info(
    tokenizer: Tokenizer, spec: TokenizerSpec | None = None, *, given: object = None
) -> TokenizerInfo:
    """Describe a tokenizer for ``meta.json``.

    Args:
        tokenizer: The tokenizer.
        spec: The spec it was loaded from, if any.
        given: What the caller passed, when it was an object (a ``tiktoken.Encoding`` is
            recorded as the tiktoken encoding it is).

    Returns:
        ``kind`` the spec's scheme (``"lego"``, ``"tiktoken"``, ``"hf"``, ``"gpt2"``),
        ``"lego"`` for a lego-tokenize object or ``"python"`` for any other object; ``name``
        the encoding's or file's name, else the class name; ``sha256`` the lego file's
        digest for a lego file, else
        [`tokenizer_fingerprint`][lego.tokenize.tokenizer_fingerprint] (None for an object
        whose vocabulary cannot be listed).

    Example:
        >>> from lego.tokenize import RegexBPETokenizer
        >>> info = tokenizer_info(RegexBPETokenizer("gpt2"))
        >>> info.kind, info.name, len(info.sha256)
        ('lego', 'RegexBPETokenizer', 64)
    """
    if spec is not None:
        if spec.scheme == "lego":
            path = Path(spec.target)
            return TokenizerInfo(kind="lego", name=path.name, sha256=sha256_file(path))
        return TokenizerInfo(
            kind=spec.scheme, name=spec.name, sha256=tokenizer_fingerprint(tokenizer)
        )
    if given is not None and type(given).__module__.startswith("tiktoken"):
        name = str(getattr(given, "name", "tiktoken"))
        return TokenizerInfo(kind="tiktoken", name=name, sha256=tokenizer_fingerprint(tokenizer))
    cls = type(tokenizer)
    lego = cls.__module__.startswith("lego.tokenize")
    return TokenizerInfo(
        kind="lego" if lego else "python",
        name=cls.__qualname__,
        sha256=tokenizer_fingerprint(tokenizer),
    )


def find_eot_id(tokenizer: Tokenizer, eot_id: int | None = None) -> int:
    """Return the end-of-text id to append after each document.

    Args:
        tokenizer: The tokenizer.
        eot_id: An explicit id (checked against the vocabulary), or None to use the
            tokenizer's ``<|endoftext|>`` special token.

    Returns:
        The id.

    Raises:
        ConfigError: When ``eot_id`` is outside the vocabulary, or None and the tokenizer
            has no ``<|endoftext|>`` special token.
    """
    vocab_size = tokenizer.vocab_size
    if eot_id is not None:
        return check_int(
            "eot_id",
            eot_id,
            minimum=0,
            maximum=vocab_size - 1,
            hint="give an id below vocab_size, or leave it unset to use <|endoftext|>",
        )
    found = tokenizer.special_tokens.get(ENDOFTEXT)
    if found is None:
        raise ConfigError(
            f"the tokenizer has no {ENDOFTEXT} special token to end documents with",
            key="eot_id",
            hint=f"register {ENDOFTEXT} as a special token, or pass eot_id=... (--eot-id)",
        )
    if not 0 <= found < vocab_size:
        raise ConfigError(
            f"the tokenizer's {ENDOFTEXT} id {found} is outside its vocabulary [0, {vocab_size})",
            key="eot_id",
        )
    return found
