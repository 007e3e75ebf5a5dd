from __future__ import annotations

from pathlib import Path

import pytest

from lego.protocols import ConfigError, FormatError
from lego.tokenize import RegexBPETokenizer
from lego.tokenize.interop.gpt2 import write_gpt2_files
from lego.tokenize.interop.hf import write_hf_tokenizer_json
from lego.tokenize.interop.resolve import (
    TokenizerSpec,
    parse_tokenizer_spec,
    resolve_tokenizer,
)
from lego.tokenize.interop.tiktoken_files import write_tiktoken_file
from lego.tokenize.patterns import PATTERNS

Trained = tuple[dict[bytes, int], list[tuple[bytes, bytes]]]
TEXT = "The quick brown fox, naïve café 日本語 1234567!"


@pytest.fixture
def reference(trained_gpt2_order: Trained) -> RegexBPETokenizer:
    ranks = trained_gpt2_order[0]
    return RegexBPETokenizer.from_ranks(
        ranks, pattern="gpt2", special_tokens={"<|endoftext|>": len(ranks)}
    )


def _same(a: object, b: RegexBPETokenizer) -> None:
    assert isinstance(a, RegexBPETokenizer)
    assert dict(a.mergeable_ranks) == dict(b.mergeable_ranks)
    assert a.pattern == b.pattern
    assert a.encode(TEXT) == b.encode(TEXT)


def test_a_lego_file(tmp_path: Path, reference: RegexBPETokenizer) -> None:
    reference.save(tmp_path / "tok.json")
    loaded = resolve_tokenizer(str(tmp_path / "tok.json"))
    _same(loaded, reference)
    assert dict(loaded.special_tokens) == dict(reference.special_tokens)


def test_a_tiktoken_file_needs_a_pattern(tmp_path: Path, reference: RegexBPETokenizer) -> None:
    path = tmp_path / "x.tiktoken"
    write_tiktoken_file(path, reference.mergeable_ranks)
    _same(resolve_tokenizer(f"tiktoken:{path}", pattern="gpt2"), reference)
    with pytest.raises(ConfigError, match="stores no split pattern"):
        resolve_tokenizer(f"tiktoken:{path}")


def test_a_hf_file(tmp_path: Path, reference: RegexBPETokenizer) -> None:
    path = tmp_path / "tokenizer.json"
    write_hf_tokenizer_json(
        path,
        ranks=reference.mergeable_ranks,
        pattern=PATTERNS["gpt2"],
        special_tokens=reference.special_tokens,
    )
    loaded = resolve_tokenizer(f"hf:{path}")
    _same(loaded, reference)
    assert dict(loaded.special_tokens) == dict(reference.special_tokens)
    with pytest.raises(FormatError, match=r"not a lego tokenizer file") as info:
        resolve_tokenizer(str(path))
    assert info.value.hint is not None
    assert f"hf:{path}" in info.value.hint


