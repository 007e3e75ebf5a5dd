import math

import pytest

from lego.protocols import (
    ConfigError,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_probability,
)


def test_check_int_accepts_and_returns() -> None:
    assert check_int("n", 3, minimum=1, maximum=3) == 3


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_check_int_refuses_non_ints(value: object) -> None:
    with pytest.raises(ConfigError, match="must be an int") as info:
        check_int("n", value, owner="Thing")
    assert info.value.key == "n"
    assert str(info.value).startswith("Thing: n")


def test_check_int_bounds_message_and_hint() -> None:
    with pytest.raises(ConfigError, match="at least 1, got 0") as info:
        check_int("n", 0, minimum=1)
    assert info.value.hint == "pass an integer >= 1"
    with pytest.raises(ConfigError, match="at most 4, got 5") as info:
        check_int("n", 5, minimum=1, maximum=4, hint="fewer")
    assert info.value.hint == "fewer"


def test_check_float_converts_ints() -> None:
    value = check_float("lr", 1, low=0.0, low_open=True)
    assert value == 1.0
    assert isinstance(value, float)


@pytest.mark.parametrize(
    ("kwargs", "value", "phrase"),
    [
        ({"low": 0.0, "low_open": True}, 0.0, "must be > 0.0"),
        ({"low": 0.0}, -1.0, "must be >= 0.0"),
        ({"high": 1.0, "high_open": True}, 1.0, "must be < 1.0"),
        ({"low": 0.0, "high": 1.0, "low_open": True}, 0.0, "must be in (0.0, 1.0]"),
        ({}, math.nan, "finite"),
        ({}, math.inf, "finite"),
    ],
)
def test_check_float_intervals(kwargs: dict[str, object], value: float, phrase: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_float("x", value, **kwargs)  # type: ignore[arg-type]
    assert phrase in str(info.value)


def test_check_float_infinite_allowed_when_asked() -> None:
    assert check_float("x", math.inf, finite=False) == math.inf
    with pytest.raises(ConfigError):
        check_float("x", math.nan, finite=False)


@pytest.mark.parametrize("value", [True, "0.5", None])
def test_check_float_refuses_non_numbers(value: object) -> None:
    with pytest.raises(ConfigError, match="must be a number"):
        check_float("x", value)


def test_check_probability() -> None:
    assert check_probability("p", 0) == 0.0
    with pytest.raises(ConfigError, match=r"\[0.0, 1.0\)"):
        check_probability("dropout", 1.0)
    assert check_probability("top_p", 1.0, include_one=True) == 1.0


def test_check_bool() -> None:
    assert check_bool("flag", False) is False
    with pytest.raises(ConfigError, match="True or False"):
        check_bool("flag", 1)


def test_check_choice_suggests() -> None:
    assert check_choice("norm", "rmsnorm", ["layernorm", "rmsnorm"]) == "rmsnorm"
    with pytest.raises(ConfigError) as info:
        check_choice("norm", "rmsnrm", ["layernorm", "rmsnorm"], owner="DecoderConfig")
    assert info.value.hint == "did you mean 'rmsnorm'?"
    with pytest.raises(ConfigError, match="must be one of"):
        check_choice("norm", 3, ["a"])
