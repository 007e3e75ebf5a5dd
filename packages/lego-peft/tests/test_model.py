"""apply_lora / LoraModel on toy models: the adapted model, freezing, disable, merge, unload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lego.peft import (
    CachedLoraModel,
    LoraConfig,
    LoraEmbedding,
    LoraLinear,
    LoraModel,
    ModulesToSaveWrapper,
    apply_lora,
)
from lego.protocols import (
    Adapter,
    CachedCausalLM,
    CausalLM,
    CompatibilityError,
    ConfigError,
)


def _trainable(model: nn.Module) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def _randomize(adapted: LoraModel) -> None:
    """Give every trainable tensor a non-zero value (so the adapter changes the output)."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in adapted.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def test_the_adapted_model_is_still_a_causal_lm_and_an_adapter(tiny: Any, ids: Tensor) -> None:
    expected = tiny(ids)
    adapted = apply_lora(tiny, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert isinstance(adapted, CachedLoraModel)
    assert isinstance(adapted, CausalLM)
    assert isinstance(adapted, CachedCausalLM)
    assert isinstance(adapted, Adapter)
    assert adapted.config is tiny.config
    assert adapted.new_kv_cache(2, 9) == ("cache", 2, 9)
    assert torch.equal(adapted(ids), expected)  # B starts at zero
    assert isinstance(tiny.blocks[0].q_proj, LoraLinear)
    assert adapted.adapter_config["target_modules"] == ["q_proj", "v_proj"]


def test_a_model_without_a_cache_gives_a_plain_lora_model() -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    adapted = apply_lora(model, LoraConfig(r=1, target_modules=["0"]))
    assert type(adapted) is LoraModel
    assert not isinstance(adapted, CachedCausalLM)
    assert not isinstance(adapted, CausalLM)  # no config: the base is none either


def test_only_the_adapter_trains(tiny: Any) -> None:
    adapted = apply_lora(tiny, LoraConfig(r=2, target_modules="all-linear"))
    assert all("lora_" in name for name in _trainable(adapted))
    assert len(_trainable(adapted)) == 2 * 8  # A and B of 4 linear layers in 2 blocks
    assert not isinstance(tiny.lm_head, LoraLinear)  # the output head is not "linear" here


@pytest.mark.parametrize(
    ("bias", "expected"),
    [
        ("none", []),
        (
            "lora_only",
            ["model.blocks.0.v_proj.base_layer.bias", "model.blocks.1.v_proj.base_layer.bias"],
        ),
        ("all", None),
    ],
)
def test_bias_settings(tiny: Any, bias: str, expected: list[str] | None) -> None:
    adapted = apply_lora(tiny, LoraConfig(r=2, target_modules=["v_proj"], bias=bias))  # type: ignore[arg-type]
    biases = [n for n in _trainable(adapted) if n.endswith(".bias")]
    if expected is None:
        assert len(biases) == 2 * 4 + 1  # v_proj, norm, up, down per block; final_norm
    else:
        assert biases == expected
    assert sorted(adapted.biases) == sorted(
        n.replace("model.", "", 1).replace(".base_layer", "") for n in biases
    )


def test_modules_to_save_train_a_copy(tiny: Any, ids: Tensor) -> None:
    original = tiny.lm_head
    adapted = apply_lora(
        tiny, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head", "final_norm"])
    )
    wrapper = tiny.lm_head
    assert isinstance(wrapper, ModulesToSaveWrapper)
    assert wrapper.original_module is original
    assert wrapper.weight is wrapper.modules_to_save.weight  # attributes of the copy
    assert "model.lm_head.modules_to_save.weight" in _trainable(adapted)
    assert not original.weight.requires_grad
    with adapted.disabled():
        assert wrapper.weight is original.weight
        base = adapted(ids)
    _randomize(adapted)
    assert not torch.equal(adapted(ids), base)
    with adapted.disabled():
        assert torch.equal(adapted(ids), base)


def test_modules_to_save_are_not_adapted_and_must_exist(
    tiny: Any, make_tiny: Callable[..., Any]
) -> None:
    adapted = apply_lora(
        tiny, LoraConfig(r=2, target_modules="all-linear", modules_to_save=["blocks.1"])
    )
    assert sorted(adapted.lora_layers) == [
        f"blocks.0.{m}" for m in ("down", "q_proj", "up", "v_proj")
    ]
    assert list(adapted.saved_modules) == ["blocks.1"]
    with pytest.raises(ConfigError, match="'score' matches no module"):
        apply_lora(
            make_tiny(), LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["score"])
        )
    # PEFT's rule is a plain suffix: "head" names lm_head
    saved = apply_lora(
        make_tiny(), LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["head"])
    )
    assert list(saved.saved_modules) == ["lm_head"]


