"""QLoRA: LoRA / DoRA on an NF4 base: training, merging (higher precision by default),
re-quantizing only when asked (with the error reported), exact unmerge, PEFT's format."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lego.peft import (
    LoraConfig,
    LoraLinear,
    LoraModel,
    NF4Linear,
    RequantizationWarning,
    apply_lora,
    load_adapter,
    merge_and_requantize,
    quantize_model,
)
from lego.peft.quantize import LayerError, QuantizationReport

TinyLM = nn.Module  # conftest's toy model

TARGETS = ["q_proj", "v_proj", "up"]


def _qlora(make_tiny: Callable[..., TinyLM], **settings: object) -> LoraModel:
    model = quantize_model(make_tiny())
    torch.manual_seed(1)
    config = LoraConfig(r=2, target_modules=TARGETS, init_lora_weights=False, **settings)  # type: ignore[arg-type]
    return apply_lora(model, config)


def _dense_twin(make_tiny: Callable[..., TinyLM], **settings: object) -> LoraModel:
    """The same adapter on a dense model holding the NF4 layers' dequantized weights."""
    quantized = quantize_model(make_tiny())
    dense = make_tiny()
    for path, module in quantized.named_modules():
        if isinstance(module, NF4Linear):
            with torch.no_grad():
                dense.get_submodule(path).weight.copy_(module.dequantized_weight())
    torch.manual_seed(1)
    config = LoraConfig(r=2, target_modules=TARGETS, init_lora_weights=False, **settings)  # type: ignore[arg-type]
    return apply_lora(dense, config)


