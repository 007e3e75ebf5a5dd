"""``python-stdlib-qa``: instruction rows and preference pairs from the Python standard library.

The embedded corpus ``python-stdlib`` (DESIGN.md §6) lets a model be pretrained with no
network; this dataset lets it be fine-tuned and aligned the same way. Everything is built
deterministically from what every Python installation carries, and no standard-library
module it describes is ever imported (the sources are parsed with ``ast``).

Two kinds of questions ([`QA_KINDS`][lego.data.stdlib_qa.QA_KINDS]):

- ``docstring``: "What does json.dumps do?" answered by the first sentence of the
  docstring ("Serialize obj to a JSON formatted str."). The files are the
  ``python-stdlib`` corpus's ([`stdlib_files()`][lego.data.corpora.stdlib_files]) less
  private modules (a part starting with ``_``) and ``__main__.py``; the names are the
  public top-level functions and classes of each module (also those defined under a
  top-level ``if`` / ``try``) and the public methods of its top-level classes, the first
  definition of a name winning. The sentence is the docstring's first paragraph with
  whitespace collapsed and reStructuredText markup dropped (roles, double backquotes,
  emphasis), cut at the first ``". "`` (not after ``e.g.``, ``i.e.``, ``etc.``), kept when it is
  printable ASCII prose of 4 to 30 words starting with a capital letter (no signature,
  ``->``, ``>>>``, ``:param``, "Deprecated", "XXX", "TODO", ``NAME - heading`` or
  unbalanced brackets), with a full stop added where missing. The question is one of
  three plain phrasings, drawn per row from ``seed``. On CPython 3.11.7 that gives 4,385
  rows: 3,066 ``train`` (252 modules) and 1,319 ``test`` (68 modules, 418 of the rows
  from ``tkinter``) at the default ``test_fraction=0.2``.
- ``snippet``: "What does ``sorted([3, 1, 2])`` return?" answered by ``repr`` of the value
  (``[1, 2, 3]``). The expressions are built from small literals by a fixed table of
  templates, one per operation (36: ``len``, ``sorted``, ``str.upper``, ``floordiv``,
  ``slice``, ``in`` ...), and evaluated with no builtins but the table's dozen names; up
  to 100 distinct expressions per operation are drawn from ``seed``: 3,298 rows, 2,666
  ``train`` and 632 ``test`` by default, every operation in both.

Held-out rows measure generalisation, not recall: the split is decided by a hash of the
row's *group* ([`qa_split()`][lego.data.stdlib_qa.qa_split]), the module for docstring
rows and the expression for snippets, so a held-out module's names and a held-out
expression never appear in ``train`` (snippets hold out problems, not operations: a model
is asked to evaluate new literals with operations it was taught, as with lego-data's
generated tasks). A ``test`` docstring row whose answer text also
answers some ``train`` row (``"Close the file."``) is dropped as well.
(The ``python-stdlib`` pretraining corpus holds the held-out modules' sources: a model
pretrained on it has read their docstrings as source text, never as answers to questions.)

Preference pairs ([`preference_rows()`][lego.data.stdlib_qa.preference_rows]) take each
question of a split with ``chosen`` = its answer and ``rejected`` = a plausible wrong one,
made in one of the [`PREFERENCE_CORRUPTIONS`][lego.data.stdlib_qa.PREFERENCE_CORRUPTIONS]
ways, drawn per row from the seed in fixed proportions (docstring rows: 25 %
``other_function``, 20 % ``looped``, 15 % ``opposite``, 15 % ``swapped``, 15 %
``truncated``, 10 % ``shuffled``; snippet rows: ``wrong_value``).

Example:
    >>> rows = qa_rows(kinds=("snippet",), count=2, seed=0)
    >>> row = rows[0]
    >>> sorted(row)
    ['answer', 'completion', 'group', 'kind', 'module', 'name', 'prompt']
    >>> expression = row["prompt"].removeprefix("What does ").removesuffix(" return?")
    >>> expression = expression.removeprefix("What is ").removesuffix("?")
    >>> repr(eval(expression)) == row["completion"] == row["answer"]
    True
    >>> pair = preference_rows(kinds=("snippet",), count=1, seed=0)[0]
    >>> pair["corruption"], pair["chosen"] != pair["rejected"]
    ('wrong_value', True)
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import random
import re
import sys
import sysconfig
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lego.data.corpora.stdlib import stdlib_files
from lego.protocols import ConfigError, check_choice, check_float, check_int, did_you_mean

__all__ = [
    "QA_DATASET",
    "QA_KINDS",
    "PREFERENCE_CORRUPTIONS",
    "QaSplit",
    "qa_split",
    "qa_rows",
    "preference_rows",
]

QA_DATASET = "python-stdlib-qa"
"""The dataset's name."""

