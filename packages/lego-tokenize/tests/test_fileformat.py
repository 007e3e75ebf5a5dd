"""Save -> load round trips, and every kind of bad file gives a FormatError naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lego.protocols import CompatibilityError, ConfigError, FormatError
from lego.tokenize import (
    CharTokenizer,
    NaiveBPETokenizer,
    RegexBPETokenizer,
    WordTokenizer,
    load,
)
from lego.tokenize.byte_level import str_to_token
from lego.tokenize.fileformat import VOCAB_DUMP_HEADER, checksum, is_vocab_dump, vocab_path

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def regex_tok(small_corpus: list[str]) -> RegexBPETokenizer:
    tok = RegexBPETokenizer("gpt4")
    tok.train(small_corpus, 320, special_tokens=[EOT], workers=1)
    return tok


def make_all(small_corpus: list[str]) -> list[Any]:
    naive = NaiveBPETokenizer()
    naive.train(small_corpus, 300, special_tokens=[EOT], workers=1)
    custom = RegexBPETokenizer(r"\w+|\s+|[^\w\s]+", name="custom")
    custom.train(small_corpus, 300, workers=1)
    char = CharTokenizer()
    char.train(small_corpus, 60, workers=1)
    word = WordTokenizer(min_frequency=2)
    word.train(small_corpus, 80, workers=1)
    return [naive, custom, char, word]


def test_round_trips(tmp_path: Path, small_corpus: list[str], regex_tok: RegexBPETokenizer) -> None:
    text = small_corpus[0] + EOT + "tail"
    for i, tok in enumerate([regex_tok, *make_all(small_corpus)]):
        path = tmp_path / f"tok{i}.json"
        tok.save(path)
        loaded = load(path)
        assert type(loaded) is type(tok)
        assert loaded.vocab_size == tok.vocab_size
        assert dict(loaded.special_tokens) == dict(tok.special_tokens)
        assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
        assert vocab_path(path).exists()
        # saving again gives the same bytes
        again = tmp_path / f"again{i}.json"
        loaded.save(again)
        assert again.read_bytes() == path.read_bytes()


def test_file_layout(tmp_path: Path, regex_tok: RegexBPETokenizer) -> None:
    path = tmp_path / "tok.json"
    regex_tok.save(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "lego-tokenizer"
    assert doc["version"] == 1
    assert doc["type"] == "regex_bpe"
    assert doc["pattern"] == "gpt4"
    assert "byte_order" not in doc
    assert len(doc["merges"]) == regex_tok.n_ordinary - 256
    assert doc["special_tokens"] == {EOT: 319}
    assert doc["checksum"] == checksum(doc)
    left, right = (str_to_token(part) for part in doc["merges"][0])
    assert regex_tok.decode_single_token_bytes(256) == left + right
    dump = (tmp_path / "tok.vocab").read_text(encoding="utf-8")
    assert dump.splitlines()[0] == VOCAB_DUMP_HEADER
    assert dump.splitlines()[1 + 97] == "[a] 97"
    assert " -> [" in dump.splitlines()[1 + 256]
    assert dump.splitlines()[-1] == f"[{EOT}] 319 (special)"
    assert vocab_path(tmp_path / "tok") == tmp_path / "tok.vocab"


def test_the_dump_never_replaces_a_file_it_did_not_write(
    tmp_path: Path, regex_tok: RegexBPETokenizer
) -> None:
    words = tmp_path / "words.vocab"
    words.write_text("my own word list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a vocabulary dump") as caught:
        regex_tok.save(tmp_path / "words.json")
    assert caught.value.path == str(words)
    assert words.read_text(encoding="utf-8") == "my own word list\n"
    assert not (tmp_path / "words.json").exists()  # checked before anything is written


def test_the_dump_replaces_an_earlier_dump_or_a_named_file(
    tmp_path: Path, regex_tok: RegexBPETokenizer
) -> None:
    path = tmp_path / "tok.json"
    assert regex_tok.save(path) == tmp_path / "tok.vocab"
    assert regex_tok.save(path) == tmp_path / "tok.vocab"  # an earlier dump is replaced
    assert is_vocab_dump(tmp_path / "tok.vocab")
    named = tmp_path / "mine.txt"
    named.write_text("old", encoding="utf-8")
    assert regex_tok.save(path, vocab_file=named) == named
    assert is_vocab_dump(named)
    (tmp_path / "other.vocab").write_text("keep", encoding="utf-8")
    assert regex_tok.save(tmp_path / "other.json", vocab_file=False) is None
    assert (tmp_path / "other.vocab").read_text(encoding="utf-8") == "keep"


def test_the_dump_is_never_the_tokenizer_file(tmp_path: Path, regex_tok: RegexBPETokenizer) -> None:
    path = tmp_path / "tok.json"
    with pytest.raises(ConfigError, match="tokenizer file"):
        regex_tok.save(path, vocab_file=path)
    assert not path.exists()


def test_foreign_byte_order_round_trips(tmp_path: Path) -> None:
    order = list(range(255, -1, -1))
    ranks = {bytes([b]): i for i, b in enumerate(order)}
    ranks[b"hi"] = 256
    tok = RegexBPETokenizer.from_ranks(ranks, pattern="gpt2", special_tokens={EOT: 257})
    tok.save(tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert doc["byte_order"] == order
    loaded = load(tmp_path / "t.json")
    assert isinstance(loaded, RegexBPETokenizer)
    assert dict(loaded.mergeable_ranks) == ranks


def test_undecomposable_token_cannot_be_saved(tmp_path: Path) -> None:
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"abc"] = 256  # neither "ab" nor "bc" is a token
    tok = RegexBPETokenizer.from_ranks(ranks, pattern="gpt2")
    assert tok.encode("abcd") == [97, 98, 99, 100]  # BPE never reaches "abc" inside a word
    with pytest.raises(CompatibilityError, match="not the merge of two earlier tokens"):
        tok.save(tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_atomic_write_keeps_the_old_file(tmp_path: Path, regex_tok: RegexBPETokenizer) -> None:
    path = tmp_path / "tok.json"
    regex_tok.save(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="cannot write the tokenizer file: its folder") as info:
        regex_tok.save(tmp_path / "missing-dir" / "tok.json")
    assert info.value.path == str(tmp_path / "missing-dir")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- bad files ------------------------------------------------------------------------------


def write(path: Path, doc: dict[str, Any], *, sign: bool = True) -> Path:
    doc = dict(doc)
    doc.pop("checksum", None)
    if sign:
        doc["checksum"] = checksum(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
def good_doc(tmp_path: Path, regex_tok: RegexBPETokenizer) -> dict[str, Any]:
    regex_tok.save(tmp_path / "good.json")
    doc: dict[str, Any] = json.loads((tmp_path / "good.json").read_text(encoding="utf-8"))
    return doc


def expect(path: Path, match: str, *, key: str | None = None) -> FormatError:
    with pytest.raises(FormatError, match=match) as info:
        load(path)
    assert info.value.path == str(path)
    if key is not None:
        assert info.value.key == key
    return info.value


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizer file not found") as info:
        load(tmp_path / "nope.json")
    assert info.value.path == str(tmp_path / "nope.json")


def test_corrupt_json_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "format": "lego-tokenizer",\n  "version": 1,,\n}', encoding="utf-8")
    err = expect(path, "tokenizer file is not valid JSON")
    assert err.line == 3
    assert err.column is not None


def test_truncated_file(tmp_path: Path, good_doc: dict[str, Any]) -> None:
    path = write(tmp_path / "t.json", good_doc)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = expect(path, "truncated")
    assert "cut short" in (err.hint or "")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00")
    expect(path, "not UTF-8")


def test_tampered(tmp_path: Path, good_doc: dict[str, Any]) -> None:
    good_doc["merges"][0] = ["x", "y"]
    path = write(tmp_path / "t.json", good_doc, sign=False)
    path.write_text(
        json.dumps({**good_doc, "checksum": checksum({**good_doc, "merges": []})}),
        encoding="utf-8",
    )
    err = expect(path, "tampered", key="checksum")
    assert "delete its 'checksum'" in (err.hint or "")


def test_unsigned_edit_is_accepted(tmp_path: Path, good_doc: dict[str, Any]) -> None:
    good_doc["special_tokens"] = {EOT: 319, "<|pad|>": 320}
    path = write(tmp_path / "t.json", good_doc, sign=False)
    tok = load(path)
    assert tok.special_tokens["<|pad|>"] == 320


@pytest.mark.parametrize(
    ("change", "match", "key"),
    [
        ({"format": "hf"}, "not a lego tokenizer file", "format"),
        ({"version": 2}, "version 2", "version"),
        ({"version": "1"}, "positive integer", "version"),
        ({"type": "regexbpe"}, "unknown tokenizer type", "type"),
        ({"pattern": "gpt44"}, "unknown split pattern", "pattern"),
        ({"pattern": "(unclosed"}, "does not compile", "pattern"),
        ({"extra": 1}, "unknown field 'extra'", "extra"),
        ({"merges": "nope"}, "must be a JSON array", "merges"),
        ({"merges": [["a"]]}, "pair of non-empty", "merges[0]"),
        ({"merges": [["a", "b"], ["ab", "zz"]]}, "'zz'", "merges[1]"),
        ({"merges": [["a", "b"], ["a", "b"]]}, "duplicate token", "merges[1]"),
        ({"merges": [["a", " b"]]}, "byte-level", "merges[0]"),
        ({"byte_order": [0] * 256}, "byte_order", "byte_order"),
        ({"special_tokens": {EOT: 3}}, "ordinary token already uses", "special_tokens"),
        ({"special_tokens": {EOT: 400, "x": 400}}, "share id", "special_tokens"),
        ({"special_tokens": {EOT: -1}}, "non-negative", "special_tokens"),
        ({"special_tokens": {"": 400}}, "empty string", "special_tokens"),
        ({"checksum": "md5:abc"}, "sha256", "checksum"),
    ],
)
def test_bad_fields(
    tmp_path: Path, good_doc: dict[str, Any], change: dict[str, Any], match: str, key: str
) -> None:
    doc = {**good_doc, **change}
    path = tmp_path / "bad.json"
    if "checksum" in change:
        path.write_text(json.dumps(doc), encoding="utf-8")
    else:
        write(path, doc)
    expect(path, match, key=key)


def test_missing_field(tmp_path: Path, good_doc: dict[str, Any]) -> None:
    del good_doc["merges"]
    expect(write(tmp_path / "t.json", good_doc), "lacks the field 'merges'", key="merges")


def test_duplicate_special_tokens(tmp_path: Path, good_doc: dict[str, Any]) -> None:
    path = tmp_path / "dup.json"
    text = json.dumps({k: v for k, v in good_doc.items() if k != "checksum"})
    text = text.replace(f'"{EOT}": 319', f'"{EOT}": 319, "{EOT}": 320')
    path.write_text(text, encoding="utf-8")
    expect(path, "repeats the key", key=EOT)


def test_bad_word_file(tmp_path: Path, small_corpus: list[str]) -> None:
    tok = WordTokenizer()
    tok.train(small_corpus, 50, workers=1)
    tok.save(tmp_path / "w.json")
    doc = json.loads((tmp_path / "w.json").read_text(encoding="utf-8"))
    doc["tokens"] = [*doc["tokens"][:3], doc["tokens"][0]]
    expect(write(tmp_path / "w.json", doc), "appears twice")
    doc["tokens"] = ["a", 3]
    expect(write(tmp_path / "w.json", doc), "must be a string", key="tokens[1]")
    char = CharTokenizer.from_text("abc")
    char.save(tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    doc["tokens"] = ["ab", "c"]
    expect(write(tmp_path / "c.json", doc), "single characters")


def test_tokenizers_pickle(small_corpus: list[str], regex_tok: RegexBPETokenizer) -> None:
    import pickle

    regex_tok.encode("warm the caches")
    for tok in [regex_tok, *make_all(small_corpus)]:
        copy = pickle.loads(pickle.dumps(tok))
        assert copy.encode(small_corpus[1]) == tok.encode(small_corpus[1])
        assert dict(copy.special_tokens) == dict(tok.special_tokens)
