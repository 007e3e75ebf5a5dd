"""Small run-time checks of argument types (values typed ``object`` on purpose)."""

from __future__ import annotations

from typing import TypeGuard

__all__ = ["is_int"]


def is_int(value: object, *, minimum: int | None = None) -> TypeGuard[int]:
    """True for an ``int`` that is not a ``bool`` (and at least ``minimum`` when given).

    Args:
        value: Anything.
        minimum: The smallest accepted value.

    Returns:
        Whether ``value`` is such an integer.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return minimum is None or value >= minimum
