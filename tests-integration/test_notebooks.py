"""The tutorial notebooks in examples/notebooks/: stored clean, and each one runs.

The notebooks are stored with their outputs, which the docs site shows as they are
(mkdocs-jupyter with ``execute: false``), so the stored files are checked: valid nbformat,
every code cell executed once, top to bottom, and no error or warning in the outputs.

Each notebook is also executed fresh with nbclient, by a kernel that runs this interpreter
(an explicit kernel spec, not whatever ``python3`` kernel the machine has) with warnings as
errors like the rest of the suite; a cell that raises fails the test with its traceback.
It runs in a temporary copy of ``examples/`` (so relative paths such as
``../pipelines/tiny.yaml`` resolve as in the repository, and whatever the notebook writes
stays in the temporary folder); the executed copy is not written back.

After changing a notebook, store its outputs the same way (from the repository root)::

    python tests-integration/test_notebooks.py [examples/notebooks/NAME.ipynb ...]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted((EXAMPLES / "notebooks").glob("*.ipynb"))
IDS = [path.stem for path in NOTEBOOKS]
KERNEL = "lego-notebook-test"
CELL_TIMEOUT_S = 300


@contextmanager
def kernel_spec(folder: Path) -> Iterator[None]:
    """Make ``KERNEL`` this interpreter, with warnings as errors, while the block runs."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    kernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
        "env": {"PYTHONWARNINGS": "error", "PYTHONIOENCODING": "utf-8"},
    }
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")
    before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(folder)  # searched before the machine's kernel specs
    try:
        yield
    finally:
        if before is None:
            del os.environ["JUPYTER_PATH"]
        else:
            os.environ["JUPYTER_PATH"] = before


def execute(path: Path, folder: Path) -> tuple[Any, float]:
    """Run the notebook ``path`` in a copy of examples/ under ``folder``.

    Returns:
        The executed notebook and the seconds it took.

    Raises:
        nbclient.exceptions.CellExecutionError: A cell raised (warnings included).
    """
    examples = folder / "examples"
    shutil.copytree(EXAMPLES, examples, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        record_timing=False,
        shutdown_kernel="immediate",  # the notebook is done: no graceful shutdown to log
        resources={"metadata": {"path": str(examples / "notebooks")}},
    )
    with kernel_spec(folder / "jupyter"):
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    return notebook, seconds


def problems(notebook: Any) -> list[str]:
    """Error outputs and warnings printed to stderr, one line each."""
    found = []
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code, 1):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found.append(f"code cell {number}: {output.ename}: {output.evalue}")
            elif output.get("name") == "stderr" and "Warning" in output.text:
                found.append(f"code cell {number} printed a warning: {output.text.strip()}")
    return found


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, f"no notebooks found in {EXAMPLES / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_clean(path: Path) -> None:
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4, f"{path.name}: nbformat {notebook.nbformat}, expected 4"
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", path.name
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts}: store it executed once, top to bottom, "
        "with `python tests-integration/test_notebooks.py`"
    )
    assert not problems(notebook), f"{path.name} stores: " + "; ".join(problems(notebook))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    notebook, seconds = execute(path, tmp_path)  # raises on the first failing cell
    print(f"{path.name}: executed in {seconds:.1f} s")
    assert not problems(notebook), f"{path.name}: " + "; ".join(problems(notebook))


def main(argv: list[str]) -> int:
    """Execute the notebooks given (default: all) as the test does, and store the outputs."""
    for name in argv or [str(path) for path in NOTEBOOKS]:
        path = Path(name).resolve()
        with tempfile.TemporaryDirectory() as folder:
            notebook, seconds = execute(path, Path(folder))
        if problems(notebook):
            print(f"{path.name}: not stored: " + "; ".join(problems(notebook)))
            return 1
        nbformat.write(notebook, path)
        print(f"{path.name}: executed in {seconds:.1f} s, outputs stored")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