def test_embedding_targets_get_embedding_layers(tiny: Any, ids: Tensor) -> None:
    adapted = apply_lora(
        tiny, LoraConfig(r=2, target_modules=["token_embedding"], init_lora_weights=False)
    )
    assert isinstance(tiny.token_embedding, LoraEmbedding)
    with adapted.disabled():
        base = adapted(ids)
    assert not torch.equal(adapted(ids), base)


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_unmerge_and_disable(tiny: Any, ids: Tensor, use_dora: bool) -> None:
    config = LoraConfig(
        r=2, target_modules="all-linear", use_dora=use_dora, init_lora_weights=False
    )
    adapted = apply_lora(tiny, config)
    before = {n: t.clone() for n, t in adapted.state_dict().items()}
    with adapted.disabled():
        base = adapted(ids)
    adapted_out = adapted(ids)
    adapted.merge()
    assert adapted.merged
    torch.testing.assert_close(adapted(ids), adapted_out)
    with adapted.disabled():
        assert not adapted.merged
        assert torch.equal(adapted(ids), base)
    assert adapted.merged
    adapted.unmerge()
    for name, tensor in adapted.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    with pytest.raises(ConfigError, match="not merged"):
        adapted.unmerge()
    adapted.merge()
    with pytest.raises(ConfigError, match="already merged"):
        adapted.merge()


def test_merging_a_tied_table_warns(make_tiny: Callable[..., Any]) -> None:
    model = make_tiny(tied=True)
    adapted = apply_lora(model, LoraConfig(r=2, target_modules=["token_embedding"]))
    with pytest.warns(UserWarning, match="tied output head"):
        adapted.merge()
    adapted.unmerge()
    assert model.lm_head.weight is model.token_embedding.weight


def test_merge_and_unload_gives_the_plain_model(tiny: Any, ids: Tensor) -> None:
    flags = {n: p.requires_grad for n, p in tiny.named_parameters()}
    adapted = apply_lora(
        tiny,
        LoraConfig(
            r=2, target_modules=["q_proj", "up"], modules_to_save=["final_norm"], use_dora=True
        ),
    )
    _randomize(adapted)
    expected = adapted(ids)
    plain = adapted.merge_and_unload()
    assert plain is tiny
    assert all(
        type(m) in (nn.Linear, nn.LayerNorm, nn.Embedding, nn.ModuleList)
        or m is tiny
        or type(m).__name__ == "Block"
        for m in plain.modules()
    )
    torch.testing.assert_close(plain(ids), expected)
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == flags
    with pytest.raises(ConfigError, match="unloaded"):
        adapted(ids)


def test_unload_gives_the_base_back(tiny: Any, ids: Tensor) -> None:
    expected = tiny(ids)
    adapted = apply_lora(
        tiny, LoraConfig(r=2, target_modules="all-linear", modules_to_save=["lm_head"])
    )
    _randomize(adapted)
    adapted.merge()
    plain = adapted.unload()
    assert torch.equal(plain(ids), expected)
    assert all(p.requires_grad for p in plain.parameters())


def test_apply_twice_is_refused(tiny: Any) -> None:
    adapted = apply_lora(tiny, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="already holds adapters"):
        apply_lora(tiny, LoraConfig(r=2, target_modules=["v_proj"]))
    with pytest.raises(ConfigError, match="already holds adapters"):
        apply_lora(adapted, LoraConfig(r=2, target_modules=["v_proj"]))


def test_patterns_give_per_layer_ranks(tiny: Any) -> None:
    adapted = apply_lora(
        tiny,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules="all-linear",
            rank_pattern={r"blocks\.1\.q_proj": 1},
            alpha_pattern={"down": 2},
        ),
    )
    assert adapted.lora_layers["blocks.1.q_proj"].r == 1
    assert adapted.lora_layers["blocks.0.q_proj"].r == 4
    assert adapted.lora_layers["blocks.0.down"].scaling == 2 / 4


def test_hf_names_match_transformers_names(hf_tiny: Any, make_tiny: Callable[..., Any]) -> None:
    adapted = apply_lora(
        hf_tiny,
        LoraConfig(r=2, target_modules=["c_fc", "q_proj"], modules_to_save=["model.norm"]),
        hf_names=True,
    )
    assert sorted(adapted.lora_layers) == [
        "blocks.0.q_proj",
        "blocks.0.up",
        "blocks.1.q_proj",
        "blocks.1.up",
    ]
    assert list(adapted.saved_modules) == ["final_norm"]
    assert adapted.module_names["blocks.0.up"] == "model.layers.0.mlp.c_fc"
    with pytest.raises(ConfigError, match="'up' matches no module"):
        apply_lora(make_tiny(hf=True), LoraConfig(r=2, target_modules=["up"]), hf_names=True)
    with pytest.raises(CompatibilityError, match="HFNamedModel"):
        apply_lora(make_tiny(), LoraConfig(r=2, target_modules=["q_proj"]), hf_names=True)
