"""Tokenizers for data preparation: specs that name one, loading, identity and the EOT id.

``prepare`` and the CLI accept any [`Tokenizer`][lego.protocols.Tokenizer] object, or a
*spec* string that names one and can be re-created in a worker process:

- ``tiktoken:<name>`` or a bare tiktoken encoding name (``gpt2``, ``cl100k_base``,
  ``o200k_base``, ...): a tiktoken encoding, wrapped in
  [`TiktokenTokenizer`][lego.data.tokenizers.TiktokenTokenizer];
- ``lego:<path>`` or the path of an existing file: a lego-tokenize JSON file, loaded with
  ``lego.tokenize.load``.

Both need the ``tokenize`` extra (``pip install "lego-data[tokenize]"``, which brings
lego-tokenize and tiktoken); without it a spec is a [`ConfigError`][lego.protocols.ConfigError]
that says so. The identity recorded in ``meta.json`` is the sha256 of the tokenizer file for
lego tokenizers, and for tiktoken encodings the sha256 of every token's bytes (in id order)
and the special tokens, so two machines agree on it without sharing files.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from lego.data.download import sha256_file
from lego.data.meta import TokenizerInfo
from lego.protocols import (
    ENDOFTEXT,
    ConfigError,
    DataError,
    SpecialTokens,
    Tokenizer,
    did_you_mean,
)

__all__ = [
    "TokenizerSpec",
    "TiktokenTokenizer",
    "TIKTOKEN_NAMES",
    "INSTALL_HINT",
    "parse_tokenizer_spec",
    "load_tokenizer",
    "as_tokenizer",
    "tokenizer_info",
    "find_eot_id",
]

TIKTOKEN_NAMES: Final = ("gpt2", "r50k_base", "p50k_base", "p50k_edit", "cl100k_base", "o200k_base")
"""The encoding names tiktoken ships (a bare name in a spec must be one of them)."""
INSTALL_HINT: Final = 'pip install "lego-data[tokenize]"'
"""The command that installs the optional tokenizer dependencies."""


class _Encoding(Protocol):
    """The part of ``tiktoken.Encoding`` used here."""

    name: str

    @property
    def n_vocab(self) -> int: ...

    @property
    def special_tokens_set(self) -> set[str]: ...

    def encode_ordinary(self, text: str) -> list[int]: ...

    def encode_single_token(self, text_or_bytes: str | bytes) -> int: ...

    def decode(self, tokens: Sequence[int], errors: str = ...) -> str: ...

    def decode_single_token_bytes(self, token: int) -> bytes: ...


def _import_tiktoken() -> Any:
    try:
        import tiktoken
    except ImportError:
        raise ConfigError(
            "tiktoken encodings need the tiktoken package, which is not installed",
            key="tokenizer",
            hint=INSTALL_HINT,
        ) from None
    return tiktoken


class TiktokenTokenizer:
    """A tiktoken encoding as a [`Tokenizer`][lego.protocols.Tokenizer].

    ``encode`` is tiktoken's ``encode_ordinary``: text that looks like a special token
    (``"<|endoftext|>"`` inside a document) is encoded as ordinary text, never as the
    special id and never as an error. Pickles by name when built with
    [`from_name()`][lego.data.tokenizers.TiktokenTokenizer.from_name], so worker processes
    re-create it cheaply.

    Args:
        encoding: A ``tiktoken.Encoding``.
    """

    def __init__(self, encoding: Any) -> None:
        self.encoding: _Encoding = encoding
        self._specials = SpecialTokens(
            {token: encoding.encode_single_token(token) for token in encoding.special_tokens_set}
        )
        self._by_name = False

    @classmethod
    def from_name(cls, name: str) -> TiktokenTokenizer:
        """Load a tiktoken encoding by name (``gpt2``, ``cl100k_base``, ...).

        Args:
            name: The encoding name.

        Returns:
            The tokenizer.

        Raises:
            ConfigError: When tiktoken is missing or the name is unknown.
            DataError: When the encoding's files cannot be fetched (offline with no cache).
        """
        tiktoken = _import_tiktoken()
        known = list(tiktoken.list_encoding_names())
        if name not in known:
            raise ConfigError(
                f"unknown tiktoken encoding {name!r}",
                key="tokenizer",
                hint=did_you_mean(name, known),
            )
        try:
            encoding = tiktoken.get_encoding(name)
        except Exception as err:  # requests/urllib errors when offline without a cache
            raise DataError(
                f"could not load the tiktoken encoding {name!r} ({type(err).__name__}: {err})",
                key="tokenizer",
                hint="tiktoken downloads its files on first use: check your network, or point "
                "TIKTOKEN_CACHE_DIR at a folder holding them",
            ) from None
        tokenizer = cls(encoding)
        tokenizer._by_name = True
        return tokenizer

    @property
    def name(self) -> str:
        """The encoding's name."""
        return self.encoding.name

    @property
    def vocab_size(self) -> int:
        """The encoding's ``n_vocab`` (its largest id + 1)."""
        return self.encoding.n_vocab

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """The encoding's special tokens."""
        return self._specials

    def encode(self, text: str) -> list[int]:
        """Encode text as ordinary text (special-token strings are not special here).

        Args:
            text: Any string.

        Returns:
            The ids.
        """
        return self.encoding.encode_ordinary(text)

    def encode_ordinary(self, text: str) -> list[int]:
        """The same as [`encode()`][lego.data.tokenizers.TiktokenTokenizer.encode]."""
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids; invalid UTF-8 becomes U+FFFD.

        Args:
            ids: Token ids.

        Returns:
            The text.
        """
        return self.encoding.decode(list(ids), errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """Return the bytes of one id.

        Args:
            token_id: A token id.

        Returns:
            Its bytes.
        """
        return self.encoding.decode_single_token_bytes(token_id)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._by_name:
            return (TiktokenTokenizer.from_name, (self.name,))
        return (TiktokenTokenizer, (self.encoding,))

    def __repr__(self) -> str:
        return f"TiktokenTokenizer({self.name!r})"


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer named by a string, re-creatable in any process.

    Attributes:
        kind: ``"tiktoken"`` or ``"lego"``.
        name: The tiktoken encoding name, or the lego tokenizer file's path.
    """

    kind: Literal["tiktoken", "lego"]
    name: str

    def load(self) -> Tokenizer:
        """Load the tokenizer.

        Returns:
            The tokenizer.

        Raises:
            ConfigError: When the optional dependency is missing or the name is unknown.
            DataError: When the file is missing or the encoding cannot be fetched.
        """
        if self.kind == "tiktoken":
            return TiktokenTokenizer.from_name(self.name)
        path = Path(self.name)
        if not path.is_file():
            raise DataError("tokenizer file not found", path=path, key="tokenizer")
        try:
            import lego.tokenize as lego_tokenize
        except ImportError:
            raise ConfigError(
                "lego tokenizer files need lego-tokenize, which is not installed",
                path=path,
                key="tokenizer",
                hint=INSTALL_HINT,
            ) from None
        load: Any = getattr(lego_tokenize, "load", None)
        if load is None:
            raise ConfigError(
                "the installed lego-tokenize cannot load tokenizer files (no lego.tokenize.load)",
                path=path,
                key="tokenizer",
                hint='upgrade it: pip install -U "lego-data[tokenize]"',
            )
        tokenizer: Tokenizer = load(path)
        return tokenizer

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_tokenizer_spec(text: str) -> TokenizerSpec:
    """Parse a tokenizer spec string.

    Args:
        text: ``tiktoken:<name>``, a tiktoken encoding name, ``lego:<path>`` or the path of
            an existing tokenizer file.

    Returns:
        The spec (nothing is loaded yet).

    Raises:
        ConfigError: When the string names nothing known (with the closest names).
    """
    spec = text.strip()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "tiktoken":
        return TokenizerSpec("tiktoken", rest)
    if sep and prefix == "lego":
        return TokenizerSpec("lego", rest)
    if Path(spec).is_file():
        return TokenizerSpec("lego", spec)
    if spec in TIKTOKEN_NAMES:
        return TokenizerSpec("tiktoken", spec)
    if spec.endswith(".json") or os.sep in spec or "/" in spec:
        raise DataError(
            "tokenizer file not found",
            path=spec,
            key="tokenizer",
            hint="check the path of the lego tokenizer .json file",
        )
    raise ConfigError(
        f"unknown tokenizer {spec!r}",
        key="tokenizer",
        hint=did_you_mean(spec, TIKTOKEN_NAMES)
        + " (give a tiktoken name such as 'tiktoken:gpt2', or a lego tokenizer .json file)",
    )


