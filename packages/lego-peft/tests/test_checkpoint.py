"""Adapter checkpoints: save_pretrained / load_weights (the PretrainedModel protocol)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lego.peft import LoraConfig, apply_lora
from lego.peft.checkpoint import BASE_REFERENCE_NAME, base_weights_sha256
from lego.protocols import CompatibilityError, FormatError, PretrainedModel


def _adapted(make_tiny: Callable[..., Any], *, other_base: bool = False) -> Any:
    model = make_tiny(hf=True)  # seeded
    if other_base:
        with torch.no_grad():
            model.blocks[1].norm.weight[0] += 1.0
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return apply_lora(model, config, hf_names=True)


def test_round_trip_is_bit_exact_and_writes_no_base(
    make_tiny: Callable[..., Any], tmp_path: Path
) -> None:
    adapted = _adapted(make_tiny)
    assert isinstance(adapted, PretrainedModel)
    adapted.base_model_name_or_path = "some/base"
    adapted.save_pretrained(tmp_path / "ckpt")
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", BASE_REFERENCE_NAME]
    reference = json.loads((tmp_path / "ckpt" / BASE_REFERENCE_NAME).read_text())
    assert reference["base_model_name_or_path"] == "some/base"
    assert reference["sha256"] == base_weights_sha256(adapted)

    saved = {k: v.clone() for k, v in adapted.adapter_state_dict().items()}
    with torch.no_grad():
        for parameter in adapted.adapter_parameters().values():
            parameter.add_(1.0)
    adapted.load_weights(tmp_path / "ckpt")
    for key, tensor in adapted.adapter_state_dict().items():
        assert torch.equal(tensor, saved[key]), key


def test_the_base_hash_ignores_the_adapter_and_a_merge(make_tiny: Callable[..., Any]) -> None:
    adapted = _adapted(make_tiny)
    before = base_weights_sha256(adapted)
    with torch.no_grad():
        for parameter in adapted.adapter_parameters().values():
            parameter.mul_(2.0)
    adapted.merge()
    assert base_weights_sha256(adapted) == before
    assert adapted.merged  # merged again after hashing
    adapted.unmerge()


def test_another_base_model_is_refused(make_tiny: Callable[..., Any], tmp_path: Path) -> None:
    _adapted(make_tiny).save_pretrained(tmp_path / "ckpt")
    other = _adapted(make_tiny, other_base=True)
    with pytest.raises(CompatibilityError, match="another base model") as info:
        other.load_weights(tmp_path / "ckpt")
    assert info.value.path is not None
    assert BASE_REFERENCE_NAME in str(info.value.path)


def test_state_dict_values_replace_the_trainable_ones(
    make_tiny: Callable[..., Any], tmp_path: Path
) -> None:
    adapted = _adapted(make_tiny)
    masters = {
        name: torch.full_like(p, 0.5)
        for name, p in adapted.state_dict(keep_vars=True).items()
        if p.requires_grad
    }
    adapted.save_pretrained(tmp_path / "ckpt", state_dict=masters)
    original = {k: v.clone() for k, v in adapted.adapter_state_dict().items()}
    assert not all(bool((t == 0.5).all()) for t in original.values())  # parameters kept
    adapted.load_weights(tmp_path / "ckpt")
    assert all(bool((t == 0.5).all()) for t in adapted.adapter_state_dict().values())


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"format": "other", "version": 1}', FormatError),
        ('{"format": "lego-peft-base", "version": 1, "sha256": 3}', FormatError),
    ],
)
def test_a_damaged_base_reference_names_the_file(
    make_tiny: Callable[..., Any], tmp_path: Path, text: str, error: type[Exception]
) -> None:
    adapted = _adapted(make_tiny)
    adapted.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / BASE_REFERENCE_NAME).write_text(text)
    with pytest.raises(error, match="base"):
        adapted.load_weights(tmp_path / "ckpt")


def test_a_damaged_adapter_file_is_a_format_error(
    make_tiny: Callable[..., Any], tmp_path: Path
) -> None:
    adapted = _adapted(make_tiny)
    adapted.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(FormatError, match="safetensors"):
        adapted.load_weights(tmp_path / "ckpt")
