"""Checkpoint directories: atomic writes, ``latest``, keep-last-N, integrity and compatibility.

A checkpoint is a folder in ``RUN_DIR/checkpoints/`` (layout in
[`lego.protocols.layout`][lego.protocols.layout]):

```
step-00000100/
  model/                 config.json + model.safetensors (+ lego-tokenizer.json, tokenizer.json)
  optimizer.pt           optimizer state        (torch.save; loaded with weights_only=True)
  scheduler.pt           learning-rate scheduler state
  scaler.pt              fp16 GradScaler state (fp16-mixed only)
  rng.pt                 python / numpy / torch / CUDA generator states
  data.pt                the batch source's state_dict (its position)
  trainer_state.json     step, tokens, metrics, model signature, tokenizer hash, file hashes
```

It is written to ``.tmp-step-00000100`` and renamed when complete; ``latest`` is rewritten
atomically after the rename, so a kill at any moment leaves the previous checkpoint and
``latest`` intact. A save that fails (a full disk) removes its ``.tmp-`` folder; the
leftovers of a killed process are removed when the next run starts
([`CheckpointManager.remove_leftovers()`][lego.train.checkpoint.CheckpointManager.remove_leftovers]).
A folder is only ever renamed to ``step-N`` when complete, so
[`CheckpointManager.latest()`][lego.train.checkpoint.CheckpointManager.latest] also finds a
complete checkpoint newer than the one ``latest`` names (a disk that filled up between the
rename and the rewrite of ``latest``). ``trainer_state.json`` lists the size and SHA-256 of
every other file, so a tampered or truncated file is a
[`FormatError`][lego.protocols.FormatError] naming it. Every file gets the mode the umask
gives (``0o644`` under the usual ``022``; safetensors alone would write ``0o600``).

A disk that cannot take a write raises ``OSError`` here (``torch.save``'s own
``RuntimeError`` and safetensors' ``SafetensorError`` are turned back into the ``OSError``
behind them), so callers wrap saving in
[`lego.protocols.write_errors()`][lego.protocols.write_errors].
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from lego.protocols import (
    CompatibilityError,
    Config,
    ConfigError,
    FormatError,
    atomic_write_text,
    check_envelope,
    check_int,
    read_json,
)
from lego.protocols.layout import CHECKPOINTS_DIR, LATEST_FILE, checkpoint_name, read_latest

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "TRAINER_STATE_FILE",
    "TrainerStateFile",
    "CheckpointManager",
    "file_manifest",
    "verify_manifest",
    "torch_load",
    "torch_save",
    "model_signature",
    "check_compatible",
    "save_model_dir",
    "load_model_dir",
    "apply_umask",
]

CHECKPOINT_FORMAT = "lego-train-checkpoint"
CHECKPOINT_VERSION = 1
TRAINER_STATE_FILE = "trainer_state.json"
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True, kw_only=True)
class TrainerStateFile(Config):
    """``trainer_state.json``: what a checkpoint records besides its tensors.

    Written with ``to_dict()`` and read with ``Config.from_header``, so a damaged or foreign
    file is a [`FormatError`][lego.protocols.FormatError] naming the key.

    Attributes:
        format: Always ``"lego-train-checkpoint"``.
        version: The layout version (1).
        step: Optimizer steps taken.
        max_steps: Steps the run planned when it saved.
        budget_steps: The length ``time_budget_s`` gave the run (0: not sized by a budget).
        tokens_seen: Training tokens consumed over all ranks.
        skipped_steps: Steps skipped for a non-finite loss.
        metrics: The latest finite metrics.
        world_size: Processes that trained.
        strategy: ``single``, ``ddp`` or ``fsdp``.
        precision: The training precision.
        tokenizer_hash: Identifies the tokenizer (SHA-256 of its file), or None.
        model: The model signature (config and parameter shapes).
        config: The ``TrainConfig`` of the run, as a mapping.
        files: Size and SHA-256 of every other file of the checkpoint.
    """

    format: str = CHECKPOINT_FORMAT
    version: int = CHECKPOINT_VERSION
    step: int
    max_steps: int = 0
    budget_steps: int = 0
    tokens_seen: int
    skipped_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    world_size: int = 1
    strategy: str = "single"
    precision: str = "fp32"
    tokenizer_hash: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]]

    def validate(self) -> None:
        """Non-negative counts, at least one process."""
        super().validate()
        for name in ("step", "max_steps", "budget_steps", "tokens_seen", "skipped_steps"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("world_size", self.world_size, minimum=1)


_OLD_PREFIX = ".old-"
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``folder`` except ``trainer_state.json``.

    Args:
        folder: The checkpoint folder.

    Returns:
        ``{relative posix path: {"size": int, "sha256": str}}``, sorted by path.
    """
    manifest: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != TRAINER_STATE_FILE:
            rel = path.relative_to(folder).as_posix()
            manifest[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return manifest


def verify_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Check every listed file's presence, size and SHA-256.

    Args:
        folder: The checkpoint folder.
        manifest: From [`file_manifest()`][lego.train.checkpoint.file_manifest].

    Raises:
        FormatError: Naming the first file that is missing, truncated or altered.
    """
    for rel, entry in manifest.items():
        path = folder / rel
        if not path.is_file():
            raise FormatError(
                "a checkpoint file is missing",
                path=path,
                hint="the checkpoint is incomplete; resume from another one",
            )
        try:
            size, digest = int(entry["size"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(
                f"the file list of the checkpoint is malformed at {rel!r}",
                path=folder / TRAINER_STATE_FILE,
                key=f"files.{rel}",
            ) from None
        actual = path.stat().st_size
        if actual != size:
            raise FormatError(
                f"checkpoint file is truncated or extended: {actual} bytes, expected {size}",
                path=path,
                hint="the checkpoint is damaged; resume from another one",
            )
        if _sha256(path) != digest:
            raise FormatError(
                "checkpoint file was modified after it was written (SHA-256 mismatch)",
                path=path,
                hint="the checkpoint is damaged or tampered with; resume from another one",
            )


class _RecordingWriter:
    """A file for ``torch.save`` that keeps the ``OSError`` torch turns into a RuntimeError."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` of plain state (tensors, numbers, strings, containers).

    Args:
        obj: The state.
        path: The file.

    Raises:
        OSError: The disk is full or cannot be written (``ENOSPC``, ``EFBIG``, ...), not
            torch's ``RuntimeError`` ("unexpected pos ...") that hides it.
    """
    with open(path, "wb") as handle:
        writer = _RecordingWriter(handle)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@contextlib.contextmanager
def _rust_os_errors(path: Path) -> Any:
    """Turn safetensors' ``SafetensorError`` about a failed write into its ``OSError``."""
    try:
        yield
    except Exception as exc:
        found = _OS_ERROR.search(str(exc)) if type(exc).__name__ == "SafetensorError" else None
        if found is None:
            raise
        code = int(found[1])
        raise OSError(code, os.strerror(code), str(path)) from exc


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` the mode the umask gives new ones.

    safetensors writes its files ``0o600`` whatever the umask; a checkpoint's files should
    read like every other file of the run (``0o644`` under the usual umask ``022``).

    Args:
        folder: The folder (itself included).
    """
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        with contextlib.suppress(OSError):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def torch_load(path: Path, *, what: str) -> Any:
    """Load a state file with ``torch.load(weights_only=True)`` (no pickle code runs).

    Args:
        path: The file.
        what: What it holds, for messages.

    Returns:
        The state, on CPU.

    Raises:
        FormatError: When the file is missing, truncated or not a plain-state file.
    """
    if not path.is_file():
        raise FormatError(
            f"the checkpoint has no {what} file", path=path, hint="resume from another one"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FormatError(
            f"cannot read the {what} state ({_load_failure(exc)})",
            path=path,
            hint="the checkpoint is damaged; resume from another one",
        ) from exc


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _load_failure(exc: Exception) -> str:
    """What went wrong, without torch's advice to load the file with ``weights_only=False``.

    That advice would run the file's pickle code; a checkpoint of ours never needs it.
    """
    text = str(exc)
    found = _GLOBAL.search(text)
    if found is not None or "weights_only" in text or "Weights only" in text:
        what = f" ({found[1]})" if found is not None else ""
        return f"it holds pickled objects{what} that are never loaded: not a lego-train state file"
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = first.split(". ")[0]
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def model_signature(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint must match: the model's config and its tensors' shapes.

    Args:
        model: The unwrapped model.

    Returns:
        ``{"config": dict | None, "shapes": {name: [dims]}}``.
    """
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    config_dict = to_dict() if callable(to_dict) else None
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    return {"config": json.loads(json.dumps(config_dict)), "shapes": shapes}


def _ignored_config_key(key: str) -> bool:
    # Runtime settings that do not change the weights' meaning.
    return key in {"dropout", "attention_backend", "dtype", "torch_dtype"}


def check_compatible(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    path: Path,
    saved_tokenizer: str | None,
    current_tokenizer: str | None,
) -> None:
    """Refuse a checkpoint of another model shape or tokenizer, listing every difference.

    Args:
        saved: The checkpoint's [`model_signature()`][lego.train.checkpoint.model_signature].
        current: The running model's signature.
        path: The checkpoint, quoted in the error.
        saved_tokenizer: The checkpoint's tokenizer hash (None: unknown).
        current_tokenizer: The run's tokenizer hash (None: unknown).

    Raises:
        CompatibilityError: Listing config differences, missing, unexpected and
            mis-shaped tensors, and a tokenizer change.
    """
    problems: list[str] = []
    saved_config = saved.get("config") or {}
    current_config = current.get("config") or {}
    for key in sorted(set(saved_config) | set(current_config)):
        if _ignored_config_key(key):
            continue
        old, new = saved_config.get(key, "<absent>"), current_config.get(key, "<absent>")
        if old != new:
            problems.append(f"config {key}: checkpoint {old!r}, model {new!r}")
    saved_shapes: Mapping[str, Any] = saved.get("shapes") or {}
    current_shapes: Mapping[str, Any] = current.get("shapes") or {}
    for name in sorted(set(saved_shapes) | set(current_shapes)):
        if name not in current_shapes:
            problems.append(f"tensor {name}: in the checkpoint, not in the model")
        elif name not in saved_shapes:
            problems.append(f"tensor {name}: in the model, not in the checkpoint")
        elif list(saved_shapes[name]) != list(current_shapes[name]):
            problems.append(
                f"tensor {name}: checkpoint shape {list(saved_shapes[name])}, "
                f"model shape {list(current_shapes[name])}"
            )
    if saved_tokenizer and current_tokenizer and saved_tokenizer != current_tokenizer:
        problems.append(
            f"tokenizer: checkpoint {saved_tokenizer[:12]}..., run {current_tokenizer[:12]}..."
        )
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise CompatibilityError(
            "the checkpoint does not fit this run:\n    " + "\n    ".join(shown),
            path=path,
            hint="resume with the model config and tokenizer the checkpoint was trained with, "
            "or start a fresh run (resume='' or another out_dir)",
        )


def save_model_dir(
    model: nn.Module, folder: Path, *, state_dict: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Write a model directory: ``save_pretrained`` when the model has it, else safetensors.

    Args:
        model: The unwrapped model.
        folder: The model directory to create.
        state_dict: Tensors to write instead of the module's own (consolidated FSDP state,
            fp32 master weights), under ``state_dict()`` names.
    """
    saver = getattr(model, "save_pretrained", None)
    if callable(saver):
        with _rust_os_errors(folder):
            saver(folder, state_dict=state_dict)
        return
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    source = state_dict if state_dict is not None else model.state_dict()
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in source.items()}
    with _rust_os_errors(folder / "model.safetensors"):
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    config_dict = to_dict() if callable(to_dict) else {}
    atomic_write_text(
        folder / "config.json", json.dumps(config_dict, indent=2) + "\n", what="model config"
    )


def load_model_dir(model: nn.Module, folder: Path) -> None:
    """Load a model directory's weights into ``model`` in place (strict).

    Args:
        model: The unwrapped model.
        folder: A directory from [`save_model_dir()`][lego.train.checkpoint.save_model_dir].

    Raises:
        FormatError: When the weights file cannot be read.
        CompatibilityError: When tensors are missing, unexpected or mis-shaped.
    """
    loader = getattr(model, "load_weights", None)
    if callable(loader):
        loader(folder)
        return
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = folder / "model.safetensors"
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise FormatError(
            f"cannot read the model weights ({exc})", path=file, hint="resume from another one"
        ) from exc
    own = model.state_dict()
    problems = [f"missing {n}" for n in own if n not in tensors]
    problems += [f"unexpected {n}" for n in tensors if n not in own]
    problems += [
        f"{n}: file {list(t.shape)}, model {list(own[n].shape)}"
        for n, t in tensors.items()
        if n in own and t.shape != own[n].shape
    ]
    if problems:
        raise CompatibilityError(
            "the weights do not fit the model: " + "; ".join(problems[:20]),
            path=file,
            hint="load them into a model built from the same config",
        )
    with torch.no_grad():
        for name, target in own.items():
            target.copy_(tensors[name])


class CheckpointManager:
    """Finds, names, commits and prunes the checkpoints of one run directory.

    Args:
        run_dir: The run directory (checkpoints go to ``run_dir/checkpoints``).
        keep_last: How many complete checkpoints to keep (0 keeps all).
    """

    def __init__(self, *, run_dir: str | os.PathLike[str], keep_last: int) -> None:
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / CHECKPOINTS_DIR
        self.keep_last = keep_last

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the one ``latest`` names, or None.

        Without a ``latest`` file (deleted after it was damaged), the newest complete
        ``step-N`` folder: a folder gets that name only once it is complete.

        Raises:
            FormatError: When ``latest`` is damaged or names no checkpoint folder.
        """
        named = read_latest(self.run_dir)
        if named is not None:
            return named
        complete = self.complete()
        return complete[-1] if complete else None

    def resolve(self, resume: str) -> Path | None:
        """Turn the ``resume`` setting into a checkpoint folder.

        Args:
            resume: ``""`` (none), ``"auto"`` or ``"latest"`` (the newest checkpoint; None
                when the run has none yet) or a path to a checkpoint folder or a run
                directory.

        Returns:
            The checkpoint folder, or None for a fresh start.

        Raises:
            ConfigError: When a given path is not a checkpoint or a run with one.
        """
        if not resume:
            return None
        if resume in ("auto", "latest"):
            return self.latest()
        path = Path(resume)
        if (path / TRAINER_STATE_FILE).is_file():
            return path
        if (path / CHECKPOINTS_DIR / LATEST_FILE).is_file():
            return read_latest(path)
        raise ConfigError(
            "resume path is not a checkpoint (no trainer_state.json) nor a run directory "
            "with checkpoints/latest",
            path=path,
            key="resume",
            hint="pass resume=auto, a checkpoints/step-NNNNNNNN folder or a run directory",
        )

    def begin(self, step: int) -> Path:
        """Create an empty temporary folder for the checkpoint of ``step``.

        Args:
            step: Optimizer steps taken.

        Returns:
            ``checkpoints/.tmp-step-NNNNNNNN`` (emptied first when left by a crash).
        """
        tmp = self.folder / (_TMP_PREFIX + checkpoint_name(step))
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def abort(self, tmp: Path) -> None:
        """Remove the temporary folder of a save that failed (a full disk, a signal).

        Args:
            tmp: The folder from [`begin()`][lego.train.checkpoint.CheckpointManager.begin].
        """
        shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, tmp: Path, step: int) -> Path:
        """Rename a complete temporary folder into place, update ``latest`` and prune.

        When ``latest`` cannot be rewritten (a full disk), the rename is undone, so
        ``latest`` and the folders keep agreeing.

        Args:
            tmp: The folder from [`begin()`][lego.train.checkpoint.CheckpointManager.begin].
            step: Its step.

        Returns:
            The final checkpoint folder.
        """
        apply_umask(tmp)
        _sync_tree(tmp)
        name = checkpoint_name(step)
        final = self.folder / name
        old: Path | None = None
        if final.exists():
            old = self.folder / (_OLD_PREFIX + name)
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(self.folder)
        try:
            atomic_write_text(self.folder / LATEST_FILE, name + "\n", what="latest-checkpoint file")
        except BaseException:
            final.rename(tmp)  # the caller removes it
            if old is not None:
                old.rename(final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.prune()
        return final

    def remove_leftovers(self) -> list[Path]:
        """Remove what interrupted saves left (``.tmp-step-N``, ``.old-step-N`` folders).

        Call it only while holding the run's lock: then no other process is saving.

        Returns:
            The folders removed.
        """
        if not self.folder.is_dir():
            return []
        removed = []
        for leftover in sorted(self.folder.iterdir()):
            if leftover.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) and leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover)
        return removed

    def complete(self) -> list[Path]:
        """The complete checkpoint folders, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p
            for p in self.folder.iterdir()
            if p.is_dir() and p.name.startswith("step-") and (p / TRAINER_STATE_FILE).is_file()
        )

    def prune(self) -> None:
        """Delete checkpoints beyond ``keep_last`` and leftovers of interrupted saves.

        The checkpoint ``latest`` names is never deleted.
        """
        if not self.folder.is_dir():
            return
        self.remove_leftovers()
        if self.keep_last <= 0:
            return
        latest = self.latest()
        checkpoints = self.complete()
        for old in checkpoints[: max(0, len(checkpoints) - self.keep_last)]:
            if latest is None or old.resolve() != latest.resolve():
                shutil.rmtree(old, ignore_errors=True)

    def read_state(self, checkpoint: Path) -> TrainerStateFile:
        """Read and verify a checkpoint's ``trainer_state.json`` and file list.

        Args:
            checkpoint: The checkpoint folder.

        Returns:
            The trainer state.

        Raises:
            FormatError: On a malformed state file, or a missing, truncated or altered file.
        """
        path = checkpoint / TRAINER_STATE_FILE
        data = read_json(path, what="trainer state file")
        check_envelope(
            data,
            format=CHECKPOINT_FORMAT,
            version=CHECKPOINT_VERSION,
            path=path,
            what="lego-train trainer state file",
            reader="lego-train",
            hint="resume from a checkpoint written by lego-train",
        )
        state = TrainerStateFile.from_header(
            data,
            path=path,
            what="trainer state file",
            hint="the checkpoint is damaged; resume from an earlier one (or delete this one)",
        )
        verify_manifest(checkpoint, state.files)
        return state


def _sync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