QA_KINDS = ("docstring", "snippet")
"""The kinds of question: a docstring's first sentence, or the value of a snippet."""

PREFERENCE_CORRUPTIONS = (
    "other_function",
    "opposite",
    "swapped",
    "shuffled",
    "truncated",
    "looped",
    "wrong_value",
)
"""The ways a rejected answer is made.

- ``other_function``: the first sentence of another name's docstring, from the same module
  (else the nearest module of the same split, in sorted order), with a different text;
- ``opposite``: a key word replaced by its opposite (Return/Raise, add/remove, true/false,
  open/close, start/stop, read/write, first/last ...); where the sentence has none of
  them, ``swapped`` instead;
- ``swapped``: two different words of the sentence swapped;
- ``shuffled``: the words of the sentence in another order;
- ``truncated``: the sentence cut after 30 to 70 % of its words, a full stop added;
- ``looped``: the sentence's words up to the end of a span of 2 to 4 of them, then that span
  again and again, to at least the sentence's number of words (the loop greedy decoding of
  a small model falls into: "the iterable of the iterable of the iterable");
- ``wrong_value`` (snippets): a plausible wrong value (off by one, another order, another
  case, an element dropped or changed).
"""

QaSplit = Literal["train", "test"]
"""A split of ``python-stdlib-qa``."""

_DOCSTRING_MIX: tuple[tuple[str, float], ...] = (
    ("other_function", 0.25),
    ("opposite", 0.15),
    ("swapped", 0.15),
    ("shuffled", 0.10),
    ("truncated", 0.15),
    ("looped", 0.20),
)
"""The proportions of the corruptions of docstring rows (snippets: all ``wrong_value``)."""


def qa_split(group: str, *, test_fraction: float) -> QaSplit:
    """The split a group of rows belongs to: ``test`` when its hash falls below ``test_fraction``.

    The hash is SHA-256 of the group's name, so the answer is the same on every run and
    platform.

    Args:
        group: A module name (docstring rows, e.g. ``"json.decoder"``) or a snippet's
            expression (``"snippet:sorted([3, 1, 2])"``).
        test_fraction: The share of groups held out, in ``[0, 1]``.

    Returns:
        ``"train"`` or ``"test"``.

    Raises:
        ConfigError: ``test_fraction`` outside ``[0, 1]``.

    Example:
        >>> qa_split("json", test_fraction=0.0), qa_split("json", test_fraction=1.0)
        ('train', 'test')
    """
    check_float("test_fraction", test_fraction, low=0.0, high=1.0)
    digest = hashlib.sha256(group.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    return "test" if position < test_fraction else "train"


# --------------------------------------------------------------------------- docstrings

_FUNCTION_QUESTIONS = (
    "What does {q} do?",
    "Explain {q} in one sentence.",
    "What is {q} used for?",
)
_CLASS_QUESTIONS = (
    "What is {q} for?",
    "What does the class {q} do?",
    "Explain {q} in one sentence.",
)

_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "cf", "approx", "resp", "Mr", "Dr"})
_SENTENCE_END = re.compile(r"\.\s")
_SKIPPED_TEXT = (">>>", "->", ":param", ":return", ":type", ":rtype", "XXX", "TODO", "deprecated")
_MIN_WORDS = 4
_MAX_WORDS = 30


@dataclass(frozen=True)
class _Entry:
    """A documented name: ``module`` (``json.decoder``), ``name`` (``JSONDecoder.decode``)."""

    module: str
    name: str
    is_class: bool
    sentence: str


def _module_name(relative: str) -> str | None:
    """``json/decoder.py`` -> ``json.decoder``; None for private and ``__main__`` files."""
    parts = relative.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or any(p.startswith("_") or not p.isidentifier() for p in parts):
        return None  # __main__.py, _pyio.py, __future__.py, idlelib-like private helpers
    return ".".join(parts)


_ROLE = re.compile(r":[\w:]+:`[~!]?([^`]*)`")
_LITERAL = re.compile(r"``([^`]+)``|`([^`]+)`")
_EMPHASIS = re.compile(r"(?<![\w*])\*([A-Za-z][^*]*?)\*(?![\w*])")


