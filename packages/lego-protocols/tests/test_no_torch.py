"""lego-protocols has no dependencies and never imports torch at run time."""

from importlib import metadata

import pytest

from lego.protocols.testing import modules_imported


def test_import_pulls_in_no_torch_or_numpy() -> None:
    imports = ["lego.protocols", "lego.protocols.testing"]
    unwanted = {"torch", "numpy", "regex", "tiktoken", "yaml", "rich"}
    assert modules_imported(imports, packages=unwanted) == []


def test_modules_imported_sees_what_an_import_loads() -> None:
    assert "json.decoder" in modules_imported(["json"], packages={"json"})
    with pytest.raises(AssertionError, match="No module named"):
        modules_imported(["no_such_module_here"], packages={"torch"})
    with pytest.raises(ValueError, match="not a module name"):
        modules_imported(["os; print(1)"], packages={"torch"})


def test_distribution_declares_no_dependencies() -> None:
    requires = metadata.requires("lego-protocols") or []
    runtime = [r for r in requires if "extra ==" not in r]
    assert runtime == []


def test_version_matches_metadata() -> None:
    import lego.protocols

    assert lego.protocols.__version__ == metadata.version("lego-protocols")


def test_namespace_package_has_no_init() -> None:
    import lego

    assert getattr(lego, "__file__", None) is None  # PEP 420 namespace
    assert len(list(lego.__path__)) >= 1
