"""Downloadable corpora: known ones by name, or any URL, cached on first use.

A [`RemoteCorpus`][lego.data.corpora.RemoteCorpus] downloads its file into the cache folder
(``$LEGO_DATA_HOME``, else ``$XDG_CACHE_HOME/lego/data``, else ``~/.cache/lego/data``) the
first time it is read, through [`download()`][lego.data.download.download] (resumable,
sha256-verified where the hash is known), then reads it like a local file.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lego.data.corpora.base import Corpus
from lego.data.corpora.files import DocumentUnit, ErrorMode, FileCorpus
from lego.data.download import download

__all__ = ["RemoteSource", "RemoteCorpus", "KNOWN_SOURCES", "default_cache_dir"]


@dataclass(frozen=True)
class RemoteSource:
    """A corpus known by name.

    Attributes:
        name: The name users type, e.g. ``"tiny_shakespeare"``.
        url: Where the file is downloaded from.
        filename: The file name in the cache folder.
        sha256: The file's sha256 hex digest, or None where it is not known.
        unit: What a document is (see [`FileCorpus`][lego.data.corpora.FileCorpus]).
        separator: The document separator line, if any.
        description: One line on what it is.
    """

    name: str
    url: str
    filename: str
    sha256: str | None
    unit: DocumentUnit
    separator: str | None
    description: str


_TINYSTORIES_URL: Final = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"


def _tinystories(split: str, description: str) -> RemoteSource:
    """A TinyStories split: one text file whose stories are separated by ``<|endoftext|>``."""
    filename = f"TinyStories-{split}.txt"
    return RemoteSource(
        name="tinystories" if split == "train" else f"tinystories_{split}",
        url=_TINYSTORIES_URL + filename,
        filename=filename,
        sha256=None,
        unit="file",
        separator="<|endoftext|>",
        description=description,
    )


KNOWN_SOURCES: Final[dict[str, RemoteSource]] = {
    source.name: source
    for source in (
        RemoteSource(
            name="tiny_shakespeare",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            filename="tiny_shakespeare.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            unit="file",
            separator=None,
            description="40,000 lines of Shakespeare (1.1 MB, one document), char-rnn's input.txt",
        ),
        _tinystories(
            "train", "TinyStories training stories (about 1.9 GB), separated by <|endoftext|> lines"
        ),
        _tinystories("valid", "TinyStories validation stories (about 19 MB)"),
    )
}
"""Corpora known by name (their checksums are pinned where they could be verified)."""


def default_cache_dir() -> Path:
    """Return where downloaded corpora are kept.

    Returns:
        ``$LEGO_DATA_HOME``, else ``$XDG_CACHE_HOME/lego/data``, else ``~/.cache/lego/data``.
    """
    explicit = os.environ.get("LEGO_DATA_HOME")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lego" / "data"


class RemoteCorpus(Corpus):
    """A corpus downloaded from a URL on first use, then read from the cache.

    Args:
        url: The file's URL.
        sha256: Its expected digest, or None.
        filename: The cache file name (default: the URL's last path part).
        cache_dir: The cache folder (default:
            [`default_cache_dir()`][lego.data.corpora.default_cache_dir]).
        unit: What a document is (see [`FileCorpus`][lego.data.corpora.FileCorpus]).
        separator: The document separator line, if any.
        text_field: The text key for ``.jsonl`` files.
        errors: ``"strict"`` or ``"skip"`` for unreadable bytes.
        name: The corpus name recorded in ``meta.json`` (default: the URL).
        progress: Show download progress.
    """

    def __init__(
        self,
        url: str,
        *,
        sha256: str | None = None,
        filename: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        unit: DocumentUnit = "file",
        separator: str | None = None,
        text_field: str = "text",
        errors: ErrorMode = "strict",
        name: str | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.url = url
        self.sha256 = sha256
        self.filename = filename or Path(urllib.parse.urlparse(url).path).name or "download.txt"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._unit: DocumentUnit = unit
        self._separator = separator
        self._text_field = text_field
        self._errors: ErrorMode = errors
        self._name = name if name is not None else url
        self._progress = progress

    @classmethod
    def from_source(
        cls,
        source: RemoteSource,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        errors: ErrorMode = "strict",
        progress: bool = False,
    ) -> RemoteCorpus:
        """Build the corpus of a known source.

        Args:
            source: One of [`KNOWN_SOURCES`][lego.data.corpora.KNOWN_SOURCES].
            cache_dir: The cache folder.
            errors: ``"strict"`` or ``"skip"`` for unreadable bytes.
            progress: Show download progress.

        Returns:
            The corpus, named after the source.
        """
        return cls(
            source.url,
            sha256=source.sha256,
            filename=source.filename,
            cache_dir=cache_dir,
            unit=source.unit,
            separator=source.separator,
            errors=errors,
            name=source.name,
            progress=progress,
        )

    @property
    def name(self) -> str:
        """The corpus name (the source's name, or the URL)."""
        return self._name

    @property
    def path(self) -> Path:
        """Where the downloaded file is (or will be) cached."""
        return self.cache_dir / self.filename

    def fetch(self) -> Path:
        """Download the file unless it is cached already; return its path.

        Raises:
            DataError: When the download fails or its checksum does not match.
        """
        return download(self.url, self.path, sha256=self.sha256, progress=self._progress)

    def iter_documents(self) -> Iterator[str]:
        """Download if needed, then yield the file's documents."""
        local = FileCorpus(
            self.fetch(),
            unit=self._unit,
            separator=self._separator,
            text_field=self._text_field,
            errors=self._errors,
            name=self._name,
        )
        local.skipped = self.skipped  # one list: skips show up while iterating
        yield from local.iter_documents()
