from __future__ import annotations

from pathlib import Path

import pytest

from lego.data.config import (
    PrepareConfig,
    build_prepare_config,
    load_yaml_config,
    parse_overrides,
)
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


def test_overrides_parse_yaml_values() -> None:
    assert parse_overrides(["a=1", "b=0.5", "c=null", "d=text", "e=", "f=x=y"]) == {
        "a": 1,
        "b": 0.5,
        "c": None,
        "d": "text",
        "e": "",
        "f": "x=y",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["no-equals"])
    with pytest.raises(ConfigError, match="cannot read"):
        parse_overrides(["a=[1, 2"])


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_yaml_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: x\n  tokenizer: : y\n")
    with pytest.raises(FormatError) as info:
        load_yaml_config(bad)
    assert info.value.line == 2
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(FormatError, match="mapping"):
        load_yaml_config(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml_config(empty) == {}
