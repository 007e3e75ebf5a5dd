"""DecoderLM as a PretrainedModel: save_pretrained / load_weights (lego-train's checkpoints)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lego.arch import DecoderLM, build, from_hf
from lego.protocols import CompatibilityError, PretrainedModel


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny", "qwen3-tiny"])
def test_save_then_load_weights_in_place(preset: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build(preset)
    assert isinstance(source, PretrainedModel)
    directory = source.save_pretrained(tmp_path / "model")
    assert (directory / "config.json").is_file()

    torch.manual_seed(1)
    target = build(preset)
    params_before = dict(target.named_parameters())
    target.load_weights(directory)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    # in place: the same Parameter objects (an optimizer built on them stays valid)
    assert all(p is params_before[name] for name, p in target.named_parameters())
    assert target.tied == source.tied


def test_load_weights_casts_to_the_model_dtype(tmp_path: Path) -> None:
    source = build("llama-tiny")
    directory = source.save_pretrained(tmp_path / "m")
    target = build("llama-tiny").to(torch.bfloat16)
    target.load_weights(directory)
    weight = target.token_embedding.weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, source.token_embedding.weight.to(torch.bfloat16))


def test_load_weights_of_another_shape_lists_the_differences(tmp_path: Path) -> None:
    directory = build("gpt2-tiny", n_layers=3).save_pretrained(tmp_path / "m")
    target = build("gpt2-tiny")
    before = target.token_embedding.weight.clone()
    with pytest.raises(CompatibilityError) as info:
        target.load_weights(directory)
    message = str(info.value)
    assert "n_layers: 3 in the directory" in message
    assert "unexpected (12)" in message  # the third block's tensors, in the file's names
    assert "transformer.h.2." in message
    assert torch.equal(target.token_embedding.weight, before)  # nothing was loaded


def test_load_weights_into_a_model_of_another_family_lists_the_config(tmp_path: Path) -> None:
    directory = build("llama-tiny").save_pretrained(tmp_path / "m")
    with pytest.raises(CompatibilityError) as info:
        build("gpt2-tiny").load_weights(directory)
    assert "family: 'llama' in the directory, 'gpt2' in the model" in str(info.value)


def test_save_pretrained_with_a_given_state_dict(tmp_path: Path) -> None:
    model = build("gpt2-tiny")
    state = {key: torch.full_like(value, 0.5) for key, value in model.state_dict().items()}
    directory = model.save_pretrained(tmp_path / "m", state_dict=state)
    loaded = from_hf(directory)
    assert all(torch.all(t == 0.5) for t in loaded.state_dict().values())
    assert all(not torch.all(t == 0.5) for n, t in model.state_dict().items() if "weight" in n)


def test_save_pretrained_refuses_a_state_dict_that_does_not_fit(tmp_path: Path) -> None:
    model: DecoderLM = build("gpt2-tiny")
    state = dict(model.state_dict())
    del state["final_norm.weight"]
    state["extra.weight"] = torch.zeros(2)
    state["blocks.0.feed_forward.fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(CompatibilityError) as info:
        model.save_pretrained(tmp_path / "m", state_dict=state)
    message = str(info.value)
    assert "final_norm.weight" in message
    assert "extra.weight" in message
    assert "mis-shaped" in message
    assert not (tmp_path / "m").exists()
