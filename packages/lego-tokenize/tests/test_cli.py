from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lego.protocols import ConfigError, DataError, FormatError
from lego.protocols.testing import DEFAULT_TEXTS
from lego.tokenize import (
    CharTokenizer,
    NaiveBPETokenizer,
    RegexBPETokenizer,
    WordTokenizer,
    load,
)
from lego.tokenize.cli import collect_training_files, main, parse_ids, token_pieces
from lego.tokenize.interop.tiktoken_files import write_tiktoken_file

TEXT = "Hello world, naïve café! 日本語 12345\n"
EOT = "<|endoftext|>"


def _corpus_folder(root: Path) -> Path:
    folder = root / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    body = "\n".join(DEFAULT_TEXTS)
    (folder / "b.txt").write_text(body * 10 + "the quick brown fox " * 50, encoding="utf-8")
    (folder / "a.txt").write_text("jumps over the lazy dog. " * 80, encoding="utf-8")
    (folder / "sub" / "c.md").write_text("# Title\n\nSome *markdown* text.\n" * 20)
    (folder / ".hidden" / "secret.txt").write_text("never read")
    (folder / ".dotfile").write_text("never read")
    (folder / "image.bin").write_bytes(b"\x89PNG\x00\x00binary")
    return folder


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _corpus_folder(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def tok_path(corpus_dir: Path) -> Path:
    path = corpus_dir.parent / "tok.json"
    argv = ["train", str(corpus_dir), "--vocab-size", "400", "--special", EOT]
    assert main([*argv, "--workers", "1", "-o", str(path)]) == 0
    return path


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lego-tokenize: error: "), err
    assert message in err, err
    assert "Traceback" not in err
    return err


# -- train ----------------------------------------------------------------------------------


def test_train_writes_a_loadable_tokenizer(tok_path: Path) -> None:
    tokenizer = load(tok_path)
    assert isinstance(tokenizer, RegexBPETokenizer)
    assert tokenizer.vocab_size == 400
    assert dict(tokenizer.special_tokens) == {EOT: 399}
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    assert tok_path.with_suffix(".vocab").exists()


def test_train_reports_what_it_wrote(
    tmp_path: Path, corpus_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.json"
    argv = ["train", str(corpus_dir / "b.txt"), str(corpus_dir / "sub")]
    assert main([*argv, "--vocab-size", "300", "--pattern", "gpt2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vocab size 300" in printed
    assert "44 merges" in printed
    assert "from 2 file(s)" in printed
    assert load(out).pattern_name == "gpt2"  # type: ignore[attr-defined]


def test_train_is_deterministic_across_workers(tmp_path: Path, corpus_dir: Path) -> None:
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.json"
        argv = ["train", str(corpus_dir), "--vocab-size", "350", "--workers", workers]
        assert main([*argv, "-o", str(out)]) == 0
        outs.append(load(out))
    assert dict(outs[0].mergeable_ranks) == dict(outs[1].mergeable_ranks)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "cls", "size"),
    [
        ("naive_bpe", NaiveBPETokenizer, "300"),
        ("char", CharTokenizer, "60"),
        ("word", WordTokenizer, "80"),
    ],
)
def test_train_other_types(
    tmp_path: Path, corpus_dir: Path, kind: str, cls: type, size: str
) -> None:
    out = tmp_path / f"{kind}.json"
    argv = ["train", str(corpus_dir / "a.txt"), "--type", kind, "--vocab-size", size]
    assert main([*argv, "-o", str(out)]) == 0
    assert isinstance(load(out), cls)


def test_collect_training_files_is_sorted_and_skips_hidden_and_binary(corpus_dir: Path) -> None:
    files = collect_training_files([corpus_dir, corpus_dir / "a.txt"])
    assert [f.relative_to(corpus_dir).as_posix() for f in files] == [
        "a.txt",
        "b.txt",
        "sub/c.md",
    ]


def test_collect_training_files_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="training path not found"):
        collect_training_files([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no text files"):
        collect_training_files([tmp_path / "empty"])


def test_train_bad_input_keeps_the_old_output(
    tmp_path: Path, corpus_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tok.json"
    out.write_text("precious")
    argv = ["train", str(corpus_dir), "--vocab-size", "100", "-o", str(out)]
    _fails(capsys, argv, "vocab_size 100 is too small")
    assert out.read_text() == "precious"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--type", "char", "--pattern", "gpt2"], "--pattern applies to regex_bpe only"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--pattern", "gtp4"], "unknown split pattern 'gtp4'"),
    ],
)
def test_train_bad_options(
    tmp_path: Path,
    corpus_dir: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    argv = ["train", str(corpus_dir), "--vocab-size", "300", "-o", str(tmp_path / "t.json")]
    _fails(capsys, [*argv, *extra], message)


def test_train_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", str(tmp_path / "nope"), "--vocab-size", "300", "-o", str(tmp_path / "t")]
    _fails(capsys, argv, "training path not found")


def test_train_requires_vocab_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "t.json")]) == 2
    assert "--vocab-size" in capsys.readouterr().err


