"""Where runs, checkpoints and model directories keep their files.

lego-train writes this layout and the application's ``legollm generate`` (and any tool)
reads it::

    RUN_DIR/                      a training run (lego-train's ``out_dir``)
      checkpoints/
        latest                    text file: the name of the newest complete checkpoint
        step-00000100/            one checkpoint, written as .tmp-step-00000100 and renamed
          model/                  a model directory (see below)
          trainer_state.json ...  the trainer's own files
      metrics.jsonl

    MODEL_DIR/                    a model directory (HuggingFace-compatible for lego-arch)
      config.json
      model.safetensors           (or model-0000i-of-0000N.safetensors + index)
      lego-tokenizer.json         the tokenizer in lego-tokenize's format, when known
      tokenizer.json              the tokenizer in HuggingFace's format, when expressible

[`find_model_dir()`][lego.protocols.layout.find_model_dir] accepts any of the three levels, so
``legollm generate --model runs/tiny`` runs the newest checkpoint of a run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from lego.protocols.errors import ConfigError, FormatError
from lego.protocols.files import open_binary

__all__ = [
    "CHECKPOINTS_DIR",
    "LATEST_FILE",
    "MODEL_DIR",
    "CONFIG_FILE",
    "LEGO_TOKENIZER_FILE",
    "HF_TOKENIZER_FILE",
    "checkpoint_name",
    "read_latest",
    "find_model_dir",
    "find_tokenizer_file",
]

CHECKPOINTS_DIR: Final = "checkpoints"
"""A run's folder of checkpoints."""
LATEST_FILE: Final = "latest"
"""The file in ``checkpoints/`` naming the newest complete checkpoint."""
MODEL_DIR: Final = "model"
"""A checkpoint's model directory."""
CONFIG_FILE: Final = "config.json"
"""A model directory's configuration."""
LEGO_TOKENIZER_FILE: Final = "lego-tokenizer.json"
"""A model directory's tokenizer in lego-tokenize's format."""
HF_TOKENIZER_FILE: Final = "tokenizer.json"
"""A model directory's tokenizer in HuggingFace's format."""

_NAME = re.compile(r"step-\d{8,}")
_LATEST_MAX = 256  # bytes: a checkpoint name is ~14; more is not a latest file


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint taken after ``step`` optimizer steps.

    Args:
        step: Optimizer steps taken, ``>= 0``.

    Returns:
        ``"step-00000100"`` for step 100 (eight digits or more, so names sort by step).

    Raises:
        ConfigError: On a negative step.
    """
    if step < 0:
        raise ConfigError(f"a checkpoint step must be >= 0, got {step}", key="step")
    return f"step-{step:08d}"


def read_latest(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none yet.

    Args:
        run_dir: The run directory (holding ``checkpoints/``).

    Returns:
        The checkpoint directory that ``checkpoints/latest`` names, or None when there is no
        ``latest`` file.

    Raises:
        FormatError: ``latest`` is not a small UTF-8 text file naming a checkpoint folder
            that exists (garbage, a folder, a name that escapes ``checkpoints/``).
        ConfigError: ``latest`` cannot be read (permissions).

    Example:
        >>> import tempfile
        >>> read_latest(tempfile.mkdtemp()) is None  # a run without checkpoints yet
        True
    """
    latest = Path(run_dir) / CHECKPOINTS_DIR / LATEST_FILE
    if not os.path.lexists(latest):
        return None
    fix = "write the name of an existing step-NNNNNNNN folder into it, or delete it"
    if not latest.is_file():
        raise FormatError("the latest-checkpoint file is not a file", path=str(latest), hint=fix)
    with open_binary(latest, what="latest-checkpoint file") as handle:
        data = handle.read(_LATEST_MAX + 1)
    try:
        name = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = ""
    target = latest.parent / name
    if len(data) > _LATEST_MAX or not _NAME.fullmatch(name) or not target.is_dir():
        shown = repr(data[:40].decode("utf-8", errors="replace").strip())
        raise FormatError(
            f"the latest-checkpoint file names {shown}, which is not a checkpoint folder",
            path=str(latest),
            hint=fix,
        )
    return target


def find_model_dir(path: str | os.PathLike[str]) -> Path:
    """Find the model directory in a model directory, a checkpoint or a run.

    Args:
        path: A model directory (holds ``config.json``), a checkpoint (holds
            ``model/config.json``) or a run directory (holds ``checkpoints/latest``).

    Returns:
        The model directory.

    Raises:
        ConfigError: When the path is none of the three.
        FormatError: When a run's ``latest`` file is broken.
    """
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ConfigError(
            f"the model path {what}",
            path=str(folder),
            hint="pass a model directory (the folder holding config.json), a checkpoint or "
            "a training run directory",
        )
    if (folder / CONFIG_FILE).is_file():
        return folder
    if (folder / MODEL_DIR / CONFIG_FILE).is_file():
        return folder / MODEL_DIR
    checkpoint = read_latest(folder)
    if checkpoint is not None and (checkpoint / MODEL_DIR / CONFIG_FILE).is_file():
        return checkpoint / MODEL_DIR
    raise ConfigError(
        f"{folder} holds no {CONFIG_FILE}, no {MODEL_DIR}/{CONFIG_FILE} and no complete checkpoint",
        path=str(folder),
        hint="pass a model directory (config.json + model.safetensors), a checkpoint or a "
        "run directory with checkpoints/latest",
    )


def find_tokenizer_file(model_dir: str | os.PathLike[str]) -> Path | None:
    """The tokenizer file stored in a model directory, if any.

    Args:
        model_dir: A model directory.

    Returns:
        ``lego-tokenizer.json`` when present, else ``tokenizer.json`` when present, else None.
    """
    for name in (LEGO_TOKENIZER_FILE, HF_TOKENIZER_FILE):
        candidate = Path(model_dir) / name
        if candidate.is_file():
            return candidate
    return None
