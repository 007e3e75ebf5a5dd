"""quantize_model: which layers become NF4, the quantized model's output, bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from lego.peft import LoraConfig, NF4Linear, apply_lora, quantize_model
from lego.protocols import CompatibilityError, ConfigError, DataError

TinyLM = nn.Module  # conftest's toy model


def _nf4_paths(model: nn.Module) -> list[str]:
    return [path for path, m in model.named_modules() if isinstance(m, NF4Linear)]


def test_default_quantizes_every_linear_layer_but_the_head(
    make_tiny: Callable[..., TinyLM],
) -> None:
    model = make_tiny()
    head = model.lm_head
    assert quantize_model(model) is model
    expected = [
        f"blocks.{i}.{name}" for i in range(2) for name in ("q_proj", "v_proj", "up", "down")
    ]
    assert _nf4_paths(model) == expected
    assert model.lm_head is head
    assert model.blocks[0].v_proj.bias is not None  # biases kept


def test_quantized_model_computes_with_the_dequantized_weights(
    make_tiny: Callable[..., TinyLM], ids: Tensor
) -> None:
    dense = make_tiny()
    model = quantize_model(make_tiny())
    for path in _nf4_paths(model):
        layer = model.get_submodule(path)
        assert isinstance(layer, NF4Linear)
        with torch.no_grad():
            dense.get_submodule(path).weight.copy_(layer.dequantized_weight())
    assert torch.equal(model(ids), dense(ids))
    original = make_tiny()(ids)
    assert not torch.equal(model(ids), original)
    torch.testing.assert_close(model(ids), original, rtol=0.0, atol=0.5)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["q_proj"], ["blocks.0.q_proj", "blocks.1.q_proj"]),
        ("blocks\\.1\\.(q_proj|up)", ["blocks.1.q_proj", "blocks.1.up"]),
        (["lm_head", "blocks.0.up"], ["blocks.0.up", "lm_head"]),
    ],
)
def test_target_modules(
    make_tiny: Callable[..., TinyLM], targets: str | list[str], expected: list[str]
) -> None:
    model = quantize_model(make_tiny(), target_modules=targets)
    assert _nf4_paths(model) == expected


def test_settings_reach_the_layers(make_tiny: Callable[..., TinyLM]) -> None:
    model = quantize_model(
        make_tiny(), block_size=32, double_quant=False, compute_dtype=torch.float32
    )
    layer = model.blocks[0].up
    assert isinstance(layer, NF4Linear)
    assert (layer.block_size, layer.double_quant, layer.compute_dtype) == (32, False, torch.float32)


def test_hf_names(make_tiny: Callable[..., TinyLM]) -> None:
    model = quantize_model(make_tiny(hf=True), target_modules=["self_attn.v_proj"], hf_names=True)
    assert _nf4_paths(model) == ["blocks.0.v_proj", "blocks.1.v_proj"]
    with pytest.raises(CompatibilityError, match="HFNamedModel"):
        quantize_model(make_tiny(), hf_names=True)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (
            ["o_proj"],
            r"'o_proj' matches no module(.|\n)*end with: down, lm_head, q_proj, up, v_proj",
        ),
        (["norm"], "not linear layers: blocks.0.norm \\(LayerNorm\\)"),
        ([], "empty"),
        (3, "string or a list"),
    ],
)
def test_bad_targets(make_tiny: Callable[..., TinyLM], targets: object, match: str) -> None:
    model = make_tiny()
    with pytest.raises(ConfigError, match=match):
        quantize_model(model, target_modules=targets)  # type: ignore[arg-type]
    assert _nf4_paths(model) == []


def test_a_tied_head_is_refused(make_tiny: Callable[..., TinyLM]) -> None:
    model = make_tiny(tied=True)
    with pytest.raises(ConfigError, match="lm_head is shared"):
        quantize_model(model, target_modules=["lm_head"])
    assert _nf4_paths(quantize_model(model)) != []  # the default leaves the head alone


def test_quantizing_twice_or_after_apply_lora_is_refused(make_tiny: Callable[..., TinyLM]) -> None:
    model = quantize_model(make_tiny())
    with pytest.raises(ConfigError, match="quantized already"):
        quantize_model(model)
    adapted = apply_lora(make_tiny(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="holds adapters"):
        quantize_model(adapted)
    with pytest.raises(ConfigError, match="holds adapters"):
        quantize_model(adapted.model)


def test_non_finite_weight_leaves_the_model_unchanged(make_tiny: Callable[..., TinyLM]) -> None:
    model = make_tiny()
    with torch.no_grad():
        model.blocks[1].down.weight[0, 0] = float("nan")
    with pytest.raises(DataError, match=r"blocks\.1\.down has NaN"):
        quantize_model(model)
    assert _nf4_paths(model) == []


def test_bad_settings(make_tiny: Callable[..., TinyLM]) -> None:
    with pytest.raises(ConfigError, match="block_size"):
        quantize_model(make_tiny(), block_size=63)
    with pytest.raises(ConfigError, match="double_quant"):
        quantize_model(make_tiny(), double_quant=1)  # type: ignore[arg-type]


def test_fused_projection_is_an_ordinary_linear_layer() -> None:
    """A fused q/k/v projection (lego-arch's qkv_proj, GPT-2's c_attn) quantizes whole."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"qkv_proj": nn.Linear(64, 3 * 64)})
    fused = model["qkv_proj"].weight.detach().clone()
    quantize_model(model)
    layer = model["qkv_proj"]
    assert isinstance(layer, NF4Linear)
    assert layer.out_features == 192
    x = torch.randn(2, 64)
    torch.testing.assert_close(
        layer(x), F.linear(x, fused, model["qkv_proj"].bias), atol=0.5, rtol=0
    )


def _mapped(path: str) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == path:
                start, _, end = fields[0].partition("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_tensors_left_on_a_file_map_are_copied_and_the_map_released(
    make_tiny: Callable[..., TinyLM], ids: Tensor, tmp_path: Path
) -> None:
    model = make_tiny(tied=True)
    in_memory = make_tiny(tied=True)
    in_memory.load_state_dict(model.state_dict())
    file = tmp_path / "model.safetensors"
    save_file(
        {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}, str(file)
    )
    with safe_open(str(file), framework="pt") as handle:  # lazy views, as from_hf loads
        for name, parameter in model.named_parameters():  # the tied head once
            parameter.data = handle.get_tensor(name)
    mapped = _mapped(str(file))
    assert any(s <= model.token_embedding.weight.data_ptr() < e for s, e in mapped)  # a file view
    quantize_model(model)
    assert model.lm_head.weight is model.token_embedding.weight  # the tie holds
    assert _mapped(str(file)) == []  # nothing views the file any more: the map is gone
    assert torch.equal(model(ids), quantize_model(in_memory)(ids))
