"""Damaged model directories (issue 17): integer or non-finite weights, a lego config.json;
file modes and the temporaries of killed writers.

Integer weights are a FormatError naming the tensor, found from the headers. NaN and inf are
found only on request (``check_finite=True``, which reads every page of the files), and then
named the same way; ``legollm generate`` asks for it. A ``config.json`` written by
``DecoderConfig.to_json`` is read as the lego config it is, so a typo gets a did-you-mean.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lego.arch import DecoderConfig, build, from_hf, read_hf_config, to_hf
from lego.arch.hf import INDEX_NAME, SAFETENSORS_NAME, open_hf_directory
from lego.arch.hf.directory import is_lego_config
from lego.protocols import CompatibilityError, ConfigError, FormatError, temporary_name

TENSOR = "transformer.h.0.attn.c_proj.weight"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    to_hf(build("gpt2-tiny"), tmp_path / "model")
    return tmp_path / "model"


def _rewrite(folder: Path, name: str, tensor: torch.Tensor) -> None:
    file = folder / SAFETENSORS_NAME
    tensors = load_file(file)
    tensors[name] = tensor
    save_file(tensors, str(file), metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.uint8])
def test_integer_weights_are_a_format_error_naming_the_tensor(
    model_dir: Path, dtype: torch.dtype
) -> None:
    stored = load_file(model_dir / SAFETENSORS_NAME)[TENSOR]
    _rewrite(model_dir, TENSOR, stored.to(dtype))
    with pytest.raises(FormatError, match="not as floating point") as info:
        from_hf(model_dir)
    assert info.value.tensor == TENSOR
    assert info.value.path == str(model_dir / SAFETENSORS_NAME)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_named_when_checked(model_dir: Path, value: float) -> None:
    stored = load_file(model_dir / SAFETENSORS_NAME)[TENSOR].clone()
    stored[3, 5] = value
    _rewrite(model_dir, TENSOR, stored)
    from_hf(model_dir)  # lazy by default: nothing is read until used
    with pytest.raises(FormatError, match="non-finite values") as info:
        from_hf(model_dir, check_finite=True)
    assert info.value.tensor == TENSOR
    assert f"flat index {3 * stored.shape[1] + 5}" in info.value.message


def test_a_cast_that_overflows_is_named_when_checked(model_dir: Path) -> None:
    stored = load_file(model_dir / SAFETENSORS_NAME)[TENSOR].clone()
    stored[0, 0] = 1e6  # beyond float16's 65504
    _rewrite(model_dir, TENSOR, stored)
    assert from_hf(model_dir, dtype="float32", check_finite=True) is not None
    with pytest.raises(FormatError, match=r"does not fit torch.float16"):
        from_hf(model_dir, dtype="float16", check_finite=True)


def test_finite_weights_load_the_same_when_checked(model_dir: Path) -> None:
    a, b = from_hf(model_dir), from_hf(model_dir, check_finite=True)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.fixture
def lego_config_dir(model_dir: Path) -> Path:
    """A model directory whose config.json was written by DecoderConfig.to_json."""
    config = read_hf_config(model_dir)
    config.to_json(model_dir / "config.json")
    return model_dir


def test_a_lego_config_json_is_read_as_one(lego_config_dir: Path) -> None:
    expected = build("gpt2-tiny").config
    assert read_hf_config(lego_config_dir) == read_hf_config(lego_config_dir / "config.json")
    assert read_hf_config(lego_config_dir).to_dict() == expected.to_dict()
    assert from_hf(lego_config_dir).config.to_dict() == expected.to_dict()


def test_a_typo_in_a_lego_config_gets_a_did_you_mean(lego_config_dir: Path) -> None:
    file = lego_config_dir / "config.json"
    data = json.loads(file.read_text())
    data["n_layer"] = data.pop("n_layers")
    file.write_text(json.dumps(data))
    for read in (read_hf_config, open_hf_directory, from_hf):
        with pytest.raises(ConfigError, match="unknown DecoderConfig key 'n_layer'") as info:
            read(lego_config_dir)
        assert info.value.hint == "did you mean 'n_layers'?"
        assert info.value.path == str(file)


def test_a_lego_config_of_a_custom_family_names_the_file(lego_config_dir: Path) -> None:
    file = lego_config_dir / "config.json"
    data = json.loads(file.read_text())
    data["family"] = "custom"
    file.write_text(json.dumps(data))
    with pytest.raises(CompatibilityError, match="has no HuggingFace architecture") as info:
        from_hf(lego_config_dir)
    assert info.value.path == str(file)


def test_which_configs_count_as_lego() -> None:
    lego = build("gpt2-tiny").config.to_dict()
    assert is_lego_config(lego)
    assert is_lego_config({k: v for k, v in lego.items() if k != "family"})
    assert not is_lego_config({"architectures": ["GPT2LMHeadModel"], **lego})
    assert not is_lego_config({"model_type": "llama", "vocab_size": 10})
    assert not is_lego_config({"n_embd": 64, "n_layer": 2, "n_head": 4})  # a bare HF config
    assert isinstance(DecoderConfig.from_dict(lego), DecoderConfig)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_weight_files_get_the_mode_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        to_hf(build("gpt2-tiny"), tmp_path / "one")
        to_hf(build("gpt2-tiny"), tmp_path / "sharded", max_shard_size="20KB")
    finally:
        os.umask(old)
    files = [tmp_path / "one" / SAFETENSORS_NAME, *(tmp_path / "sharded").iterdir()]
    assert len(files) > 3
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == mode, file.name


def test_a_rewritten_weight_file_keeps_its_mode(model_dir: Path) -> None:
    (model_dir / SAFETENSORS_NAME).chmod(0o640)
    to_hf(build("gpt2-tiny"), model_dir)
    assert stat.S_IMODE((model_dir / SAFETENSORS_NAME).stat().st_mode) == 0o640


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # a pid that no longer runs
    inside = tmp_path / "model"
    to_hf(build("gpt2-tiny"), inside)
    name = temporary_name(tmp_path / "other").name.split("-")
    stale_dir = tmp_path / "-".join([*name[:-2], str(dead.pid), name[-1]])
    stale_dir.mkdir()
    (stale_dir / SAFETENSORS_NAME).write_bytes(b"half")
    shard = temporary_name(inside / SAFETENSORS_NAME).name.split("-")
    stale_file = inside / "-".join([*shard[:-2], str(dead.pid), shard[-1]])
    stale_file.write_bytes(b"half")
    live = temporary_name(tmp_path / "busy")  # this process: alive, kept
    live.write_bytes(b"in progress")
    to_hf(build("gpt2-tiny"), tmp_path / "fresh")  # cleans the parent folder
    to_hf(build("gpt2-tiny"), inside)  # cleans the directory it rewrites
    assert not stale_dir.exists()
    assert not stale_file.exists()
    assert live.exists()


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    to_hf(build("gpt2-tiny"), tmp_path / "sharded", max_shard_size="40KB")
    return tmp_path / "sharded"


def _edit_index(folder: Path, edit: object) -> Path:
    file = folder / INDEX_NAME
    index = json.loads(file.read_text())
    assert callable(edit)
    edit(index["weight_map"])
    file.write_text(json.dumps(index))
    return file


def test_an_index_naming_the_wrong_shard_is_a_format_error(sharded: Path) -> None:
    def swap(weight_map: dict[str, str]) -> None:
        name = next(iter(weight_map))
        weight_map[name] = next(
            f for f in sorted(set(weight_map.values())) if f != weight_map[name]
        )

    file = _edit_index(sharded, swap)
    with pytest.raises(FormatError, match="maps 1 tensor") as info:
        from_hf(sharded)
    assert info.value.path == str(file)
    assert info.value.tensor is not None


@pytest.mark.parametrize("target", ["../elsewhere.safetensors", "/tmp/x.safetensors", ".."])
def test_an_index_naming_files_outside_the_directory_is_refused(sharded: Path, target: str) -> None:
    shutil.copy(next(sharded.glob("model-*")), sharded.parent / "elsewhere.safetensors")

    def point_outside(weight_map: dict[str, str]) -> None:
        weight_map[next(iter(weight_map))] = target

    file = _edit_index(sharded, point_outside)
    with pytest.raises(FormatError, match="outside the model directory") as info:
        from_hf(sharded)
    assert info.value.path == str(file)
