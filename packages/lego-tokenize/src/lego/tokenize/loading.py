"""Load any LegoLLM tokenizer file: [`load`][lego.tokenize.load] returns the right class."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lego.tokenize.char import CharTokenizer
from lego.tokenize.fileformat import FieldReader, read_tokenizer_file
from lego.tokenize.naive_bpe import NaiveBPETokenizer
from lego.tokenize.regex_bpe import RegexBPETokenizer
from lego.tokenize.word import WordTokenizer

if TYPE_CHECKING:
    from lego.tokenize.base import BaseTokenizer

__all__ = ["load"]


def load(path: str | os.PathLike[str]) -> BaseTokenizer:
    """Read a tokenizer file written by ``save`` and return the tokenizer.

    Everything is validated: the JSON (with line and column), the format and version, the
    type (with suggestions), missing and unknown fields, the checksum, every merge (parts
    defined before use, no duplicate tokens) and the special tokens.

    Args:
        path: The ``.json`` file.

    Returns:
        A [`CharTokenizer`][lego.tokenize.CharTokenizer],
        [`WordTokenizer`][lego.tokenize.WordTokenizer],
        [`NaiveBPETokenizer`][lego.tokenize.NaiveBPETokenizer] or
        [`RegexBPETokenizer`][lego.tokenize.RegexBPETokenizer].

    Raises:
        FormatError: On any problem with the file; the message names the file, the field
            and what to do.
    """
    fields = read_tokenizer_file(path)
    reader = FieldReader(fields, path=path)
    kind = fields["type"]
    if kind == "char":
        return CharTokenizer._from_fields(reader)
    if kind == "word":
        return WordTokenizer._from_fields(reader)
    if kind == "naive_bpe":
        return NaiveBPETokenizer._from_fields(reader)
    return RegexBPETokenizer._from_fields(reader)