def _buffers(model: nn.Module) -> dict[str, Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


@pytest.mark.parametrize("use_dora", [False, True])
def test_adapters_train_on_the_nf4_base_like_on_its_dequantized_twin(
    make_tiny: Callable[..., TinyLM], ids: Tensor, use_dora: bool
) -> None:
    adapted = _qlora(make_tiny, use_dora=use_dora)
    twin = _dense_twin(make_tiny, use_dora=use_dora)
    assert all(isinstance(layer.base_layer, NF4Linear) for layer in adapted.lora_layers.values())
    trainable = sorted(n for n, p in adapted.named_parameters() if p.requires_grad)
    assert trainable == sorted(n for n, p in twin.named_parameters() if p.requires_grad)
    assert all("lora_" in name for name in trainable)
    torch.testing.assert_close(adapted(ids), twin(ids))
    adapted(ids).square().mean().backward()
    twin(ids).square().mean().backward()
    grads = dict(adapted.named_parameters())
    for name, parameter in twin.named_parameters():
        if parameter.requires_grad:
            grad = grads[name].grad
            assert grad is not None, name
            assert bool(grad.abs().sum() > 0), name
            torch.testing.assert_close(grad, parameter.grad, rtol=1e-4, atol=1e-6)


def test_an_optimizer_step_changes_only_the_adapter(
    make_tiny: Callable[..., TinyLM], ids: Tensor
) -> None:
    adapted = _qlora(make_tiny)
    before = _buffers(adapted)
    lora_before = {n: p.detach().clone() for n, p in adapted.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    adapted(ids).square().mean().backward()
    optimizer.step()
    after = _buffers(adapted)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(
        not torch.equal(p, lora_before[n]) for n, p in adapted.named_parameters() if p.requires_grad
    )


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_then_unmerge_restores_exactly(
    make_tiny: Callable[..., TinyLM], ids: Tensor, use_dora: bool
) -> None:
    adapted = _qlora(make_tiny, use_dora=use_dora)
    out = adapted(ids)
    state = {k: v.clone() for k, v in adapted.model.state_dict().items()}
    adapted.merge()
    torch.testing.assert_close(adapted(ids), out, rtol=1e-5, atol=1e-5)
    adapted.unmerge()
    after = adapted.model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert torch.equal(adapted(ids), out)
    with adapted.disabled():
        base = adapted(ids)
    assert torch.equal(base, quantize_model(make_tiny())(ids))


def test_merge_and_unload_keeps_the_merged_weights_in_higher_precision(
    make_tiny: Callable[..., TinyLM], ids: Tensor
) -> None:
    adapted = _qlora(make_tiny)
    out = adapted(ids)
    expected = {path: layer.merged_weight() for path, layer in adapted.lora_layers.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RequantizationWarning)
        plain = adapted.merge_and_unload()
    for path, weight in expected.items():
        layer = plain.get_submodule(path)
        assert type(layer) is nn.Linear
        assert torch.equal(layer.weight, weight)
        assert not layer.weight.requires_grad
    assert isinstance(plain.get_submodule("blocks.0.down"), NF4Linear)  # not adapted: stays NF4
    torch.testing.assert_close(plain(ids), out, rtol=1e-5, atol=1e-5)


def test_merged_weight_is_dequantized_weight_plus_delta(make_tiny: Callable[..., TinyLM]) -> None:
    layer = _qlora(make_tiny).lora_layers["blocks.0.up"]
    assert isinstance(layer, LoraLinear)
    assert isinstance(layer.base_layer, NF4Linear)
    base = layer.base_layer.dequantized_weight()
    assert torch.equal(layer.merged_weight(), base + layer.delta_weight())


def test_requantize_only_when_asked_and_report_the_error(
    make_tiny: Callable[..., TinyLM], ids: Tensor
) -> None:
    adapted = _qlora(make_tiny)
    out = adapted(ids)
    merged = {path: layer.merged_weight() for path, layer in adapted.lora_layers.items()}
    with pytest.warns(RequantizationWarning, match=r"re-quantizing 6 merged layer\(s\) to NF4"):
        model = adapted.merge_and_unload(requantize=True)
    for path, weight in merged.items():
        layer = model.get_submodule(path)
        assert isinstance(layer, NF4Linear)
        assert not torch.equal(layer.dequantized_weight(), weight)
    torch.testing.assert_close(model(ids), out, rtol=0.0, atol=0.5)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())


def test_merge_and_requantize_returns_the_measured_error(
    make_tiny: Callable[..., TinyLM],
) -> None:
    adapted = _qlora(make_tiny, bias="lora_only")
    layer = adapted.lora_layers["blocks.1.v_proj"]
    assert layer.bias is not None
    with torch.no_grad():
        layer.bias.add_(1.0)  # a trained bias travels with the re-quantized layer
    bias = layer.bias.detach().clone()
    merged = layer.merged_weight()
    adapted.merge()  # merged first: re-quantizing starts from the exact base again
    model, report = merge_and_requantize(adapted)
    assert sorted(report.layers) == sorted(f"blocks.{i}.{t}" for i in range(2) for t in TARGETS)
    nf4 = model.get_submodule("blocks.1.v_proj")
    assert isinstance(nf4, NF4Linear)
    assert nf4.bias is not None
    assert torch.equal(nf4.bias, bias)
    diff = nf4.dequantized_weight() - merged
    error = report.layers["blocks.1.v_proj"]
    assert error.relative_error == pytest.approx(float(diff.norm() / merged.norm()))
    assert error.max_abs_error == pytest.approx(float(diff.abs().max()))
    assert 0 < report.mean_relative_error <= report.worst.relative_error < 0.2
    assert report.worst_layer in report.layers
    assert "on average" in str(report)


def test_report_without_layers() -> None:
    report = QuantizationReport({})
    assert (report.worst_layer, report.worst, report.mean_relative_error) == (
        None,
        LayerError(0.0, 0.0),
        0.0,
    )
    assert str(report) == "no layer was re-quantized"


def test_dense_adapters_merge_normally_when_requantizing(
    make_tiny: Callable[..., TinyLM], ids: Tensor
) -> None:
    model = quantize_model(make_tiny(), target_modules=["up"])
    adapted = apply_lora(
        model, LoraConfig(r=2, target_modules=["q_proj", "up"], init_lora_weights=False)
    )
    q_merged = adapted.lora_layers["blocks.0.q_proj"].merged_weight()
    merged, report = merge_and_requantize(adapted)
    assert sorted(report.layers) == ["blocks.0.up", "blocks.1.up"]
    q_proj = merged.get_submodule("blocks.0.q_proj")
    assert type(q_proj) is nn.Linear
    assert torch.equal(q_proj.weight, q_merged)


def test_adapter_on_an_nf4_base_saves_and_loads_in_peft_format(
    make_tiny: Callable[..., TinyLM], ids: Tensor, tmp_path: Path
) -> None:
    adapted = apply_lora(
        quantize_model(make_tiny(hf=True)),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapted.save_adapter(tmp_path)
    keys = sorted(adapted.adapter_state_dict())
    assert keys[0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    loaded = load_adapter(quantize_model(make_tiny(hf=True)), tmp_path)
    assert torch.equal(loaded(ids), adapted(ids))
    dense = load_adapter(make_tiny(hf=True), tmp_path)  # the same adapter on the dense base
    assert sorted(dense.adapter_state_dict()) == keys
    torch.testing.assert_close(dense(ids), adapted(ids), rtol=0.0, atol=0.5)


def test_hf_names_find_nf4_layers(make_tiny: Callable[..., TinyLM]) -> None:
    model = quantize_model(make_tiny(hf=True))
    adapted = apply_lora(model, LoraConfig(r=2, target_modules=["self_attn.q_proj"]), hf_names=True)
    assert list(adapted.lora_layers) == ["blocks.0.q_proj", "blocks.1.q_proj"]


def test_deepcopy_of_a_quantized_adapted_model(
    make_tiny: Callable[..., TinyLM], ids: Tensor
) -> None:
    adapted = _qlora(make_tiny)
    twin = copy.deepcopy(adapted)
    assert torch.equal(twin(ids), adapted(ids))
