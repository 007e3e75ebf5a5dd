"""python-stdlib-qa: exact rows from a fake stdlib, disjoint splits, right values, clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from lego.data.stdlib_qa import (
    PREFERENCE_CORRUPTIONS,
    QA_DATASET,
    QA_KINDS,
    preference_rows,
    qa_rows,
    qa_split,
)
from lego.protocols import ConfigError

FIELDS = {"prompt", "completion", "answer", "kind", "module", "name", "group"}
PAIR_FIELDS = {"prompt", "chosen", "rejected", "kind", "module", "name", "group", "corruption"}

TOOLS = '''
"""Kitchen tools."""
import os

PATTERN = "\\d+"  # an invalid escape warns (an error under -W error): the module still counts


def chop(food):
    """Cut the food into
    small pieces.

    The rest of the docstring is not the answer.
    """


def _hidden():
    """A private helper that is never asked about."""


def short():
    """Too short."""


def sig():
    """sig(x) -> y, the signature is not an answer"""


def undocumented():
    pass


class Knife:
    """A sharp blade with a handle, e.g. a chef's knife. More text."""

    def sharpen(self):
        """Make the blade sharp again"""

    def _private(self):
        """Never asked about at all."""

    def __len__(self):
        """The length of the blade in inches."""


def close():
    """Close the kitchen for the night."""


def pad(value, width):
    """Return ``value`` as a :class:`~builtins.str` of *width* characters, e.g. ``'x'``."""
'''

PACKAGE = '''
def boil(water):
    """Heat the water until it bubbles. Then stop."""


def close():
    """Close the kitchen for the night."""


if True:
    def stir(pot):
        """Move the spoon round and round in the pot."""
else:
    def todo():
        """TODO: write the rest of this kitchen."""
'''

HIDDEN = '''
def secret():
    """This function must never become a row."""
