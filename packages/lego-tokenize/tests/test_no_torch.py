"""lego-tokenize never imports torch or numpy (nor rich until a progress bar is shown)."""

from lego.protocols.testing import modules_imported


def test_import_pulls_in_no_torch_or_numpy() -> None:
    imports = ["lego.tokenize", "lego.tokenize.training"]
    assert modules_imported(imports, packages={"torch", "numpy", "rich"}) == []
