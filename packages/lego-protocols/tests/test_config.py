import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lego.protocols import Config, ConfigError, FormatError, ModelConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionConfig(Config):
    n_head: int = 4
    n_kv_head: int | None = None
    window: tuple[int, int] | None = None

    def validate(self) -> None:
        super().validate()
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ConfigError("n_kv_head must divide n_head", key="n_kv_head")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyConfig(ModelConfig):
    n_layer: int = 2
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    rope_theta: float | None = None
    layer_types: tuple[str, ...] = ()
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)
    anything: Any = None

    def validate(self) -> None:
        super().validate()
        if self.n_embd % self.attention.n_head:
            raise ConfigError("n_embd must be divisible by attention.n_head", key="n_embd")


BASE = {"vocab_size": 100, "context_length": 16}


def test_defaults_and_round_trip() -> None:
    config = TinyConfig.from_dict(BASE)
    data = config.to_dict()
    assert data["attention"] == {"n_head": 4, "n_kv_head": None, "window": None}
    assert data["layer_types"] == []
    assert TinyConfig.from_dict(data) == config
    json.dumps(data)  # JSON-compatible


def test_conversions() -> None:
    config = TinyConfig.from_dict(
        {
            **BASE,
            "dropout": 0,
            "rope_theta": 10000,
            "layer_types": ["full", "sliding"],
            "attention": {"n_head": 8, "window": [1, 2]},
            "extra": {"a": 1},
        }
    )
    assert isinstance(config.dropout, float)
    assert isinstance(config.rope_theta, float)
    assert config.layer_types == ("full", "sliding")
    assert config.attention == AttentionConfig(n_head=8, window=(1, 2))
    assert config.extra == {"a": 1.0}
    assert isinstance(config.extra["a"], float)


def test_direct_construction_is_validated_too() -> None:
    assert TinyConfig(vocab_size=1, context_length=1, dropout=1).dropout == 1.0
    with pytest.raises(ConfigError, match="n_layer must be int"):
        TinyConfig(vocab_size=1, context_length=1, n_layer="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TinyConfig(100, 16)  # type: ignore[misc] - keyword-only


def test_frozen() -> None:
    config = TinyConfig.from_dict(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_layer = 3  # type: ignore[misc]


def test_unknown_key_suggests_closest() -> None:
    with pytest.raises(ConfigError) as info:
        TinyConfig.from_dict({**BASE, "n_layr": 3}, path="tiny.json")
    err = info.value
    assert err.key == "n_layr"
    assert err.path == "tiny.json"
    assert err.hint == "did you mean 'n_layer'?"
    assert "unknown TinyConfig key 'n_layr'" in str(err)


def test_nested_unknown_key_has_dotted_key() -> None:
    with pytest.raises(ConfigError) as info:
        TinyConfig.from_dict({**BASE, "attention": {"n_heads": 2}})
    assert info.value.key == "attention.n_heads"
    assert info.value.hint == "did you mean 'n_head'?"


def test_nested_validate_error_is_relocated() -> None:
    with pytest.raises(ConfigError, match="n_kv_head must divide n_head") as info:
        TinyConfig.from_dict({**BASE, "attention": {"n_head": 4, "n_kv_head": 3}}, path="c.json")
    assert info.value.key == "attention.n_kv_head"
    assert info.value.path == "c.json"


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="missing required TinyConfig key") as info:
        TinyConfig.from_dict({"vocab_size": 5})
    assert info.value.key == "context_length"


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"n_layer": True}, "n_layer", "must be int"),
        ({"n_layer": 2.0}, "n_layer", "must be int"),
        ({"bias": 1}, "bias", "must be bool"),
        ({"dropout": "0.1"}, "dropout", "must be float"),
        ({"norm": "rms_norm"}, "norm", "must be one of"),
        ({"rope_theta": "big"}, "rope_theta", "must be float"),
        ({"attention": {"n_kv_head": "2"}}, "attention.n_kv_head", "must be int"),
        ({"layer_types": "full"}, "layer_types", "must be tuple"),
        ({"layer_types": ["full", 3]}, "layer_types[1]", "must be str"),
        ({"extra": {"a": "x"}}, "extra.a", "must be float"),
        ({"extra": [1]}, "extra", "must be dict"),
        ({"attention": 3}, "attention", "must be AttentionConfig"),
        ({"attention": {"window": [1, 2, 3]}}, "attention.window", "2 items"),
        ({"vocab_size": 0}, "vocab_size", "at least 1"),
        ({"n_embd": 30}, "n_embd", "divisible"),
    ],
)
def test_type_errors_name_the_key(overrides: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        TinyConfig.from_dict({**BASE, **overrides})
    assert info.value.key == key


def test_literal_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        TinyConfig.from_dict({**BASE, "norm": "rmsnrom"})
    assert info.value.hint == "did you mean 'rmsnorm'?"


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        TinyConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_replace() -> None:
    config = TinyConfig.from_dict(BASE)
    assert config.replace(n_layer=4).n_layer == 4
    assert config.n_layer == 2
    with pytest.raises(ConfigError) as info:
        config.replace(n_lyer=4)
    assert info.value.hint == "did you mean 'n_layer'?"
    with pytest.raises(ConfigError, match="divisible"):
        config.replace(n_embd=30)


def test_json_files(tmp_path: Path) -> None:
    config = TinyConfig.from_dict({**BASE, "layer_types": ["a"], "rope_theta": 5e5})
    path = tmp_path / "config.json"
    config.to_json(path)
    assert path.read_text(encoding="utf-8").endswith("}\n")
    assert TinyConfig.from_json(path) == config


def test_json_file_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"vocab_size": 1,\n "context_length": }', encoding="utf-8")
    with pytest.raises(FormatError) as info:
        TinyConfig.from_json(broken)
    assert info.value.path == str(broken)
    assert info.value.line == 2
    listed = tmp_path / "list.json"
    listed.write_text("[1]", encoding="utf-8")
    with pytest.raises(FormatError, match="JSON object"):
        TinyConfig.from_json(listed)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"vocab_size": 1, "context_length": 1, "n_layr": 1}', encoding="utf-8")
    with pytest.raises(ConfigError) as cfg_info:
        TinyConfig.from_json(wrong)
    assert cfg_info.value.path == str(wrong)
    with pytest.raises(ConfigError, match="not found"):
        TinyConfig.from_json(tmp_path / "missing.json")


