"""LoraConfig: PEFT's field names, its checks, scaling and the rank / alpha patterns."""

from __future__ import annotations

import math

import pytest

from lego.peft import LoraConfig
from lego.peft.config import pattern_matches
from lego.protocols import ConfigError


def test_defaults_are_pefts() -> None:
    config = LoraConfig(target_modules=["q_proj"])
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (8, 8.0, 0.0, "none")
    assert config.init_lora_weights is True
    assert config.modules_to_save is None
    assert config.target_modules == ("q_proj",)


def test_scaling_plain_and_rank_stabilized() -> None:
    assert LoraConfig(target_modules="all-linear").scaling_for(r=4, lora_alpha=8) == 2.0
    rs = LoraConfig(target_modules="all-linear", use_rslora=True)
    assert rs.scaling_for(r=4, lora_alpha=8) == 8 / math.sqrt(4)


def test_patterns_override_rank_and_alpha_by_name_tail() -> None:
    config = LoraConfig(
        target_modules="all-linear",
        r=8,
        lora_alpha=16,
        rank_pattern={"q_proj": 2, r"layers\.1\..*v_proj": 3},
        alpha_pattern={"v_proj": 5},
    )
    assert config.rank_and_alpha("model.layers.0.self_attn.q_proj") == (2, 16.0)
    assert config.rank_and_alpha("model.layers.1.self_attn.v_proj") == (3, 5.0)
    assert config.rank_and_alpha("model.layers.0.mlp.up_proj") == (8, 16.0)
    assert pattern_matches("q_proj", "q_proj")
    assert not pattern_matches("proj", "layers.0.q_proj")  # whole dot-separated tail only


def test_round_trips_through_a_dict() -> None:
    config = LoraConfig(
        target_modules=["a", "b"],
        r=4,
        use_dora=True,
        modules_to_save=["lm_head"],
        rank_pattern={"a": 2},
        init_lora_weights="gaussian",
    )
    assert LoraConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"r": 0}, "r must be at least 1"),
        ({"r": -3}, "r must be at least 1"),
        ({"lora_alpha": 0.0}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"target_modules": []}, "at least one module"),
        ({"target_modules": ""}, "empty pattern"),
        ({"target_modules": "q_proj("}, "not a valid regular expression"),
        ({"rank_pattern": {"q": 0}}, "rank_pattern.q"),
        ({"alpha_pattern": {"q": -1.0}}, "alpha_pattern.q"),
        ({"modules_to_save": [""]}, "empty name"),
        ({"bias": "some"}, "bias must be one of"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
    ],
)
def test_bad_values_are_config_errors(fields: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"target_modules": ["q_proj"], **fields}
    with pytest.raises(ConfigError, match=message):
        LoraConfig(**settings)  # type: ignore[arg-type]
