"""Special-token rules, checked against tiktoken's behaviour on the same ranks."""

from __future__ import annotations

import pickle

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.protocols import ConfigError, DataError
from lego.tokenize import DisallowedSpecialError, RegexBPETokenizer
from lego.tokenize.specials import (
    check_disallowed,
    resolve_special_sets,
    split_specials,
    validate_special_tokens,
)

EOT, FIM = "<|endoftext|>", "<|fim|>"


@pytest.fixture(scope="module", params=["tiktoken", "python"])
def tok(request: pytest.FixtureRequest, corpus: list[str]) -> RegexBPETokenizer:
    tokenizer = RegexBPETokenizer("gpt4", engine=request.param)
    tokenizer.train(corpus, 400, special_tokens={EOT: 398, FIM: 399}, workers=1)
    return tokenizer


@pytest.fixture(scope="module")
def reference(tok: RegexBPETokenizer) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        "reference",
        pat_str=tok.pattern,
        mergeable_ranks=dict(tok.mergeable_ranks),
        special_tokens=dict(tok.special_tokens),
    )


def test_disallowed_by_default(tok: RegexBPETokenizer, reference: tiktoken.Encoding) -> None:
    text = f"hello {EOT} world"
    with pytest.raises(ValueError, match="disallowed special token"):
        reference.encode(text)
    with pytest.raises(DisallowedSpecialError) as info:
        tok.encode(text)
    err = info.value
    assert isinstance(err, DataError)
    assert isinstance(err, ValueError)
    assert err.token == EOT
    assert err.position == 6
    assert "allowed_special" in str(err)
    assert pickle.loads(pickle.dumps(err)).position == 6


@pytest.mark.parametrize(
    ("allowed", "disallowed"),
    [
        ("all", "all"),
        ({EOT}, "all"),
        ({EOT}, ()),
        (set(), ()),
        ({FIM}, ()),
        ("all", ()),
    ],
)
def test_same_ids_as_tiktoken(
    tok: RegexBPETokenizer,
    reference: tiktoken.Encoding,
    allowed: object,
    disallowed: object,
) -> None:
    text = f"a {EOT}b{FIM}{EOT} c<|endoftext|"
    try:
        expected = reference.encode(text, allowed_special=allowed, disallowed_special=disallowed)  # type: ignore[arg-type]
    except ValueError:
        with pytest.raises(DisallowedSpecialError):
            tok.encode(text, allowed_special=allowed, disallowed_special=disallowed)  # type: ignore[arg-type]
    else:
        assert tok.encode(text, allowed_special=allowed, disallowed_special=disallowed) == expected  # type: ignore[arg-type]


def test_encode_ordinary_ignores_specials(tok: RegexBPETokenizer) -> None:
    ids = tok.encode_ordinary(EOT)
    assert len(ids) > 1
    assert tok.special_tokens[EOT] not in ids
    assert tok.decode(ids) == EOT
    assert tok.encode(EOT, disallowed_special=()) == ids


def test_allowed_special_is_one_id(tok: RegexBPETokenizer) -> None:
    assert tok.encode(EOT, allowed_special={EOT}) == [398]
    assert tok.decode([398, 399]) == EOT + FIM


def test_custom_disallowed_string(tok: RegexBPETokenizer) -> None:
    with pytest.raises(DisallowedSpecialError, match="'secret'"):
        tok.encode("a secret b", disallowed_special={"secret"})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["x", " ", EOT, FIM, "<|", "|>", "é"]), max_size=12))
def test_split_specials_reassembles(parts: list[str]) -> None:
    text = "".join(parts)
    pieces = list(split_specials(text, frozenset({EOT, FIM})))
    assert "".join(piece for piece, _ in pieces) == text
    assert all(piece for piece, _ in pieces)
    assert all(piece in {EOT, FIM} for piece, special in pieces if special)
    assert all(EOT not in piece and FIM not in piece for piece, special in pieces if not special)


def test_resolve_sets_follow_tiktoken() -> None:
    registered = {EOT, FIM}
    assert resolve_special_sets(registered, "all", "all") == (frozenset(registered), frozenset())
    assert resolve_special_sets(registered, {EOT}, "all") == (frozenset({EOT}), frozenset({FIM}))
    assert resolve_special_sets(registered, {"other"}, ()) == (frozenset(), frozenset())
    check_disallowed("nothing here", frozenset(registered))


def test_validation() -> None:
    assert dict(validate_special_tokens({EOT: 300}, n_ordinary=300)) == {EOT: 300}
    with pytest.raises(ConfigError, match="ordinary token already uses"):
        validate_special_tokens({EOT: 10}, n_ordinary=300)
    with pytest.raises(ConfigError, match="share id"):
        validate_special_tokens({EOT: 300, FIM: 300})
    with pytest.raises(ConfigError, match="non-empty"):
        validate_special_tokens({"": 300})
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        validate_special_tokens({EOT: 500}, vocab_size=400)
    with pytest.raises(ConfigError, match="mapping"):
        validate_special_tokens([EOT])  # type: ignore[arg-type]
