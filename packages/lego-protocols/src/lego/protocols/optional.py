"""Optional dependencies: import one, or say which package or extra to install.

Command-line recipes compose sibling bricks and plotting libraries that a brick declares
only as extras (DESIGN §2). [`import_optional()`][lego.protocols.optional.import_optional]
is the one way they are imported, so a missing one is always the same kind of error: a
[`ConfigError`][lego.protocols.ConfigError] that names who needs it and the ``pip install``
that provides it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lego.protocols.errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, *, needed_by: str, install: str) -> ModuleType:
    """Import ``module``, or raise a ConfigError that says how to install it.

    Args:
        module: The module to import, e.g. ``"lego.arch"`` or ``"matplotlib.figure"``.
        needed_by: Who needs it, for the message (``"the pretrain recipe"``).
        install: The requirement that provides it, e.g. ``'"lego-train[recipes]"'`` or
            ``"lego-arch"``; the hint reads ``pip install <install>``.

    Returns:
        The module.

    Raises:
        ConfigError: When the module (or one of its own imports) is missing.

    Example:
        >>> import_optional("json", needed_by="this example", install="json").dumps([])
        '[]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{needed_by} needs {module}, which cannot be imported ({exc})",
            key=module,
            hint=f"pip install {install}",
        ) from exc
