"""Tests for tools/bricks.py and tools/check_layout.py on small fake monorepos."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import bricks
import check_layout
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

REPO = Path(__file__).resolve().parents[1]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def brick_dir(root: Path, short: str) -> Path:
    return root / "packages" / f"lego-{short}"


def one_problem(root: Path, *needles: str) -> str:
    problems = check_layout.check(root)
    assert len(problems) == 1, problems
    for needle in needles:
        assert needle in problems[0]
    return problems[0]


# --- bricks.py --------------------------------------------------------------------------------


def test_discover_reads_every_brick(repo: Path) -> None:
    found = bricks.discover(repo)
    assert list(found) == ["lego-layers", "lego-protocols", "lego-tokenize"]
    layers = found["lego-layers"]
    assert layers.name == "lego-layers"
    assert layers.module == "lego.layers"
    assert layers.path == brick_dir(repo, "layers")
    assert layers.version == "0.3.0"
    assert layers.dependencies == ["lego-protocols>=0.1,<0.2", "numpy>=1.26"]
    assert layers.optional_dependencies == {"tok": ["lego-tokenize>=0.1,<0.2"]}
    assert [req.name for req in layers.siblings] == ["lego-protocols"]
    assert [req.name for req in layers.optional_siblings["tok"]] == ["lego-tokenize"]
    assert layers.test_requirements == ["pytest>=8", "hypothesis>=6"]
    assert found["lego-protocols"].siblings == []
    assert bricks.find(found, "layers") is layers
    assert bricks.find(found, "Lego_Layers") is layers


def test_closure_is_dependency_first(repo: Path, make_brick: Callable[..., Path]) -> None:
    make_brick(
        repo, "arch", dependencies=("lego-layers>=0.3,<0.4", "lego-tokenize>=0.1,<0.2", "torch")
    )
    found = bricks.discover(repo)
    names = [brick.short for brick in bricks.closure(found, "arch")]
    assert names == ["protocols", "layers", "tokenize", "arch"]
    assert [brick.short for brick in bricks.closure(found, "lego-layers")] == [
        "protocols",
        "layers",
    ]  # the optional extra is not followed
    assert [brick.short for brick in bricks.closure(found, "protocols")] == ["protocols"]


def test_test_closure_installs_test_only_siblings_from_their_folders(
    repo: Path, make_brick: Callable[..., Path]
) -> None:
    make_brick(
        repo,
        "serve",
        dependencies=("lego-protocols>=0.1,<0.2",),
        groups='test = ["pytest>=8", "lego-layers>=0.3,<0.4"]',
    )
    found = bricks.discover(repo)
    order, others = bricks.test_closure(found, "serve")
    # the brick's own closure, then the test-only sibling with what it needs
    assert [brick.short for brick in order] == ["protocols", "serve", "layers"]
    assert others == ["pytest>=8"]
    order, others = bricks.test_closure(found, "layers")
    assert [brick.short for brick in order] == ["protocols", "layers"]
    assert others == ["pytest>=8", "hypothesis>=6"]


def test_closure_rejects_unknown_bricks_and_cycles(repo: Path) -> None:
    found = bricks.discover(repo)
    with pytest.raises(bricks.BrickError, match="unknown brick 'nope'"):
        bricks.closure(found, "nope")
    edit(
        brick_dir(repo, "protocols") / "pyproject.toml",
        "dependencies = [",
        'dependencies = [\n  "lego-tokenize",',
    )
    with pytest.raises(bricks.BrickError, match="dependency cycle"):
        bricks.closure(bricks.discover(repo), "tokenize")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "lego-tokenize"', 'name = "tokenize"', 'must be "lego-<short>"'),
        ('name = "lego-tokenize"', "", "name is missing"),
        ("dynamic = [", "dynamic = [[", "invalid TOML"),
        ('"lego-protocols>=0.1,<0.2"', '"lego-protocols>=>0.1"', "invalid requirement"),
        ('test = ["pytest>=8"]', 'test = [{ include-group = "lint" }]', "'lint' is included"),
        ('test = ["pytest>=8"]', 'test = [{ include-group = "test" }]', "cycle"),
    ],
)
def test_discover_rejects_bad_metadata(repo: Path, old: str, new: str, message: str) -> None:
    file = brick_dir(repo, "tokenize") / "pyproject.toml"
    edit(file, old, new)
    with pytest.raises(bricks.BrickError, match=message) as info:
        bricks.discover(repo)
    assert info.value.path == file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__version__ = 1\n", "string literal"),
        ('__version__ = "one"\n', "not a valid version"),
        ('VERSION = "0.1.0"\n', "no top-level __version__"),
        ("__version__ = (\n", "invalid Python"),
    ],
)
def test_discover_rejects_bad_versions(repo: Path, text: str, message: str) -> None:
    about = brick_dir(repo, "tokenize") / "src/lego/tokenize/__about__.py"
    about.write_text(text)
    with pytest.raises(bricks.BrickError, match=message):
        bricks.discover(repo)


def test_version_may_be_annotated(repo: Path) -> None:
    about = brick_dir(repo, "tokenize") / "src/lego/tokenize/__about__.py"
    about.write_text('__version__: str = "0.4.0"\n')
    assert bricks.discover(repo)["lego-tokenize"].version == "0.4.0"


# --- check_layout.py: a clean repo and the command line -------------------------------------


def test_valid_repo_has_no_problems(repo: Path) -> None:
    assert check_layout.check(repo) == []


def test_main_exit_status(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_layout.main(["--root", str(repo)]) == 0
    assert capsys.readouterr().out == ""
    (brick_dir(repo, "layers") / "README.md").unlink()
    (repo / "docs/bricks/tokenize.md").unlink()
    assert check_layout.main(["--root", str(repo)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("packages/lego-layers/README.md: ")
    assert lines[1].startswith("docs/bricks/tokenize.md: ")


def test_no_bricks_is_a_problem(tmp_path: Path) -> None:
    assert check_layout.check(tmp_path) == ["packages/: no bricks found"]


def test_folder_without_pyproject(repo: Path) -> None:
    (repo / "packages/lego-stray").mkdir()
    one_problem(repo, "packages/lego-stray", "no pyproject.toml")


def test_unreadable_metadata_is_one_problem(repo: Path) -> None:
    (brick_dir(repo, "tokenize") / "src/lego/tokenize/__about__.py").unlink()
    one_problem(repo, "packages/lego-tokenize/src/lego/tokenize/__about__.py", "cannot read")


# --- (a) the namespace --------------------------------------------------------------------


def test_a_namespace_init_is_forbidden(repo: Path) -> None:
    (brick_dir(repo, "tokenize") / "src/lego/__init__.py").write_text("")
    one_problem(repo, "packages/lego-tokenize/src/lego/__init__.py", "PEP 420")


# --- (b) brick structure ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "needle"),
    [
        ("src/lego/tokenize/py.typed", "src/lego/tokenize/py.typed: missing file"),
        ("README.md", "README.md: missing file"),
        ("CHANGELOG.md", "CHANGELOG.md: missing file"),
        ("tests", "tests: missing folder"),
    ],
)
def test_b_required_files(repo: Path, missing: str, needle: str) -> None:
    path = brick_dir(repo, "tokenize") / missing
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    one_problem(repo, f"packages/lego-tokenize/{needle}")


def test_b_folder_named_after_distribution(repo: Path) -> None:
    brick_dir(repo, "tokenize").rename(repo / "packages/tokenizers")
    one_problem(repo, "packages/tokenizers", "must be named lego-tokenize")


def test_b_distribution_name_written_canonically(repo: Path) -> None:
    edit(brick_dir(repo, "tokenize") / "pyproject.toml", '"lego-tokenize"', '"Lego_Tokenize"')
    one_problem(repo, "write the name as 'lego-tokenize'")


def test_b_src_lego_holds_only_the_brick(repo: Path) -> None:
    lego = brick_dir(repo, "tokenize") / "src/lego"
    (lego / "__pycache__").mkdir()
    assert check_layout.check(repo) == []
    (lego / "other").mkdir()
    one_problem(repo, "packages/lego-tokenize/src/lego", "found: other, tokenize")


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ('packages = ["src/lego"]', 'packages = ["src/lego/tokenize"]', "wheel] packages"),
        (
            'path = "src/lego/tokenize/__about__.py"',
            'path = "src/lego/__about__.py"',
            "version] path",
        ),
    ],
)
def test_b_hatch_settings(repo: Path, old: str, new: str, needle: str) -> None:
    edit(brick_dir(repo, "tokenize") / "pyproject.toml", old, new)
    one_problem(repo, "packages/lego-tokenize/pyproject.toml", needle)


# --- (c) sibling ranges -------------------------------------------------------------------


def test_c_dependency_range_must_admit_in_tree_version(repo: Path) -> None:
    edit(brick_dir(repo, "protocols") / "src/lego/protocols/__about__.py", "0.1.0", "0.2.0")
    problems = check_layout.check(repo)
    assert [p.split(":")[0] for p in problems] == [
        "packages/lego-layers/pyproject.toml",
        "packages/lego-tokenize/pyproject.toml",
    ]
    assert all("in-tree lego-protocols is 0.2.0; widen the range" in p for p in problems)


def test_c_optional_range_must_admit_in_tree_version(repo: Path) -> None:
    edit(brick_dir(repo, "tokenize") / "src/lego/tokenize/__about__.py", "0.1.0", "0.2.0")
    one_problem(repo, "packages/lego-layers/pyproject.toml", "optional-dependencies.tok")


def test_c_prereleases_are_admitted(repo: Path) -> None:
    edit(brick_dir(repo, "protocols") / "src/lego/protocols/__about__.py", "0.1.0", "0.1.1rc1")
    assert check_layout.check(repo) == []


def test_c_unknown_sibling(repo: Path) -> None:
    edit(
        brick_dir(repo, "tokenize") / "pyproject.toml",
        '"lego-protocols',
        '"lego-nothing>=1",\n  "lego-protocols',
    )
    one_problem(repo, "lego-nothing, which is no brick")


# --- (d) sibling imports ------------------------------------------------------------------

# lego-tokenize declares lego-protocols; lego-layers declares lego-protocols and has
# lego-tokenize in its `tok` extra.
IMPORTS = [
    ("tokenize", "import lego.protocols", True),
    ("tokenize", "from lego.protocols.errors import LegoError", True),
    ("tokenize", "import lego.layers", False),
    ("tokenize", "import lego.layers.attention as attention", False),
    ("tokenize", "from lego.layers import attention", False),
    ("tokenize", "from lego import layers", False),
    ("tokenize", "from lego import protocols, layers", False),
    ("tokenize", "from ... import layers", False),
    ("tokenize", "from .. import other", True),
    ("tokenize", "from . import other", True),
    ("tokenize", "try:\n    import lego.layers\nexcept ImportError:\n    pass", False),
    ("tokenize", "class C:\n    from lego import layers", False),
    ("tokenize", "def f():\n    import lego.layers", False),
    (
        "tokenize",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import lego.layers",
        True,
    ),
    ("tokenize", "import typing\nif typing.TYPE_CHECKING:\n    from lego.layers import x", True),
    ("tokenize", "if TYPE_CHECKING:\n    pass\nelse:\n    import lego.layers", False),
    ("tokenize", "def f():\n    if TYPE_CHECKING:\n        import lego.layers", True),
    ("tokenize", "import lego\nimport lego.nothing", True),
    ("layers", "from lego.tokenize import BPE", False),
    ("layers", "def f():\n    from lego.tokenize import BPE", True),
    ("layers", "class C:\n    async def f(self):\n        import lego.tokenize", True),
    ("layers", "def f():\n    import lego.protocols", True),
]


@pytest.mark.parametrize(("short", "code", "ok"), IMPORTS)
def test_d_sibling_imports(repo: Path, short: str, code: str, ok: bool) -> None:
    module = brick_dir(repo, short) / f"src/lego/{short}/sub/mod.py"
    module.parent.mkdir()
    module.write_text(textwrap.dedent(code) + "\n")
    if ok:
        assert check_layout.check(repo) == []
    else:
        one_problem(repo, f"packages/lego-{short}/src/lego/{short}/sub/mod.py:")


def test_d_relative_import_from_init(repo: Path) -> None:
    init = brick_dir(repo, "tokenize") / "src/lego/tokenize/__init__.py"
    init.write_text("from .. import layers\n")
    one_problem(repo, "src/lego/tokenize/__init__.py:1", "lego.layers at module level")


def test_d_syntax_error_is_reported(repo: Path) -> None:
    (brick_dir(repo, "layers") / "src/lego/layers/bad.py").write_text("def f(:\n")
    one_problem(repo, "packages/lego-layers/src/lego/layers/bad.py:1", "invalid Python")


# --- (e) no torch in lego-protocols and lego-tokenize -------------------------------------

TORCH = [
    ("import torch", False),
    ("import torch.nn as nn", False),
    ("from torch import Tensor", False),
    ("from torch.nn import functional", False),
    ("def f():\n    import torch", False),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch", True),
    ("import torchvision_like_name_is_not_torch", True),
]


@pytest.mark.parametrize("short", ["protocols", "tokenize"])
@pytest.mark.parametrize(("code", "ok"), TORCH)
def test_e_torch_free_bricks(repo: Path, short: str, code: str, ok: bool) -> None:
    (brick_dir(repo, short) / f"src/lego/{short}/t.py").write_text(code + "\n")
    if ok:
        assert check_layout.check(repo) == []
    else:
        one_problem(repo, f"src/lego/{short}/t.py:", f"lego-{short} must not import torch")


def test_e_other_bricks_may_import_torch(repo: Path) -> None:
    (brick_dir(repo, "layers") / "src/lego/layers/t.py").write_text("import torch\n")
    assert check_layout.check(repo) == []


# --- (f) docs pages -----------------------------------------------------------------------


def test_f_docs_page(repo: Path) -> None:
    (repo / "docs/bricks/layers.md").unlink()
    one_problem(repo, "docs/bricks/layers.md", "missing docs page for lego-layers")


# --- (g) the application: legollm composes the bricks, no brick depends on it --------------


def _with_application(repo: Path, make_brick: Callable[..., Path]) -> Path:
    return make_brick(
        repo,
        "",
        application=True,
        dependencies=("lego-protocols>=0.1,<0.2", "lego-layers>=0.3,<0.4"),
    )


def test_g_application_is_discovered_with_its_import_folder(
    repo: Path, make_brick: Callable[..., Path]
) -> None:
    _with_application(repo, make_brick)
    app = bricks.discover(repo)["legollm"]
    assert (app.short, app.import_name, app.module) == ("legollm", "recipes", "lego.recipes")
    assert app.is_application
    assert [req.name for req in app.siblings] == ["lego-protocols", "lego-layers"]
    assert check_layout.check(repo) == []


def test_g_application_may_import_the_bricks_it_declares(
    repo: Path, make_brick: Callable[..., Path]
) -> None:
    folder = _with_application(repo, make_brick)
    (folder / "src/lego/recipes/run.py").write_text("import lego.layers\nimport lego.protocols\n")
    assert check_layout.check(repo) == []


@pytest.mark.parametrize("table", ["dependencies", "optional"])
def test_g_no_brick_depends_on_the_application(
    repo: Path, make_brick: Callable[..., Path], table: str
) -> None:
    _with_application(repo, make_brick)
    if table == "dependencies":
        make_brick(repo, "peft", dependencies=("legollm>=0.1",))
    else:
        make_brick(repo, "peft", optional={"app": ["legollm>=0.1"]})
    one_problem(repo, "packages/lego-peft/pyproject.toml", "bricks never depend on the application")


def test_g_no_brick_imports_the_application(repo: Path, make_brick: Callable[..., Path]) -> None:
    _with_application(repo, make_brick)
    module = brick_dir(repo, "layers") / "src/lego/layers/uses_app.py"
    module.write_text("def f():\n    import lego.recipes\n")
    one_problem(repo, "src/lego/layers/uses_app.py:2", "lego.recipes", "legollm")


# --- the real repository ------------------------------------------------------------------


def test_real_repository_is_clean() -> None:
    assert check_layout.check(REPO) == []
