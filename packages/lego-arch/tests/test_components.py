"""The component registries: names resolve to bricks; custom bricks register by name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lego.arch import FFNS, NORMS, POSITIONS, Positions, build, get_preset
from lego.arch.components import register_ffn, register_norm, register_positions
from lego.arch.config import DecoderConfig
from lego.layers import LayerNorm, SinusoidalPositionalEmbedding
from lego.protocols import ConfigError


@pytest.fixture
def restore_registries() -> Iterator[None]:
    saved = (dict(NORMS), dict(FFNS), dict(POSITIONS))
    yield
    for table, old in zip((NORMS, FFNS, POSITIONS), saved, strict=True):
        table.clear()
        table.update(old)


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


def test_moe_with_bias_refused() -> None:
    with pytest.raises(ConfigError, match="mlp_bias"):
        build(get_preset("qwen3-moe-tiny").replace(mlp_bias=True))