def test_train_non_utf8_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("café " * 100).encode("latin-1"))
    argv = ["train", str(bad), "--vocab-size", "260", "-o", str(tmp_path / "t.json")]
    err = _fails(capsys, argv, "latin1.txt")
    assert "byte offset 3" in err
    assert main([*argv, "--errors", "replace"]) == 0


# -- encode / decode ------------------------------------------------------------------------


def test_encode_stdin_to_stdout(
    tok_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, TEXT.encode("utf-8"))
    assert main(["encode", "-t", str(tok_path)]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    assert [int(i) for i in out.split()] == load(tok_path).encode(TEXT)


def test_encode_files_as_json(tok_path: Path, tmp_path: Path) -> None:
    source, target = tmp_path / "in.txt", tmp_path / "out.json"
    source.write_text(TEXT, encoding="utf-8")
    argv = ["encode", "-t", str(tok_path), "-i", str(source), "-o", str(target)]
    assert main([*argv, "--format", "json"]) == 0
    assert json.loads(target.read_text()) == load(tok_path).encode(TEXT)


def test_encode_special_tokens(
    tok_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path / "in.txt", tmp_path / "out.ids"
    source.write_text(f"one{EOT}two", encoding="utf-8")
    target.write_text("precious")
    argv = ["encode", "-t", str(tok_path), "-i", str(source), "-o", str(target)]
    _fails(capsys, argv, "--allow-special")
    assert target.read_text() == "precious"  # nothing written on error
    assert main([*argv, "--allow-special"]) == 0
    assert "399" in target.read_text().split()


def test_encode_non_utf8_input(
    tok_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"ok \xff")
    command = ["encode", "-t", str(tok_path), "-i", str(source)]
    _fails(capsys, command, "not UTF-8 text (byte offset 3")


def test_decode_round_trip_through_files(tok_path: Path, tmp_path: Path) -> None:
    ids_file, text_file = tmp_path / "x.ids", tmp_path / "x.txt"
    ids_file.write_text(" ".join(map(str, load(tok_path).encode(TEXT))) + "\n")
    assert main(["decode", "-t", str(tok_path), "-i", str(ids_file), "-o", str(text_file)]) == 0
    assert text_file.read_text(encoding="utf-8") == TEXT


def test_decode_json_from_stdin(
    tok_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = load(tok_path).encode(TEXT)
    _stdin(monkeypatch, json.dumps(ids).encode())
    assert main(["decode", "-t", str(tok_path)]) == 0
    assert capsys.readouterr().out == TEXT


def test_decode_bad_ids(
    tok_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, b"1 2x 3")
    _fails(capsys, ["decode", "-t", str(tok_path)], "item 2 of the ids, '2x'")
    _stdin(monkeypatch, b"1 400")
    _fails(capsys, ["decode", "-t", str(tok_path)], "token id 400 is not in the vocabulary")


def test_parse_ids() -> None:
    assert parse_ids(" 1 2\n3\t4 ") == [1, 2, 3, 4]
    assert parse_ids("[5, 6]") == [5, 6]
    assert parse_ids("") == []
    with pytest.raises(DataError, match="item 2"):
        parse_ids("[1, -2]")
    with pytest.raises(DataError, match="item 1"):
        parse_ids("[true]")
    with pytest.raises(FormatError, match=r"JSON list of ids is not valid JSON.*truncated") as info:
        parse_ids("\n[1, 2", source="ids.json")
    assert (info.value.path, info.value.line) == ("ids.json", 2)


# -- info / compare -------------------------------------------------------------------------


def test_info(tok_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = tmp_path / "sample.txt"
    sample.write_text("hello hello hello", encoding="utf-8")
    assert main(["info", str(tok_path), "--sample", str(sample)]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["type"].strip() == "regex_bpe (RegexBPETokenizer)"
    assert lines["vocab size"].strip() == "400"
    assert lines["merges"].strip() == "143"
    assert lines["special tokens"].strip() == f"{EOT} = 399"
    assert lines["pattern"].strip().startswith("gpt4 ")
    n_tokens = len(load(tok_path).encode("hello hello hello"))
    assert f"17 bytes -> {n_tokens} tokens" in lines["bytes per token"]


def test_info_default_sample_and_a_tiktoken_file(
    tok_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ranks_file = tmp_path / "x.tiktoken"
    write_tiktoken_file(ranks_file, load(tok_path).mergeable_ranks)  # type: ignore[attr-defined]
    assert main(["info", f"tiktoken:{ranks_file}", "--pattern", "gpt4"]) == 0
    out = capsys.readouterr().out
    assert "vocab size:      399" in out
    assert "special tokens:  none" in out
    assert "documentation topics" in out
    _fails(capsys, ["info", f"tiktoken:{ranks_file}"], "stores no split pattern")


def test_compare_plain(tok_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    char = CharTokenizer()
    char.train("Hello world", 20)
    char_path = tok_path.parent / "char.json"
    char.save(char_path)
    assert main(["compare", str(tok_path), str(char_path), "--text", "Hello world"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert "11 bytes of text" in out
    assert f"{char_path}: 11 tokens" in out
    assert "H|e|l|l|o| |w|o|r|l|d" in out
    ids = load(tok_path).encode("Hello world")
    assert f"{tok_path}: {len(ids)} tokens" in out


def test_compare_colours_and_limits(tok_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", str(tok_path), "--text", "Hello world " * 50]
    assert main([*argv, "--color", "always", "--max-chars", "20"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out
    assert out.rstrip().endswith("...")
    assert main([*argv, "--color", "never"]) == 0
    assert "\x1b[" not in capsys.readouterr().out


def test_token_pieces_keep_characters_whole() -> None:
    tokenizer = RegexBPETokenizer.from_ranks({bytes([b]): b for b in range(256)}, pattern="gpt4")
    ids = tokenizer.encode("a日b")
    assert len(ids) == 5
    assert token_pieces(tokenizer, ids) == [("a", 1), ("日", 3), ("b", 1)]
    assert token_pieces(tokenizer, ids[:2]) == [("a", 1), ("\ufffd", 1)]


# -- the command itself ---------------------------------------------------------------------


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out
    for command in ("train", "encode", "decode", "info", "compare"):
        assert command in out
    assert main(["compare", "--help"]) == 0
    assert "example:" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "missing.json"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_console_script(tok_path: Path) -> None:
    script = Path(sys.executable).parent / ("lego-tokenize" + (".exe" if os.name == "nt" else ""))
    if not script.exists():
        pytest.skip(f"the lego-tokenize console script is not installed beside {sys.executable}")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}

    def run(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *args],
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=env,
            timeout=120,
            check=False,
        )

    done = run("encode", "-t", str(tok_path), stdin=TEXT)
    assert done.returncode == 0, done.stderr
    assert [int(i) for i in done.stdout.split()] == load(tok_path).encode(TEXT)
    failed = run("decode", "-t", str(tok_path), stdin="1 99999")
    assert failed.returncode == 2
    assert "token id 99999 is not in the vocabulary" in failed.stderr
    assert "Traceback" not in failed.stderr
