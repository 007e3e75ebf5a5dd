"""DecoderLM as an HFNamedModel: each parameter's name in the HF directory to_hf writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lego.arch import build
from lego.protocols import CompatibilityError, HFNamedModel


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny", "qwen3-tiny"])
def test_names_round_trip_through_the_written_directory(preset: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build(preset, tie_embeddings=False)
    assert isinstance(model, HFNamedModel)
    directory = model.save_pretrained(tmp_path / "model")
    written = load_file(str(directory / "model.safetensors"))
    named = {}
    for name, tensor in model.state_dict().items():
        hf_name, transposed = model.hf_parameter_name(name)
        assert hf_name in written, (name, hf_name)
        expected = tensor.t() if transposed else tensor
        assert torch.equal(written[hf_name], expected), name
        named[hf_name] = name
    assert sorted(named) == sorted(written)  # one HF name per parameter, each written once


def test_gpt2_projections_are_transposed() -> None:
    model = build("gpt2-tiny")
    assert model.hf_parameter_name("blocks.0.attention.qkv_proj.weight") == (
        "transformer.h.0.attn.c_attn.weight",
        True,
    )
    assert model.hf_parameter_name("blocks.1.feed_forward.proj.bias") == (
        "transformer.h.1.mlp.c_proj.bias",
        False,
    )
    assert model.hf_parameter_name("lm_head.weight") == ("lm_head.weight", False)


def test_unknown_and_stacked_names_are_compatibility_errors() -> None:
    with pytest.raises(CompatibilityError, match="no HuggingFace name"):
        build("llama-tiny").hf_parameter_name("blocks.9.attention.q_proj.weight")
    with pytest.raises(CompatibilityError, match="stack of 8"):
        build("qwen3-moe-tiny").hf_parameter_name("blocks.0.feed_forward.experts.gate_proj")
