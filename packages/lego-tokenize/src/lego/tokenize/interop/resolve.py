"""One name for any tokenizer: a lego file, a tiktoken encoding, a HuggingFace or GPT-2 file.

Every brick and command line that takes a tokenizer from its user (``lego-tokenize encode
-t``, ``lego-data prepare --tokenizer``, the recipes) names it with one string, a
*tokenizer spec*, read by [`parse_tokenizer_spec`][lego.tokenize.parse_tokenizer_spec] and
loaded by [`resolve_tokenizer`][lego.tokenize.resolve_tokenizer]:

| spec | tokenizer |
| --- | --- |
| ``tok.json`` or ``lego:tok.json`` | a lego-tokenize file ([`load`][lego.tokenize.load]) |
| ``tiktoken:cl100k_base`` | a tiktoken encoding by name |
| ``cl100k_base`` (no file of that name) | the same: a bare tiktoken encoding name |
| ``tiktoken:path/x.tiktoken`` | a ``.tiktoken`` file (needs a split ``pattern``) |
| ``hf:path/tokenizer.json`` | a HuggingFace byte-level BPE ``tokenizer.json`` |
| ``gpt2:folder`` | GPT-2's ``encoder.json`` + ``vocab.bpe`` in ``folder`` |

An existing file always wins over a tiktoken name, so a file called ``gpt2`` is a lego
file. Prefixes ignore case. Every tiktoken tokenizer is a
[`RegexBPETokenizer`][lego.tokenize.RegexBPETokenizer] running tiktoken's engine, so its
``encode_ordinary`` is tiktoken's (special-token text is ordinary text).

Example:
    >>> parse_tokenizer_spec("cl100k_base")
    TokenizerSpec(scheme='tiktoken', target='cl100k_base')
    >>> parse_tokenizer_spec("hf:out/tokenizer.json").name
    'tokenizer.json'

Loading a tiktoken encoding fetches its file the first time (then tiktoken's cache)::

    tok = resolve_tokenizer("tiktoken:cl100k_base")
    tok.encode("hello world")  # [15339, 1917]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from lego.protocols import ConfigError, FormatError, Tokenizer, did_you_mean
from lego.tokenize.interop.tiktoken_files import is_tiktoken_path, tiktoken_names
from lego.tokenize.loading import load
from lego.tokenize.regex_bpe import RegexBPETokenizer

if TYPE_CHECKING:
    import tiktoken

__all__ = ["SCHEMES", "Scheme", "TokenizerSpec", "parse_tokenizer_spec", "resolve_tokenizer"]

Scheme = Literal["lego", "tiktoken", "hf", "gpt2"]
"""What a spec names: a lego file, a tiktoken encoding or file, a HF file, GPT-2's files."""
SCHEMES: tuple[str, ...] = ("lego", "tiktoken", "hf", "gpt2")
"""The prefixes a tokenizer spec may start with (followed by ``:``)."""

_EXAMPLES = {
    "lego": "lego:path/to/tok.json",
    "tiktoken": "tiktoken:cl100k_base",
    "hf": "hf:path/to/tokenizer.json",
    "gpt2": "gpt2:path/to/folder",
}
_FORMS = "a lego tokenizer file, tiktoken:NAME, hf:FILE or gpt2:FOLDER"


@dataclass(frozen=True)
class TokenizerSpec:
    """A parsed tokenizer spec: what it names, re-creatable in any process.

    Attributes:
        scheme: ``"lego"``, ``"tiktoken"``, ``"hf"`` or ``"gpt2"``.
        target: The file, folder or tiktoken encoding name after the prefix.
    """

    scheme: Scheme
    target: str

    @property
    def is_file(self) -> bool:
        """Whether ``target`` is a path (everything but a tiktoken encoding name)."""
        return self.scheme != "tiktoken" or is_tiktoken_path(self.target)

    @property
    def files(self) -> list[Path]:
        """The files loading reads (none for a tiktoken encoding name): never an output."""
        if not self.is_file:
            return []
        target = Path(self.target)
        if self.scheme == "gpt2":
            return [target / "encoder.json", target / "vocab.bpe"]
        return [target]

    @property
    def name(self) -> str:
        """A short name: the encoding name, or the file's or folder's base name."""
        return Path(self.target).name if self.is_file else self.target

    def resolve(self, *, pattern: str | None = None) -> RegexBPETokenizer | Tokenizer:
        """Load the tokenizer.

        Args:
            pattern: The split pattern of a bare ``.tiktoken`` file (a name such as
                ``"gpt4"`` or a regex); overrides the encoding's own for a tiktoken name.

        Returns:
            The tokenizer: a [`RegexBPETokenizer`][lego.tokenize.RegexBPETokenizer] for
            tiktoken, HF and GPT-2 specs, the class the file holds for a lego file.

        Raises:
            ConfigError: A missing file or folder, an unknown tiktoken name, a ``.tiktoken``
                file without a pattern.
            FormatError: The file is not what the spec says.
            CompatibilityError: A HuggingFace file that is not a byte-level BPE.
            DataError: tiktoken cannot fetch the encoding's file (offline, no cache).
        """
        if self.scheme == "tiktoken":
            return RegexBPETokenizer.from_tiktoken(self.target, pattern=pattern)
        if self.scheme == "hf":
            return RegexBPETokenizer.from_hf(self.target)
        if self.scheme == "gpt2":
            folder = Path(self.target)
            if not folder.is_dir():
                raise ConfigError(
                    "gpt2: expects a folder holding encoder.json and vocab.bpe",
                    path=folder,
                    key="tokenizer",
                    hint="give the folder, not a file; it must exist",
                )
            return RegexBPETokenizer.from_gpt2_files(folder / "encoder.json", folder / "vocab.bpe")
        try:
            return load(self.target)
        except FormatError as err:
            if not _looks_like_hf(self.target):
                raise
            raise FormatError(
                err.message,
                path=self.target,
                key=err.key,
                hint=f"this looks like a HuggingFace tokenizer.json: write hf:{self.target}",
            ) from None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"


