import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lego.protocols import (
    CompatibilityError,
    ConfigError,
    DataError,
    FormatError,
    LegoError,
    TrainingError,
    closest,
    did_you_mean,
)

KINDS = [ConfigError, FormatError, CompatibilityError, DataError, TrainingError]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_a_lego_error(kind: type[LegoError]) -> None:
    assert issubclass(kind, LegoError)
    assert issubclass(kind, Exception)
    with pytest.raises(LegoError):
        raise kind("boom")


def test_message_renders_where_and_hint() -> None:
    err = ConfigError(
        "n_head must divide n_embd",
        path="configs/tiny.yaml",
        key="model.n_head",
        line=3,
        hint="use n_head=4",
    )
    text = str(err)
    assert text.splitlines() == [
        "n_head must divide n_embd",
        "  where: configs/tiny.yaml, line 3, key 'model.n_head'",
        "  what to do: use n_head=4",
    ]
    assert err.message == "n_head must divide n_embd"
    assert err.context == {
        "path": "configs/tiny.yaml",
        "key": "model.n_head",
        "line": 3,
        "hint": "use n_head=4",
    }


def test_bare_error_has_no_location() -> None:
    err = DataError("empty corpus")
    assert str(err) == "empty corpus"
    assert err.where is None
    assert err.context == {}


def test_byte_offset_without_line_and_tensor() -> None:
    err = FormatError("not UTF-8", path="corpus.txt", column=1234)
    assert err.where == "corpus.txt, byte 1234"
    err = CompatibilityError("shape mismatch", tensor="h.0.attn.c_attn.weight")
    assert err.where == "tensor 'h.0.attn.c_attn.weight'"
    assert err.tensor == "h.0.attn.c_attn.weight"


def test_path_like_is_stringified() -> None:
    err = FormatError("truncated", path=Path("a") / "b.json")
    assert err.path == str(Path("a") / "b.json")


@pytest.mark.parametrize("kind", [LegoError, *KINDS])
def test_errors_pickle_with_context(kind: type[LegoError]) -> None:
    err = kind("bad", path="f.json", key="k", line=2, column=5, tensor="w", hint="fix it")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is kind
    assert str(back) == str(err)
    assert back.context == err.context


@given(
    message=st.text(min_size=1),
    key=st.none() | st.text(),
    line=st.none() | st.integers(min_value=1),
    hint=st.none() | st.text(),
)
def test_pickle_round_trip_property(
    message: str, key: str | None, line: int | None, hint: str | None
) -> None:
    err = DataError(message, key=key, line=line, hint=hint)
    back = pickle.loads(pickle.dumps(err))
    assert (back.message, back.key, back.line, back.hint) == (message, key, line, hint)


def test_closest_and_did_you_mean() -> None:
    names = ["n_layer", "n_head", "n_embd", "vocab_size"]
    assert closest("n_layr", names)[0] == "n_layer"
    assert closest("VOCAB_SIZE", names) == ["vocab_size"]
    assert did_you_mean("n_heads", names) == "did you mean 'n_head'?"
    assert did_you_mean("zzz", ["b", "a"]) == "valid names: a, b"
    assert did_you_mean("zzz", []) == "there are no valid names here"
