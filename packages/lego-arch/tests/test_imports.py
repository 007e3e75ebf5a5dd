"""Import hygiene: ``import lego.arch`` stays light."""

from __future__ import annotations

from lego.protocols.testing import modules_imported


def test_import_does_not_load_reference_libraries_or_rendering() -> None:
    loaded = modules_imported(["lego.arch"], packages={"transformers", "rich", "tokenizers"})
    assert loaded == []


def test_public_names_are_documented() -> None:
    import lego.arch

    for name in lego.arch.__all__:
        if name.startswith("__") or name.isupper():
            continue
        obj = getattr(lego.arch, name)
        assert getattr(obj, "__doc__", None), name
