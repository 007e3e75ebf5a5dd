"""lego-protocols has no dependencies and never imports torch at run time."""

import json
import subprocess
import sys
from importlib import metadata


def test_import_pulls_in_no_torch_or_numpy() -> None:
    code = (
        "import json, sys; import lego.protocols, lego.protocols.testing; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'numpy', 'regex', 'tiktoken', 'yaml', 'rich'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out) == []


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
