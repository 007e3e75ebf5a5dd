"""Optional dependencies: import one, or say which package or extra to install.

Some features need a third-party library that a brick declares only as an extra
(matplotlib for plots, PyYAML for config files, rich for progress bars, tensorboard).
[`import_optional()`][lego.protocols.optional.import_optional] is the one way they are
imported, so a missing one is always the same kind of error: a
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
        module: The module to import, e.g. ``"matplotlib.figure"`` or ``"yaml"``.
        needed_by: Who needs it, for the message (``"lego-train plot"``).
        install: The requirement that provides it, e.g. ``'"lego-train[plot]"'`` or
            ``"matplotlib"``; the hint reads ``pip install <install>``.

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