'''


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A standard library of two modules: ``kitchen`` (test) and ``kitchen.tools`` (train)."""
    files = {
        "kitchen/__init__.py": PACKAGE,
        "kitchen/tools.py": TOOLS,
        "kitchen/__main__.py": HIDDEN,
        "_private.py": HIDDEN,
        "tests/test_kitchen.py": HIDDEN,
        "site-packages/extra.py": HIDDEN,
        "broken.py": "def (:\n",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def test_the_fake_modules_fall_in_the_expected_splits() -> None:
    # the fixture relies on these (SHA-256 of the names, the same everywhere)
    assert qa_split("kitchen", test_fraction=0.2) == "test"
    assert qa_split("kitchen.tools", test_fraction=0.2) == "train"


def test_a_fake_stdlib_gives_exactly_the_expected_rows(fake_root: Path) -> None:
    train = qa_rows(kinds=("docstring",), root=fake_root)
    assert [(r["module"], r["name"], r["completion"]) for r in train] == [
        ("kitchen.tools", "Knife", "A sharp blade with a handle, e.g. a chef's knife."),
        ("kitchen.tools", "Knife.sharpen", "Make the blade sharp again."),
        ("kitchen.tools", "chop", "Cut the food into small pieces."),
        ("kitchen.tools", "close", "Close the kitchen for the night."),
        # reStructuredText markup is dropped
        ("kitchen.tools", "pad", "Return value as a builtins.str of width characters, e.g. 'x'."),
    ]
    # the same answer in a held-out module is dropped: it would be recall, not generalisation
    test = qa_rows(kinds=("docstring",), split="test", root=fake_root)
    assert [(r["module"], r["name"], r["completion"]) for r in test] == [
        ("kitchen", "boil", "Heat the water until it bubbles."),
        ("kitchen", "stir", "Move the spoon round and round in the pot."),
    ]
    for row in train + test:
        assert set(row) == FIELDS
        assert row["kind"] == "docstring"
        assert row["answer"] == row["completion"]
        assert row["group"] == row["module"]
        assert f"{row['module']}.{row['name']}" in row["prompt"]
        assert row["prompt"].endswith(("?", "."))
    classes = [r["prompt"] for r in train if r["name"] == "Knife"]
    assert classes[0] in {
        "What is kitchen.tools.Knife for?",
        "What does the class kitchen.tools.Knife do?",
        "Explain kitchen.tools.Knife in one sentence.",
    }


def test_fake_stdlib_preference_pairs(fake_root: Path) -> None:
    pairs = preference_rows(kinds=("docstring",), split="test", root=fake_root, seed=1)
    assert [p["name"] for p in pairs] == ["boil", "stir"]
    answers = {"Heat the water until it bubbles.", "Move the spoon round and round in the pot."}
    for pair in pairs:
        assert set(pair) == PAIR_FIELDS
        assert pair["chosen"] in answers
        assert pair["rejected"] != pair["chosen"]
        assert pair["corruption"] in PREFERENCE_CORRUPTIONS
        if pair["corruption"] == "other_function":  # only the other held-out answer
            assert pair["rejected"] == (answers - {pair["chosen"]}).pop()


def test_the_same_arguments_give_the_same_rows() -> None:
    assert qa_rows() == qa_rows()
    assert qa_rows(split="test", count=50, seed=4) == qa_rows(split="test", count=50, seed=4)
    assert preference_rows(seed=2) == preference_rows(seed=2)
    assert qa_rows(count=50, seed=4) != qa_rows(count=50, seed=5)


def test_golden_snippets_and_a_fixed_kind_order() -> None:
    # snippets come in operation order ("abs" first), literals drawn from the seed
    rows = qa_rows(kinds=("snippet",), seed=0)
    assert [(r["prompt"], r["completion"]) for r in rows[:3]] == [
        ("What does abs(-11) return?", "11"),
        ("What does abs(47) return?", "47"),
        ("What does abs(32) return?", "32"),
    ]
    assert qa_rows(kinds=("snippet", "docstring"), split="test") == qa_rows(split="test")


def test_count_draws_distinct_rows_of_the_split() -> None:
    every = qa_rows(split="test", seed=3)
    drawn = qa_rows(split="test", count=100, seed=3)
    assert len(drawn) == 100
    assert len({(r["prompt"], r["completion"]) for r in drawn}) == 100
    assert all(r in every for r in drawn)
    assert drawn != every[:100]  # shuffled, not the head of the fixed order
    assert qa_rows(split="test", count=len(every), seed=3) != every
    assert sorted(map(str, qa_rows(split="test", count=len(every), seed=3))) == sorted(
        map(str, every)
    )


@pytest.mark.parametrize("split", ["train", "test"])
def test_count_above_the_split_is_an_error_naming_the_number(split: str) -> None:
    total = len(qa_rows(split=split, kinds=("snippet",)))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=str(total)) as caught:
        qa_rows(split=split, kinds=("snippet",), count=total + 1)  # type: ignore[arg-type]
    assert caught.value.key == "count"
    pairs = len(preference_rows(split=split, kinds=("snippet",)))  # type: ignore[arg-type]
    assert pairs == total
    with pytest.raises(ConfigError, match=str(total)):
        preference_rows(split=split, kinds=("snippet",), count=total + 1)  # type: ignore[arg-type]


def test_the_splits_never_share_a_module_or_an_expression() -> None:
    train, test = qa_rows(), qa_rows(split="test")
    snippet_ops = [{r["name"] for r in rows if r["kind"] == "snippet"} for rows in (train, test)]
    assert snippet_ops[0] == snippet_ops[1]  # held-out problems, every operation taught
    assert not {r["prompt"] for r in train if r["kind"] == "snippet"} & {
        r["prompt"] for r in test if r["kind"] == "snippet"
    }
    for kind in QA_KINDS:
        train_groups = {r["group"] for r in train if r["kind"] == kind}
        test_groups = {r["group"] for r in test if r["kind"] == kind}
        assert train_groups
        assert test_groups
        assert not train_groups & test_groups
    assert {r["module"] for r in train if r["kind"] == "docstring"}.isdisjoint(
        {r["module"] for r in test if r["kind"] == "docstring"}
    )
    for split, rows in (("train", train), ("test", test)):
        for row in rows:
            assert qa_split(row["group"], test_fraction=0.2) == split
    seen = {r["completion"] for r in train if r["kind"] == "docstring"}
    assert not any(r["completion"] in seen for r in test if r["kind"] == "docstring")


def test_docstring_rows_read_as_sentences() -> None:
    rows = qa_rows(kinds=("docstring",))
    assert len(rows) > 1000
    assert len({(r["prompt"], r["completion"]) for r in rows}) == len(rows)
    for row in rows:
        text = row["completion"]
        assert text == row["answer"]
        assert text[0].isupper()
        assert text.endswith(".")
        assert not text.startswith(" ")
        assert 4 <= len(text.split()) <= 30
        assert ">>>" not in text
        assert "TODO" not in text
        assert "\n" not in text
        assert not row["module"].split(".")[-1].startswith("_")
        assert not row["name"].split(".")[-1].startswith("_")
    modules = {r["module"] for r in rows}
    assert "json" in modules or "json" in {r["module"] for r in qa_rows(split="test")}


def _expression(prompt: str) -> str:
    if prompt.startswith("What does "):
        return prompt.removeprefix("What does ").removesuffix(" return?")
    return prompt.removeprefix("What is ").removesuffix("?")


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_snippet_answer_is_the_value(split: str) -> None:
    rows = qa_rows(split=split, kinds=("snippet",), seed=7)  # type: ignore[arg-type]
    assert len(rows) >= 500
    for row in rows[::7]:
        value = eval(_expression(row["prompt"]))  # the test's own, full-builtins evaluation
        assert row["completion"] == row["answer"] == repr(value)
        assert row["module"] == "builtins"
        assert row["group"] == f"snippet:{_expression(row['prompt'])}"


def test_snippets_change_with_the_seed_and_cover_the_operations() -> None:
    first = qa_rows(kinds=("snippet",), seed=0) + qa_rows(kinds=("snippet",), split="test")
    other = qa_rows(kinds=("snippet",), seed=1)
    assert {r["prompt"] for r in first} != {r["prompt"] for r in other}
    assert len({r["name"] for r in first}) >= 30
    assert len(first) >= 3000


@pytest.mark.parametrize("split", ["train", "test"])
def test_preference_pairs_are_wrong_answers_of_the_same_split(split: str) -> None:
    rows = qa_rows(split=split)  # type: ignore[arg-type]
    pairs = preference_rows(split=split)  # type: ignore[arg-type]
    assert [(p["prompt"], p["chosen"]) for p in pairs] == [
        (r["prompt"], r["completion"]) for r in rows
    ]
    answers = {r["completion"] for r in rows}
    counts = Counter(p["corruption"] for p in pairs)
    assert set(counts) == set(PREFERENCE_CORRUPTIONS)
    for pair in pairs:
        assert pair["rejected"] != pair["chosen"]
        assert pair["rejected"]
        assert not pair["rejected"].startswith(" ")
        if pair["corruption"] == "other_function":
            assert pair["rejected"] in answers  # never an answer of the other split
        if pair["kind"] == "snippet":
            assert pair["corruption"] == "wrong_value"
        else:
            assert pair["corruption"] != "wrong_value"
            assert pair["rejected"].endswith(".")
    docstrings = sum(n for c, n in counts.items() if c != "wrong_value")
    assert counts["other_function"] > 0.2 * docstrings
    assert counts["shuffled"] + counts["swapped"] + counts["truncated"] > 0.3 * docstrings


def test_word_corruptions_keep_the_words() -> None:
    for pair in preference_rows(count=400, seed=5):
        chosen, rejected = pair["chosen"][:-1].split(), pair["rejected"][:-1].split()
        if pair["corruption"] in ("swapped", "shuffled"):
            assert sorted(chosen) == sorted(rejected)
        elif pair["corruption"] == "truncated":
            assert chosen[: len(rejected)][:-1] == rejected[:-1]
            assert len(rejected) < len(chosen)
        elif pair["corruption"] == "opposite":
            assert len([a for a, b in zip(chosen, rejected, strict=False) if a != b]) >= 1
        elif pair["corruption"] == "looped":
            assert len(rejected) >= len(chosen)
            assert _loops(chosen, rejected), (pair["chosen"], pair["rejected"])


def _loops(chosen: list[str], rejected: list[str]) -> bool:
    """``rejected``: a prefix of ``chosen`` ending in a span of 2-4 words, then that span again."""
    body = rejected[:-1]  # the last word may have lost a trailing comma
    for width in (2, 3, 4):
        for end in range(width, len(chosen) + 1):
            span = chosen[end - width : end]
            loop = chosen[:end] + span * len(rejected)
            if len(body) >= end + width - 1 and loop[: len(body)] == body:
                return True
    return False


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"split": "validation"}, "split"),
        ({"kinds": ("docstrings",)}, "kinds"),
        ({"kinds": "docstring"}, "kinds"),
        ({"kinds": ()}, "kinds"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": "0.2"}, "test_fraction"),
        ({"count": 0}, "count"),
        ({"count": 2.5}, "count"),
        ({"seed": "zero"}, "seed"),
        ({"root": "/no/such/folder"}, "root"),
    ],
)
def test_bad_arguments_name_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        qa_rows(**kwargs)  # type: ignore[arg-type]
    assert caught.value.key == key
    with pytest.raises(ConfigError) as caught:
        preference_rows(**kwargs)  # type: ignore[arg-type]
    assert caught.value.key == key


def test_an_unknown_kind_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'snippet'"):
        qa_rows(kinds=("snipet",))


def test_an_empty_split_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text('"""Nothing documented here."""\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=QA_DATASET) as caught:
        qa_rows(kinds=("docstring",), root=tmp_path)
    assert caught.value.key == "test_fraction"


def test_qa_split_is_stable_and_checks_its_fraction() -> None:
    assert qa_split("json", test_fraction=0.0) == "train"
    assert qa_split("json", test_fraction=1.0) == "test"
    # the SHA-256 position of "kitchen" is 0.193...: below 0.2, above 0.19
    assert qa_split("kitchen", test_fraction=0.2) == "test"
    assert qa_split("kitchen", test_fraction=0.19) == "train"
    with pytest.raises(ConfigError) as caught:
        qa_split("json", test_fraction=1.5)
    assert caught.value.key == "test_fraction"


def test_no_described_module_and_no_torch_is_imported() -> None:
    code = (
        "import sys\n"
        "from lego.data.stdlib_qa import qa_rows, preference_rows\n"
        "qa_rows(); preference_rows(split='test')\n"
        "bad = {'torch', 'antigravity', 'this', 'tkinter', 'turtle', 'sqlite3', 'xmlrpc'}\n"
        "print(sorted(bad & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