def load_tokenizer(spec: str | TokenizerSpec) -> Tokenizer:
    """Load a tokenizer from a spec.

    Args:
        spec: A spec string (see
            [`parse_tokenizer_spec()`][lego.data.tokenizers.parse_tokenizer_spec]) or a parsed
            spec.

    Returns:
        The tokenizer.
    """
    parsed = parse_tokenizer_spec(spec) if isinstance(spec, str) else spec
    return parsed.load()


def as_tokenizer(obj: object) -> Tokenizer:
    """Accept a [`Tokenizer`][lego.protocols.Tokenizer], a ``tiktoken.Encoding`` or a spec.

    Args:
        obj: A tokenizer object, a tiktoken encoding, a spec string or a
            [`TokenizerSpec`][lego.data.tokenizers.TokenizerSpec].

    Returns:
        A tokenizer.

    Raises:
        ConfigError: When ``obj`` is none of these.
    """
    if isinstance(obj, (str, TokenizerSpec)):
        return load_tokenizer(obj)
    if isinstance(obj, Tokenizer):
        return obj
    if all(hasattr(obj, a) for a in ("encode_ordinary", "n_vocab", "special_tokens_set")):
        return TiktokenTokenizer(obj)
    raise ConfigError(
        f"{type(obj).__name__} is not a tokenizer",
        key="tokenizer",
        hint="pass an object with encode/decode/vocab_size/special_tokens "
        "(lego.protocols.Tokenizer), a tiktoken.Encoding, or a spec like 'tiktoken:gpt2'",
    )


