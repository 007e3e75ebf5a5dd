from __future__ import annotations

import pytest
import regex

from lego.protocols import ConfigError
from lego.tokenize.patterns import (
    GPT2_PATTERN,
    GPT4_PATTERN,
    LLAMA3_PATTERN,
    O200K_PATTERN,
    PATTERNS,
    compile_pattern,
    pattern_name,
    resolve_pattern,
)


def test_named_patterns() -> None:
    assert set(PATTERNS) == {"gpt2", "gpt4", "o200k", "llama3"}
    assert resolve_pattern("gpt4") == GPT4_PATTERN
    assert resolve_pattern("GPT2") == GPT2_PATTERN
    assert resolve_pattern("o200k") == O200K_PATTERN
    assert resolve_pattern("llama3") == LLAMA3_PATTERN
    for name, pattern in PATTERNS.items():
        assert pattern_name(pattern) == name
    assert pattern_name(r"\w+") is None


def test_patterns_split_as_documented() -> None:
    text = "Hello world's 12345 numbers!!\n\n  x"
    assert regex.findall(GPT2_PATTERN, text) == [
        "Hello",
        " world",
        "'s",
        " 12345",
        " numbers",
        "!!",
        "\n\n ",
        " x",
    ]
    assert regex.findall(GPT4_PATTERN, text) == [
        "Hello",
        " world",
        "'s",
        " ",
        "123",
        "45",
        " numbers",
        "!!\n\n",
        " ",
        " x",
    ]


def test_custom_regex_is_kept() -> None:
    assert resolve_pattern(r"\w+|\s+|[^\w\s]+") == r"\w+|\s+|[^\w\s]+"


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ConfigError, match="unknown split pattern 'gpt-4'") as info:
        resolve_pattern("gpt-4")
    assert info.value.key == "pattern"
    assert "gpt4" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="llama3"):
        resolve_pattern("lama3")


@pytest.mark.parametrize("bad", ["(unclosed", "[a-", "x{2,1}"])
def test_invalid_regex_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="does not compile"):
        resolve_pattern(bad)


def test_pattern_matching_empty_is_refused() -> None:
    with pytest.raises(ConfigError, match="empty string"):
        compile_pattern(r"\w*")
    with pytest.raises(ConfigError):
        resolve_pattern("")
