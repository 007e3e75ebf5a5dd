"""The component registries: names resolve to bricks; custom bricks register by name."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lego.arch import FFNS, NORMS, POSITIONS, Component, Positions, build, get_preset
from lego.arch import defaults as component_table
from lego.arch.components import register_ffn, register_norm, register_positions
from lego.arch.config import DecoderConfig
from lego.layers import MLP, GatedMLP, LayerNorm, SinusoidalPositionalEmbedding
from lego.protocols import ConfigError


@pytest.fixture
def restore_registries() -> Iterator[None]:
    """Undo the registrations a test makes (builders and tied defaults)."""
    registries = (NORMS, FFNS, POSITIONS)
    builders = [dict(r._builders) for r in registries]
    defaults = copy.deepcopy(component_table._DEFAULTS)
    yield
    for registry, saved in zip(registries, builders, strict=True):
        registry._builders.clear()
        registry._builders.update(saved)
    component_table._DEFAULTS.clear()
    component_table._DEFAULTS.update(defaults)


def test_builtin_names() -> None:
    assert set(NORMS) == {"layernorm", "rmsnorm"}
    assert set(FFNS) == {"gelu_mlp", "swiglu", "geglu", "moe"}
    assert set(POSITIONS) == {"learned", "rope", "none"}


@pytest.mark.usefixtures("restore_registries")
def test_register_a_custom_norm_and_build_with_it() -> None:
    register_norm("layernorm_nobias", lambda config, dim: LayerNorm(dim=dim, bias=False))
    model = build("gpt2-tiny", norm="layernorm_nobias")
    assert model.final_norm.bias is None
    assert "final_norm.bias" not in model.state_dict()
    with pytest.raises(ConfigError, match="already registered"):
        register_norm("layernorm_nobias", lambda config, dim: nn.Identity())
    register_norm("layernorm_nobias", lambda config, dim: nn.Identity(), replace=True)


@pytest.mark.usefixtures("restore_registries")
def test_register_ffn_and_positions() -> None:
    def double_mlp(config: DecoderConfig) -> nn.Module:
        return nn.Sequential(
            nn.Linear(config.d_model, 2 * config.d_model),
            nn.GELU(),
            nn.Linear(2 * config.d_model, config.d_model),
        )

    def sinusoidal(config: DecoderConfig) -> Positions:
        table = SinusoidalPositionalEmbedding(
            max_seq_len=config.context_length, d_model=config.d_model
        )
        return Positions(embedding=table, rotary=None)

    register_ffn("double_mlp", double_mlp)
    register_positions("sinusoidal", sinusoidal)
    model = build("gpt2-tiny", ffn="double_mlp", positions="sinusoidal").eval()
    assert isinstance(model.blocks[0].feed_forward, nn.Sequential)
    assert isinstance(model.position_embedding, SinusoidalPositionalEmbedding)
    assert model(torch.randint(0, 1000, (2, 5))).shape == (2, 5, 1000)


def test_register_errors() -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        register_norm("", lambda config, dim: nn.Identity())
    with pytest.raises(ConfigError, match="not callable"):
        register_ffn("broken", 3)  # type: ignore[arg-type]


def test_no_positions() -> None:
    model = build("llama-tiny", positions="none").eval()
    assert model.position_embedding is None
    assert model.blocks[0].attention.rotary is None


def test_moe_with_bias_refused_by_the_config() -> None:
    """A cross-field rule: the config refuses it before any builder runs."""
    with pytest.raises(ConfigError, match="mlp_bias") as info:
        get_preset("qwen3-moe-tiny").replace(mlp_bias=True)
    assert info.value.key == "mlp_bias"


def test_registries_carry_builders_and_defaults() -> None:
    assert isinstance(NORMS["rmsnorm"], Component)
    assert NORMS["rmsnorm"].defaults == {"norm_bias": False}
    assert NORMS["layernorm"].defaults == {"norm_bias": True}
    assert FFNS["swiglu"].defaults == {"activation": "silu", "mlp_bias": True}
    assert FFNS["geglu"].defaults == {"activation": "gelu_tanh", "mlp_bias": True}
    assert FFNS["gelu_mlp"].defaults == {"activation": "gelu_tanh", "mlp_bias": True}
    assert FFNS["moe"].defaults == {"activation": "silu", "mlp_bias": False}
    assert POSITIONS["rope"].defaults == {}
    with pytest.raises(KeyError):
        NORMS["batchnorm"]
    with pytest.raises(TypeError):  # read-only: register_* is the one way in
        NORMS["x"] = NORMS["rmsnorm"]  # type: ignore[index]


def test_builders_use_the_layers_build_methods() -> None:
    gpt2 = build("gpt2-tiny")
    mlp = gpt2.blocks[0].feed_forward
    assert isinstance(mlp, MLP)
    assert (mlp.d_model, mlp.d_ff, mlp.activation) == (64, 256, "gelu_tanh")
    llama = build("llama-tiny")
    ffn = llama.blocks[0].feed_forward
    assert isinstance(ffn, GatedMLP)
    assert ffn.activation == "silu"
    assert ffn.gate_proj.bias is None


@pytest.mark.usefixtures("restore_registries")
def test_registered_defaults_fill_the_tied_fields() -> None:
    def bias_free(config: DecoderConfig, dim: int) -> nn.Module:
        return LayerNorm(dim=dim, eps=config.norm_eps, bias=bool(config.norm_bias))

    register_norm("layernorm_nobias", bias_free, defaults={"norm_bias": False})
    config = get_preset("gpt2-tiny").replace(norm="layernorm_nobias")
    assert config.norm_bias is False  # followed the new norm's default
    assert build(config).final_norm.bias is None
    register_ffn("relu_mlp", FFNS["gelu_mlp"].builder, defaults={"activation": "relu"})
    assert get_preset("gpt2-tiny").replace(ffn="relu_mlp").activation == "relu"


@pytest.mark.usefixtures("restore_registries")
def test_defaults_of_fields_the_kind_does_not_tie_are_refused() -> None:
    with pytest.raises(ConfigError, match="not a config field tied to norm") as info:
        register_norm("odd", lambda config, dim: nn.Identity(), defaults={"activation": "silu"})
    assert info.value.key == "activation"
    with pytest.raises(ConfigError, match="must be a bool"):
        register_norm("odd", lambda config, dim: nn.Identity(), defaults={"norm_bias": 1})
    with pytest.raises(ConfigError, match="no config field is tied"):
        register_positions("odd", lambda config: Positions(None, None), defaults={"x": 1})
    assert "odd" not in NORMS
    assert "odd" not in POSITIONS
