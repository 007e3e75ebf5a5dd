from __future__ import annotations

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from lego.protocols import ConfigError
from lego.tokenize.interop.hf_regex import from_onig, to_onig
from lego.tokenize.patterns import PATTERNS


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_builtin_patterns_round_trip_exactly(name: str) -> None:
    pattern = PATTERNS[name]
    assert from_onig(to_onig(pattern)) == pattern


def test_gpt4_pattern_in_onig_form() -> None:
    onig = to_onig(PATTERNS["gpt4"])
    assert r"(?>\p{N}{1,3})" in onig
    assert r"\p{N}{1,3}+" not in onig
    assert onig.count(r"\z") == 1
    assert "$" not in onig


@pytest.mark.parametrize(
    ("pattern", "onig"),
    [
        (r"\p{N}{1,3}+", r"(?>\p{N}{1,3})"),
        (r"(ab){2}+c", r"(?>(ab){2})c"),
        (r"(?i:a|b){1,}+", r"(?>(?i:a|b){1,})"),
        (r"[^\]\[x]{2,}+", r"(?>[^\]\[x]{2,})"),
        (r"x{,2}+|y", r"(?>x{,2})|y"),
        (r"\d{3}", r"\d{3}"),
        (r"\{1,2}+", r"\{1,2}+"),  # an escaped brace is a literal, not an interval
        (r"a$|^b", r"a\z|\Ab"),
        (r"[$^]\$", r"[$^]\$"),  # inside a class and escaped: literals
        (r"\s++$|\s+(?!\S)", r"\s++\z|\s+(?!\S)"),
        (r"[[:alpha:]]{2}+", r"(?>[[:alpha:]]{2})"),
    ],
)
def test_to_onig(pattern: str, onig: str) -> None:
    assert to_onig(pattern) == onig
    assert from_onig(onig) == pattern


@pytest.mark.parametrize(
    ("onig", "meaning"),
    [
        (r"\p{N}{1,3}+", r"(?:\p{N}{1,3})+"),  # Ruby: a repeated interval
        (r"a$", r"a(?m:$)"),  # Ruby: end of line
        (r"^a", r"(?m:^)a"),
        (r"(?>ab|c)", r"(?>ab|c)"),  # a general atomic group stays
    ],
)
def test_from_onig_reads_ruby_meaning(onig: str, meaning: str) -> None:
    assert from_onig(onig) == meaning


def test_unclosed_class_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unclosed character class"):
        to_onig(r"[abc")


@given(st.text(alphabet="ab1 \n", max_size=30))
def test_translated_patterns_split_alike(text: str) -> None:
    # The atomic-group form splits like the possessive interval (in the regex module).
    pattern = r"\d{1,3}+|[ab]{2}+|\s++$|\s+(?!\S)|\s|[ab]"
    onig_as_python = to_onig(pattern).replace(r"\z", r"\Z").replace(r"\A", "^")
    assert regex.findall(onig_as_python, text) == regex.findall(pattern, text)