def _plain(text: str) -> str:
    """Drop reStructuredText markup: ``:func:`~a.b```, double backquotes, ``*emphasis*``."""
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)
    return _EMPHASIS.sub(r"\1", text)


def _first_sentence(docstring: str) -> str | None:
    """The docstring's first sentence if it reads as prose, with a final full stop."""
    paragraph = docstring.strip().split("\n\n", 1)[0]
    text = _plain(" ".join(paragraph.split()))
    start = 0
    while True:
        found = _SENTENCE_END.search(text, start)
        if found is None:
            break
        before = text[: found.start()].rsplit(" ", 1)[-1]
        if before not in _ABBREVIATIONS:
            text = text[: found.start()]
            break
        start = found.end()
    text = text.rstrip(" .")
    words = text.split()
    if not _MIN_WORDS <= len(words) <= _MAX_WORDS:
        return None
    if not text.isascii() or not text.isprintable() or not text[0].isupper():
        return None
    lowered = text.lower()
    if any(marker.lower() in lowered for marker in _SKIPPED_TEXT):
        return None
    if text.endswith((":", ",", ";")) or re.match(r"^[\w.]+\(", text):  # a signature
        return None
    if " -- " in text or re.match(r"^\S+ - ", text):  # "NAME - what it is": a heading
        return None
    for opening, closing in ("()", "[]", "{}"):
        if text.count(opening) != text.count(closing):
            return None
    letters = sum(c.isalpha() or c == " " for c in text)
    if letters < 0.8 * len(text):
        return None
    return text + "."


def _definitions(
    body: list[ast.stmt],
) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """The functions and classes of a body, also under its ``if`` / ``try`` statements."""
    found: list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef] = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append(node)
        elif isinstance(node, ast.If):
            found.extend(_definitions(node.body))
            found.extend(_definitions(node.orelse))
        elif isinstance(node, ast.Try):
            found.extend(_definitions(node.body))
            for handler in node.handlers:
                found.extend(_definitions(handler.body))
            found.extend(_definitions(node.orelse))
            found.extend(_definitions(node.finalbody))
    return found


def _module_entries(module: str, source: str) -> list[_Entry]:
    """The documented public names of one module's source, in source order."""
    try:
        with warnings.catch_warnings():  # invalid escapes warn (an error under -W error)
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    entries: list[_Entry] = []

    def add(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, name: str) -> None:
        docstring = ast.get_docstring(node, clean=True)
        sentence = _first_sentence(docstring) if docstring else None
        if sentence is not None:
            entries.append(_Entry(module, name, isinstance(node, ast.ClassDef), sentence))

    for node in _definitions(tree.body):
        if node.name.startswith("_"):
            continue
        add(node, node.name)
        if isinstance(node, ast.ClassDef):
            for method in node.body:
                public = not getattr(method, "name", "_").startswith("_")
                if public and isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    add(method, f"{node.name}.{method.name}")
    return entries


@functools.lru_cache(maxsize=4)
def _entries(root: str, python: str) -> tuple[_Entry, ...]:
    """Every documented name under ``root``, sorted, one per (module, name); cached.

    ``python`` (the interpreter's version) is part of the cache key only.
    """
    del python
    base = Path(root)
    found: dict[tuple[str, str], _Entry] = {}
    for path in stdlib_files(base):
        module = _module_name(path.relative_to(base).as_posix())
        if module is None:
            continue
        try:
            source = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for entry in _module_entries(module, source):
            found.setdefault((entry.module, entry.name), entry)  # the first definition
    return tuple(found[key] for key in sorted(found))


def _resolve_root(root: str | os.PathLike[str] | None) -> str:
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise ConfigError(
            f"the standard library folder {str(base)!r} does not exist",
            key="root",
            hint="pass the folder of a Python standard library, or leave root out",
        )
    return str(base.resolve())


# --------------------------------------------------------------------------- snippets

_WORDS = (
    "apple", "bird", "blue", "book", "cake", "cat", "cloud", "code", "data", "dog",
    "fish", "green", "hello", "house", "lemon", "light", "moon", "music", "north", "ocean",
    "paper", "python", "queen", "river", "road", "salt", "snake", "stone", "sun", "table",
    "tiger", "train", "tree", "water", "world", "zebra",
)  # fmt: skip


def _word(rng: random.Random) -> str:
    return rng.choice(_WORDS)


