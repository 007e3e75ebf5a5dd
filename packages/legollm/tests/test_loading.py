"""lego.recipes.loading: checkpoints verified as a resume does, tokenizer and eos ids checked."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from lego.arch import build, to_hf
from lego.protocols import CompatibilityError, ConfigError, FormatError
from lego.protocols.layout import CHECKPOINTS_DIR, LATEST_FILE, MODEL_DIR
from lego.recipes.loading import check_tokenizer, default_eos_ids, load_model
from lego.tokenize import RegexBPETokenizer
from lego.train.checkpoint import TRAINER_STATE_FILE, TrainerStateFile, file_manifest

STEP = "step-00000003"


def _tokenizer(vocab_size: int) -> RegexBPETokenizer:
    tokenizer = RegexBPETokenizer("gpt4")
    with warnings.catch_warnings():  # a short text may reach fewer ids: fine here
        warnings.simplefilter("ignore")
        tokenizer.train("abc abd abe " * 30, vocab_size=vocab_size, special_tokens=["<|eot|>"])
    return tokenizer


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run as lego-train lays it out: checkpoint, trainer_state.json, latest."""
    root = tmp_path_factory.mktemp("loading")
    checkpoint = root / "run" / CHECKPOINTS_DIR / STEP
    torch.manual_seed(0)
    to_hf(build("gpt2-tiny", vocab_size=260), checkpoint / MODEL_DIR)
    (checkpoint / "optimizer.pt").write_bytes(b"optimizer state")
    state = TrainerStateFile(step=3, tokens_seen=0, files=file_manifest(checkpoint))
    (checkpoint / TRAINER_STATE_FILE).write_text(json.dumps(state.to_dict()))
    (checkpoint.parent / LATEST_FILE).write_text(STEP + "\n")
    return root


@pytest.fixture
def run(made: Path, tmp_path: Path) -> Path:
    shutil.copytree(made / "run", tmp_path / "run")
    return tmp_path / "run"


def _model(run: Path) -> Path:
    return run / CHECKPOINTS_DIR / STEP / MODEL_DIR


def test_every_level_of_an_intact_run_loads(run: Path) -> None:
    for named in (run, _model(run).parent, _model(run)):
        model, model_dir = load_model(named, device="cpu")
        assert model_dir == _model(run)
        assert not model.training


@pytest.mark.parametrize("level", ["run", "checkpoint", "model"])
@pytest.mark.parametrize(
    "damaged", ["model/model.safetensors", "model/config.json", "optimizer.pt"]
)
def test_a_file_that_differs_from_the_record_is_refused(
    run: Path, level: str, damaged: str
) -> None:
    file = _model(run).parent / damaged
    data = bytearray(file.read_bytes())
    data[-2] ^= 0x01
    file.write_bytes(bytes(data))
    named = {"run": run, "checkpoint": _model(run).parent, "model": _model(run)}[level]
    with pytest.raises(FormatError, match="SHA-256 mismatch") as info:
        load_model(named, device="cpu")
    assert info.value.path == str(file)
    assert "generate from another one" in (info.value.hint or "")


def test_a_checkpoint_without_its_record_is_refused_unless_its_model_dir_is_named(
    run: Path,
) -> None:
    (_model(run).parent / TRAINER_STATE_FILE).unlink()
    for named in (run, _model(run).parent):
        with pytest.raises(FormatError, match=r"no trainer_state\.json"):
            load_model(named, device="cpu")
    load_model(_model(run), device="cpu")  # a plain model directory: nothing to verify


def test_a_plain_model_directory_is_not_verified(run: Path, tmp_path: Path) -> None:
    plain = tmp_path / "weights"
    shutil.copytree(_model(run), plain)
    (run / CHECKPOINTS_DIR / STEP / "model.txt").write_text("beside it, unrelated")
    load_model(plain, device="cpu")


def test_a_file_given_as_model_is_named_a_file(run: Path) -> None:
    with pytest.raises(ConfigError, match="is a file") as info:
        load_model(_model(run) / "model.safetensors", device="cpu")
    assert info.value.key == "--model"


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_model_path_is_not_the_working_directory(
    empty: str, made: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(made / "run" / CHECKPOINTS_DIR / STEP / MODEL_DIR)  # a model there
    with pytest.raises(ConfigError, match="--model is empty"):
        load_model(empty, device="cpu")


def test_tokenizers_of_other_sizes(run: Path) -> None:
    model, model_dir = load_model(run, device="cpu")
    smaller, larger = _tokenizer(258), _tokenizer(270)
    assert smaller.vocab_size < 260 < larger.vocab_size
    check_tokenizer(smaller, model, spec=None, model_dir=model_dir)  # a padded vocabulary
    with pytest.raises(CompatibilityError, match="258 ids but the model's vocabulary 260"):
        check_tokenizer(smaller, model, spec="small.json", model_dir=model_dir)
    for spec in (None, "large.json"):
        with pytest.raises(CompatibilityError, match=f"{larger.vocab_size} ids but"):
            check_tokenizer(larger, model, spec=spec, model_dir=model_dir)


@pytest.mark.parametrize("eos", [260, -1, [1, 999]])
def test_an_eos_token_id_outside_the_vocabulary_is_refused(run: Path, eos: object) -> None:
    file = _model(run) / "config.json"
    config = json.loads(file.read_text())
    config["eos_token_id"] = eos
    file.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="eos_token_id") as info:
        default_eos_ids(_model(run), _tokenizer(258), vocab_size=260)
    assert info.value.path == str(file)


def test_eos_ids_inside_the_vocabulary_are_used(run: Path) -> None:
    file = _model(run) / "config.json"
    config = json.loads(file.read_text())
    config["eos_token_id"] = [0, 259]
    file.write_text(json.dumps(config))
    assert default_eos_ids(_model(run), _tokenizer(258), vocab_size=260) == [0, 259]
