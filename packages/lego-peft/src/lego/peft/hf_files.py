"""HuggingFace model directories at the state-dict level, for the ``lego-peft`` command.

``lego-peft merge`` and ``quantize`` work on the files of a transformers model directory
(``config.json`` + ``model.safetensors``, or shards listed in
``model.safetensors.index.json``) without building the model, so lego-peft needs no model
library: [`read_model_dir()`][lego.peft.hf_files.read_model_dir] finds the weight files,
[`OutputDir`][lego.peft.hf_files.OutputDir] writes the new directory under a temporary
name beside the output and renames it into place when complete (a failure or an interrupt
removes it; an existing non-empty output is never touched).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from lego.protocols import (
    ConfigError,
    FormatError,
    check_output_path,
    read_json,
    remove_stale_temporaries,
    temporary_name,
    write_errors,
)

__all__ = [
    "ModelDir",
    "OutputDir",
    "read_model_dir",
    "check_output_dir",
    "load_shard",
    "tensor_shapes",
    "iter_shards",
    "shard_index",
    "nbytes",
]

_OS_ERROR = re.compile(r"\(os error (\d+)\)")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class ModelDir:
    """A transformers model directory's files.

    Attributes:
        path: The directory.
        config: The parsed ``config.json``.
        shards: The safetensors files, in order.
        sharded: Whether an index lists them.
    """

    path: Path
    config: dict[str, object]
    shards: tuple[Path, ...]
    sharded: bool


def read_model_dir(path: str | os.PathLike[str]) -> ModelDir:
    """Find a model directory's config and weight files.

    Args:
        path: The directory.

    Returns:
        Its files.

    Raises:
        ConfigError: Not a directory, or no ``config.json`` / weights in it.
        FormatError: A damaged ``config.json`` or index.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(
            "no model directory here", path=folder, hint="pass a folder with config.json"
        )
    config = read_json(folder / CONFIG_NAME, what="model config")
    if not isinstance(config, dict):
        raise FormatError(
            "config.json must hold a JSON object", path=folder / CONFIG_NAME, hint="write it again"
        )
    index = folder / INDEX_NAME
    if index.exists():
        data = read_json(index, what="safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise FormatError(
                "the index has no weight_map of tensor name -> file",
                path=index,
                hint="write the model again",
            )
        names = list(dict.fromkeys(weight_map.values()))
        shards = tuple(folder / name for name in names)
        for shard in shards:
            if not shard.is_file():
                raise ConfigError(
                    "a weight file the index lists is missing",
                    path=shard,
                    hint="copy the whole model directory",
                )
        return ModelDir(path=folder, config=config, shards=shards, sharded=True)
    single = folder / WEIGHTS_NAME
    if not single.is_file():
        hint = "lego-peft reads safetensors only"
        if (folder / "pytorch_model.bin").exists():
            hint = "convert pytorch_model.bin to safetensors first (pickle files are never loaded)"
        raise ConfigError("the model directory has no model.safetensors", path=folder, hint=hint)
    return ModelDir(path=folder, config=config, shards=(single,), sharded=False)


def load_shard(path: Path) -> dict[str, Tensor]:
    """Read every tensor of one safetensors file.

    Args:
        path: The file.

    Returns:
        Name -> tensor.

    Raises:
        FormatError: The file is damaged.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FormatError(
            f"cannot read the weights ({err})", path=path, hint="copy the file again"
        ) from None


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The names and shapes in a safetensors file, without reading the tensors.

    Args:
        path: The file.

    Returns:
        Name -> shape.

    Raises:
        FormatError: The file is damaged.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {
                name: tuple(handle.get_slice(name).get_shape())
                for name in handle.keys()  # noqa: SIM118
            }
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FormatError(
            f"cannot read the weights ({err})", path=path, hint="copy the file again"
        ) from None


def check_output_dir(output: str | os.PathLike[str], *, inputs: list[Path], what: str) -> Path:
    """Refuse an output folder that is an input, inside one, or not empty.

    Args:
        output: The ``-o`` folder.
        inputs: The folders the command reads.
        what: What is written, for messages.

    Returns:
        The output path.

    Raises:
        ConfigError: Naming the problem and the option.
    """
    path = check_output_path(output, inputs=inputs, what=what, key="-o", kind="folder")
    resolved = path.resolve()
    for source in inputs:
        if source.resolve() in resolved.parents:
            raise ConfigError(
                f"the {what} would be written inside an input folder ({source})",
                path=path,
                key="-o",
                hint="write the output somewhere else",
            )
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(
            f"the {what} folder exists and is not empty",
            path=path,
            key="-o",
            hint="choose a new folder (nothing is ever written over existing files)",
        )
    return path


class OutputDir:
    """A folder written under a temporary name and renamed into place when complete.

    Args:
        path: The final folder (absent or empty; see
            [`check_output_dir()`][lego.peft.hf_files.check_output_dir]).
        what: What it holds, for messages.
    """

    def __init__(self, path: Path, *, what: str) -> None:
        self.path = path
        self.what = what
        self.tmp = temporary_name(path)

    def __enter__(self) -> OutputDir:
        parent = self.path.parent
        with write_errors(parent, what=self.what):
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(parent)
            self.tmp.mkdir()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            with write_errors(self.path, what=self.what):
                if self.path.is_dir():
                    self.path.rmdir()  # empty (checked): rename over it
                os.rename(self.tmp, self.path)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def write_tensors(self, name: str, tensors: Mapping[str, Tensor]) -> None:
        """Write one safetensors file into the folder.

        Args:
            name: The file name.
            tensors: Name -> tensor.
        """
        target = self.tmp / name
        with write_errors(target, what=self.what):
            try:
                save_file(
                    {k: v.contiguous() for k, v in tensors.items()},
                    str(target),
                    metadata={"format": "pt"},
                )
            except SafetensorError as err:  # a failed write (full disk) reaches us as this
                found = _OS_ERROR.search(str(err))
                if found is None:
                    raise
                code = int(found[1])
                raise OSError(code, os.strerror(code), str(target)) from err

    def write_json(self, name: str, data: object) -> None:
        """Write one JSON file into the folder.

        Args:
            name: The file name.
            data: The content.
        """
        target = self.tmp / name
        with write_errors(target, what=self.what):
            target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def copy_side_files(self, source: ModelDir) -> None:
        """Copy the model directory's files other than its weights, config and index.

        Tokenizer files, ``generation_config.json`` and the like travel with the model.

        Args:
            source: The input directory.
        """
        skip = {CONFIG_NAME, INDEX_NAME, *(shard.name for shard in source.shards)}
        for entry in sorted(source.path.iterdir()):
            if entry.is_file() and entry.name not in skip and not entry.name.startswith("."):
                with write_errors(self.tmp / entry.name, what=self.what):
                    shutil.copyfile(entry, self.tmp / entry.name)


def shard_index(total_size: int, weight_map: Mapping[str, str]) -> dict[str, object]:
    """A ``model.safetensors.index.json`` mapping.

    Args:
        total_size: Bytes of all tensors.
        weight_map: Tensor name -> file name.

    Returns:
        The index data.
    """
    return {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}


def iter_shards(model: ModelDir) -> Iterator[tuple[Path, dict[str, Tensor]]]:
    """Each weight file with its tensors, one file in memory at a time.

    Args:
        model: The directory.

    Yields:
        ``(file, tensors)``.
    """
    for shard in model.shards:
        yield shard, load_shard(shard)


def nbytes(tensors: Mapping[str, Tensor]) -> int:
    """Bytes of the tensors' data."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
