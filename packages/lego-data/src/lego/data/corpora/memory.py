"""Documents the caller already has: a list, any re-iterable of strings, or a function.

``prepare`` and ``summary`` read a corpus more than once (``prepare`` counts first, then
tokenizes), so the documents must be readable again: a list or tuple, an object whose
``__iter__`` starts over each time, or a function that returns a new iterator per call. A
one-shot iterator (a generator object) is refused before anything is read, rather than
silently giving an empty second pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from lego.data.corpora.base import Corpus
from lego.protocols import ConfigError, DataError

__all__ = ["IterableCorpus", "DEFAULT_NAME"]

DEFAULT_NAME = "in-memory documents"
"""The name recorded in ``meta.json`` for documents given without a name."""


class IterableCorpus(Corpus):
    """A corpus over documents held by the caller.

    Args:
        documents: A re-iterable of strings (a list, a tuple, an object whose ``__iter__``
            returns a new iterator each time) or a function that returns a new iterable of
            strings on each call.
        name: The name recorded in ``meta.json`` (``source.corpus``).

    Raises:
        ConfigError: When ``documents`` is a one-shot iterator (a generator object), a
            single string, or not iterable; or the name is empty.

    Example:
        >>> corpus = IterableCorpus(["one document", "another"], name="two")
        >>> list(corpus), corpus.name
        (['one document', 'another'], 'two')
        >>> corpus = IterableCorpus(lambda: (f"doc {i}" for i in range(3)))
        >>> list(corpus)
        ['doc 0', 'doc 1', 'doc 2']
    """

    def __init__(
        self,
        documents: Iterable[str] | Callable[[], Iterable[str]],
        *,
        name: str = DEFAULT_NAME,
    ) -> None:
        super().__init__()
        if isinstance(documents, (str, bytes)):
            raise ConfigError(
                "the documents are one string, not an iterable of documents",
                key="corpus",
                hint="pass [text] for a single document, or a corpus name or path as a "
                "pathlib.Path",
            )
        if isinstance(documents, Iterator):
            raise ConfigError(
                f"the documents are a one-shot iterator ({type(documents).__name__}), but the "
                "corpus is read twice",
                key="corpus",
                hint="pass a list, or a function that returns a new iterator: "
                "lambda: (doc for doc in ...)",
            )
        if not callable(documents) and not isinstance(documents, Iterable):
            raise ConfigError(
                f"a corpus must be documents or a name, got {type(documents).__name__}",
                key="corpus",
                hint="pass a corpus name, path or URL, a Corpus, a list of strings or a "
                "function that returns an iterator of strings",
            )
        if not name:
            raise ConfigError("the corpus name must not be empty", key="name")
        self._documents = documents
        self._name = name

    @property
    def name(self) -> str:
        """The name recorded in ``meta.json``."""
        return self._name

    def iter_documents(self) -> Iterator[str]:
        """Yield the documents, checking that each one is a string.

        Raises:
            DataError: On a document that is not a ``str`` (naming its index).
        """
        source = self._documents
        documents = source() if callable(source) else source
        for index, document in enumerate(documents):
            if not isinstance(document, str):
                raise DataError(
                    f"document {index} of {self._name!r} is a {type(document).__name__}, not a str",
                    key=f"corpus[{index}]",
                    hint="give the documents as text (decode bytes first)",
                )
            yield document
