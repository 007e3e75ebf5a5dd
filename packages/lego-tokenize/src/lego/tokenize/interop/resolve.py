"""One name for any tokenizer: a lego file, a tiktoken encoding, a HuggingFace or GPT-2 file.

The command line (and any program that takes a tokenizer from its user) names tokenizers
with one string, a *tokenizer spec*:

| spec | tokenizer |
| --- | --- |
| ``tok.json`` | a lego-tokenize file, via [`lego.tokenize.load`][lego.tokenize.load] |
| ``tiktoken:cl100k_base`` | a tiktoken encoding by name |
| ``tiktoken:path/x.tiktoken`` | a ``.tiktoken`` file (needs a split ``pattern``) |
| ``hf:path/tokenizer.json`` | a HuggingFace byte-level BPE ``tokenizer.json`` |
| ``gpt2:folder`` | GPT-2's ``encoder.json`` + ``vocab.bpe`` in ``folder`` |

Example:
    >>> tok = resolve_tokenizer("tiktoken:cl100k_base")
    >>> tok.encode("hello world")
    [15339, 1917]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lego.protocols import ConfigError, FormatError, did_you_mean

if TYPE_CHECKING:
    from lego.protocols import Tokenizer

__all__ = ["SCHEMES", "resolve_tokenizer"]

SCHEMES: tuple[str, ...] = ("tiktoken", "hf", "gpt2")
"""The prefixes a tokenizer spec may start with (followed by ``:``)."""


def resolve_tokenizer(spec: str, *, pattern: str | None = None) -> Tokenizer:
    """Load the tokenizer a spec names (see the module's table).

    Args:
        spec: ``PATH``, ``tiktoken:NAME_OR_FILE``, ``hf:FILE`` or ``gpt2:FOLDER``.
        pattern: The split pattern for a bare ``.tiktoken`` file (a name such as
            ``"gpt4"`` or a regex); overrides the encoding's own for a tiktoken name.

    Returns:
        The tokenizer.

    Raises:
        ConfigError: On an empty spec, an unknown prefix, a missing file, or a tiktoken
            file without a pattern.
        FormatError: When the file is not what the spec says.
        CompatibilityError: When a HuggingFace file is not a byte-level BPE.
    """
    from lego.tokenize import RegexBPETokenizer, load

    if not spec:
        raise ConfigError(
            "the tokenizer spec is empty",
            key="tokenizer",
            hint="give a lego tokenizer file, tiktoken:NAME, hf:FILE or gpt2:FOLDER",
        )
    scheme, colon, rest = spec.partition(":")
    if colon and scheme.lower() in SCHEMES:
        scheme = scheme.lower()
        if not rest:
            raise ConfigError(
                f"the tokenizer spec {spec!r} names no {scheme} tokenizer after the colon",
                key="tokenizer",
                hint=f"write e.g. {_EXAMPLES[scheme]}",
            )
        if scheme == "tiktoken":
            return RegexBPETokenizer.from_tiktoken(rest, pattern=pattern)
        if scheme == "hf":
            return RegexBPETokenizer.from_hf(rest)
        folder = Path(rest)
        if not folder.is_dir():
            raise ConfigError(
                "gpt2: expects a folder holding encoder.json and vocab.bpe",
                path=folder,
                key="tokenizer",
                hint="give the folder, not a file; it must exist",
            )
        return RegexBPETokenizer.from_gpt2_files(folder / "encoder.json", folder / "vocab.bpe")
    if colon and len(scheme) > 1 and scheme.isalnum() and not Path(spec).exists():
        raise ConfigError(
            f"unknown tokenizer prefix {scheme + ':'!r} in {spec!r}",
            key="tokenizer",
            hint=did_you_mean(scheme, SCHEMES)
            + " (prefixes: "
            + ", ".join(s + ":" for s in SCHEMES)
            + "; a lego tokenizer file needs no prefix)",
        )
    try:
        return load(spec)
    except FormatError as err:
        if _looks_like_hf(spec):
            raise FormatError(
                err.message,
                path=spec,
                key=err.key,
                hint=f"this looks like a HuggingFace tokenizer.json: write hf:{spec}",
            ) from None
        raise


_EXAMPLES = {
    "tiktoken": "tiktoken:cl100k_base",
    "hf": "hf:path/to/tokenizer.json",
    "gpt2": "gpt2:path/to/folder",
}


def _looks_like_hf(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return '"model"' in head or '"added_tokens"' in head or '"pre_tokenizer"' in head
