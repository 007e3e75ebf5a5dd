from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lego.protocols import FormatError
from lego.tokenize.byte_level import bytes_to_unicode, str_to_token, token_to_str, unicode_to_bytes


def test_table_is_gpt2s_bijection() -> None:
    table = bytes_to_unicode()
    assert len(table) == 256
    assert len(set(table.values())) == 256
    assert table[ord("!")] == "!"
    assert table[ord(" ")] == "Ġ"  # GPT-2's space
    assert table[ord("\n")] == "Ċ"
    assert table[0] == "Ā"
    assert all(char.isprintable() for char in table.values())
    assert unicode_to_bytes() == {v: k for k, v in table.items()}


@given(st.binary(min_size=1, max_size=64))
def test_round_trip(token: bytes) -> None:
    text = token_to_str(token)
    assert len(text) == len(token)
    assert str_to_token(text) == token


def test_foreign_character_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="U\\+0020") as info:
        str_to_token("a b", key="merges[3]")
    assert info.value.key == "merges[3]"
