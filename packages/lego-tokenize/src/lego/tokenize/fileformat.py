"""LegoLLM's tokenizer file: one versioned, checksummed JSON document.

Every file has these fields, and then the fields of its ``type``:

```json
{
  "format": "lego-tokenizer",
  "version": 1,
  "type": "regex_bpe",
  "pattern": "gpt4",
  "merges": [["Ġ", "t"], ["Ġt", "he"]],
  "special_tokens": {"<|endoftext|>": 4095},
  "checksum": "sha256:9f2c..."
}
```

The checksum is the SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of all
other fields; a file edited by hand fails to load unless its ``checksum`` field is removed.
Reading checks the envelope first (``format``, then ``version``: a newer file may hold fields
this version does not know), then the header
([`TokenizerHeader`][lego.tokenize.fileformat.TokenizerHeader], a
[`Config`][lego.protocols.Config]: ``type``, ``checksum``), then the checksum; the type's own
fields (merges, vocabulary) are checked by its loader with
[`FieldReader`][lego.tokenize.fileformat.FieldReader].
Writes are atomic (a temporary file renamed over the target), so a crash never leaves half a
file. Beside the JSON a human-readable ``.vocab`` dump is written (never read back).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lego.protocols import (
    Config,
    ConfigError,
    FormatError,
    atomic_write_text,
    check_envelope,
    did_you_mean,
    read_json,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "TYPES",
    "TokenizerHeader",
    "FieldReader",
    "checksum",
    "read_tokenizer_file",
    "render_token",
    "vocab_path",
    "write_tokenizer_file",
]

FORMAT = "lego-tokenizer"
"""The value of the ``format`` field."""
VERSION = 1
"""The format version this code writes and reads."""
TYPES = ("char", "word", "naive_bpe", "regex_bpe")
"""The tokenizer types a file can hold."""

_WHAT = "tokenizer file"
_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}\Z")
_HEADER = ("format", "version", "type", "checksum")
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class TokenizerHeader(Config):
    """The fields every tokenizer file has, whatever its type.

    Attributes:
        format: Always ``"lego-tokenizer"``.
        version: The format version (1).
        type: One of [`TYPES`][lego.tokenize.fileformat.TYPES].
        checksum: ``"sha256:<64 hex digits>"``, or None for an unsigned file.
    """

    format: str
    version: int
    type: str
    checksum: str | None = None

    def validate(self) -> None:
        """Check the type name and the checksum's shape."""
        super().validate()
        if self.type not in TYPES:
            raise ConfigError(
                f"unknown tokenizer type {self.type!r}",
                key="type",
                hint=did_you_mean(self.type, TYPES),
            )
        if self.checksum is not None and not _CHECKSUM.match(self.checksum):
            raise ConfigError(
                f"'checksum' must be 'sha256:' and 64 hex digits, got {self.checksum!r}",
                key="checksum",
            )


def checksum(fields: Mapping[str, Any]) -> str:
    """Return ``"sha256:<hex>"`` of the canonical JSON of ``fields`` minus ``checksum``.

    Args:
        fields: The file's fields.

    Returns:
        The checksum string.
    """
    body = {key: value for key, value in fields.items() if key != "checksum"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def vocab_path(path: str | os.PathLike[str]) -> Path:
    """The ``.vocab`` dump written beside a tokenizer file (``tok.json`` -> ``tok.vocab``).

    Args:
        path: The tokenizer file.

    Returns:
        The dump's path.
    """
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".vocab")
    return path.with_name(path.name + ".vocab")


def render_token(token: bytes | str) -> str:
    """Show a token readably: invalid UTF-8 as U+FFFD, control characters escaped.

    Args:
        token: The token's bytes or text.

    Returns:
        A one-line printable string.
    """
    text = token.decode("utf-8", errors="replace") if isinstance(token, bytes) else token
    return "".join(
        char if unicodedata.category(char)[0] != "C" else f"\\u{ord(char):04x}" for char in text
    )


def write_tokenizer_file(
    path: str | os.PathLike[str],
    type_name: str,
    fields: Mapping[str, Any],
    *,
    vocab_dump: str | None = None,
) -> None:
    """Write a tokenizer file (and its ``.vocab`` dump), atomically.

    Args:
        path: The JSON file to write.
        type_name: One of [`TYPES`][lego.tokenize.fileformat.TYPES].
        fields: The type's fields (``special_tokens`` included).
        vocab_dump: The text of the ``.vocab`` file, or None to write none.

    Raises:
        ConfigError: When a file cannot be written (a missing folder, no permission).
    """
    document: dict[str, Any] = {"format": FORMAT, "version": VERSION, "type": type_name}
    document.update(fields)
    document["checksum"] = checksum(document)
    text = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
    atomic_write_text(path, text, what=_WHAT)
    if vocab_dump is not None:
        atomic_write_text(vocab_path(path), vocab_dump, what="vocabulary dump")


