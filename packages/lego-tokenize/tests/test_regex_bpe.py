from __future__ import annotations

from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.protocols import ConfigError, DataError, FormatError, TrainableTokenizer
from lego.protocols.testing import DEFAULT_TEXTS, TokenizerContract
from lego.tokenize import CharTokenizer, RegexBPETokenizer, VocabSizeNotReachedWarning
from lego.tokenize.patterns import PATTERNS


class TestRegexBPEContract(TokenizerContract):
    def make_tokenizer(self) -> RegexBPETokenizer:
        tok = RegexBPETokenizer("gpt4")
        tok.train(list(DEFAULT_TEXTS) * 3, 320, special_tokens=["<|endoftext|>"], workers=1)
        return tok


class TestRegexBPEPythonEngineContract(TestRegexBPEContract):
    def make_tokenizer(self) -> RegexBPETokenizer:
        tok = super().make_tokenizer()
        tok.engine = "python"
        return tok


class TestUntrainedContract(TokenizerContract):
    def make_tokenizer(self) -> RegexBPETokenizer:
        return RegexBPETokenizer("gpt2")


@pytest.fixture(scope="module", params=sorted(PATTERNS))
def trained(request: pytest.FixtureRequest, corpus: list[str]) -> RegexBPETokenizer:
    tok = RegexBPETokenizer(request.param)
    tok.train(corpus, 500, workers=1)
    return tok


def test_is_trainable_tokenizer(trained: RegexBPETokenizer) -> None:
    assert isinstance(trained, TrainableTokenizer)
    assert trained.vocab_size == 500
    assert len(trained.merges) == 500 - 256


@settings(max_examples=80, deadline=None)
@given(text=st.text())
def test_round_trip_any_unicode(trained: RegexBPETokenizer, text: str) -> None:
    ids = trained.encode(text, disallowed_special=())
    assert trained.decode(ids) == text
    assert trained.decode_bytes(ids) == text.encode("utf-8")


@settings(max_examples=80, deadline=None)
@given(text=st.text())
def test_engines_agree(trained: RegexBPETokenizer, text: str) -> None:
    python = RegexBPETokenizer.from_ranks(
        trained.mergeable_ranks, pattern=trained.pattern, engine="python"
    )
    assert python.encode_ordinary(text) == trained.encode_ordinary(text)


def test_engines_agree_on_corpus(trained: RegexBPETokenizer, corpus: list[str]) -> None:
    python = RegexBPETokenizer.from_ranks(
        trained.mergeable_ranks, pattern=trained.pattern, engine="python"
    )
    text = "".join(corpus)
    assert python.encode_ordinary(text) == trained.encode_ordinary(text)
    assert trained.encode_batch(corpus, num_threads=2) == [python.encode(d) for d in corpus]
    assert trained.encode_ordinary_batch(corpus[:3]) == python.encode_batch(corpus[:3])


def test_to_tiktoken_is_cached_and_equal(trained: RegexBPETokenizer, corpus: list[str]) -> None:
    enc = trained.to_tiktoken()
    assert isinstance(enc, tiktoken.Encoding)
    assert trained.to_tiktoken() is enc
    assert enc.encode_ordinary(corpus[0]) == trained.encode(corpus[0])
    assert enc.n_vocab == trained.vocab_size


def test_retrain_rebuilds_the_encoding(small_corpus: list[str]) -> None:
    tok = RegexBPETokenizer("gpt4")
    first = tok.to_tiktoken()
    assert first.n_vocab == 256
    tok.train(small_corpus, 300, workers=1)
    assert tok.to_tiktoken() is not first
    assert tok.to_tiktoken().n_vocab == 300


def test_training_is_deterministic_across_workers_and_chunks(corpus: list[str]) -> None:
    results = []
    for workers, chunk_size in [(1, 1 << 20), (2, 2000), (3, 777), (1, 50)]:
        tok = RegexBPETokenizer("gpt4")
        tok.train(corpus, 450, workers=workers, chunk_size=chunk_size)
        results.append(tok.merges)
    assert all(result == results[0] for result in results)


