from __future__ import annotations

import pytest

from lego.protocols import ConfigError
from lego.tokenize import Vocabulary


def test_build_orders_by_frequency_then_string() -> None:
    vocab = Vocabulary.build({"b": 3, "a": 3, "c": 5, "rare": 1}, min_frequency=2)
    assert vocab.tokens == ("c", "a", "b")
    assert dict(vocab.special_tokens) == {"<unk>": 3, "<|endoftext|>": 4}
    assert vocab.unk_id == 3
    assert vocab.lookup("rare") == 3
    assert vocab["a"] == 1
    assert vocab["<|endoftext|>"] == 4
    assert len(vocab) == 5
    assert list(vocab) == ["c", "a", "b", "<unk>", "<|endoftext|>"]
    assert vocab.token_for(4) == "<|endoftext|>"
    assert vocab.token_for(99) is None
    assert vocab.size == 5


def test_max_size_counts_specials() -> None:
    vocab = Vocabulary.build({str(i): 100 - i for i in range(50)}, max_size=10)
    assert len(vocab.tokens) == 8
    assert vocab.size == 10
    assert dict(vocab.special_tokens) == {"<unk>": 8, "<|endoftext|>": 9}
    with pytest.raises(ConfigError, match="too small"):
        Vocabulary.build({"a": 1}, max_size=2)


def test_explicit_special_ids_sit_on_top() -> None:
    vocab = Vocabulary.build({"a": 2, "b": 1}, max_size=10, special_tokens={"<unk>": 9})
    assert vocab.size == 10
    assert vocab.unk_id == 9


def test_validation() -> None:
    with pytest.raises(ConfigError, match="appears twice"):
        Vocabulary(tokens=["a", "a"], special_tokens={})
    with pytest.raises(ConfigError, match="non-empty"):
        Vocabulary(tokens=["a", ""], special_tokens={}, unk_token=None)
    with pytest.raises(ConfigError, match="unk_token"):
        Vocabulary(tokens=["a"], special_tokens={})
    with pytest.raises(ConfigError, match="both an ordinary and a special"):
        Vocabulary(tokens=["a", "<unk>"], special_tokens={"<unk>": 2})
    with pytest.raises(ConfigError, match="min_frequency"):
        Vocabulary.build({}, min_frequency=0)
    assert Vocabulary(tokens=["a"], special_tokens={}, unk_token=None).unk_id is None


def test_equality() -> None:
    a = Vocabulary.build({"x": 1})
    assert a == Vocabulary.build({"x": 1})
    assert a != Vocabulary.build({"y": 1})
    assert hash(a) == hash(Vocabulary.build({"x": 1}))
