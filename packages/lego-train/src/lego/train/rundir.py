"""The run directory's guard: one writer at a time, and no run destroyed by a new one.

A training run's ``out_dir`` is written by one process at a time: the
[`Trainer`][lego.train.trainer.Trainer] holds a
[`FolderLock`][lego.protocols.FolderLock] (``out_dir/.lego.lock``, naming its pid and host)
while it trains, so a second writer gets one clear [`ConfigError`][lego.protocols.ConfigError].
Under ``torchrun`` the lock names the launcher's run id (``TORCHELASTIC_RUN_ID``), so the
restarted processes of an elastic job take over the lock of their killed predecessors, on
any machine.

[`check_run_dir()`][lego.train.rundir.check_run_dir] refuses, before anything is written,
an ``out_dir`` that is a file, and a fresh run (``resume=""``) into a folder that already
holds a run: running the same command twice never replaces a finished run's checkpoints,
``latest`` or ``metrics.jsonl``. The message says what to do: ``resume=auto`` to continue
it, another ``out_dir``, or ``overwrite=true`` to replace it
([`clear_run()`][lego.train.rundir.clear_run] deletes the old run when training starts).

    >>> import tempfile
    >>> from lego.train import TrainConfig
    >>> folder = tempfile.mkdtemp()
    >>> check_run_dir(TrainConfig(out_dir=folder))  # empty: fine
    >>> _ = (Path(folder) / "metrics.jsonl").write_text("{}")
    >>> check_run_dir(TrainConfig(out_dir=folder))
    Traceback (most recent call last):
    ...
    lego.protocols.errors.ConfigError: out_dir already holds a training run (metrics.jsonl)...
    >>> check_run_dir(TrainConfig(out_dir=folder, resume="auto"))  # continue it: fine
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lego.protocols import ConfigError, FolderLock, check_output_path
from lego.protocols.layout import CHECKPOINTS_DIR, LATEST_FILE
from lego.train.config import TrainConfig

__all__ = ["RUN_WHAT", "run_lock", "run_contents", "check_run_dir", "clear_run"]

RUN_WHAT = "training run"
"""What the lock and the messages call a run directory."""

_METRICS = "metrics.jsonl"
_TENSORBOARD = "tensorboard"


def run_lock(run_dir: str | os.PathLike[str]) -> FolderLock:
    """The lock of a run directory (not yet acquired).

    Under ``torchrun`` it names the launcher's run id, so that an elastic restart takes over
    the lock a killed process left, whichever machine it ran on.

    Args:
        run_dir: The run directory.

    Returns:
        The [`FolderLock`][lego.protocols.FolderLock].
    """
    job = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return FolderLock(run_dir, what=RUN_WHAT, job=job if job not in ("", "none") else None)


def run_contents(run_dir: str | os.PathLike[str]) -> list[str]:
    """What of a training run a folder holds.

    Args:
        run_dir: The folder.

    Returns:
        Short descriptions (``"checkpoints/latest"``, ``"2 checkpoints"``,
        ``"metrics.jsonl"``); empty when the folder holds no run (or does not exist).
    """
    folder = Path(run_dir)
    found = []
    checkpoints = folder / CHECKPOINTS_DIR
    if os.path.lexists(checkpoints / LATEST_FILE):
        found.append(f"{CHECKPOINTS_DIR}/{LATEST_FILE}")
    if checkpoints.is_dir():
        steps = [p for p in checkpoints.iterdir() if p.name.startswith("step-") and p.is_dir()]
        if steps:
            found.append(f"{len(steps)} checkpoint{'s' if len(steps) > 1 else ''}")
    metrics = folder / _METRICS
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(_METRICS)
    return found


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_run_dir(config: TrainConfig) -> None:
    """Check ``out_dir`` before anything is written (rank 0 calls it; nothing is written).

    Args:
        config: The run's configuration.

    Raises:
        ConfigError: ``out_dir`` is an existing file; or it holds a run and the
            configuration neither continues it (``resume=auto``, ``latest`` or one of its
            own checkpoints) nor replaces it (``overwrite=true``).
    """
    folder = check_output_path(
        config.out_dir, what="run directory (out_dir)", key="out_dir", kind="folder"
    )
    held = run_contents(folder)
    if not held or config.overwrite or config.resume in ("auto", "latest"):
        return
    what = ", ".join(held)
    if config.resume:
        if _inside(Path(config.resume), folder):
            return  # rewinding the run to one of its own checkpoints
        raise ConfigError(
            f"out_dir already holds a {RUN_WHAT} ({what}); resuming {config.resume} into "
            "it would mix two runs",
            path=folder,
            key="out_dir",
            hint="choose a new out_dir to continue that checkpoint in, or overwrite=true "
            "to replace the run in out_dir",
        )
    restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0")
    hint = (
        "pass resume=auto to continue it (the setting for torchrun --max-restarts), a new "
        "out_dir, or overwrite=true to replace it"
        if restarted
        else "pass resume=auto to continue it, a new out_dir for a new run, or "
        "overwrite=true to replace it"
    )
    raise ConfigError(
        f"out_dir already holds a {RUN_WHAT} ({what}); a fresh run would replace it",
        path=folder,
        key="out_dir",
        hint=hint,
    )


def clear_run(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete a run's checkpoints, metrics log and TensorBoard files (``overwrite=true``).

    Other files in the folder (a pipeline's report, the user's notes) are left alone.

    Args:
        run_dir: The run directory (locked by the caller).

    Returns:
        The paths deleted.
    """
    folder = Path(run_dir)
    removed = []
    for name in (CHECKPOINTS_DIR, _METRICS, _TENSORBOARD):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed
