from __future__ import annotations

from pathlib import Path

import pytest

from lego.protocols import ConfigError, FormatError
from lego.protocols.layout import (
    CHECKPOINTS_DIR,
    LATEST_FILE,
    MODEL_DIR,
    checkpoint_name,
    find_model_dir,
    find_tokenizer_file,
    read_latest,
)


def _model_dir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_checkpoint_names_sort_by_step() -> None:
    assert checkpoint_name(100) == "step-00000100"
    names = [checkpoint_name(s) for s in (5, 40, 300, 123456789)]
    assert sorted(names) == names
    with pytest.raises(ConfigError):
        checkpoint_name(-1)


def test_find_model_dir_at_every_level(tmp_path: Path) -> None:
    direct = _model_dir(tmp_path / "direct")
    assert find_model_dir(direct) == direct

    checkpoint = tmp_path / "run" / CHECKPOINTS_DIR / checkpoint_name(7)
    inner = _model_dir(checkpoint / MODEL_DIR)
    assert find_model_dir(checkpoint) == inner

    run = tmp_path / "run"
    (run / CHECKPOINTS_DIR / LATEST_FILE).write_text(checkpoint_name(7) + "\n")
    assert read_latest(run) == checkpoint
    assert find_model_dir(run) == inner


def test_a_file_or_a_missing_path_is_named_for_what_it_is(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        find_model_dir(weights)
    with pytest.raises(ConfigError, match="does not exist"):
        find_model_dir(tmp_path / "nowhere")


def test_run_without_checkpoints(tmp_path: Path) -> None:
    assert read_latest(tmp_path) is None
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        find_model_dir(tmp_path)


def test_broken_latest_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINTS_DIR).mkdir()
    (tmp_path / CHECKPOINTS_DIR / LATEST_FILE).write_text("step-00000009")  # no such folder
    with pytest.raises(FormatError, match="step-00000009"):
        find_model_dir(tmp_path)
    (tmp_path / CHECKPOINTS_DIR / LATEST_FILE).write_text("../../etc")
    with pytest.raises(FormatError):
        read_latest(tmp_path)


def test_find_tokenizer_file_prefers_lego_format(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "m")
    assert find_tokenizer_file(folder) is None
    (folder / "tokenizer.json").write_text("{}")
    assert find_tokenizer_file(folder) == folder / "tokenizer.json"
    (folder / "lego-tokenizer.json").write_text("{}")
    assert find_tokenizer_file(folder) == folder / "lego-tokenizer.json"


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00garbage\x80", b"", b"step-1", b"x" * 10_000, b"step-00000001\n" * 100],
)
def test_garbage_latest_is_one_format_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / CHECKPOINTS_DIR / checkpoint_name(1)).mkdir(parents=True)
    (tmp_path / CHECKPOINTS_DIR / LATEST_FILE).write_bytes(content)
    with pytest.raises(FormatError, match="latest-checkpoint file") as info:
        read_latest(tmp_path)
    assert len(str(info.value)) < 400  # the garbage is not printed whole


def test_latest_that_is_a_folder_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINTS_DIR / LATEST_FILE).mkdir(parents=True)
    with pytest.raises(FormatError, match="not a file"):
        read_latest(tmp_path)
