import pytest

from lego.protocols.testing import package_modules, run_doctests


@pytest.mark.parametrize("module", package_modules("lego.eval"))
def test_doctests(module: str) -> None:
    run_doctests(module)