def read_tokenizer_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a tokenizer file's envelope: JSON, format, version, type, checksum.

    Args:
        path: The tokenizer file.

    Returns:
        All fields (the type's fields are checked by the type's loader).

    Raises:
        ConfigError: When the file does not exist, is a directory or cannot be read.
        FormatError: On text that is not UTF-8, invalid or truncated JSON, a repeated key,
            another format, a newer version, an unknown type or a checksum mismatch.
    """
    document = read_json(path, what=_WHAT)
    if not isinstance(document, dict):
        raise FormatError(
            f"a tokenizer file holds a JSON object, not {type(document).__name__}",
            path=path,
            hint="this is not a lego tokenizer file",
        )
    check_envelope(
        document,
        format=FORMAT,
        version=VERSION,
        path=path,
        what="lego tokenizer file",
        reader="lego-tokenize",
        hint="for a HuggingFace tokenizer.json use RegexBPETokenizer.from_hf(), for a "
        ".tiktoken file RegexBPETokenizer.from_tiktoken()",
    )
    TokenizerHeader.from_header(
        {key: document[key] for key in _HEADER if key in document},
        path=path,
        what=_WHAT,
        hint="save the tokenizer again",
    )
    stored = document.get("checksum")
    if stored is not None and stored != checksum(document):
        raise FormatError(
            "the checksum does not match the content: the file was changed after it was "
            "saved (tampered or corrupt)",
            path=path,
            key="checksum",
            hint="save the tokenizer again; if you edited the file on purpose, delete its "
            "'checksum' field",
        )
    return document


class FieldReader:
    """Typed access to a tokenizer file's fields, raising FormatError with path and key.

    Args:
        fields: The document that
            [`read_tokenizer_file`][lego.tokenize.fileformat.read_tokenizer_file] returns.
        path: The file (for messages).
    """

    _ENVELOPE = frozenset({"format", "version", "type", "checksum"})

    def __init__(self, fields: Mapping[str, Any], *, path: str | os.PathLike[str]) -> None:
        self.fields = fields
        self.path = Path(path)

    def error(
        self, message: str, *, key: str | None = None, hint: str | None = None
    ) -> FormatError:
        """Build a FormatError about this file.

        Args:
            message: What is wrong.
            key: The field.
            hint: What to do.

        Returns:
            The error (raise it).
        """
        return FormatError(
            message,
            path=self.path,
            key=key,
            hint=hint or "save the tokenizer again, or fix the field",
        )

    def check_keys(self, required: set[str], optional: Collection[str] = ()) -> None:
        """Check that the type's required fields are there and no unknown field is.

        Args:
            required: Fields the type needs.
            optional: Fields the type may have.

        Raises:
            FormatError: On a missing or unknown field.
        """
        present = set(self.fields) - self._ENVELOPE
        missing = sorted(required - present)
        if missing:
            raise self.error(
                f"the {self.fields.get('type')} tokenizer file lacks the field {missing[0]!r}",
                key=missing[0],
            )
        unknown = sorted(present - required - set(optional))
        if unknown:
            raise self.error(
                f"unknown field {unknown[0]!r} in a {self.fields.get('type')} tokenizer file",
                key=unknown[0],
                hint=did_you_mean(unknown[0], required | set(optional)),
            )

    def get(self, key: str, kind: type[T], *, default: T | None = None) -> T:
        """Return a field checked to be of ``kind``.

        Args:
            key: The field.
            kind: ``str``, ``int``, ``list``, ``dict`` (``bool`` is not an ``int`` here).
            default: Returned when the field is absent (None: the field is required).

        Returns:
            The value.

        Raises:
            FormatError: When the field is missing or of another type.
        """
        if key not in self.fields:
            if default is not None:
                return default
            raise self.error(f"missing field {key!r}", key=key)
        value = self.fields[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(
                f"field {key!r} must be a JSON {_json_name(kind)}, got {type(value).__name__}",
                key=key,
            )
        return value

    def special_tokens(self) -> dict[str, int]:
        """Return the ``special_tokens`` field, checked to map strings to integers.

        Raises:
            FormatError: On another shape.
        """
        specials = self.get("special_tokens", dict)
        for token, token_id in specials.items():
            if not token:
                raise self.error("a special token is the empty string", key="special_tokens")
            if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
                raise self.error(
                    f"special token {token!r} needs a non-negative integer id, got {token_id!r}",
                    key="special_tokens",
                )
        return dict(specials)


def _json_name(kind: type) -> str:
    return {str: "string", int: "integer", list: "array", dict: "object"}.get(kind, kind.__name__)