def parse_tokenizer_spec(spec: str | os.PathLike[str]) -> TokenizerSpec:
    """Read a tokenizer spec (see the module's table); nothing is loaded.

    Args:
        spec: ``PATH``, ``lego:PATH``, ``tiktoken:NAME_OR_FILE``, a bare tiktoken encoding
            name, ``hf:FILE`` or ``gpt2:FOLDER``; an ``os.PathLike`` is a lego file.

    Returns:
        The parsed spec.

    Raises:
        ConfigError: An empty spec, a prefix with nothing after it, an unknown prefix, or a
            bare word that is neither a file nor a tiktoken encoding (each with the close
            names).

    Example:
        >>> str(parse_tokenizer_spec("HF:tokenizer.json"))
        'hf:tokenizer.json'
    """
    if not isinstance(spec, str):
        return TokenizerSpec("lego", os.fspath(spec))
    text = spec.strip()
    if not text:
        raise ConfigError("the tokenizer spec is empty", key="tokenizer", hint=f"give {_FORMS}")
    prefix, colon, rest = text.partition(":")
    scheme = prefix.lower()
    if colon and scheme in SCHEMES:
        if not rest:
            raise ConfigError(
                f"the tokenizer spec {text!r} names no {scheme} tokenizer after the colon",
                key="tokenizer",
                hint=f"write e.g. {_EXAMPLES[scheme]}",
            )
        return TokenizerSpec(cast(Scheme, scheme), rest)
    if Path(text).exists():
        return TokenizerSpec("lego", text)
    if colon and len(prefix) > 1 and prefix.isalnum():
        raise ConfigError(
            f"unknown tokenizer prefix {prefix + ':'!r} in {text!r}",
            key="tokenizer",
            hint=did_you_mean(scheme, SCHEMES)
            + " (prefixes: "
            + ", ".join(s + ":" for s in SCHEMES)
            + "; a lego tokenizer file needs no prefix)",
        )
    if _looks_like_path(text):
        return TokenizerSpec("lego", text)  # loading says "not found", with the path
    names = tiktoken_names()
    if text in names:
        return TokenizerSpec("tiktoken", text)
    raise ConfigError(
        f"unknown tokenizer {text!r}: no such file, and not a tiktoken encoding",
        key="tokenizer",
        hint=did_you_mean(text, names) + f" (give {_FORMS})",
    )


def resolve_tokenizer(
    spec: str | os.PathLike[str] | TokenizerSpec | Tokenizer | tiktoken.Encoding,
    *,
    pattern: str | None = None,
) -> Tokenizer:
    """Return the tokenizer a spec names (see the module's table); objects pass through.

    Args:
        spec: A spec string, an ``os.PathLike`` (a lego file), a parsed
            [`TokenizerSpec`][lego.tokenize.TokenizerSpec], a
            [`Tokenizer`][lego.protocols.Tokenizer] (returned as it is) or a
            ``tiktoken.Encoding`` (wrapped in a
            [`RegexBPETokenizer`][lego.tokenize.RegexBPETokenizer] with its ids).
        pattern: The split pattern for a bare ``.tiktoken`` file (a name such as
            ``"gpt4"`` or a regex); overrides the encoding's own for a tiktoken name.

    Returns:
        The tokenizer.

    Raises:
        ConfigError: An invalid spec (see
            [`parse_tokenizer_spec`][lego.tokenize.parse_tokenizer_spec]), a missing file,
            a tiktoken file without a pattern, or an object that is no tokenizer.
        FormatError: When the file is not what the spec says.
        CompatibilityError: When a HuggingFace file is not a byte-level BPE.
        DataError: When tiktoken cannot fetch an encoding's file.
    """
    if isinstance(spec, TokenizerSpec):
        return spec.resolve(pattern=pattern)
    if isinstance(spec, (str, os.PathLike)):
        return parse_tokenizer_spec(spec).resolve(pattern=pattern)
    if isinstance(spec, Tokenizer):
        return spec
    if _is_tiktoken_encoding(spec):
        return RegexBPETokenizer.from_encoding(spec)
    raise ConfigError(
        f"{type(spec).__name__} is not a tokenizer",
        key="tokenizer",
        hint="pass an object with encode/decode/vocab_size/special_tokens "
        f"(lego.protocols.Tokenizer), a tiktoken.Encoding, or a spec: {_FORMS}",
    )


def _is_tiktoken_encoding(obj: object) -> bool:
    return type(obj).__module__.startswith("tiktoken") and hasattr(obj, "encode_ordinary")


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or Path(text).suffix.lower() in (".json", ".tiktoken")
    )


def _looks_like_hf(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return '"model"' in head or '"added_tokens"' in head or '"pre_tokenizer"' in head
