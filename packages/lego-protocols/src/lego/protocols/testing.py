"""Conformance suites: one set of tests that every implementation of a contract passes.

Subclass a contract in your tests, name the subclass ``Test...`` so pytest collects it, and
implement the factory. The suites use plain ``assert`` and need no test framework import::

    from lego.protocols.testing import TokenizerContract

    class TestCharTokenizer(TokenizerContract):
        def make_tokenizer(self) -> Tokenizer:
            return CharTokenizer.from_text("abc ...")

        round_trip_texts = ("abc", "cab")   # what this tokenizer can represent
"""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import ClassVar

from lego.protocols.tokenizer import Tokenizer

__all__ = [
    "TokenizerContract",
    "DEFAULT_TEXTS",
    "modules_imported",
    "package_modules",
    "run_doctests",
]

_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z")

DEFAULT_TEXTS: tuple[str, ...] = (
    "hello world",
    "Hello, World! 123 4567 89012",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines\n\n\n",
    "naïve café, Straße, ĳ, ﬁ",
    "Ελληνικά, русский, עברית, العربية, हिन्दी",
    "日本語のテキスト, 中文文本, 한국어 텍스트",
    "emoji 👩‍👩‍👧 🇺🇳 🤖 and symbols ∑∫√ ≠ ≤",
    "code: def f(x):\n    return x ** 2  # comment",
    "'s 't 're 've 'm 'll 'd 'S",
)
"""Texts that exercise ASCII, accents, many scripts, emoji sequences, whitespace and code."""


def modules_imported(imports: Sequence[str], *, packages: Collection[str]) -> list[str]:
    """Import modules in a fresh interpreter and list what they loaded of some packages.

    The check behind "this brick never imports torch": a brick's test asserts that
    ``modules_imported(["lego.tokenize"], packages={"torch", "numpy"})`` is empty.

    Args:
        imports: Module names to import, in order (e.g. ``["lego.tokenize"]``).
        packages: Top-level package names to look for (e.g. ``{"torch", "numpy"}``).

    Returns:
        The sorted names of the loaded modules whose top-level package is in ``packages``.

    Raises:
        ValueError: On a name that is not a dotted module name.
        AssertionError: When the imports fail in the fresh interpreter (with its stderr).
    """
    for name in [*imports, *packages]:
        if not _MODULE_NAME.match(name):
            raise ValueError(f"not a module name: {name!r}")
    code = (
        "import json, sys\n"
        + "".join(f"import {name}\n" for name in imports)
        + f"wanted = {sorted(packages)!r}\n"
        + "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in wanted)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"importing {', '.join(imports)} failed:\n{done.stderr}"
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


class TokenizerContract(ABC):
    """The [`Tokenizer`][lego.protocols.Tokenizer] conformance suite.

    Attributes:
        round_trip_texts: Texts that must survive ``decode(encode(text))`` unchanged.
            Lossy tokenizers (e.g. word-level with ``<unk>``) set their own.
        any_texts: Texts that must encode to in-range ids (lossless or not).
    """

    round_trip_texts: ClassVar[tuple[str, ...]] = DEFAULT_TEXTS
    any_texts: ClassVar[tuple[str, ...]] = DEFAULT_TEXTS

    @abstractmethod
    def make_tokenizer(self) -> Tokenizer:
        """Return the tokenizer under test (called once per test)."""

    def test_satisfies_protocol(self) -> None:
        """The object passes ``isinstance(obj, Tokenizer)``."""
        assert isinstance(self.make_tokenizer(), Tokenizer)

    def test_vocab_size_is_positive_int(self) -> None:
        """``vocab_size`` is a positive ``int``."""
        vocab_size = self.make_tokenizer().vocab_size
        assert isinstance(vocab_size, int)
        assert vocab_size > 0

    def test_round_trip(self) -> None:
        """``decode(encode(text)) == text`` for every round-trip text."""
        tokenizer = self.make_tokenizer()
        for text in self.round_trip_texts:
            ids = tokenizer.encode(text)
            assert tokenizer.decode(ids) == text, f"round trip changed {text!r}"

    def test_ids_are_ints_in_range(self) -> None:
        """``encode`` returns a list of ``int`` in ``range(vocab_size)``."""
        tokenizer = self.make_tokenizer()
        for text in self.any_texts:
            ids = tokenizer.encode(text)
            assert isinstance(ids, list)
            assert all(type(i) is int and 0 <= i < tokenizer.vocab_size for i in ids), text

    def test_empty_text(self) -> None:
        """The empty string encodes to no ids and no ids decode to it."""
        tokenizer = self.make_tokenizer()
        assert tokenizer.encode("") == []
        assert tokenizer.decode([]) == ""

    def test_encode_is_deterministic(self) -> None:
        """Encoding the same text twice gives the same ids."""
        tokenizer = self.make_tokenizer()
        for text in self.any_texts:
            assert tokenizer.encode(text) == tokenizer.encode(text)

    def test_special_tokens_fit_vocab(self) -> None:
        """Special tokens are non-empty strings with distinct in-range ids."""
        tokenizer = self.make_tokenizer()
        specials = dict(tokenizer.special_tokens)
        assert all(isinstance(t, str) for t in specials)
        assert "" not in specials
        assert len(set(specials.values())) == len(specials), "two specials share an id"
        assert all(0 <= i < tokenizer.vocab_size for i in specials.values())


DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
"""The doctest options every brick's examples run with."""


def package_modules(package: str) -> list[str]:
    """Every module of an installed package, the package itself first, sorted.

    The brick's doctest test parametrizes over this list, so each module's examples are
    one test (and a brick's examples run from the installed code, never a second copy).

    Args:
        package: A package name, e.g. ``"lego.arch"``.

    Returns:
        The dotted names of the package and of every module and subpackage below it.
    """
    root = importlib.import_module(package)
    names = [package]
    paths = getattr(root, "__path__", None)
    if paths is not None:
        names += sorted(info.name for info in pkgutil.walk_packages(paths, prefix=package + "."))
    return names


def run_doctests(module: str) -> int:
    """Run the ``>>>`` examples of one module and fail with doctest's report.

    Examples run with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``, as typed at a REPL (the
    module's ``__future__`` imports do not apply to them).

    Args:
        module: A dotted module name.

    Returns:
        The number of examples that ran.

    Raises:
        AssertionError: An example failed; the message is doctest's report.
    """
    imported = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    report: list[str] = []
    for test in finder.find(imported, module):
        # compileflags=0: examples run as typed at a REPL, without the module's
        # ``from __future__ import annotations`` (classes defined in an example resolve).
        runner.run(test, compileflags=0, out=report.append)
    results = runner.summarize(verbose=False)
    if results.failed:
        raise AssertionError("".join(report))
    return results.attempted
