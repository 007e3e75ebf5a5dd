"""The prepared-data cache: leftovers of killed processes, damaged entries (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lego.protocols import temporary_name
from lego.recipes.datacache import _remove_dead_temporaries


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(done.stdout)


def test_temporary_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    mine = temporary_name(tmp_path / "python-stdlib-abc")  # this live process's
    theirs = Path(str(mine).replace(f"-{os.getpid()}-", f"-{dead}-"))
    legacy = tmp_path / f".tmp-python-stdlib-abc-{dead}"  # the names of earlier versions
    entry = tmp_path / "python-stdlib-abc"  # a finished entry
    for folder in (mine, theirs, legacy, entry):
        folder.mkdir()
        (folder / "train.bin").write_bytes(b"x")
    _remove_dead_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, entry.name])
