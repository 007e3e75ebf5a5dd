from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import regex
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.protocols import CompatibilityError, ConfigError, FormatError
from lego.protocols.testing import DEFAULT_TEXTS
from lego.tokenize.byte_level import token_to_str
from lego.tokenize.interop.hf import hf_merges, read_hf_tokenizer_json, write_hf_tokenizer_json
from lego.tokenize.interop.hf_regex import from_onig
from lego.tokenize.patterns import PATTERNS

Trained = tuple[dict[bytes, int], list[tuple[bytes, bytes]]]
BYTES = {bytes([b]): b for b in range(256)}


def hf_encode(document: dict[str, Any], text: str) -> list[int]:
    """HuggingFace's BPE rule, written out: the listed pair with the best priority merges
    first (leftmost on ties); with ignore_merges a word that is a token is that token."""
    model = document["model"]
    vocab: dict[str, int] = model["vocab"]
    priority: dict[tuple[str, str], int] = {}
    for index, (left, right) in enumerate(model["merges"]):
        priority.setdefault((left, right), index)
    split = document["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    ids: list[int] = []
    for piece in regex.findall(from_onig(split), text):
        word = [token_to_str(bytes([b])) for b in piece.encode("utf-8")]
        if model["ignore_merges"] and "".join(word) in vocab:
            ids.append(vocab["".join(word)])
            continue
        while True:
            candidates = [
                (priority[(word[i], word[i + 1])], i)
                for i in range(len(word) - 1)
                if (word[i], word[i + 1]) in priority
            ]
            if not candidates:
                break
            _, i = min(candidates)
            word[i : i + 2] = [word[i] + word[i + 1]]
        ids.extend(vocab[part] for part in word)
    return ids


@pytest.fixture
def written(tmp_path: Path, trained: Trained) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "tokenizer.json"
    ranks = trained[0]
    write_hf_tokenizer_json(
        path,
        ranks=ranks,
        pattern=PATTERNS["gpt4"],
        special_tokens={"<|endoftext|>": len(ranks) + 1, "<|pad|>": len(ranks) + 5},
    )
    return path, json.loads(path.read_text(encoding="utf-8"))


def test_round_trip_is_exact(written: tuple[Path, dict[str, Any]], trained: Trained) -> None:
    ranks = trained[0]
    got = read_hf_tokenizer_json(written[0])
    assert got == (
        ranks,
        PATTERNS["gpt4"],
        {"<|endoftext|>": len(ranks) + 1, "<|pad|>": len(ranks) + 5},
    )


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_builtin_pattern_round_trips(tmp_path: Path, trained: Trained, name: str) -> None:
    path = tmp_path / f"{name}.json"
    write_hf_tokenizer_json(path, ranks=trained[0], pattern=PATTERNS[name])
    assert read_hf_tokenizer_json(path) == (trained[0], PATTERNS[name], {})


def test_document_layout(written: tuple[Path, dict[str, Any]], trained: Trained) -> None:
    document = written[1]
    model = document["model"]
    assert model["type"] == "BPE"
    assert model["ignore_merges"] is True
    assert model["byte_fallback"] is False
    assert [step["type"] for step in document["pre_tokenizer"]["pretokenizers"]] == [
        "Split",
        "ByteLevel",
    ]
    assert document["pre_tokenizer"]["pretokenizers"][1]["use_regex"] is False
    assert document["decoder"]["type"] == "ByteLevel"
    assert document["normalizer"] is None
    specials = {t["content"]: t["id"] for t in document["added_tokens"]}
    assert all(t["special"] for t in document["added_tokens"])
    assert all(model["vocab"][token] == token_id for token, token_id in specials.items())
    assert model["merges"][0] == [token_to_str(p) for p in trained[1][0]]


def test_merges_list_every_split_in_rank_order() -> None:
    ranks = BYTES | {b"bc": 256, b"ab": 257, b"abc": 258}
    assert hf_merges(ranks) == [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc"), (b"ab", b"c")]


def test_merges_of_a_bpe_vocabulary_start_with_its_merges(trained: Trained) -> None:
    ranks, merges = trained
    listed = hf_merges(ranks)
    firsts = []
    seen: set[bytes] = set()
    for left, right in listed:
        if left + right not in seen:
            seen.add(left + right)
            firsts.append((left, right))
    assert firsts == merges


def test_tokens_whose_parts_come_later() -> None:
    # "abc" (256) is spelled by "ab" (257) + "c": tiktoken forms "ab", then "abc".
    ranks = BYTES | {b"abc": 256, b"ab": 257}
    pattern = r"\p{L}+|\s+|."
    encoding = tiktoken.Encoding("t", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    merges = hf_merges(ranks)
    assert merges == [(b"ab", b"c"), (b"a", b"b")]
    document = {
        "model": {
            "vocab": {token_to_str(t): i for t, i in ranks.items()},
            "merges": [[token_to_str(a), token_to_str(b)] for a, b in merges],
            "ignore_merges": True,
        },
        "pre_tokenizer": {"pretokenizers": [{"pattern": {"Regex": pattern}}]},
    }
    assert hf_encode(document, "abcx abc") == encoding.encode("abcx abc") == [256, 120, 32, 256]


HFPair = tuple[dict[str, Any], tiktoken.Encoding]


@pytest.fixture(scope="module")
def hf_pair(
    bpe_trainer: Callable[..., tuple[dict[bytes, int], Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> HFPair:
    """A tokenizer.json with 300 merges and the tiktoken encoding of the same ranks."""
    corpus = "\n".join(DEFAULT_TEXTS) * 4 + "  the   the    quick quick\n\n 1234 4321  "
    ranks, _ = bpe_trainer(corpus, 300)
    path = tmp_path_factory.mktemp("hf") / "t.json"
    write_hf_tokenizer_json(path, ranks=ranks, pattern=PATTERNS["gpt4"])
    document = json.loads(path.read_text(encoding="utf-8"))
    encoding = tiktoken.Encoding(
        "t", pat_str=PATTERNS["gpt4"], mergeable_ranks=ranks, special_tokens={}
    )
    return document, encoding


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("the quick fox 'S 123 \n\t   naïve日本ü😀")), max_size=60)
)
def test_hf_rule_gives_tiktoken_ids(hf_pair: HFPair, text: str) -> None:
    document, encoding = hf_pair
    assert hf_encode(document, text) == encoding.encode_ordinary(text)


def test_hf_rule_gives_tiktoken_ids_on_the_test_texts(hf_pair: HFPair) -> None:
    document, encoding = hf_pair
    for text in DEFAULT_TEXTS:
        assert hf_encode(document, text) == encoding.encode_ordinary(text), text


# -- reading other files --------------------------------------------------------------------


def _edit(path: Path, change: Any) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(json.dumps(document), encoding="utf-8")


def test_gpt2_style_file_is_read(tmp_path: Path, trained: Trained) -> None:
    # GPT-2's own file: ByteLevel(use_regex=true) alone, "a b" merges, EOT in the vocabulary.
    ranks, merges = trained
    path = tmp_path / "gpt2.json"
    eot = len(ranks)
    document = {
        "version": "1.0",
        "added_tokens": [
            {
                "id": eot,
                "content": "<|endoftext|>",
                "special": True,
                "lstrip": False,
                "rstrip": False,
                "single_word": False,
                "normalized": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True},
        "model": {
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "vocab": {token_to_str(t): i for t, i in ranks.items()} | {"<|endoftext|>": eot},
            "merges": [f"{token_to_str(a)} {token_to_str(b)}" for a, b in merges],
        },
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    assert read_hf_tokenizer_json(path) == (ranks, PATTERNS["gpt2"], {"<|endoftext|>": eot})


def test_ruby_repeated_interval_is_read_as_such(written: tuple[Path, dict[str, Any]]) -> None:
    def change(d: dict[str, Any]) -> None:
        d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}{1,3}+|\p{L}+|\s+|."

    _edit(written[0], change)
    assert read_hf_tokenizer_json(written[0])[1] == r"(?:\p{N}{1,3})+|\p{L}+|\s+|."


def _set(*keys: str, value: Any) -> Any:
    def change(document: dict[str, Any]) -> None:
        target = document
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(keys[-1])] = value
        else:
            target[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "message", "key"),
    [
        (
            _set("model", "type", value="WordPiece"),
            "'WordPiece', not a byte-level BPE",
            "model.type",
        ),
        (_set("model", "type", value="Unigram"), "'Unigram', not a byte-level BPE", "model.type"),
        (
            _set("normalizer", value={"type": "NFC"}),
            "normalizer 'NFC' changes the text",
            "normalizer",
        ),
        (_set("model", "byte_fallback", value=True), "byte_fallback=True", "model.byte_fallback"),
        (_set("model", "unk_token", value="<unk>"), "unk_token='<unk>'", "model.unk_token"),
        (
            _set("pre_tokenizer", "pretokenizers", "1", "add_prefix_space", value=True),
            "add_prefix_space",
            "pre_tokenizer.pretokenizers[1].add_prefix_space",
        ),
        (
            _set("pre_tokenizer", "pretokenizers", "1", "use_regex", value=True),
            "split twice",
            "pre_tokenizer.pretokenizers[1].use_regex",
        ),
        (
            _set("pre_tokenizer", "pretokenizers", "0", "behavior", value="MergedWithPrevious"),
            "behavior='MergedWithPrevious'",
            "pre_tokenizer.pretokenizers[0].behavior",
        ),
        (
            _set("pre_tokenizer", "pretokenizers", "0", "pattern", value={"String": " "}),
            "fixed string",
            "pre_tokenizer.pretokenizers[0]",
        ),
        (_set("pre_tokenizer", value=None), "no pre-tokenizer", "pre_tokenizer"),
        (_set("decoder", value={"type": "WordPiece"}), "decoder 'WordPiece'", "decoder"),
        (_set("added_tokens", "0", "lstrip", value=True), "sets lstrip", "added_tokens[0].lstrip"),
        (_set("model", "vocab", "\u2581the", value=99999), "not a byte-level token", None),
    ],
)
def test_not_byte_level_bpe_is_a_compatibility_error(
    written: tuple[Path, dict[str, Any]], change: Any, message: str, key: str | None
) -> None:
    _edit(written[0], change)
    with pytest.raises(CompatibilityError, match=message) as info:
        read_hf_tokenizer_json(written[0])
    assert info.value.path == str(written[0])
    if key is not None:
        assert info.value.key == key
    assert info.value.hint is not None
    assert "byte-level BPE" in info.value.hint


def test_merges_out_of_id_order(written: tuple[Path, dict[str, Any]]) -> None:
    def change(d: dict[str, Any]) -> None:
        merges = d["model"]["merges"]
        merges[0], merges[-1] = merges[-1], merges[0]

    _edit(written[0], change)
    with pytest.raises(CompatibilityError, match="does not follow id order"):
        read_hf_tokenizer_json(written[0])


def test_token_without_merge(written: tuple[Path, dict[str, Any]]) -> None:
    def change(d: dict[str, Any]) -> None:
        d["model"]["merges"] = d["model"]["merges"][:-3]

    _edit(written[0], change)
    with pytest.raises(CompatibilityError, match="no merge creates the token"):
        read_hf_tokenizer_json(written[0])


def test_missing_byte(written: tuple[Path, dict[str, Any]]) -> None:
    def change(d: dict[str, Any]) -> None:
        del d["model"]["vocab"][token_to_str(b"\x00")]

    _edit(written[0], change)
    with pytest.raises(CompatibilityError, match="lacks 1 of the 256 single-byte tokens"):
        read_hf_tokenizer_json(written[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("model", value="BPE"), "no 'model' object"),
        (_set("model", "merges", value={}), "needs a 'vocab' object and a 'merges' list"),
        (_set("model", "merges", "0", value="a b c"), "is not a pair of tokens"),
        (_set("model", "merges", "0", value=["Ġ", "zzzz"]), "not in the vocabulary"),
        (_set("added_tokens", "0", "id", value=3), "the vocabulary gives it"),
        (_set("added_tokens", value={}), "'added_tokens' is not a list"),
        (_set("model", "vocab", "a", value="x"), "gives 'a' the id 'x'"),
    ],
)
def test_malformed_file_is_a_format_error(
    written: tuple[Path, dict[str, Any]], change: Any, message: str
) -> None:
    _edit(written[0], change)
    with pytest.raises(FormatError, match=message) as info:
        read_hf_tokenizer_json(written[0])
    assert info.value.path == str(written[0])


def test_truncated_file(written: tuple[Path, dict[str, Any]]) -> None:
    text = written[0].read_text(encoding="utf-8")
    written[0].write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(FormatError, match="ends too early"):
        read_hf_tokenizer_json(written[0])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_hf_tokenizer_json(tmp_path / "tokenizer.json")


@pytest.mark.parametrize(
    ("specials", "message"),
    [({"a": 999}, "spelled like an ordinary token"), ({"<s>": 0}, "an ordinary token's id")],
)
def test_write_rejects_colliding_specials(
    tmp_path: Path, trained: Trained, specials: dict[str, int], message: str
) -> None:
    with pytest.raises(CompatibilityError, match=message):
        write_hf_tokenizer_json(
            tmp_path / "t.json", ranks=trained[0], pattern="gpt4", special_tokens=specials
        )


def test_write_rejects_a_bad_pattern(tmp_path: Path, trained: Trained) -> None:
    with pytest.raises(ConfigError, match="does not compile"):
        write_hf_tokenizer_json(tmp_path / "t.json", ranks=trained[0], pattern="(unclosed")


def test_added_tokens_outside_the_vocabulary(
    written: tuple[Path, dict[str, Any]], trained: Trained
) -> None:
    # LLaMA 3's files list their special tokens only in added_tokens.
    def change(d: dict[str, Any]) -> None:
        for token in ("<|endoftext|>", "<|pad|>"):
            del d["model"]["vocab"][token]

    _edit(written[0], change)
    ranks, _, specials = read_hf_tokenizer_json(written[0])
    assert ranks == trained[0]
    assert specials == {"<|endoftext|>": len(ranks) + 1, "<|pad|>": len(ranks) + 5}
