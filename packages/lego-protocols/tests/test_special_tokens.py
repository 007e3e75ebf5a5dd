import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lego.protocols import CompatibilityError, ConfigError, SpecialTokens
from lego.protocols.special_tokens import ENDOFTEXT


def test_mapping_behaviour_and_order() -> None:
    specials = SpecialTokens({"<|b|>": 7, ENDOFTEXT: 3})
    assert list(specials) == [ENDOFTEXT, "<|b|>"]  # ascending id
    assert specials[ENDOFTEXT] == 3
    assert len(specials) == 2
    assert "<|b|>" in specials
    assert 3 not in specials
    assert specials.ids == frozenset({3, 7})
    assert specials.token_for(7) == "<|b|>"
    assert specials.token_for(8) is None
    assert specials.inverse() == {3: ENDOFTEXT, 7: "<|b|>"}
    assert specials == {ENDOFTEXT: 3, "<|b|>": 7}
    assert hash(specials) == hash(SpecialTokens({ENDOFTEXT: 3, "<|b|>": 7}))
    assert SpecialTokens() == {}


def test_is_immutable() -> None:
    specials = SpecialTokens({ENDOFTEXT: 0})
    with pytest.raises(TypeError):
        specials["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("tokens", "fragment"),
    [
        ({"": 1}, "non-empty string"),
        ({"<a>": -1}, "non-negative integer"),
        ({"<a>": True}, "non-negative integer"),
        ({"<a>": 1.0}, "non-negative integer"),
        ({"<a>": 1, "<b>": 1}, "share id 1"),
    ],
)
def test_invalid_maps_are_refused(tokens: dict[str, int], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        SpecialTokens(tokens)


def test_with_tokens_adds_and_checks() -> None:
    specials = SpecialTokens({ENDOFTEXT: 10})
    more = specials.with_tokens({"<|im_start|>": 11})
    assert more == {ENDOFTEXT: 10, "<|im_start|>": 11}
    assert specials == {ENDOFTEXT: 10}
    with pytest.raises(ConfigError, match="already registered"):
        specials.with_tokens({ENDOFTEXT: 12})
    with pytest.raises(ConfigError, match="share id 10"):
        specials.with_tokens({"<x>": 10})


def test_check_vocab_size() -> None:
    specials = SpecialTokens({ENDOFTEXT: 50256})
    specials.check_vocab_size(50257)
    with pytest.raises(CompatibilityError, match="do not fit a vocabulary of 50256") as info:
        specials.check_vocab_size(50256)
    assert info.value.key == ENDOFTEXT


@given(st.dictionaries(st.text(min_size=1), st.integers(min_value=0), max_size=20))
def test_distinct_ids_round_trip(tokens: dict[str, int]) -> None:
    inverse: dict[int, str] = {}
    for token, token_id in tokens.items():
        inverse.setdefault(token_id, token)
    unique = {token: token_id for token_id, token in inverse.items()}
    specials = SpecialTokens(unique)
    assert dict(specials) == unique
    assert pickle.loads(pickle.dumps(specials)) == specials
    assert SpecialTokens(specials) == specials
    assert all(specials.token_for(i) == t for t, i in unique.items())