def test_a_gpt2_folder(tmp_path: Path, reference: RegexBPETokenizer) -> None:
    write_gpt2_files(
        tmp_path / "encoder.json",
        tmp_path / "vocab.bpe",
        ranks=reference.mergeable_ranks,
        special_tokens=reference.special_tokens,
    )
    _same(resolve_tokenizer(f"gpt2:{tmp_path}"), reference)
    with pytest.raises(ConfigError, match="expects a folder"):
        resolve_tokenizer(f"gpt2:{tmp_path / 'vocab.bpe'}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "spec is empty"),
        ("hf:", "names no hf tokenizer"),
        ("tiktoken:", "names no tiktoken tokenizer"),
        ("tiktokn:cl100k_base", "unknown tokenizer prefix 'tiktokn:'"),
        ("tiktoken:cl100k", "unknown tiktoken encoding"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_tokenizer(spec)


def test_unknown_prefix_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_tokenizer("HF2:x.json")
    assert info.value.hint is not None
    assert "'hf'" in info.value.hint


def test_prefixes_ignore_case(tmp_path: Path, reference: RegexBPETokenizer) -> None:
    path = tmp_path / "x.tiktoken"
    write_tiktoken_file(path, reference.mergeable_ranks)
    _same(resolve_tokenizer(f"TikToken:{path}", pattern="gpt2"), reference)


# -- the spec grammar: bare tiktoken names, lego:, objects ---------------------------------


@pytest.mark.parametrize(
    ("spec", "scheme", "target"),
    [
        ("gpt2", "tiktoken", "gpt2"),
        (" cl100k_base ", "tiktoken", "cl100k_base"),
        ("tiktoken:o200k_base", "tiktoken", "o200k_base"),
        ("lego:tok.json", "lego", "tok.json"),
        ("LEGO:tok.json", "lego", "tok.json"),
        ("missing/tok.json", "lego", "missing/tok.json"),
        ("tok.json", "lego", "tok.json"),
        ("hf:tokenizer.json", "hf", "tokenizer.json"),
        ("gpt2:folder", "gpt2", "folder"),
    ],
)
def test_parse_tokenizer_spec(spec: str, scheme: str, target: str) -> None:
    parsed = parse_tokenizer_spec(spec)
    assert parsed == TokenizerSpec(scheme, target)  # type: ignore[arg-type]
    assert str(parsed) == f"{scheme}:{target}"


def test_a_file_wins_over_a_tiktoken_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: RegexBPETokenizer
) -> None:
    monkeypatch.chdir(tmp_path)
    reference.save(tmp_path / "gpt2")
    assert parse_tokenizer_spec("gpt2") == TokenizerSpec("lego", "gpt2")
    _same(resolve_tokenizer("gpt2"), reference)
    assert parse_tokenizer_spec(tmp_path / "gpt2") == TokenizerSpec("lego", str(tmp_path / "gpt2"))
    _same(resolve_tokenizer(tmp_path / "gpt2"), reference)
    _same(resolve_tokenizer(f"lego:{tmp_path / 'gpt2'}"), reference)


def test_spec_names_and_files() -> None:
    assert parse_tokenizer_spec("gpt2").name == "gpt2"
    assert not parse_tokenizer_spec("gpt2").is_file
    assert parse_tokenizer_spec("tiktoken:dir/x.tiktoken").name == "x.tiktoken"
    assert parse_tokenizer_spec("tiktoken:dir/x.tiktoken").is_file
    assert parse_tokenizer_spec("gpt2:dir/folder").name == "folder"


def test_an_unknown_bare_word_suggests_a_tiktoken_name() -> None:
    with pytest.raises(ConfigError, match="unknown tokenizer 'gtp2'") as info:
        parse_tokenizer_spec("gtp2")
    assert "'gpt2'" in (info.value.hint or "")


def test_a_missing_lego_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizer file not found") as info:
        resolve_tokenizer(f"lego:{tmp_path / 'nope.json'}")
    assert info.value.path == str(tmp_path / "nope.json")


def test_objects_pass_through(reference: RegexBPETokenizer) -> None:
    assert resolve_tokenizer(reference) is reference
    spec = TokenizerSpec("gpt2", "no-such-folder")
    with pytest.raises(ConfigError, match="expects a folder"):
        resolve_tokenizer(spec)
    with pytest.raises(ConfigError, match="int is not a tokenizer"):
        resolve_tokenizer(42)  # type: ignore[arg-type]


def test_a_tiktoken_encoding_object(reference: RegexBPETokenizer) -> None:
    import tiktoken

    encoding = tiktoken.Encoding(
        "tiny",
        pat_str=reference.pattern,
        mergeable_ranks=dict(reference.mergeable_ranks),
        special_tokens=dict(reference.special_tokens),
    )
    tok = resolve_tokenizer(encoding)
    assert isinstance(tok, RegexBPETokenizer)
    assert tok.name == "tiny"
    assert tok.to_tiktoken() is encoding  # tiktoken's engine is reused, not rebuilt
    _same(tok, reference)
    text = "a <|endoftext|> b"
    assert tok.encode_ordinary(text) == encoding.encode_ordinary(text)
    other = RegexBPETokenizer.from_encoding(encoding, pattern="gpt4")
    assert other.to_tiktoken() is not encoding


def test_a_spec_names_the_files_it_reads() -> None:
    assert parse_tokenizer_spec("tiktoken:cl100k_base").files == []
    assert parse_tokenizer_spec("hf:a/tokenizer.json").files == [Path("a/tokenizer.json")]
    assert parse_tokenizer_spec("gpt2:g").files == [Path("g/encoder.json"), Path("g/vocab.bpe")]
