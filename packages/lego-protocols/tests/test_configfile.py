from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from lego.protocols import Config, ConfigError, FormatError
from lego.protocols.configfile import (
    apply_overrides,
    load_config,
    parse_override,
    read_config_file,
    value_from_text,
)


@dataclass(frozen=True, kw_only=True)
class Optim(Config):
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)

    def validate(self) -> None:
        super().validate()
        if self.lr <= 0:
            raise ConfigError("lr must be > 0", key="lr")


@dataclass(frozen=True, kw_only=True)
class Run(Config):
    name: str = "run"
    steps: int = 10
    workers: int | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    verbose: bool = False
    optim: Optim = field(default_factory=Optim)
    extra: dict[str, Any] = field(default_factory=dict)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_config_file_reads_floats_without_dot(tmp_path: Path) -> None:
    data = read_config_file(write(tmp_path, "optim:\n  lr: 1e-3\nsteps: 5\n"))
    assert data == {"optim": {"lr": 0.001}, "steps": 5}


def test_read_config_file_empty_is_empty(tmp_path: Path) -> None:
    assert read_config_file(write(tmp_path, "# nothing\n")) == {}


def test_read_config_file_refuses_duplicate_keys_with_line(tmp_path: Path) -> None:
    path = write(tmp_path, "steps: 1\nname: a\nsteps: 2\n")
    with pytest.raises(FormatError, match="given twice") as info:
        read_config_file(path)
    assert info.value.line == 3
    assert info.value.path == str(path)
    assert "line 1" in str(info.value.hint)


def test_read_config_file_bad_yaml_has_line(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not valid YAML") as info:
        read_config_file(write(tmp_path, "a: 1\nb: [1, 2\n"))
    assert info.value.line is not None


def test_read_config_file_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="mapping"):
        read_config_file(write(tmp_path, "- 1\n- 2\n"))


def test_read_config_file_missing_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        read_config_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("item", "phrase"),
    [("steps", "not key=value"), ("=3", "not key=value"), ("steps=", "has no value"),
     ("a..b=1", "dotted name"), ("steps= ", "has no value")],
)  # fmt: skip
def test_parse_override_errors(item: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        parse_override(item)


def test_parse_override_keeps_equals_in_value() -> None:
    assert parse_override("name=a=b") == ("name", "a=b")


@pytest.mark.parametrize(
    ("text", "hint", "expected"),
    [
        ("1e-3", float, 0.001),
        ("3", float, 3.0),
        ("12", int, 12),
        ("yes", bool, True),
        ("False", bool, False),
        ("123", str, "123"),
        ("'null'", str, "null"),
        ("null", str, "null"),
        ("null", int | None, None),
        ("~", str | None, None),
        ("7", int | None, 7),
        ("bf16", Literal["fp32", "bf16"], "bf16"),
        ("[0.9, 0.99]", tuple[float, float], [0.9, 0.99]),
        ("{a: 1}", dict[str, Any], {"a": 1}),
        ("[1, 2]", Any, [1, 2]),
        ("'3'", Any, "3"),
        ("3", int | str, 3),
        ("x", int | str, "x"),
    ],
)
def test_value_from_text_converts_by_annotation(text: str, hint: Any, expected: Any) -> None:
    assert value_from_text(text, hint, key="k") == expected


@pytest.mark.parametrize(
    ("text", "hint", "phrase"),
    [
        ("1.5", int, "not a valid int"),
        ("maybe", bool, "not a valid bool"),
        ("fast", float, "not a valid float"),
        ("bf61", Literal["fp32", "bf16"], "did you mean 'bf16'"),
        ("x", int | None, "not a valid int | None"),
    ],
)
def test_value_from_text_errors(text: str, hint: Any, phrase: str) -> None:
    with pytest.raises(ConfigError) as info:
        value_from_text(text, hint, key="k")
    assert phrase in str(info.value)
    assert info.value.key == "k"


def test_apply_overrides_converts_by_field_and_nests() -> None:
    data = apply_overrides(
        Run, {"optim": {"betas": [0.8, 0.9]}}, ["optim.lr=1e-3", "name=123", "workers=null"]
    )
    assert data == {"optim": {"betas": [0.8, 0.9], "lr": 0.001}, "name": "123", "workers": None}


def test_apply_overrides_does_not_modify_input() -> None:
    original = {"optim": {"lr": 1.0}}
    apply_overrides(Run, original, ["optim.lr=2"])
    assert original == {"optim": {"lr": 1.0}}


def test_apply_overrides_into_mapping_field_parses_yaml() -> None:
    data = apply_overrides(Run, {}, ["extra.d_model=64", "extra.name=x"])
    assert data == {"extra": {"d_model": 64, "name": "x"}}


def test_unknown_key_names_full_key_once_and_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Run, {}, ["optim.lrr=1"])
    assert info.value.key == "optim.lrr"
    assert info.value.hint == "did you mean 'lr'?"
    assert "optim.optim" not in str(info.value)


def test_descending_into_a_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(Run, {}, ["steps.x=1"])


def test_load_config_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "steps: 5\noptim:\n  lr: 0.1\n")
    run = load_config(Run, path, ["steps=7"], defaults={"name": "flag", "steps": 1})
    assert (run.name, run.steps, run.optim.lr) == ("flag", 7, 0.1)


def test_load_config_validation_error_key_is_not_doubled(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(Run, path)
    assert info.value.key == "optim.lr"
    assert info.value.path == str(path)


def test_null_where_a_string_is_expected_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, "name: null\n")
    with pytest.raises(ConfigError) as info:
        load_config(Run, path)
    assert "name is null" in str(info.value)
    assert "leave the key out" in str(info.value.hint)


def test_override_error_has_no_file_path(tmp_path: Path) -> None:
    path = write(tmp_path, "steps: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(Run, path, ["stepz=1"])
    assert info.value.path is None
    assert info.value.hint == "did you mean 'steps'?"


def test_missing_pyyaml_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ConfigError, match="pip install PyYAML"):
        read_config_file(write(tmp_path, "a: 1\n"))
    assert apply_overrides(Run, {}, ["steps=3"]) == {"steps": 3}