def _ints(rng: random.Random, low: int = 3, high: int = 5, top: int = 9) -> list[int]:
    return [rng.randint(0, top) for _ in range(rng.randint(low, high))]


def _sorted_call(rng: random.Random) -> str:
    items = _ints(rng)
    if rng.random() < 0.3:
        return f"sorted({items!r}, reverse=True)"
    if rng.random() < 0.3:
        return f"sorted({_word(rng)!r})"
    return f"sorted({items!r})"


def _split_call(rng: random.Random) -> str:
    words = [_word(rng) for _ in range(rng.randint(2, 4))]
    if rng.random() < 0.5:
        return f"{' '.join(words)!r}.split()"
    return f"{','.join(words)!r}.split(',')"


def _replace_call(rng: random.Random) -> str:
    word = _word(rng)
    old = rng.choice(word)
    new = rng.choice("xyz*-")
    return f"{word!r}.replace({old!r}, {new!r})"


def _mixed_case(rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in _word(rng))


_BOOL_ARGUMENTS = ("0", "1", "7", "-2", "''", "'a'", "' '", "[]", "[0]", "None", "0.0", "()")

_Template = Callable[[random.Random], str]

_SNIPPETS: dict[str, _Template] = {
    "len": lambda r: f"len({_ints(r, 0, 6)!r})" if r.random() < 0.5 else f"len({_word(r)!r})",
    "sorted": _sorted_call,
    "reversed": lambda r: f"list(reversed({_ints(r)!r}))",
    "max": lambda r: f"max({_ints(r, top=20)!r})",
    "min": lambda r: f"min({_ints(r, top=20)!r})",
    "sum": lambda r: f"sum({_ints(r, 2, 5)!r})",
    "abs": lambda r: f"abs({r.randint(-50, 50)})",
    "round": lambda r: f"round({r.randint(0, 99) / 10})",
    "str.upper": lambda r: f"{_word(r)!r}.upper()",
    "str.lower": lambda r: f"{_mixed_case(r)!r}.lower()",
    "str.title": lambda r: f"{_word(r) + ' ' + _word(r)!r}.title()",
    "str.strip": lambda r: f"{' ' * r.randint(1, 3) + _word(r) + ' ' * r.randint(0, 3)!r}.strip()",
    "str.split": _split_call,
    "str.join": lambda r: (
        f"{r.choice(['-', ', ', '', ' ', '+'])!r}.join("
        f"{[_word(r) for _ in range(r.randint(2, 3))]!r})"
    ),
    "str.replace": _replace_call,
    "str.count": lambda r: f"{_word(r)!r}.count({r.choice('aeiounrst')!r})",
    "str.find": lambda r: f"{_word(r)!r}.find({r.choice('aeiounrst')!r})",
    "str.startswith": lambda r: f"{_word(r)!r}.startswith({_word(r)[: r.randint(1, 3)]!r})",
    "slice": lambda r: f"{_ints(r, 4, 6)!r}[{r.randint(0, 2)}:{r.randint(2, 5)}]",
    "index": lambda r: f"{_ints(r, 3, 5)!r}[{r.randint(-3, 2)}]",
    "in": lambda r: f"{r.randint(0, 9)} in {_ints(r)!r}",
    "int": lambda r: f"int({str(r.randint(0, 999))!r}) + {r.randint(1, 9)}",
    "str": lambda r: f"str({r.randint(0, 999)}) + {str(r.randint(0, 9))!r}",
    "divmod": lambda r: f"divmod({r.randint(5, 60)}, {r.randint(2, 9)})",
    "floordiv": lambda r: f"{r.randint(5, 99)} // {r.randint(2, 9)}",
    "mod": lambda r: f"{r.randint(5, 99)} % {r.randint(2, 9)}",
    "add": lambda r: f"{r.randint(0, 50)} + {r.randint(0, 50)}",
    "mul": lambda r: f"{r.randint(0, 12)} * {r.randint(0, 12)}",
    "pow": lambda r: f"{r.randint(2, 5)} ** {r.randint(0, 4)}",
    "range": lambda r: f"list(range({r.randint(0, 4)}, {r.randint(4, 9)}))",
    "repeat": lambda r: f"{_word(r)[: r.randint(1, 3)]!r} * {r.randint(2, 4)}",
    "list.index": lambda r: (lambda xs: f"{xs!r}.index({r.choice(xs)})")(_ints(r)),
    "zip": lambda r: (
        f"list(zip({_ints(r, 2, 3)!r}, {[_word(r) for _ in range(r.randint(2, 3))]!r}))"
    ),
    "concat": lambda r: f"{_ints(r, 1, 3)!r} + {_ints(r, 1, 3)!r}",
    "set": lambda r: f"sorted(set({_ints(r, 4, 7, top=5)!r}))",
    "bool": lambda r: f"bool({r.choice(_BOOL_ARGUMENTS)})",
}
"""The snippet templates: operation name -> expression from a seeded RNG."""

