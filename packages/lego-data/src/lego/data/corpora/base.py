"""The corpus contract: a named, re-iterable source of documents (strings), read lazily."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

from lego.protocols import DataError

__all__ = ["Corpus", "Skipped"]


@dataclass(frozen=True)
class Skipped:
    """A file or part of a file left out because it could not be read as text.

    Attributes:
        path: The file.
        reason: Why, e.g. ``"not UTF-8 (invalid start byte)"`` or ``"binary (NUL byte)"``.
        offset: The byte offset of the problem in the file, when known.
        line: The 1-based line of the skipped part, when the corpus reads lines.
    """

    path: str
    reason: str
    offset: int | None = None
    line: int | None = None


class Corpus(abc.ABC):
    """A named source of documents, read lazily and re-iterable.

    Iterating a corpus yields its documents (``str``) in a fixed order; each iteration reads
    the source again, so memory does not grow with the corpus. Subclasses implement
    [`Corpus.iter_documents()`][lego.data.corpora.Corpus.iter_documents]; ``__iter__`` adds
    the empty-corpus check and resets [`skipped`][lego.data.corpora.Corpus.skipped].

    Example:
        >>> from lego.data.corpora import get_corpus
        >>> corpus = get_corpus("python-stdlib")  # 732 documents on CPython 3.11
        >>> sum(1 for _ in corpus) > 500
        True
    """

    def __init__(self) -> None:
        self.skipped: list[Skipped] = []
        """Files or parts skipped during the last iteration (with ``errors="skip"``)."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The corpus's name, path or URL, as recorded in ``meta.json``."""

    @abc.abstractmethod
    def iter_documents(self) -> Iterator[str]:
        """Yield the documents, in order, without the empty-corpus check.

        Returns:
            An iterator of documents.
        """

    def __iter__(self) -> Iterator[str]:
        """Yield the documents; raise ``DataError`` at the end when there were none.

        Raises:
            DataError: When the corpus holds no documents, or only empty ones.
        """
        self.skipped = []
        documents = 0
        characters = 0
        for document in self.iter_documents():
            documents += 1
            characters += len(document)
            yield document
        if characters == 0:
            detail = (
                "no documents" if documents == 0 else f"{documents} document(s), all of them empty"
            )
            skipped = (
                f"; {len(self.skipped)} file(s) or part(s) were skipped" if self.skipped else ""
            )
            raise DataError(
                f"the corpus {self.name!r} is empty ({detail}{skipped})",
                path=self.name,
                hint="check the path, the file extensions and the document unit, "
                "or give another corpus",
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
