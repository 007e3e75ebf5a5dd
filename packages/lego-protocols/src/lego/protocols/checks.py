"""Scalar checks: the one place that says "must be an int >= 1" or "must lie in [0, 1)".

Every brick checks the values it is given at its boundaries (constructors, config
``validate()`` methods, file loads, command lines) with these functions, so a wrong value
always reads the same way and always is a [`ConfigError`][lego.protocols.ConfigError] naming
the argument (``key``), who checked it (``owner``) and what to do (``hint``):

    >>> check_int("n_heads", 0, minimum=1, owner="MLP")
    Traceback (most recent call last):
    ...
    lego.protocols.errors.ConfigError: MLP: n_heads must be at least 1, got 0
      where: key 'n_heads'
      what to do: pass an integer >= 1
    >>> check_float("top_p", 0.9, low=0.0, high=1.0, low_open=True)
    0.9
    >>> check_probability("dropout", 0.1)
    0.1

Booleans are never integers here (``True`` is refused where an ``int`` is expected), and
every float is finite unless ``finite=False``. The functions return the value (as ``float``
for the float checks), so a constructor can check and store in one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lego.protocols.errors import ConfigError, did_you_mean

__all__ = [
    "check_int",
    "check_float",
    "check_probability",
    "check_bool",
    "check_choice",
]


def _who(name: str, owner: str | None) -> str:
    return f"{owner}: {name}" if owner else name


def check_int(
    name: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    owner: str | None = None,
    hint: str | None = None,
) -> int:
    """Return ``value`` when it is an ``int`` (not a bool) in ``[minimum, maximum]``.

    Args:
        name: The argument's name, quoted in the message and stored as the error's ``key``.
        value: What the caller passed.
        minimum: The smallest valid value, or None for no lower bound.
        maximum: The largest valid value, or None for no upper bound.
        owner: Who checks (a class or command), prefixed to the message.
        hint: What to do; by default it states the valid range.

    Returns:
        ``value``.

    Raises:
        ConfigError: ``value`` is not an int, or lies outside the range.
    """
    if minimum is not None and maximum is not None:
        valid = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        valid = f"an integer >= {minimum}"
    elif maximum is not None:
        valid = f"an integer <= {maximum}"
    else:
        valid = "an integer"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{_who(name, owner)} must be an int, got {type(value).__name__} {value!r}",
            key=name,
            hint=hint or f"pass {valid}",
        )
    if minimum is not None and value < minimum:
        raise ConfigError(
            f"{_who(name, owner)} must be at least {minimum}, got {value}",
            key=name,
            hint=hint or f"pass {valid}",
        )
    if maximum is not None and value > maximum:
        raise ConfigError(
            f"{_who(name, owner)} must be at most {maximum}, got {value}",
            key=name,
            hint=hint or f"pass {valid}",
        )
    return value


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    owner: str | None = None,
    hint: str | None = None,
) -> float:
    """Return ``value`` as a float when it is a real number inside the given interval.

    Args:
        name: The argument's name (the error's ``key``).
        value: What the caller passed (an ``int`` or ``float``, not a bool).
        low: The lower bound, or None.
        high: The upper bound, or None.
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.
        finite: Refuse NaN and infinities.
        owner: Who checks, prefixed to the message.
        hint: What to do, shown in the error.

    Returns:
        ``float(value)``.

    Raises:
        ConfigError: Not a real number, not finite (when ``finite``), or outside the interval.
    """
    who = _who(name, owner)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{who} must be a number, got {type(value).__name__} {value!r}", key=name, hint=hint
        )
    number = float(value)
    if math.isnan(number) or (finite and math.isinf(number)):
        raise ConfigError(f"{who} must be a finite number, got {number}", key=name, hint=hint)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        if high is None:
            interval = f"{'>' if low_open else '>='} {low}"
        elif low is None:
            interval = f"{'<' if high_open else '<='} {high}"
        else:
            interval = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(
            f"{who} must be {interval}, got {number}",
            key=name,
            hint=hint or f"pass a number {interval}",
        )
    return number


def check_probability(
    name: str,
    value: object,
    *,
    include_one: bool = False,
    owner: str | None = None,
    hint: str | None = None,
) -> float:
    """Return ``value`` as a float when it is a probability: in ``[0, 1)`` or ``[0, 1]``.

    Args:
        name: The argument's name (the error's ``key``).
        value: What the caller passed.
        include_one: Accept 1.0 (a mass such as ``top_p``); a dropout rate excludes it.
        owner: Who checks, prefixed to the message.
        hint: What to do, shown in the error.

    Returns:
        ``float(value)``.

    Raises:
        ConfigError: Not a number in the interval.
    """
    return check_float(
        name, value, low=0.0, high=1.0, high_open=not include_one, owner=owner, hint=hint
    )


def check_bool(name: str, value: object, *, owner: str | None = None) -> bool:
    """Return ``value`` when it is ``True`` or ``False`` (not 0, 1 or a string).

    Args:
        name: The argument's name (the error's ``key``).
        value: What the caller passed.
        owner: Who checks, prefixed to the message.

    Returns:
        ``value``.

    Raises:
        ConfigError: Anything but a bool.
    """
    if value is True or value is False:
        return bool(value)
    raise ConfigError(
        f"{_who(name, owner)} must be True or False, got {type(value).__name__} {value!r}",
        key=name,
    )


def check_choice(
    name: str, value: object, choices: Iterable[str], *, owner: str | None = None
) -> str:
    """Return ``value`` when it is one of ``choices``; otherwise suggest the closest.

    Args:
        name: The argument's name (the error's ``key``).
        value: What the caller passed.
        choices: The valid names.
        owner: Who checks, prefixed to the message.

    Returns:
        ``value``.

    Raises:
        ConfigError: ``value`` is not one of ``choices`` (with the closest valid names).
    """
    options = list(choices)
    if isinstance(value, str) and value in options:
        return value
    listed = ", ".join(repr(c) for c in options)
    raise ConfigError(
        f"{_who(name, owner)} must be one of {listed}, got {value!r}",
        key=name,
        hint=did_you_mean(value, options) if isinstance(value, str) else f"pass one of {listed}",
    )
