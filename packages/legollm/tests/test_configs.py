"""The shipped configs, --config resolution and overrides through the one config reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from lego.protocols import ConfigError, FormatError
from lego.recipes import PipelineConfig, PretrainConfig, find_config, read_recipe_config
from lego.recipes.configs import shipped_configs

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_configs_are_listed_and_valid() -> None:
    assert {"tiny", "gpt2-124m"} <= set(shipped_configs())
    for name in shipped_configs():
        config = read_recipe_config(PretrainConfig, name, [])
        assert config.max_steps > 0


def test_example_pipelines_are_valid() -> None:
    for path in sorted((ROOT / "examples" / "pipelines").glob("*.yaml")):
        config = read_recipe_config(PipelineConfig, path, [])
        assert config.report.prompts


def test_overrides_are_converted_by_the_field_type() -> None:
    config = read_recipe_config(
        PretrainConfig,
        "tiny",
        ["optim.lr=1e-3", "sample.prompt=123", "data.val_fraction=1e-2", "max_steps=70"],
    )
    assert config.optim.lr == 1e-3
    assert config.sample.prompt == "123"
    assert config.data.val_fraction == 0.01
    assert config.max_steps == 70


def test_model_overrides_reach_the_mapping() -> None:
    config = read_recipe_config(PretrainConfig, "tiny", ["model.overrides.n_layers=3"])
    assert config.model.overrides["n_layers"] == 3


@pytest.mark.parametrize(
    ("override", "key", "phrase"),
    [
        ("max_step=3", "max_step", "did you mean 'max_steps'?"),
        ("data.batch_sise=3", "data.batch_sise", "did you mean 'batch_size'?"),
        ("optim.lr=", "optim.lr", "has no value"),
        ("max_steps=many", "max_steps", "not a valid int"),
    ],
)
def test_bad_overrides_name_the_full_key_once(override: str, key: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as info:
        read_recipe_config(PretrainConfig, "tiny", [override])
    assert info.value.key == key
    assert phrase in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=0", "data.batch_size"),
        ("report.temperature=0", "report.temperature"),
        ("report.top_p=1.5", "report.top_p"),
        ("model.preset=''", "model.preset"),
    ],
)
def test_validation_errors_print_the_section_once(override: str, key: str) -> None:
    config = ROOT / "examples" / "pipelines" / "tiny.yaml"
    with pytest.raises(ConfigError) as info:
        read_recipe_config(PipelineConfig, config, [override])
    assert info.value.key == key
    assert f"{key.split('.')[0]}.{key}" not in str(info.value)


def test_find_config_names_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        find_config("tinyy")
    with pytest.raises(ConfigError, match="folder"):
        find_config(tmp_path)
    assert find_config("tiny.yaml").name == "tiny.yaml"


def test_bad_yaml_is_a_format_error_with_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 3\noptim: [\n")
    with pytest.raises(FormatError) as info:
        read_recipe_config(PretrainConfig, bad, [])
    assert info.value.line is not None


def test_a_key_given_twice_in_the_file_is_refused(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("max_steps: 3\nmodel: {preset: gpt2-tiny}\nmax_steps: 4\n")
    with pytest.raises(FormatError, match="given twice") as info:
        read_recipe_config(PretrainConfig, twice, [])
    assert info.value.line == 3
