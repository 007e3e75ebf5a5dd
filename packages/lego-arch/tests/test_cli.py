"""The lego-arch command: exit codes, tables, JSON, presets, config files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lego.arch import get_preset
from lego.arch.cli import load_model_config, main, memory_dtype
from lego.protocols import ConfigError


def test_info_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "gpt2-tiny", "--batch", "2", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "gpt2-tiny: parameters" in out
    assert "172,288" in out
    assert "batch 2 x 16 tokens" in out
    for dtype in ("fp32", "bf16", "int8", "nf4"):
        assert dtype in out


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "llama-tiny", "--dtype", "bfloat16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "llama-tiny"
    assert data["parameters"]["total"] == 156_480
    assert [row["dtype"] for row in data["memory"]] == ["bf16"]
    assert data["memory"][0]["weights"] == 2 * 156_480
    assert data["config"] == get_preset("llama-tiny").to_dict()


def test_info_lego_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = get_preset("qwen3-tiny").replace(n_layers=3)
    path = tmp_path / "mine.json"
    config.to_json(path)
    assert main(["info", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["n_layers"] == 3
    assert load_model_config(str(path))[1] == config


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b" in out
    assert "8.03B" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "llama-3.2-1"], "llama-3.2-1b"),
        (["info", "gpt2-tiny", "--dtype", "bf61"], "bf16"),
        (["info", "gpt2-tiny", "--seq-len", "129"], "sequence length"),
        (["info", "gpt2-tiny", "--batch", "0"], "batch"),
    ],
)
def test_bad_input_exits_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["info"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    assert "lego-arch info" in capsys.readouterr().out


def test_folder_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_memory_dtype_aliases() -> None:
    assert memory_dtype("float32") == "fp32"
    assert memory_dtype("BF16") == "bf16"
    assert memory_dtype("torch.bfloat16") == "bf16"
    with pytest.raises(ConfigError, match="nf4"):
        memory_dtype("nf5")


def test_info_hf_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-05,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
    }
    folder = tmp_path / "my-gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config), encoding="utf-8")
    assert main(["info", str(folder), "--json", "--dtype", "fp32"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "my-gpt2"
    assert data["parameters"]["total"] == 124_439_808


def test_a_missing_path_is_not_called_an_unknown_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for spec in (str(tmp_path / "nowhere"), "config.json"):
        assert main(["info", spec]) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err
        assert "unknown preset" not in err


def test_a_weights_file_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lego.arch import build, to_hf

    to_hf(build("gpt2-tiny"), tmp_path / "model")
    assert main(["info", str(tmp_path / "model" / "model.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "is a .safetensors file, not a config.json" in err
    assert "not UTF-8" not in err
    assert main(["info", str(tmp_path / "model")]) == 0
