"""The embedded default corpus "python-stdlib" (DESIGN.md §6), split for benchmarks.

The documents come from lego-data's
[`PythonStdlibCorpus`][lego.data.corpora.PythonStdlibCorpus] (the one definition of the
corpus: pydoc topics sorted by key, then the standard library's ``.py`` files sorted by
relative path, without ``site-packages``/``dist-packages``/``test``/``tests``/``idlelib``/
``turtledemo`` and without files that are not UTF-8), so benchmarks run offline on exactly
what ``lego-data prepare python-stdlib`` tokenizes. This module only adds the benchmarks'
fixed split: every 20th document is held out (for bytes-per-token measures); the rest is
the training text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lego.data.corpora import PythonStdlibCorpus

__all__ = ["Corpus", "HOLDOUT_EVERY", "documents", "python_stdlib", "split_held_out"]

HOLDOUT_EVERY = 20
"""Every ``HOLDOUT_EVERY``-th document (the 20th, 40th, ...) is held out."""


@dataclass(frozen=True)
class Corpus:
    """The corpus split into training and held-out documents."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]

    @property
    def train_bytes(self) -> int:
        """UTF-8 bytes of the training documents."""
        return sum(len(doc.encode("utf-8")) for doc in self.train)

    @property
    def held_out_bytes(self) -> int:
        """UTF-8 bytes of the held-out documents."""
        return sum(len(doc.encode("utf-8")) for doc in self.held_out)


def documents() -> list[str]:
    """All documents of the corpus, in their fixed order (lego-data's definition)."""
    return list(PythonStdlibCorpus())


def split_held_out(docs: list[str], every: int = HOLDOUT_EVERY) -> Corpus:
    """Hold out every ``every``-th document (1-based: the ``every``-th, ``2 * every``-th, ...).

    Args:
        docs: The documents, in corpus order.
        every: The hold-out period.

    Returns:
        The training and held-out documents, each in corpus order.
    """
    held = tuple(doc for i, doc in enumerate(docs) if i % every == every - 1)
    train = tuple(doc for i, doc in enumerate(docs) if i % every != every - 1)
    return Corpus(train=train, held_out=held)


@functools.lru_cache(maxsize=1)
def python_stdlib() -> Corpus:
    """The corpus: every ``HOLDOUT_EVERY``-th document held out."""
    return split_held_out(documents())
