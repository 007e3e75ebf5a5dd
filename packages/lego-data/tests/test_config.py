from __future__ import annotations

from pathlib import Path

import pytest

from lego.data.config import PrepareConfig, build_prepare_config
from lego.protocols import ConfigError, FormatError

YAML = """\
source: tiny_shakespeare
tokenizer: tiktoken:gpt2
split: characters
val_fraction: 0.1
out_dir: data/tiny_shakespeare
workers: null
"""


def test_file_flags_and_overrides(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(YAML)
    config = build_prepare_config(file=file)
    assert config == PrepareConfig(
        corpus="tiny_shakespeare",
        tokenizer="tiktoken:gpt2",
        out_dir="data/tiny_shakespeare",
        split="characters",
        val_fraction=0.1,
    )
    config = build_prepare_config(
        file=file,
        flags={"out_dir": "elsewhere", "workers": None, "seed": 4},
        overrides=["val_fraction=0.05", "workers=2", "corpus=python-stdlib"],
    )
    assert config.out_dir == "elsewhere"
    assert config.seed == 4
    assert config.val_fraction == 0.05
    assert config.workers == 2
    assert config.corpus == "python-stdlib"


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(YAML + "val_fractoin: 0.2\n")
    with pytest.raises(ConfigError) as info:
        build_prepare_config(file=file)
    assert info.value.key == "val_fractoin"
    assert "val_fraction" in (info.value.hint or "")
    assert info.value.path == str(file)


def test_source_and_corpus_together(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(YAML + "corpus: python-stdlib\n")
    with pytest.raises(ConfigError, match="both 'source' and 'corpus'"):
        build_prepare_config(file=file)


def test_missing_required_keys() -> None:
    with pytest.raises(ConfigError, match="missing tokenizer, out_dir") as info:
        build_prepare_config(flags={"corpus": "python-stdlib"})
    assert info.value.key == "tokenizer"


@pytest.mark.parametrize(
    ("override", "key"),
    [("val_fraction=1.5", "val_fraction"), ("workers=0", "workers"), ("split=random", "split")],
)
def test_invalid_values(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_prepare_config(
            flags={"corpus": "c", "tokenizer": "gpt2", "out_dir": "o"}, overrides=[override]
        )
    assert info.value.key == key


def test_overrides_are_converted_by_annotation() -> None:
    base = {"corpus": "c", "tokenizer": "t", "out_dir": "o"}
    config = build_prepare_config(
        flags=base,
        overrides=["val_fraction=1e-3", "workers=null", "seed=7", "separator=---", "eot_id=5"],
    )
    assert config.val_fraction == 0.001
    assert isinstance(config.val_fraction, float)
    assert config.workers is None
    assert config.seed == 7
    assert config.separator == "---"
    assert config.eot_id == 5
    assert build_prepare_config(flags=base, overrides=["corpus=123"]).corpus == "123"
    assert build_prepare_config(flags=base, overrides=["out_dir=a=b"]).out_dir == "a=b"


@pytest.mark.parametrize(
    ("override", "message", "key"),
    [
        ("val_fraction=", "has no value", "val_fraction"),
        ("val_fraction=abc", "not a valid float", "val_fraction"),
        ("seed=1.5", "not a valid int", "seed"),
        ("sedd=1", "unknown PrepareConfig key 'sedd'", "sedd"),
        ("no-equals", "not key=value", "no-equals"),
    ],
)
def test_bad_overrides(override: str, message: str, key: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_prepare_config(
            flags={"corpus": "c", "tokenizer": "t", "out_dir": "o"}, overrides=[override]
        )
    assert info.value.key == key


def test_file_values_are_yaml_and_typed(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(YAML + "seed: 1e3\n")
    with pytest.raises(ConfigError, match="seed must be int") as info:
        build_prepare_config(file=file)
    assert info.value.path == str(file)
    file.write_text(YAML.replace("val_fraction: 0.1", "val_fraction: 1e-3"))
    assert build_prepare_config(file=file).val_fraction == 0.001  # YAML 1.2: a float


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        build_prepare_config(file=tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: x\n  tokenizer: : y\n")
    with pytest.raises(FormatError) as info:
        build_prepare_config(file=bad)
    assert info.value.line == 2
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(FormatError, match="mapping"):
        build_prepare_config(file=listing)
    twice = tmp_path / "twice.yaml"
    twice.write_text(YAML + "split: documents\n")
    with pytest.raises(FormatError, match="given twice") as info:
        build_prepare_config(file=twice)
    assert info.value.key == "split"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="missing corpus, tokenizer, out_dir"):
        build_prepare_config(file=empty)
