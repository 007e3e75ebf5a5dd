"""lego-tokenize against its oracles: tiktoken and HuggingFace ``tokenizers``, identical ids.

Reads GPT-2's files, ``cl100k_base.tiktoken``, GPT-2's HF ``tokenizer.json`` and tiny
shakespeare from ``$LEGO_SHARED_DATA`` (default ``<repo>/../shared/data``) and skips with a
reason where they are missing. ``TIKTOKEN_CACHE_DIR`` defaults to the data's
``tiktoken-cache`` so ``tiktoken.get_encoding`` works offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lego.protocols.testing import DEFAULT_TEXTS

DATA = Path(
    os.environ.get(
        "LEGO_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(DATA / "tiktoken-cache"))

tiktoken = pytest.importorskip("tiktoken")
tokenizers = pytest.importorskip("tokenizers")

from lego.tokenize import RegexBPETokenizer, load  # noqa: E402 - after the skips above


def _need(*names: str) -> list[Path]:
    paths = [DATA / name for name in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"reference data missing: {', '.join(missing)} (set LEGO_SHARED_DATA)")
    return paths


MIXED = (
    *DEFAULT_TEXTS,
    "  multiple   spaces\tand\ttabs  \n\n\n   trailing   ",
    "numbers 1 12 123 1234 12345 123456 3.14159 1,000,000 0x1F",
    "CamelCaseWords HTTPServer iPhone ÉCOLE naïveté Ⅻ ½ ²",
    "mixed 日本語とEnglish, العربية123, हिन्दी।, ру́сский, 한국어!",  # noqa: RUF001
    "emoji \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 zwj\u200d "
    "nbsp\u00a0 ideographic\u3000space",
    "line\r\nbreaks\rand\u2028separators\u2029",
    "'S 'T 'RE 'Ve 'LL 'D don't I'M we'll",
)
# Any text, but built from characters of every kind and long runs of spaces and digits.
TEXTS = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(
            [" ", "  ", "\n", "\t", "'s", "0", "12345", "é", "日本", "\U0001f44d\U0001f3fd"]
        ),
    ),
    max_size=60,
).map("".join)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _shakespeare() -> str:
    (path,) = _need("input.txt")
    return path.read_text(encoding="utf-8")


def _chunks(text: str, size: int = 20_000) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


# -- loaded tokenizers, cached for the module -----------------------------------------------

_CACHE: dict[str, object] = {}


def _cached(key: str, make: object) -> object:
    if key not in _CACHE:
        _CACHE[key] = make() if callable(make) else make
    return _CACHE[key]


def gpt2_files(engine: str = "tiktoken") -> RegexBPETokenizer:
    encoder, vocab = _need("encoder.json", "vocab.bpe")
    tok = _cached("gpt2", lambda: RegexBPETokenizer.from_gpt2_files(encoder, vocab))
    assert isinstance(tok, RegexBPETokenizer)
    if engine == "tiktoken":
        return tok
    python = _cached(
        "gpt2-python",
        lambda: RegexBPETokenizer.from_ranks(
            tok.mergeable_ranks,
            pattern=tok.pattern,
            special_tokens=tok.special_tokens,
            engine="python",
        ),
    )
    assert isinstance(python, RegexBPETokenizer)
    return python


def cl100k_file() -> RegexBPETokenizer:
    (path,) = _need("cl100k_base.tiktoken")
    tok = _cached("cl100k", lambda: RegexBPETokenizer.from_tiktoken(path, pattern="gpt4"))
    assert isinstance(tok, RegexBPETokenizer)
    return tok


def oracle(name: str) -> tiktoken.Encoding:
    _need("tiktoken-cache")
    return tiktoken.get_encoding(name)


# -- GPT-2 files vs tiktoken "gpt2" ---------------------------------------------------------


@pytest.mark.parametrize("engine", ["tiktoken", "python"])
def test_gpt2_files_equal_tiktoken_on_shakespeare(engine: str) -> None:
    ours, theirs = gpt2_files(engine), oracle("gpt2")
    text = _shakespeare()
    ids = ours.encode_ordinary(text)
    assert ids == theirs.encode_ordinary(text)
    assert len(ids) == 338_025  # 301,966 + 36,059 with a 90/10 split, per the data's README
    assert ours.decode(ids) == text


@pytest.mark.parametrize("engine", ["tiktoken", "python"])
def test_gpt2_files_equal_tiktoken_on_mixed_scripts(engine: str) -> None:
    ours, theirs = gpt2_files(engine), oracle("gpt2")
    assert ours.mergeable_ranks == theirs._mergeable_ranks
    assert dict(ours.special_tokens) == theirs._special_tokens
    for text in MIXED:
        assert ours.encode(text) == theirs.encode(text), text
    eot = "<|endoftext|>"
    assert ours.encode(f"a{eot}b", allowed_special="all") == theirs.encode(
        f"a{eot}b", allowed_special="all"
    )


@SETTINGS
@given(text=TEXTS)
def test_gpt2_files_equal_tiktoken_on_any_text(text: str) -> None:
    theirs = oracle("gpt2").encode_ordinary(text)
    assert gpt2_files("tiktoken").encode_ordinary(text) == theirs


@SETTINGS
@given(text=TEXTS)
def test_gpt2_python_engine_equals_tiktoken_on_any_text(text: str) -> None:
    theirs = oracle("gpt2").encode_ordinary(text)
    assert gpt2_files("python").encode_ordinary(text) == theirs


# -- cl100k_base ----------------------------------------------------------------------------


def test_cl100k_file_equals_tiktoken() -> None:
    ours, theirs = cl100k_file(), oracle("cl100k_base")
    assert ours.mergeable_ranks == theirs._mergeable_ranks
    for chunk in _chunks(_shakespeare()):
        assert ours.encode_ordinary(chunk) == theirs.encode_ordinary(chunk)
    for text in MIXED:
        assert ours.encode(text) == theirs.encode(text), text


def test_cl100k_by_name_equals_tiktoken() -> None:
    ours, theirs = RegexBPETokenizer.from_tiktoken("cl100k_base"), oracle("cl100k_base")
    assert dict(ours.special_tokens) == theirs._special_tokens
    assert ours.pattern == theirs._pat_str
    text = "<|fim_prefix|>def f():<|fim_suffix|> return 1<|fim_middle|><|endoftext|>"
    assert ours.encode(text, allowed_special="all") == theirs.encode(text, allowed_special="all")
    assert ours.vocab_size == theirs.n_vocab


@SETTINGS
@given(text=TEXTS)
def test_cl100k_equals_tiktoken_on_any_text(text: str) -> None:
    assert cl100k_file().encode_ordinary(text) == oracle("cl100k_base").encode_ordinary(text)


# -- HuggingFace tokenizer.json -------------------------------------------------------------


def _hf(path: Path) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(path))


def _hf_ids(hf: tokenizers.Tokenizer, text: str) -> list[int]:
    return list(hf.encode(text, add_special_tokens=False).ids)


def test_hf_gpt2_file_loads_and_matches_tokenizers() -> None:
    (path,) = _need("hf_gpt2/tokenizer.json")
    ours, hf = RegexBPETokenizer.from_hf(path), _hf(path)
    assert ours.mergeable_ranks == gpt2_files().mergeable_ranks
    assert dict(ours.special_tokens) == {"<|endoftext|>": 50256}
    for chunk in _chunks(_shakespeare(), 100_000):
        assert ours.encode_ordinary(chunk) == _hf_ids(hf, chunk)
    for text in MIXED:
        assert ours.encode(text) == _hf_ids(hf, text), text


@SETTINGS
@given(text=TEXTS)
def test_hf_gpt2_file_matches_tokenizers_on_any_text(text: str) -> None:
    (path,) = _need("hf_gpt2/tokenizer.json")
    hf = _cached("hf-gpt2", lambda: _hf(path))
    assert isinstance(hf, tokenizers.Tokenizer)
    assert gpt2_files().encode_ordinary(text) == _hf_ids(hf, text)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[RegexBPETokenizer, Path]:
    text = _shakespeare()
    tok = RegexBPETokenizer("gpt4")
    tok.train(text[:300_000], 2048, special_tokens=["<|endoftext|>", "<|pad|>"], workers=1)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save_hf(path)
    return tok, path


def test_trained_save_hf_loads_in_tokenizers_with_our_ids(
    trained: tuple[RegexBPETokenizer, Path],
) -> None:
    ours, path = trained
    hf = _hf(path)
    held_out = _shakespeare()[300_000:]
    for chunk in _chunks(held_out, 100_000):
        assert _hf_ids(hf, chunk) == ours.encode_ordinary(chunk)
    for text in MIXED:
        assert _hf_ids(hf, text) == ours.encode(text), text
    text = "to be<|endoftext|>or not<|pad|>"
    assert _hf_ids(hf, text) == ours.encode(text, allowed_special="all")
    assert hf.decode(ours.encode(held_out[:5000]), skip_special_tokens=False) == held_out[:5000]


@SETTINGS
@given(text=TEXTS)
def test_trained_save_hf_matches_on_any_text(
    trained: tuple[RegexBPETokenizer, Path], text: str
) -> None:
    ours, path = trained
    hf = _cached("hf-trained", lambda: _hf(path))
    assert isinstance(hf, tokenizers.Tokenizer)
    assert _hf_ids(hf, text) == ours.encode_ordinary(text)


def test_trained_hf_round_trip_is_exact(trained: tuple[RegexBPETokenizer, Path]) -> None:
    ours, path = trained
    back = RegexBPETokenizer.from_hf(path)
    assert back.mergeable_ranks == ours.mergeable_ranks
    assert back.pattern == ours.pattern
    assert dict(back.special_tokens) == dict(ours.special_tokens)


def test_transformers_wraps_our_tokenizer_json(trained: tuple[RegexBPETokenizer, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    ours, path = trained
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    text = "ROMEO: But, soft! what light through yonder window breaks?"
    assert fast.encode(text, add_special_tokens=False) == ours.encode(text)
    assert fast.decode(ours.encode(text)) == text


@pytest.mark.parametrize("name", ["gpt2", "cl100k"])
def test_save_hf_of_openai_vocabularies_matches_tokenizers(name: str, tmp_path: Path) -> None:
    ours = gpt2_files() if name == "gpt2" else cl100k_file()
    path = tmp_path / "tokenizer.json"
    ours.save_hf(path)
    hf = _hf(path)
    for chunk in _chunks(_shakespeare(), 200_000):
        assert _hf_ids(hf, chunk) == ours.encode_ordinary(chunk)
    for text in MIXED:
        assert _hf_ids(hf, text) == ours.encode(text), text
    back = RegexBPETokenizer.from_hf(path)
    assert back.mergeable_ranks == ours.mergeable_ranks
    assert back.pattern == ours.pattern
    assert dict(back.special_tokens) == dict(ours.special_tokens)


# -- lego's own file format -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "cl100k"])
def test_save_load_keeps_the_ids(name: str, tmp_path: Path) -> None:
    ours = gpt2_files() if name == "gpt2" else cl100k_file()
    path = tmp_path / f"{name}.json"
    ours.save(path)
    loaded = load(path)
    assert isinstance(loaded, RegexBPETokenizer)
    assert loaded.mergeable_ranks == ours.mergeable_ranks
    assert dict(loaded.special_tokens) == dict(ours.special_tokens)
    text = _shakespeare()[:200_000]
    assert loaded.encode_ordinary(text) == ours.encode_ordinary(text)
    for sample in MIXED:
        assert loaded.encode(sample) == ours.encode(sample), sample
