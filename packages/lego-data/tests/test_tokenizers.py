from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from lego.data.tokenizers import (
    find_eot_id,
    resolve_for_prepare,
    resolve_with_spec,
    tokenizer_info,
)
from lego.protocols import ConfigError
from lego.tokenize import RegexBPETokenizer, TokenizerSpec, tokenizer_fingerprint
from lego.tokenize.interop import write_gpt2_files

EOT = "<|endoftext|>"


class Tiny:
    def __init__(self, specials: Mapping[str, int] | None = None, vocab_size: int = 10) -> None:
        self._specials = dict(specials or {})
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return self._specials

    def encode(self, text: str) -> list[int]:
        return [0] * len(text)

    def decode(self, ids: Sequence[int]) -> str:
        return "a" * len(ids)


@pytest.fixture
def byte_bpe() -> RegexBPETokenizer:
    return RegexBPETokenizer("gpt2", special_tokens={EOT: 256})


def test_a_lego_file_is_named_and_hashed_by_its_bytes(
    tmp_path: Path, byte_bpe: RegexBPETokenizer
) -> None:
    file = tmp_path / "tok.json"
    byte_bpe.save(file)
    for given in (str(file), file, f"lego:{file}"):
        tok, spec = resolve_with_spec(given)
        assert spec == TokenizerSpec("lego", str(file))
        assert tok.encode("hi") == [104, 105]
        info = tokenizer_info(tok, spec)
        assert (info.kind, info.name) == ("lego", "tok.json")
        assert info.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()


def test_other_files_are_hashed_by_their_vocabulary(
    tmp_path: Path, byte_bpe: RegexBPETokenizer
) -> None:
    byte_bpe.train(["hello hello world, hello there"], 262, workers=1)
    write_gpt2_files(
        tmp_path / "encoder.json",
        tmp_path / "vocab.bpe",
        ranks=byte_bpe.mergeable_ranks,
        special_tokens=byte_bpe.special_tokens,
    )
    byte_bpe.save_hf(tmp_path / "tokenizer.json")
    fingerprint = tokenizer_fingerprint(byte_bpe)
    for spec_text, kind, name in (
        (f"gpt2:{tmp_path}", "gpt2", tmp_path.name),
        (f"hf:{tmp_path / 'tokenizer.json'}", "hf", "tokenizer.json"),
    ):
        tok, spec = resolve_with_spec(spec_text)
        assert spec is not None
        info = tokenizer_info(tok, spec)
        assert (info.kind, info.name, info.sha256) == (kind, name, fingerprint)


def test_objects(byte_bpe: RegexBPETokenizer) -> None:
    tiny = Tiny()
    assert resolve_with_spec(tiny) == (tiny, None)
    info = tokenizer_info(tiny)
    assert (info.kind, info.name, info.sha256) == ("python", "Tiny", None)
    info = tokenizer_info(byte_bpe)
    assert (info.kind, info.name) == ("lego", "RegexBPETokenizer")
    assert info.sha256 == tokenizer_fingerprint(byte_bpe)
    with pytest.raises(ConfigError, match="not a tokenizer"):
        resolve_with_spec(42)


def test_a_tiktoken_encoding_object_is_recorded_as_tiktoken(byte_bpe: RegexBPETokenizer) -> None:
    import tiktoken

    encoding = tiktoken.Encoding(
        "bytes",
        pat_str=byte_bpe.pattern,
        mergeable_ranks=dict(byte_bpe.mergeable_ranks),
        special_tokens={EOT: 256},
    )
    tok, spec = resolve_with_spec(encoding)
    assert spec is None
    info = tokenizer_info(tok, spec, given=encoding)
    assert (info.kind, info.name) == ("tiktoken", "bytes")
    assert info.sha256 == tokenizer_fingerprint(byte_bpe)


def test_unknown_spec_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_with_spec("gtp2")
    assert "did you mean 'gpt2'?" in (info.value.hint or "")
    assert info.value.key == "tokenizer"


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        resolve_with_spec(str(tmp_path / "tokenizers" / "missing.json"))
    assert info.value.path == str(tmp_path / "tokenizers" / "missing.json")


def test_find_eot_id() -> None:
    assert find_eot_id(Tiny({EOT: 7})) == 7
    assert find_eot_id(Tiny({EOT: 7}), 3) == 3
    with pytest.raises(ConfigError, match="no <\\|endoftext\\|>"):
        find_eot_id(Tiny())
    with pytest.raises(ConfigError, match="at most 9") as info:
        find_eot_id(Tiny(), 10)
    assert info.value.key == "eot_id"
    with pytest.raises(ConfigError, match="outside"):
        find_eot_id(Tiny({EOT: 12}))
    with pytest.raises(ConfigError):
        find_eot_id(Tiny({EOT: 7}), True)  # type: ignore[arg-type]


def test_resolve_for_prepare(tmp_path: Path, byte_bpe: RegexBPETokenizer) -> None:
    file = tmp_path / "tok.json"
    byte_bpe.save(file)
    tok, spec, info = resolve_for_prepare(str(file))
    assert spec == TokenizerSpec("lego", str(file))
    assert info == tokenizer_info(tok, spec)
    assert resolve_for_prepare(str(file))[0] is not tok  # files are read again every time
    assert resolve_for_prepare(byte_bpe) == (byte_bpe, None, tokenizer_info(byte_bpe))