def test_training_from_files_equals_strings(tmp_path: Path, corpus: list[str]) -> None:
    paths = []
    for i, doc in enumerate(corpus[:10]):
        path = tmp_path / f"doc{i}.txt"
        path.write_text(doc, encoding="utf-8")
        paths.append(path)
    from_files = RegexBPETokenizer("gpt4")
    from_files.train(paths, 400, workers=2, chunk_size=1000)
    from_text = RegexBPETokenizer("gpt4")
    from_text.train(corpus[:10], 400, workers=1)
    assert from_files.merges == from_text.merges
    single = RegexBPETokenizer("gpt4")
    single.train(paths[0], 300, workers=1)
    reference = RegexBPETokenizer("gpt4")
    reference.train(corpus[0], 300, workers=1)
    assert single.merges == reference.merges


def test_from_ranks_validates() -> None:
    ranks = {bytes([b]): b for b in range(256)}
    tok = RegexBPETokenizer.from_ranks({**ranks, b"ab": 256}, pattern="gpt2", name="tiny")
    assert tok.encode("ab") == [256]
    assert tok.name == "tiny"
    assert tok.merges == [(97, 98)]
    with pytest.raises(ConfigError, match="without gaps"):
        RegexBPETokenizer.from_ranks({**ranks, b"ab": 300}, pattern="gpt2")
    with pytest.raises(ConfigError, match="single bytes"):
        RegexBPETokenizer.from_ranks({b"a": 0}, pattern="gpt2")
    with pytest.raises(ConfigError, match="share id"):
        RegexBPETokenizer.from_ranks({**ranks, b"ab": 5}, pattern="gpt2")
    with pytest.raises(ConfigError, match="ordinary token already uses"):
        RegexBPETokenizer.from_ranks(ranks, pattern="gpt2", special_tokens={"<s>": 3})


def test_foreign_byte_order_and_merges() -> None:
    order = list(range(255, -1, -1))
    ranks = {bytes([b]): i for i, b in enumerate(order)}
    ranks[b"hi"] = 256
    ranks[b"hi!"] = 257
    tok = RegexBPETokenizer.from_ranks(ranks, pattern=r"\S+|\s+")
    assert tok.byte_order() == order
    assert tok.merges == [(ranks[b"h"], ranks[b"i"]), (256, ranks[b"!"])]
    assert tok.encode("hi! x") == [257, ranks[b" "], ranks[b"x"]]


def test_decode_out_of_range_names_id(trained: RegexBPETokenizer) -> None:
    for bad in (500, -1, 10**9):
        with pytest.raises(DataError, match=f"token id {bad} is not in the vocabulary") as info:
            trained.decode([1, bad])
        assert "vocab_size 500" in str(info.value)
    with pytest.raises(DataError, match="'x'"):
        trained.decode([1, "x"])  # type: ignore[list-item]


def test_decode_gap_between_ordinary_and_special(small_corpus: list[str]) -> None:
    tok = RegexBPETokenizer("gpt4")
    tok.train(small_corpus[:1], 100_000, special_tokens={"<|end|>": 99_999}, workers=1)
    gap = tok.n_ordinary
    assert gap < 99_999
    assert tok.vocab_size == 100_000
    with pytest.raises(DataError, match=str(gap)):
        tok.decode([gap])
    assert tok.decode([99_999]) == "<|end|>"


def test_decode_replaces_invalid_utf8(trained: RegexBPETokenizer) -> None:
    ids = trained.encode("é")
    assert trained.decode(ids[:1] if len(ids) > 1 else [0xC3]) == "\ufffd"
    assert trained.decode_single_token_bytes(0xC3) == b"\xc3"
    assert trained.id_to_token(ord("a")) == "a"
    assert trained.token_byte_values()[ord("a")] == b"a"


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="engine"):
        RegexBPETokenizer("gpt4", engine="rust")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown split pattern"):
        RegexBPETokenizer("gpt5")
    tok = RegexBPETokenizer("gpt4")
    with pytest.raises(ConfigError, match="num_threads"):
        tok.encode_batch(["a"], num_threads=0)


