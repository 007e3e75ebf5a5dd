"""Oracle tests: lego.arch's HF interop against transformers' own models.

For each family (GPT2LMHeadModel, LlamaForCausalLM with llama3 RoPE scaling,
Qwen3ForCausalLM, Qwen3MoeForCausalLM):

- a tiny random transformers model, ``save_pretrained`` -> ``from_hf`` -> the same logits
  (fp32, 1e-5) on random ids, batch > 1, without and with a left-padding attention mask
  (both sides given the same ``position_ids``);
- the reverse: a tiny random lego model -> ``to_hf`` -> ``AutoModelForCausalLM`` loads it as
  the matching class, with no missing or unexpected keys, and its logits equal ours;
- ``to_hf`` writes the same tensors (names, shapes, values) as transformers'
  ``save_pretrained`` of the same model, and ``to_hf`` -> ``from_hf`` is bit-exact;
- every full preset has the parameter count of transformers' model built from
  ``config_to_hf(preset)`` on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tiny_hf import VOCAB, tiny_gpt2, tiny_llama, tiny_qwen3, tiny_qwen3_moe
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

import lego.arch
from lego.arch import DecoderLM, build, from_hf, presets, to_hf
from lego.arch.hf.families import architecture_for_config

TOL = {"rtol": 1e-5, "atol": 1e-5}

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def _gpt2() -> PreTrainedModel:
    return tiny_gpt2()


def _llama() -> PreTrainedModel:
    return tiny_llama(
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_SCALING),
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )


def _llama_biased() -> PreTrainedModel:
    """Llama with every bias transformers offers (q/k/v/o and MLP) and an untied head."""
    return tiny_llama(
        num_key_value_heads=1, attention_bias=True, mlp_bias=True, tie_word_embeddings=False
    )


def _qwen3() -> PreTrainedModel:
    return tiny_qwen3()  # head_dim 16, independent of hidden_size // num_attention_heads = 8


def _qwen3_moe() -> PreTrainedModel:
    return tiny_qwen3_moe()


HF_MODELS = {
    "GPT2LMHeadModel": _gpt2,
    "LlamaForCausalLM": _llama,
    "LlamaForCausalLM-biased-mqa": _llama_biased,
    "Qwen3ForCausalLM": _qwen3,
    "Qwen3MoeForCausalLM": _qwen3_moe,
}

LEGO_TINY = {
    "gpt2-tiny": "GPT2LMHeadModel",
    "llama-tiny": "LlamaForCausalLM",
    "qwen3-tiny": "Qwen3ForCausalLM",
    "qwen3-moe-tiny": "Qwen3MoeForCausalLM",
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@torch.no_grad()
def _perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its initial value (norm scales of one, zero biases)."""
    for param in model.parameters():
        param.add_(torch.randn_like(param) * 0.05)


def _ids(batch: int = 3, length: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length))


def _left_padding(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask with 0, 3 and 5 pad tokens on the left of the rows, and matching positions."""
    mask = torch.ones_like(ids)
    for row, pad in enumerate((0, 3, 5)[: ids.shape[0]]):
        mask[row, :pad] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return mask, positions


def _hf_logits(model: PreTrainedModel, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(ids, use_cache=False, **kwargs).logits
    return logits


def _lego_logits(model: DecoderLM, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(ids, **kwargs)
    return logits


def _save_hf(model: PreTrainedModel, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)


# -- transformers -> lego -------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(HF_MODELS))
def test_from_hf_matches_transformers(arch: str, tmp_path: Path) -> None:
    hf = HF_MODELS[arch]()
    _perturb(hf)
    hf.eval()
    _save_hf(hf, tmp_path)
    ours = from_hf(tmp_path)
    family = "gpt2" if arch.startswith("GPT2") else "llama" if arch.startswith("Llama") else "qwen3"
    assert ours.config.family == family
    ids = _ids()
    torch.testing.assert_close(_lego_logits(ours, ids), _hf_logits(hf, ids), **TOL)


@pytest.mark.parametrize("arch", sorted(HF_MODELS))
def test_from_hf_matches_transformers_with_left_padding(arch: str, tmp_path: Path) -> None:
    hf = HF_MODELS[arch]()
    _perturb(hf)
    hf.eval()
    _save_hf(hf, tmp_path)
    ours = from_hf(tmp_path)
    ids = _ids()
    mask, positions = _left_padding(ids)
    expected = _hf_logits(hf, ids, attention_mask=mask, position_ids=positions)
    got = _lego_logits(ours, ids, attention_mask=mask, position_ids=positions)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], **TOL)


def test_llama_tiny_uses_llama3_scaling(tmp_path: Path) -> None:
    hf = _llama()
    _save_hf(hf, tmp_path)
    config = from_hf(tmp_path).config
    assert config.rope_scaling is not None
    assert config.rope_scaling["rope_type"] == "llama3"
    assert config.rope_theta == 500000.0
    # the oracle sequences run past original_max_position_embeddings
    assert _ids().shape[1] > LLAMA3_SCALING["original_max_position_embeddings"]


@pytest.mark.parametrize("arch", sorted(HF_MODELS))
def test_to_hf_writes_what_save_pretrained_writes(arch: str, tmp_path: Path) -> None:
    hf = HF_MODELS[arch]()
    _perturb(hf)
    _save_hf(hf, tmp_path / "hf")
    ours = from_hf(tmp_path / "hf")
    to_hf(ours, tmp_path / "lego")
    theirs = load_file(tmp_path / "hf" / "model.safetensors")
    written = load_file(tmp_path / "lego" / "model.safetensors")
    assert sorted(written) == sorted(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(written[name], tensor), name
    again = from_hf(tmp_path / "lego")
    for (name, a), (_, b) in zip(
        ours.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


# -- lego -> transformers -------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(LEGO_TINY))
def test_to_hf_loads_in_transformers(preset: str, tmp_path: Path) -> None:
    model = build(preset, vocab_size=VOCAB)
    _perturb(model)
    model.eval()
    to_hf(model, tmp_path)
    hf, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf).__name__ == LEGO_TINY[preset]
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    hf.eval()
    ids = _ids()
    torch.testing.assert_close(_hf_logits(hf, ids), _lego_logits(model, ids), **TOL)
    mask, positions = _left_padding(ids)
    expected = _lego_logits(model, ids, attention_mask=mask, position_ids=positions)
    got = _hf_logits(hf, ids, attention_mask=mask, position_ids=positions)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], **TOL)


@pytest.mark.parametrize("preset", sorted(LEGO_TINY))
def test_to_hf_sharded_loads_in_transformers(preset: str, tmp_path: Path) -> None:
    model = build(preset, vocab_size=VOCAB)
    _perturb(model)
    model.eval()
    to_hf(model, tmp_path, max_shard_size="30KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = _ids()
    torch.testing.assert_close(_hf_logits(hf, ids), _lego_logits(model, ids), **TOL)


# -- parameter counts -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n in presets() if not n.endswith("-tiny")))
def test_full_preset_parameter_counts_equal_transformers(name: str, tmp_path: Path) -> None:
    config = lego.arch.get_preset(name)
    data = architecture_for_config(config).config_to_hf(config)
    (tmp_path / "config.json").write_text(json.dumps(data))
    hf_config = AutoConfig.from_pretrained(tmp_path)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(hf_config)
        ours = build(name)
    assert type(hf).__name__ == data["architectures"][0]
    theirs = sum(p.numel() for p in hf.parameters())
    mine = sum(p.numel() for p in ours.parameters())
    assert mine == theirs
