"""Argument checks shared by the processors, the configuration and the engine."""

from __future__ import annotations

import math

from lego.protocols import ConfigError


def check_int(name: str, value: object, *, minimum: int, owner: str) -> int:
    """Return ``value`` when it is an ``int`` (not a bool) of at least ``minimum``.

    Raises:
        ConfigError: Otherwise, naming ``owner`` and the argument.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}", key=name
        )
    if value < minimum:
        raise ConfigError(
            f"{owner}: {name} must be at least {minimum}, got {value}",
            key=name,
            hint=f"pass {name} >= {minimum}",
        )
    return value


def check_float(
    name: str,
    value: object,
    *,
    owner: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str | None = None,
) -> float:
    """Return ``value`` as a float when it is a finite real number inside the given interval.

    Args:
        name: The argument's name (for the error).
        value: The value to check.
        owner: Who checks (for the error).
        low: The lower bound, or None.
        high: The upper bound, or None.
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.
        hint: What to do, shown in the error.

    Raises:
        ConfigError: Not a real number, not finite, or outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}", key=name
        )
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{owner}: {name} must be finite, got {number}", key=name, hint=hint)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = (
            f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        )
        raise ConfigError(
            f"{owner}: {name} must lie in {interval}, got {number}", key=name, hint=hint
        )
    return number
