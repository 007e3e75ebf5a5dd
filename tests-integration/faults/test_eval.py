"""Faults of ``legollm eval`` (issue 22), through real processes.

Each test runs the command as a user would on the tiny model ``examples/align/make_tiny.py``
writes once per module, and asserts the exit code, one message without "Traceback", and
that every file that existed before is byte-identical afterwards: bad flags and missing
files are refused before the model is read; a text that is not UTF-8 or too short to score
names the file; an output that exists is never replaced without ``--overwrite``; an unknown
harness task suggests the closest names; a finished run writes both files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import harness
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROG = "legollm"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval-tiny")
    script = ROOT / "examples" / "align" / "make_tiny.py"
    result = harness.run([sys.executable, str(script), str(root)], cwd=root)
    assert result.code == 0, result.stderr
    (root / "held.txt").write_text("def f(x):\n    return x + 1\n\nclass A:\n    pass\n")
    return root


def evaluate(*args: str) -> list[str]:
    return harness.command("lego.recipes.cli", "eval", *args)


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["perplexity", "--text", "absent.txt"], "--text absent.txt: no such file"),
        (["perplexity", "--data", "absent"], "--data absent: no such folder"),
        (["perplexity", "--text", "held.txt", "--max-length", "0"], "--max-length must be >= 1"),
        (["perplexity", "--text", "held.txt", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["harness", "--tasks", " , "], "--tasks is empty"),
        (["harness", "--tasks", "x", "--include-path", "nowhere"], "no such folder"),
        (["harness", "--tasks", "x", "--limit", "0"], "--limit must be > 0"),
    ],
)
def test_bad_flags_are_refused_before_the_model_is_read(
    tiny: Path, args: list[str], phrase: str
) -> None:
    before = harness.snapshot(tiny)
    # the model does not exist: the flag error must come first
    kind, *rest = args
    result = harness.run(evaluate(kind, "--model", str(tiny / "absent"), *rest), cwd=tiny)
    harness.assert_one_message(result, prog=PROG, phrase=phrase)
    harness.assert_unchanged(before, tiny)


def test_text_that_is_not_utf8_names_the_file(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait, déjà vu".encode("latin-1"))
    result = harness.run(
        evaluate("perplexity", "--model", str(tiny / "model"), "--text", str(bad)), cwd=tmp_path
    )
    harness.assert_one_message(result, prog=PROG, phrase="is not UTF-8 text")


def test_a_text_too_short_to_score_is_one_message(tiny: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("a")
    result = harness.run(
        evaluate("perplexity", "--model", str(tiny / "model"), "--text", str(short)), cwd=tmp_path
    )
    harness.assert_one_message(result, prog=PROG, phrase="perplexity needs at least two")


def test_a_bad_prefix_token_lists_the_special_tokens(tiny: Path) -> None:
    result = harness.run(
        evaluate(
            "perplexity", "--model", str(tiny / "model"), "--text", "held.txt",
            "--prefix-token", "<bos>",
        ),
        cwd=tiny,
    )  # fmt: skip
    harness.assert_one_message(result, prog=PROG, phrase="'<bos>' is not a special token")


def test_outputs_are_written_once_and_never_replaced_silently(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = evaluate(
        "perplexity", "--model", str(tiny / "model"), "--text", str(tiny / "held.txt"),
        "--out", str(out),
    )  # fmt: skip
    first = harness.run(command, cwd=tmp_path)
    assert first.code == 0, first.stderr
    data = json.loads((out / "perplexity.json").read_text())
    assert data["num_tokens"] > 0
    assert data["perplexity"] > 1
    assert "| perplexity |" in (out / "perplexity.md").read_text()
    before = harness.snapshot(out)
    again = harness.run(command, cwd=tmp_path)
    harness.assert_one_message(again, prog=PROG, phrase="exists: eval never replaces")
    harness.assert_unchanged(before, out)
    replaced = harness.run([*command, "--overwrite"], cwd=tmp_path)
    assert replaced.code == 0, replaced.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_unknown_task_suggests_the_closest(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="the harness needs lego-eval[harness]")
    result = harness.run(
        evaluate("harness", "--model", str(tiny / "model"), "--tasks", "lego_arithmetic_mcq"),
        cwd=tmp_path,
    )
    harness.assert_one_message(result, prog=PROG, phrase="lego_arithmetic_mc")
