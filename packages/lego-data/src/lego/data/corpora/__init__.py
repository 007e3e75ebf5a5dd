"""Corpora: named, re-iterable sources of documents, read lazily.

- ``python-stdlib``: the embedded default corpus (no network), see
  [`PythonStdlibCorpus`][lego.data.corpora.PythonStdlibCorpus];
- local files and folders (``.txt``, ``.jsonl``): [`FileCorpus`][lego.data.corpora.FileCorpus];
- downloadable corpora by name (``tiny_shakespeare``, ``tinystories``) or any URL:
  [`RemoteCorpus`][lego.data.corpora.RemoteCorpus];
- documents the caller holds (a list of strings, a function returning an iterator):
  [`IterableCorpus`][lego.data.corpora.IterableCorpus];
- [`get_corpus()`][lego.data.corpora.get_corpus] resolves any of them from a string.
"""

from lego.data.corpora.base import Corpus, Skipped
from lego.data.corpora.files import DEFAULT_EXTENSIONS, DocumentUnit, ErrorMode, FileCorpus
from lego.data.corpora.memory import IterableCorpus
from lego.data.corpora.registry import CorpusSource, corpus_names, get_corpus, normalize_name
from lego.data.corpora.remote import KNOWN_SOURCES, RemoteCorpus, RemoteSource, default_cache_dir
from lego.data.corpora.stdlib import STDLIB_EXCLUDED_DIRS, PythonStdlibCorpus, stdlib_files

__all__ = [
    "Corpus",
    "Skipped",
    "CorpusSource",
    "IterableCorpus",
    "FileCorpus",
    "DocumentUnit",
    "ErrorMode",
    "DEFAULT_EXTENSIONS",
    "PythonStdlibCorpus",
    "STDLIB_EXCLUDED_DIRS",
    "stdlib_files",
    "RemoteCorpus",
    "RemoteSource",
    "KNOWN_SOURCES",
    "default_cache_dir",
    "get_corpus",
    "corpus_names",
    "normalize_name",
]