@functools.lru_cache(maxsize=8)
def _named_tiktoken_digest(name: str) -> str:
    """The digest of a registered encoding, computed once per process."""
    return _tiktoken_digest(TiktokenTokenizer.from_name(name), use_cache=False)


def _tiktoken_digest(tokenizer: TiktokenTokenizer, *, use_cache: bool = True) -> str:
    if use_cache and tokenizer._by_name:
        return _named_tiktoken_digest(tokenizer.name)
    digest = hashlib.sha256()
    specials = set(tokenizer.special_tokens.values())
    for token_id in range(tokenizer.vocab_size):
        if token_id in specials:
            continue
        try:
            piece = tokenizer.token_bytes(token_id)
        except KeyError:  # ids not assigned (cl100k_base has gaps below its specials)
            continue
        digest.update(token_id.to_bytes(4, "little") + len(piece).to_bytes(2, "little") + piece)
    for token, token_id in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1]):
        raw = token.encode("utf-8")
        digest.update(b"S" + token_id.to_bytes(4, "little") + len(raw).to_bytes(2, "little") + raw)
    return digest.hexdigest()


def tokenizer_info(tokenizer: Tokenizer, spec: TokenizerSpec | None = None) -> TokenizerInfo:
    """Describe a tokenizer for ``meta.json``.

    Args:
        tokenizer: The tokenizer.
        spec: The spec it was loaded from, if any.

    Returns:
        ``kind`` ``"tiktoken"`` (name = encoding, sha256 over its tokens), ``"lego"`` (name =
        the file's name, sha256 of the file; or the class name and no digest for an object
        built in memory) or ``"python"`` (the class name, no digest).
    """
    if isinstance(tokenizer, TiktokenTokenizer):
        return TokenizerInfo(
            kind="tiktoken", name=tokenizer.name, sha256=_tiktoken_digest(tokenizer)
        )
    if spec is not None and spec.kind == "lego":
        path = Path(spec.name)
        return TokenizerInfo(kind="lego", name=path.name, sha256=sha256_file(path))
    cls = type(tokenizer)
    kind = "lego" if cls.__module__.startswith("lego.tokenize") else "python"
    return TokenizerInfo(kind=kind, name=cls.__qualname__, sha256=None)


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
        if isinstance(eot_id, bool) or not 0 <= eot_id < vocab_size:
            raise ConfigError(
                f"eot_id {eot_id} is outside the tokenizer's vocabulary [0, {vocab_size})",
                key="eot_id",
                hint="give an id below vocab_size, or leave it unset to use <|endoftext|>",
            )
        return eot_id
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
