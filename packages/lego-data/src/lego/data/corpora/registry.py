"""Find a corpus by name, path or URL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeAlias

from lego.data.corpora.base import Corpus
from lego.data.corpora.files import DEFAULT_EXTENSIONS, DocumentUnit, ErrorMode, FileCorpus
from lego.data.corpora.memory import IterableCorpus
from lego.data.corpora.remote import KNOWN_SOURCES, RemoteCorpus
from lego.data.corpora.stdlib import PythonStdlibCorpus
from lego.data.download import is_url
from lego.protocols import DataError, did_you_mean

__all__ = ["CorpusSource", "get_corpus", "corpus_names", "normalize_name"]

CorpusSource: TypeAlias = (
    Corpus | str | os.PathLike[str] | Iterable[str] | Callable[[], Iterable[str]]
)
"""What names or holds a corpus: a corpus, a name / path / URL, or the documents themselves."""

_STDLIB = "python-stdlib"


def normalize_name(name: str) -> str:
    """Normalize a corpus name for lookup: lower case, ``-`` and ``_`` alike.

    Args:
        name: A name as typed.

    Returns:
        The lookup key, e.g. ``"tiny_shakespeare"`` for ``"Tiny-Shakespeare"``.
    """
    return name.strip().lower().replace("-", "_")


def corpus_names() -> list[str]:
    """Return the names [`get_corpus()`][lego.data.corpora.get_corpus] knows.

    Returns:
        ``"python-stdlib"`` and the downloadable corpora, sorted.
    """
    return sorted([_STDLIB, *KNOWN_SOURCES])


def get_corpus(
    source: CorpusSource,
    *,
    unit: DocumentUnit = "file",
    separator: str | None = None,
    text_field: str = "text",
    errors: ErrorMode = "strict",
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Corpus:
    """Resolve a corpus name, local path or URL to a [`Corpus`][lego.data.corpora.Corpus].

    Lookup order: a ``Corpus`` is returned as is; ``http(s)://`` URLs download on first use;
    an existing file or folder is read locally; ``python-stdlib`` and the names in
    [`KNOWN_SOURCES`][lego.data.corpora.KNOWN_SOURCES] (``tiny_shakespeare``, ``tinystories``,
    ...; ``-`` and ``_`` are interchangeable) come next. Documents given directly (a list of
    strings, any re-iterable of them, or a function returning a new iterator) become an
    [`IterableCorpus`][lego.data.corpora.IterableCorpus].

    Args:
        source: A name, a path (file or folder), a URL, a corpus, or the documents.
        unit: What a document is in local or downloaded text files.
        separator: A document separator line for text files, if any.
        text_field: The text key of ``.jsonl`` lines.
        errors: ``"strict"`` or ``"skip"`` for binary / non-UTF-8 input.
        extensions: File suffixes read from folders.
        cache_dir: Where downloaded corpora are kept.
        progress: Show download progress.

    Returns:
        The corpus (nothing is read or downloaded until it is iterated).

    Raises:
        DataError: When ``source`` is neither a known name, an existing path nor a URL (with
            the closest names).
        ConfigError: When documents are given as a one-shot iterator (see
            [`IterableCorpus`][lego.data.corpora.IterableCorpus]).
    """
    if isinstance(source, Corpus):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return IterableCorpus(source)
    text = os.fspath(source)
    if is_url(text):
        return RemoteCorpus(
            text,
            cache_dir=cache_dir,
            unit=unit,
            separator=separator,
            text_field=text_field,
            errors=errors,
            progress=progress,
        )
    if Path(text).exists():
        return FileCorpus(
            text,
            unit=unit,
            separator=separator,
            text_field=text_field,
            errors=errors,
            extensions=extensions,
        )
    key = normalize_name(text)
    if key == normalize_name(_STDLIB):
        return PythonStdlibCorpus()
    if key in KNOWN_SOURCES:
        return RemoteCorpus.from_source(
            KNOWN_SOURCES[key], cache_dir=cache_dir, errors=errors, progress=progress
        )
    looks_like_path = any(sep in text for sep in ("/", "\\", ".")) or Path(text).suffix
    raise DataError(
        f"no such corpus, file or folder: {text!r}",
        path=text if looks_like_path else None,
        hint=("check the path, or use a corpus name: " if looks_like_path else "")
        + did_you_mean(key, corpus_names()),
    )
