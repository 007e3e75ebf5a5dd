"""The warning for ``native_kernels=True`` that cannot be honoured, given once per reason.

``native_kernels`` has three values (in [`GenerationConfig`][lego.generate.GenerationConfig],
[`generate()`][lego.generate.generate] and [`stream()`][lego.generate.stream]): None, the
default, uses the kernels where they can run and otherwise falls back to PyTorch's without
a word; False turns them off; True asks for them, so where they cannot run (the reason from
[`native_status()`][lego.generate.native.native_status], a model not on the CPU or not in
fp32/bf16, a decode step of more than [`MAX_ROWS`][lego.generate.native.MAX_ROWS] rows) the
generation still runs, on PyTorch's kernels, and a
[`NativeKernelsUnavailableWarning`][lego.generate.native.NativeKernelsUnavailableWarning]
says why, once per process and reason.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from pathlib import Path

__all__ = ["NativeKernelsUnavailableWarning", "warn_unavailable"]

_warned: set[str] = set()
_lock = threading.Lock()
_INTERNAL = (
    str(Path(__file__).resolve().parents[1]) + os.sep,
    str(Path(contextlib.__file__).resolve()),
)
"""Frames in these files are lego.generate's own (and @contextmanager's): the warning points
at the first frame outside them, the user's call."""


class NativeKernelsUnavailableWarning(UserWarning):
    """``native_kernels=True`` was asked for, but the native CPU kernels cannot run here.

    The generation runs on PyTorch's kernels instead (same tokens, slower on the CPU). Leave
    ``native_kernels`` unset (None) to fall back without a warning, or set it to False.
    """


def _user_stacklevel() -> int:
    """``warnings.warn``'s stacklevel for the first caller outside lego.generate."""
    level, frame = 1, sys._getframe(1)  # the caller of this function is warnings.warn's level 1
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(
        _INTERNAL
    ):
        frame, level = frame.f_back, level + 1
    return level


def warn_unavailable(reason: str) -> None:
    """Warn that ``native_kernels=True`` cannot be honoured, unless this reason was given before.

    Args:
        reason: Why the kernels cannot run for this generation.
    """
    with _lock:
        if reason in _warned:
            return
        _warned.add(reason)
    warnings.warn(
        f"native_kernels=True, but the native CPU kernels cannot run: {reason}; this "
        "generation uses PyTorch's kernels (leave native_kernels unset to fall back without "
        "this warning)",
        NativeKernelsUnavailableWarning,
        stacklevel=_user_stacklevel(),
    )