def test_unsupported_annotation_is_a_programming_error() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Odd(Config):
        when: complex = 1j

    with pytest.raises(TypeError, match="unsupported annotation"):
        Odd()


@given(
    n_layer=st.integers(min_value=0, max_value=1000),
    dropout=st.floats(allow_nan=False, allow_infinity=False),
    bias=st.booleans(),
    norm=st.sampled_from(["layernorm", "rmsnorm"]),
    layer_types=st.lists(st.text(), max_size=5),
    rope_theta=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_round_trip_property(
    n_layer: int,
    dropout: float,
    bias: bool,
    norm: str,
    layer_types: list[str],
    rope_theta: float | None,
) -> None:
    data = {
        **BASE,
        "n_layer": n_layer,
        "dropout": dropout,
        "bias": bias,
        "norm": norm,
        "layer_types": layer_types,
        "rope_theta": rope_theta,
    }
    config = TinyConfig.from_dict(data)
    assert TinyConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_from_header_turns_config_errors_into_format_errors() -> None:
    from dataclasses import dataclass

    from lego.protocols import Config, FormatError

    @dataclass(frozen=True, kw_only=True)
    class Header(Config):
        version: int
        name: str = "x"

    assert Header.from_header({"version": 1}, path="m.json", what="metadata").version == 1
    with pytest.raises(FormatError) as info:
        Header.from_header({"version": "1"}, path="m.json", what="metadata")
    assert info.value.key == "version"
    assert info.value.path == "m.json"
    assert "metadata is not valid" in info.value.message
    with pytest.raises(FormatError, match="unknown Header key"):
        Header.from_header({"version": 1, "nme": "y"}, path="m.json", what="metadata")
    with pytest.raises(FormatError, match="must hold a JSON object"):
        Header.from_header([1], path="m.json", what="metadata")


@pytest.mark.parametrize(
    ("data", "key", "phrase"),
    [
        ([], None, "must hold a JSON object"),
        ({"format": "other", "version": 1}, "format", "not a thing file: 'format' is 'other'"),
        ({"format": "x"}, "version", "positive integer"),
        ({"format": "x", "version": True}, "version", "positive integer"),
        ({"format": "x", "version": 3}, "version", "reads versions up to 2"),
    ],
)
def test_check_envelope(data: object, key: str | None, phrase: str) -> None:
    from lego.protocols import FormatError, check_envelope

    with pytest.raises(FormatError) as info:
        check_envelope(data, format="x", version=2, path="f.json", what="thing file", reader="r")
    assert info.value.key == key
    assert phrase in info.value.message
    assert info.value.path == "f.json"


def test_from_header_keeps_the_suggestion_of_an_unknown_key() -> None:
    from dataclasses import dataclass

    from lego.protocols import Config, FormatError

    @dataclass(frozen=True, kw_only=True)
    class Header(Config):
        version: int

    with pytest.raises(FormatError) as info:
        Header.from_header({"version": 1, "verison": 2}, path="m.json", what="metadata")
    assert info.value.hint is not None
    assert info.value.hint.startswith("did you mean 'version'?")
