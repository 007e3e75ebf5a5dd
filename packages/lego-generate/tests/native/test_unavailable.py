"""NativeKernelsUnavailableWarning: once per reason, pointing at the caller's line."""

from __future__ import annotations

import warnings

import pytest

from lego.generate.native import NativeKernelsUnavailableWarning
from lego.generate.native.unavailable import warn_unavailable


@pytest.mark.usefixtures("fresh_warnings")
def test_each_reason_is_given_once_per_process() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_unavailable("reason one")
        warn_unavailable("reason one")
        warn_unavailable("reason two")
    assert [str(w.message).split(": ", 1)[1].split(";")[0] for w in caught] == [
        "reason one",
        "reason two",
    ]
    assert all(w.category is NativeKernelsUnavailableWarning for w in caught)
    assert all(w.filename == __file__ for w in caught)  # the caller's line, not ours
    text = str(caught[0].message)
    assert text.startswith("native_kernels=True, but the native CPU kernels cannot run")
    assert "PyTorch's kernels" in text
    assert "unset" in text


def test_the_warning_is_a_user_warning() -> None:
    assert issubclass(NativeKernelsUnavailableWarning, UserWarning)
