from __future__ import annotations

import sys

import pytest

from lego.protocols import ConfigError, import_optional


def test_an_installed_module_is_returned() -> None:
    assert import_optional("json", needed_by="x", install="json") is sys.modules["json"]


def test_a_missing_module_says_who_needs_it_and_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ConfigError) as info:
        import_optional("matplotlib.figure", needed_by="plotting", install='"lego-x[plot]"')
    assert "plotting needs matplotlib.figure" in str(info.value)
    assert info.value.hint == 'pip install "lego-x[plot]"'
    assert info.value.key == "matplotlib.figure"
    assert isinstance(info.value.__cause__, ImportError)