_SNIPPET_NAMES: dict[str, object] = {
    "len": len,
    "sorted": sorted,
    "reversed": reversed,
    "list": list,
    "max": max,
    "min": min,
    "sum": sum,
    "abs": abs,
    "round": round,
    "int": int,
    "str": str,
    "divmod": divmod,
    "range": range,
    "zip": zip,
    "set": set,
    "bool": bool,
}
"""The only names a snippet expression sees (no other builtins)."""

_SNIPPETS_PER_OPERATION = 100
_OPERATOR_GROUPS = frozenset({"slice", "index", "in", "int", "str", "floordiv", "mod", "add"})


@dataclass(frozen=True)
class _Item:
    """A row with what its corruptions need: the value of a snippet, or the entry."""

    row: dict[str, str]
    value: object = None


def _evaluate(expression: str) -> object:
    """Evaluate an expression this module built from literals, with the table's names only."""
    return eval(expression, {"__builtins__": {}, **_SNIPPET_NAMES})


@functools.lru_cache(maxsize=8)
def _snippets(seed: int) -> tuple[_Item, ...]:
    items: list[_Item] = []
    for operation in sorted(_SNIPPETS):
        rng = random.Random(f"{QA_DATASET}:snippet:{seed}:{operation}")
        seen: set[str] = set()
        for _ in range(_SNIPPETS_PER_OPERATION * 50):
            if len(seen) == _SNIPPETS_PER_OPERATION:
                break
            expression = _SNIPPETS[operation](rng)
            if expression in seen:
                continue
            seen.add(expression)
            value = _evaluate(expression)
            if operation in _OPERATOR_GROUPS or " ** " in expression or " * " in expression:
                prompt = f"What is {expression}?"
            else:
                prompt = f"What does {expression} return?"
            answer = repr(value)
            row = {
                "prompt": prompt,
                "completion": answer,
                "answer": answer,
                "kind": "snippet",
                "module": "builtins",
                "name": operation,
                "group": f"snippet:{expression}",
            }
            items.append(_Item(row, value))
    return tuple(items)


# --------------------------------------------------------------------------- rows


