from __future__ import annotations

import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

import lego
from lego.data.tokenizers import (
    TokenizerSpec,
    as_tokenizer,
    find_eot_id,
    parse_tokenizer_spec,
    tokenizer_info,
)
from lego.protocols import ConfigError, DataError


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


def test_parse_specs(tmp_path: Path) -> None:
    assert parse_tokenizer_spec("tiktoken:cl100k_base") == TokenizerSpec("tiktoken", "cl100k_base")
    assert parse_tokenizer_spec("gpt2") == TokenizerSpec("tiktoken", "gpt2")
    assert parse_tokenizer_spec(" o200k_base ") == TokenizerSpec("tiktoken", "o200k_base")
    file = tmp_path / "tok.json"
    file.write_text("{}")
    assert parse_tokenizer_spec(str(file)) == TokenizerSpec("lego", str(file))
    assert parse_tokenizer_spec("lego:x.json") == TokenizerSpec("lego", "x.json")
    assert str(TokenizerSpec("tiktoken", "gpt2")) == "tiktoken:gpt2"


def test_unknown_spec_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        parse_tokenizer_spec("gtp2")
    assert (info.value.hint or "").startswith("did you mean 'gpt2'?")
    assert info.value.key == "tokenizer"


def test_missing_tokenizer_file() -> None:
    with pytest.raises(DataError, match="not found") as info:
        parse_tokenizer_spec("tokenizers/missing.json")
    assert info.value.path == "tokenizers/missing.json"
    with pytest.raises(DataError, match="not found"):
        TokenizerSpec("lego", "missing.json").load()


def test_lego_spec_without_lego_tokenize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "tok.json"
    file.write_text("{}")
    monkeypatch.setitem(sys.modules, "lego.tokenize", None)
    with pytest.raises(ConfigError, match="need lego-tokenize") as info:
        TokenizerSpec("lego", str(file)).load()
    assert info.value.hint == 'pip install "lego-data[tokenize]"'


def test_lego_spec_loads_through_lego_tokenize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "tok.json"
    file.write_text('{"format": "lego-tokenizer"}')
    fake = types.ModuleType("lego.tokenize")
    loaded: list[Path] = []

    def load(path: Path) -> Tiny:
        loaded.append(Path(path))
        return Tiny({"<|endoftext|>": 9})

    fake.load = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lego.tokenize", fake)
    # `import lego.tokenize` reads the attribute of the `lego` namespace first: where the
    # real lego-tokenize was imported earlier in the session, it must be replaced too.
    monkeypatch.setattr(lego, "tokenize", fake, raising=False)
    spec = parse_tokenizer_spec(str(file))
    tok = spec.load()
    assert loaded == [file]
    info = tokenizer_info(tok, spec)
    assert info.kind == "lego"
    assert info.name == "tok.json"
    import hashlib

    assert info.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()


def test_tiktoken_spec_without_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    with pytest.raises(ConfigError, match="tiktoken package") as info:
        TokenizerSpec("tiktoken", "gpt2").load()
    assert "lego-data[tokenize]" in (info.value.hint or "")


def test_find_eot_id() -> None:
    assert find_eot_id(Tiny({"<|endoftext|>": 7})) == 7
    assert find_eot_id(Tiny({"<|endoftext|>": 7}), 3) == 3
    with pytest.raises(ConfigError, match="no <\\|endoftext\\|>"):
        find_eot_id(Tiny())
    with pytest.raises(ConfigError, match="outside"):
        find_eot_id(Tiny(), 10)
    with pytest.raises(ConfigError, match="outside"):
        find_eot_id(Tiny({"<|endoftext|>": 12}))


def test_as_tokenizer_and_info() -> None:
    tiny = Tiny()
    assert as_tokenizer(tiny) is tiny
    info = tokenizer_info(tiny)
    assert (info.kind, info.name, info.sha256) == ("python", "Tiny", None)
    with pytest.raises(ConfigError, match="not a tokenizer"):
        as_tokenizer(42)
