"""The embedded default corpus: Python's documentation topics and standard-library sources.

Every Python installation carries it, so the whole pipeline runs without a network
(DESIGN.md §6). The definition is fixed, so the corpus is the same wherever the same Python
version runs:

1. every value of ``pydoc_data.topics.topics``, sorted by key;
2. every ``.py`` file under ``sysconfig.get_paths()["stdlib"]``, excluding any path with a
   directory part in ``{site-packages, dist-packages, test, tests, idlelib, turtledemo}``,
   sorted by the relative POSIX path, read as UTF-8. Files that fail to decode are skipped
   and counted in [`skipped`][lego.data.corpora.Corpus.skipped].

On CPython 3.11 that is 732 documents, about 11.8 MB.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from lego.data.corpora.base import Corpus, Skipped

__all__ = ["PythonStdlibCorpus", "STDLIB_EXCLUDED_DIRS", "stdlib_files"]

STDLIB_EXCLUDED_DIRS: Final = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo"}
)
"""Directory names whose ``.py`` files are left out of the ``python-stdlib`` corpus."""


def stdlib_files(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """List the corpus's source files, in corpus order.

    Args:
        root: The standard library's directory (default: ``sysconfig``'s ``stdlib`` path).

    Returns:
        The ``.py`` files, sorted by their POSIX path relative to ``root``.
    """
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d not in STDLIB_EXCLUDED_DIRS]
        here = Path(folder)
        for file in files:
            if file.endswith(".py"):
                path = here / file
                found.append((path.relative_to(base).as_posix(), path))
    found.sort(key=lambda pair: pair[0])
    return [path for _, path in found]


class PythonStdlibCorpus(Corpus):
    """The ``python-stdlib`` corpus (see the module docstring for the exact definition).

    Args:
        root: The standard library's directory (default: this interpreter's).
    """

    def __init__(self, *, root: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self._root = root

    @property
    def name(self) -> str:
        """Always ``"python-stdlib"``."""
        return "python-stdlib"

    def iter_documents(self) -> Iterator[str]:
        """Yield the documentation topics, then the source files."""
        topics: dict[str, str]
        try:
            from pydoc_data import topics as pydoc_topics
        except ImportError:  # some distributions strip pydoc_data
            topics = {}
        else:
            topics = dict(pydoc_topics.topics)
        for key in sorted(topics):
            yield topics[key]
        for path in stdlib_files(self._root):
            data = path.read_bytes()
            try:
                yield data.decode("utf-8")
            except UnicodeDecodeError as err:
                self.skipped.append(
                    Skipped(path=str(path), reason=f"not UTF-8 ({err.reason})", offset=err.start)
                )