def _check_common(
    split: object, kinds: object, test_fraction: object, seed: object, count: object
) -> tuple[str, ...]:
    check_choice("split", split, ("train", "test"))
    if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
        raise ConfigError(
            f"kinds must be a non-empty sequence of kind names, got {kinds!r}",
            key="kinds",
            hint=f"e.g. kinds={QA_KINDS!r}",
        )
    for kind in kinds:
        if kind not in QA_KINDS:
            raise ConfigError(
                f"kinds: unknown kind {kind!r}",
                key="kinds",
                hint=did_you_mean(str(kind), QA_KINDS),
            )
    check_float("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    check_int("seed", seed)
    if count is not None:
        check_int("count", count, minimum=1)
    return tuple(k for k in QA_KINDS if k in kinds)


def _question(entry: _Entry, seed: int) -> str:
    rng = random.Random(f"{QA_DATASET}:question:{seed}:{entry.module}:{entry.name}")
    questions = _CLASS_QUESTIONS if entry.is_class else _FUNCTION_QUESTIONS
    return rng.choice(questions).format(q=f"{entry.module}.{entry.name}")


def _docstring_items(root: str, split: str, test_fraction: float, seed: int) -> list[_Item]:
    entries = _entries(root, sys.version)
    train_answers = {
        e.sentence for e in entries if qa_split(e.module, test_fraction=test_fraction) == "train"
    }
    items: list[_Item] = []
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        if qa_split(entry.module, test_fraction=test_fraction) != split:
            continue
        if split == "test" and entry.sentence in train_answers:
            continue  # a held-out answer is never one the model trained on
        prompt = _question(entry, seed)
        if (prompt, entry.sentence) in seen:
            continue
        seen.add((prompt, entry.sentence))
        row = {
            "prompt": prompt,
            "completion": entry.sentence,
            "answer": entry.sentence,
            "kind": "docstring",
            "module": entry.module,
            "name": entry.name,
            "group": entry.module,
        }
        items.append(_Item(row, entry))
    return items


def _items(
    split: str,
    kinds: tuple[str, ...],
    test_fraction: float,
    seed: int,
    count: int | None,
    root: str | os.PathLike[str] | None,
    what: str,
) -> list[_Item]:
    items: list[_Item] = []
    if "docstring" in kinds:
        items.extend(_docstring_items(_resolve_root(root), split, test_fraction, seed))
    if "snippet" in kinds:
        items.extend(
            i
            for i in _snippets(seed)
            if qa_split(i.row["group"], test_fraction=test_fraction) == split
        )
    if not items:
        raise ConfigError(
            f"the {split} split of {QA_DATASET} with kinds {list(kinds)} has no {what} "
            f"(test_fraction={test_fraction})",
            key="test_fraction",
            hint="use another test_fraction, or add kinds",
        )
    if count is None:
        return items
    if count > len(items):
        raise ConfigError(
            f"{count} {what} of the {split} split asked for; {QA_DATASET} has {len(items)} "
            f"(kinds {list(kinds)}, test_fraction={test_fraction}) and never repeats one",
            key="count",
            hint=f"ask for at most {len(items)}, or count=None for all",
        )
    order = items[:]
    random.Random(f"{QA_DATASET}:{what}:{split}:{seed}").shuffle(order)
    return order[:count]


def qa_rows(
    *,
    split: QaSplit = "train",
    kinds: Sequence[str] = QA_KINDS,
    test_fraction: float = 0.2,
    seed: int = 0,
    count: int | None = None,
    root: str | os.PathLike[str] | None = None,
) -> list[dict[str, str]]:
    """Question-answer rows of one split of ``python-stdlib-qa``.

    Args:
        split: ``train`` or ``test``; they never share a module (docstring rows) or an
            expression (snippet rows).
        kinds: Which of [`QA_KINDS`][lego.data.stdlib_qa.QA_KINDS] to include.
        test_fraction: The share of modules and expressions held out, in ``(0, 1)``.
        seed: Chooses the question phrasings, the snippets' literals and the order of a
            ``count`` draw.
        count: None for every row of the split in a fixed order (docstring rows sorted by
            module and name, then snippets by operation); ``k`` for the first ``k`` of a
            seeded shuffle of them.
        root: The standard library's folder (default: this interpreter's).

    Returns:
        Records ``{"prompt", "completion", "answer", "kind", "module", "name", "group"}``:
        ``completion`` is the text the model should write (no leading space; a docstring
        sentence ends with a full stop, a snippet's is ``repr`` of the value), ``answer``
        what an exact-answer verifier compares with (the completion), ``group`` what
        decides the split (the module, or ``"snippet:<expression>"``; snippets'
        ``module`` is ``"builtins"`` and ``name`` the operation).

    Raises:
        ConfigError: A bad argument (named in ``key``), a split with no rows, or ``count``
            above the number of rows (the message gives it).
    """
    chosen = _check_common(split, kinds, test_fraction, seed, count)
    return [
        dict(item.row) for item in _items(split, chosen, test_fraction, seed, count, root, "rows")
    ]


# --------------------------------------------------------------------------- corruptions

_OPPOSITES: dict[str, str] = {}
for _a, _b in (
    ("return", "raise"), ("returns", "raises"), ("returned", "raised"),
    ("add", "remove"), ("adds", "removes"), ("added", "removed"),
    ("true", "false"), ("open", "close"), ("opens", "closes"), ("opened", "closed"),
    ("start", "stop"), ("starts", "stops"), ("read", "write"), ("reads", "writes"),
    ("first", "last"), ("before", "after"), ("get", "set"), ("gets", "sets"),
    ("input", "output"), ("minimum", "maximum"), ("enable", "disable"),
    ("encode", "decode"), ("encodes", "decodes"), ("new", "old"), ("lower", "upper"),
    ("empty", "full"), ("accept", "reject"), ("send", "receive"), ("sends", "receives"),
    ("create", "delete"), ("creates", "deletes"), ("all", "no"), ("local", "remote"),
    ("server", "client"), ("load", "dump"), ("is", "is not"), ("can", "cannot"),
    ("with", "without"), ("next", "previous"), ("begin", "end"), ("enter", "exit"),
    ("success", "failure"), ("valid", "invalid"), ("always", "never"), ("more", "less"),
    ("include", "exclude"), ("insert", "delete"), ("push", "pop"), ("left", "right"),
):  # fmt: skip
    _OPPOSITES.setdefault(_a, _b)
    _OPPOSITES.setdefault(_b, _a)


def _same_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _opposite(sentence: str, rng: random.Random) -> str | None:
    words = sentence[:-1].split(" ")
    spots = [i for i, w in enumerate(words) if w.lower() in _OPPOSITES]
    if not spots:
        return None
    i = rng.choice(spots)
    words[i] = _same_case(_OPPOSITES[words[i].lower()], words[i])
    return " ".join(words) + "."


def _swapped(sentence: str, rng: random.Random) -> str | None:
    words = sentence[:-1].split(" ")
    pairs = [(i, j) for i in range(len(words)) for j in range(i + 1, len(words))]
    pairs = [(i, j) for i, j in pairs if words[i] != words[j]]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    words[i], words[j] = words[j], words[i]
    return " ".join(words) + "."


def _shuffled(sentence: str, rng: random.Random) -> str | None:
    words = sentence[:-1].split(" ")
    for _ in range(10):
        order = words[:]
        rng.shuffle(order)
        if order != words:
            return " ".join(order) + "."
    return None


def _truncated(sentence: str, rng: random.Random) -> str | None:
    words = sentence[:-1].split(" ")
    keep = max(1, round(len(words) * rng.uniform(0.3, 0.7)))
    if keep >= len(words):
        return None
    return " ".join(words[:keep]).rstrip(",;:") + "."


def _looped(sentence: str, rng: random.Random) -> str | None:
    words = sentence[:-1].split(" ")
    if len(words) < 3:
        return None
    width = rng.randint(2, min(4, len(words) - 1))
    start = rng.randrange(len(words) - width + 1)
    span = words[start : start + width]
    out = words[: start + width]
    while len(out) < max(len(words), start + 2 * width):
        out += span
    return " ".join(out[: max(len(words), start + 2 * width)]).rstrip(",;:") + "."


_WORD_CORRUPTIONS: dict[str, Callable[[str, random.Random], str | None]] = {
    "opposite": _opposite,
    "swapped": _swapped,
    "shuffled": _shuffled,
    "truncated": _truncated,
    "looped": _looped,
}


def _other_function(
    row: dict[str, str], by_module: dict[str, list[str]], rng: random.Random
) -> str | None:
    """Another name's sentence from the same module, else from the nearest module."""
    modules = list(by_module)
    here = modules.index(row["module"])
    for distance in range(len(modules)):
        for position in (here - distance, here + distance):
            if 0 <= position < len(modules):
                texts = [t for t in by_module[modules[position]] if t != row["completion"]]
                if texts:
                    return rng.choice(texts)
    return None


def _wrong_values(value: object, rng: random.Random) -> list[object]:
    """Plausible wrong values of a snippet, in a seeded order."""
    out: list[object] = []
    if isinstance(value, bool):
        out.append(not value)
    elif isinstance(value, int):
        out += [value + 1, value - 1] if rng.random() < 0.5 else [value - 1, value + 1]
    elif isinstance(value, float):
        out += [value + 1.0, value - 1.0]
    elif isinstance(value, str):
        out += [value.upper(), value.title(), value.lower(), value.swapcase()]
        rng.shuffle(out)
        if len(value) > 1:
            drop = rng.randrange(len(value))
            out += [value[:drop] + value[drop + 1 :], value[::-1]]
        out += [value + value[-1:] if value else " "]
    elif isinstance(value, (list, tuple)):
        kind = type(value)
        options: list[object] = [kind(reversed(value))]
        if value:
            spot = rng.randrange(len(value))
            changed = list(value)
            element = changed[spot]
            if isinstance(element, int) and not isinstance(element, bool):
                changed[spot] = element + rng.choice((-1, 1))
                options.append(kind(changed))
            options.append(kind(value[:-1]))
            options.append(kind(value[1:]))
        else:
            options.append(kind([0]))
        rng.shuffle(options)
        out += options
    out.append(None if value is not None else 0)
    return out


def _wrong_value(item: _Item, rng: random.Random) -> str:
    for candidate in _wrong_values(item.value, rng):
        if repr(candidate) != item.row["completion"]:
            return repr(candidate)
    raise AssertionError(f"no wrong value for {item.row['prompt']!r}")  # pragma: no cover


def _draw(rng: random.Random) -> str:
    point = rng.random()
    for name, share in _DOCSTRING_MIX:
        if point < share:
            return name
        point -= share
    return _DOCSTRING_MIX[-1][0]


def _rejected(item: _Item, by_module: dict[str, list[str]], seed: int) -> tuple[str, str]:
    """The corruption and the rejected answer of one row (never its completion).

    ``by_module``: the distinct answers of the split's docstring rows per module, in
    sorted module order (for ``other_function``).
    """
    row = item.row
    rng = random.Random(f"{QA_DATASET}:rejected:{seed}:{row['prompt']}\0{row['completion']}")
    if row["kind"] == "snippet":
        return "wrong_value", _wrong_value(item, rng)
    first = _draw(rng)
    chosen = row["completion"]
    for name in (first, "swapped", "shuffled", "truncated", "other_function"):
        if name == "other_function":
            text = _other_function(row, by_module, rng)
        else:
            text = _WORD_CORRUPTIONS[name](chosen, rng)
        if text is not None and text != chosen:
            return name, text
    raise AssertionError(f"no corruption of {chosen!r}")  # pragma: no cover


def preference_rows(
    *,
    split: QaSplit = "train",
    test_fraction: float = 0.2,
    seed: int = 0,
    count: int | None = None,
    root: str | os.PathLike[str] | None = None,
    kinds: Sequence[str] = QA_KINDS,
) -> list[dict[str, str]]:
    """Preference pairs of one split of ``python-stdlib-qa``: one per question.

    ``chosen`` is the question's answer (the ``completion`` of
    [`qa_rows()`][lego.data.stdlib_qa.qa_rows]), ``rejected`` a plausible wrong answer made
    in one of the [`PREFERENCE_CORRUPTIONS`][lego.data.stdlib_qa.PREFERENCE_CORRUPTIONS]
    ways, drawn from the seed (docstring rows: 30 % ``other_function``, 20 % ``opposite``
    (``swapped`` where the sentence has no word of the table), 20 % ``swapped``, 15 %
    ``shuffled``, 15 % ``truncated``; snippets: ``wrong_value``). A rejected answer is
    never the chosen one and comes from the same split.

    Args:
        split: ``train`` or ``test`` (split by module / expression as for ``qa_rows``).
        test_fraction: The share of modules and expressions held out, in ``(0, 1)``.
        seed: Chooses the phrasings, snippets, corruptions and the order of a ``count``
            draw.
        count: None for one pair per question of the split, in ``qa_rows``' order; ``k``
            for the first ``k`` of a seeded shuffle.
        root: The standard library's folder (default: this interpreter's).
        kinds: Which of [`QA_KINDS`][lego.data.stdlib_qa.QA_KINDS] to include.

    Returns:
        Records ``{"prompt", "chosen", "rejected", "kind", "module", "name", "group",
        "corruption"}``.

    Raises:
        ConfigError: A bad argument (named in ``key``), a split with no rows, or ``count``
            above the number of pairs (the message gives it).
    """
    chosen_kinds = _check_common(split, kinds, test_fraction, seed, count)
    everything = _items(split, chosen_kinds, test_fraction, seed, None, root, "pairs")
    answers: dict[str, set[str]] = {}
    for item in everything:
        if item.row["kind"] == "docstring":
            answers.setdefault(item.row["module"], set()).add(item.row["completion"])
    by_module = {module: sorted(answers[module]) for module in sorted(answers)}
    pairs: list[dict[str, str]] = []
    for item in everything:
        row = item.row
        corruption, rejected = _rejected(item, by_module, seed)
        pairs.append(
            {
                "prompt": row["prompt"],
                "chosen": row["completion"],
                "rejected": rejected,
                "kind": row["kind"],
                "module": row["module"],
                "name": row["name"],
                "group": row["group"],
                "corruption": corruption,
            }
        )
    if count is None:
        return pairs
    if count > len(pairs):
        raise ConfigError(
            f"{count} pairs of the {split} split asked for; {QA_DATASET} has {len(pairs)} "
            f"(kinds {list(chosen_kinds)}, test_fraction={test_fraction}) and never repeats one",
            key="count",
            hint=f"ask for at most {len(pairs)}, or count=None for all",
        )
    random.Random(f"{QA_DATASET}:pairs:{split}:{seed}").shuffle(pairs)
    return pairs[:count]
