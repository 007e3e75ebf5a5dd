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
file, and the tokenizer file and its dump are written both or neither. Beside the JSON a
human-readable ``.vocab`` dump is written (never read back): its first line,
[`VOCAB_DUMP_HEADER`][lego.tokenize.fileformat.VOCAB_DUMP_HEADER], marks it as ours. The
dump never replaces a file it did not write: an existing file at the dump's path that lacks
the header is an error unless the dump's path was named explicitly (the ``vocab_file``
argument), and the dump is never written over the tokenizer file itself.
"""

from __future__ import annotations

import contextlib
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
    check_output_path,
    did_you_mean,
    read_json,
    temporary_name,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "TYPES",
    "TokenizerHeader",
    "FieldReader",
    "VOCAB_DUMP_HEADER",
    "check_vocab_file",
    "checksum",
    "is_vocab_dump",
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

VOCAB_DUMP_HEADER = "# lego-tokenizer vocabulary dump (human-readable, never read back)"
"""The first line of every ``.vocab`` dump: what marks a file as one we may replace."""

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


def is_vocab_dump(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a vocabulary dump that lego-tokenize wrote (its header line).

    Args:
        path: Any path.

    Returns:
        True for a regular file that starts with
        [`VOCAB_DUMP_HEADER`][lego.tokenize.fileformat.VOCAB_DUMP_HEADER].
    """
    header = VOCAB_DUMP_HEADER.encode("utf-8")
    try:
        with open(path, "rb") as handle:
            return handle.read(len(header)) == header
    except OSError:
        return False


def check_vocab_file(
    target: str | os.PathLike[str],
    *,
    tokenizer_file: str | os.PathLike[str],
    explicit: bool,
    inputs: Collection[str | os.PathLike[str]] = (),
    key: str | None = None,
) -> Path:
    """Check where a ``.vocab`` dump may go, before anything is written.

    Args:
        target: The dump's path.
        tokenizer_file: The tokenizer file written with it (never overwritten by the dump).
        explicit: Whether the user named ``target`` (then an existing file is replaced).
        inputs: Files the same command reads (never overwritten).
        key: The option that names the dump, for messages (``"--vocab-file"``).

    Returns:
        The dump's path.

    Raises:
        ConfigError: When ``target`` is the tokenizer file, an input or a folder, or, when
            not ``explicit``, an existing file that is not an earlier dump.

    Example:
        >>> check_vocab_file("tok.vocab", tokenizer_file="tok.json", explicit=False).name
        'tok.vocab'
    """
    path = Path(target)
    if path.resolve() == Path(tokenizer_file).resolve():
        raise ConfigError(
            "the vocabulary dump would overwrite the tokenizer file",
            path=path,
            key=key,
            hint="give the dump another name",
        )
    check_output_path(path, inputs=inputs, what="vocabulary dump", key=key)
    if not explicit and path.exists() and not is_vocab_dump(path):
        raise ConfigError(
            "the vocabulary dump written beside the tokenizer would overwrite a file that is "
            "not a vocabulary dump",
            path=path,
            key=key,
            hint="name the dump's path explicitly to replace that file (lego-tokenize "
            "--vocab-file, save(vocab_file=...)), write it elsewhere, or skip it "
            "(--no-vocab-file, save(vocab_file=False))",
        )
    return path


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
    vocab_file: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Write a tokenizer file (and its ``.vocab`` dump), atomically.

    The dump's path is checked (see
    [`check_vocab_file`][lego.tokenize.fileformat.check_vocab_file]) before either file is
    written.

    Args:
        path: The JSON file to write.
        type_name: One of [`TYPES`][lego.tokenize.fileformat.TYPES].
        fields: The type's fields (``special_tokens`` included).
        vocab_dump: The text of the ``.vocab`` file, or None to write none.
        vocab_file: Where the dump goes when the caller named it (it may replace an existing
            file); None: [`vocab_path(path)`][lego.tokenize.fileformat.vocab_path], which may
            replace only an earlier dump.

    Returns:
        The dump's path, or None when none was written.

    Raises:
        ConfigError: When a file cannot be written (a missing folder, no permission), or the
            dump would replace the tokenizer file or a file that is not an earlier dump.
    """
    target: Path | None = None
    if vocab_dump is not None:
        explicit = vocab_file is not None
        place = Path(vocab_file) if vocab_file is not None else vocab_path(path)
        target = check_vocab_file(place, tokenizer_file=path, explicit=explicit)
    document: dict[str, Any] = {"format": FORMAT, "version": VERSION, "type": type_name}
    document.update(fields)
    document["checksum"] = checksum(document)
    text = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
    if vocab_dump is None or target is None:
        atomic_write_text(path, text, what=_WHAT)
        return None
    # Both files or neither: both are written to temporary names, then renamed into place
    # (a full disk or a missing folder changes nothing).
    staged = [temporary_name(path), temporary_name(target)]
    try:
        atomic_write_text(staged[0], text, what=_WHAT)
        atomic_write_text(staged[1], f"{VOCAB_DUMP_HEADER}\n{vocab_dump}", what="vocabulary dump")
        os.replace(staged[0], path)
        os.replace(staged[1], target)
    finally:
        for leftover in staged:
            with contextlib.suppress(OSError):  # gone already, or a read-only folder
                leftover.unlink()
    return target


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