def test_vocab_too_small_and_empty_corpus() -> None:
    tok = RegexBPETokenizer("gpt4")
    with pytest.raises(ConfigError, match=r"at least 256 .* \+ 2") as info:
        tok.train("some text", 257, special_tokens=["<a>", "<b>"])
    assert info.value.key == "vocab_size"
    with pytest.raises(DataError, match="empty"):
        tok.train("", 300)
    with pytest.raises(DataError, match="empty"):
        tok.train(["", ""], 300)
    with pytest.raises(DataError, match="empty"):
        tok.train("<|endoftext|>", 300, special_tokens=["<|endoftext|>"])


def test_special_ids_must_be_on_top() -> None:
    tok = RegexBPETokenizer("gpt4")
    with pytest.raises(ConfigError, match=r"their ids are 299\.\.299") as info:
        tok.train("text text", 300, special_tokens={"<|endoftext|>": 256})
    assert "'<|endoftext|>': 299" in (info.value.hint or "")
    tok.train("text text", 300, special_tokens={"<|endoftext|>": 299})
    assert tok.special_tokens["<|endoftext|>"] == 299


def test_string_specials_follow_ordinary_tokens() -> None:
    tok = RegexBPETokenizer("gpt4")
    with pytest.warns(VocabSizeNotReachedWarning, match="reached 259") as caught:
        tok.train("ab ab ab", 1000, special_tokens=["<|endoftext|>"], workers=1)
    assert caught[0].message.requested == 1000  # type: ignore[union-attr]
    assert tok.special_tokens["<|endoftext|>"] == tok.n_ordinary
    assert tok.vocab_size == tok.n_ordinary + 1
    with pytest.warns(VocabSizeNotReachedWarning):
        tok.train("cd cd", 1000, workers=1)  # None keeps the strings
    assert list(tok.special_tokens) == ["<|endoftext|>"]


def test_specials_are_cut_out_of_training_text() -> None:
    tok = RegexBPETokenizer("gpt4")
    with pytest.warns(VocabSizeNotReachedWarning):
        tok.train("<|endoftext|>" * 50 + " hello", 270, special_tokens=["<|endoftext|>"], workers=1)
    assert all(b"|" not in token or len(token) == 1 for token in tok.mergeable_ranks)


def test_a_size_that_cannot_be_reached_warns_with_the_reached_size() -> None:
    tok = RegexBPETokenizer("gpt4")
    with pytest.warns(VocabSizeNotReachedWarning) as caught:
        tok.train("ab ab ab", 400, workers=1)
    warning = caught[0].message
    assert isinstance(warning, VocabSizeNotReachedWarning)
    assert (warning.requested, warning.reached) == (400, tok.vocab_size)
    assert f"reached {tok.vocab_size}" in str(warning)


def test_char_and_word_sizes_are_caps_and_do_not_warn() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CharTokenizer().train("ab ab", 1000, workers=1)


def test_verbose_training_shows_progress(
    capsys: pytest.CaptureFixture[str], small_corpus: list[str]
) -> None:
    tok = RegexBPETokenizer("gpt4")
    tok.train(small_corpus, 300, verbose=True, workers=1)
    err = capsys.readouterr().err
    assert "counting characters" in err
    assert "making tokens" in err


def test_training_reports_to_a_given_display(small_corpus: list[str]) -> None:
    import io

    from lego.protocols import make_progress

    out = io.StringIO()
    with make_progress("plain", stream=out, interval=0) as display:
        tok = RegexBPETokenizer("gpt4")
        tok.train(small_corpus, 300, verbose=display, workers=1)
        display.message("still open")  # train() leaves the caller's display open
    lines = out.getvalue().splitlines()
    assert any("regex BPE (gpt4): counting characters: done" in line for line in lines)
    assert any("regex BPE (gpt4): making tokens: done, 44 tokens" in line for line in lines)
    assert lines[-1] == "still open"


def test_non_utf8_training_file(tmp_path: Path, small_corpus: list[str]) -> None:
    good = tmp_path / "good.txt"
    good.write_text(small_corpus[0], encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait\n" * 3)
    tok = RegexBPETokenizer("gpt4")
    with pytest.raises(FormatError, match="byte offset 3") as info:
        tok.train([good, bad], 300, workers=1)
    assert info.value.path == str(bad)
    assert tok.vocab_size == 256  # unchanged
    tok.train([good, bad], 300, workers=1, errors="replace")
    assert "\ufffd au lait" in tok.decode(tok.encode(" \ufffd au lait"))
