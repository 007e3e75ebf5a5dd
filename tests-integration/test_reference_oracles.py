"""Oracle tests: the one-file reference models (``lego.arch.reference``) against transformers.

For each family (GPT2LMHeadModel; LlamaForCausalLM with grouped-query attention and llama3
RoPE scaling, tied, and with every bias and an untied head; Qwen3ForCausalLM with an
independent head size and an untied head): a tiny random transformers model,
``save_pretrained(safe_serialization=True)`` -> the reference file's ``load_hf`` -> the same
logits (fp32, 1e-5) on random ids, batch 2, run past llama3's original context.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from tiny_hf import VOCAB, tiny_gpt2, tiny_llama, tiny_qwen3
from transformers import PreTrainedModel

from lego.arch.reference import gpt2, llama3, qwen3

TOL = 1e-5

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def _llama() -> PreTrainedModel:
    return tiny_llama(
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_SCALING),
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )


def _llama_biased() -> PreTrainedModel:
    """Llama with every bias transformers offers (q/k/v/o and MLP), MQA and an untied head."""
    return tiny_llama(
        num_key_value_heads=1, attention_bias=True, mlp_bias=True, tie_word_embeddings=False
    )


HF_MODELS: dict[str, tuple[Callable[[], PreTrainedModel], ModuleType]] = {
    "GPT2LMHeadModel": (tiny_gpt2, gpt2),
    "LlamaForCausalLM": (_llama, llama3),
    "LlamaForCausalLM-biased-mqa": (_llama_biased, llama3),
    "Qwen3ForCausalLM": (tiny_qwen3, qwen3),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@torch.no_grad()
def _perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its initial value (norm scales of one, zero biases)."""
    for param in model.parameters():
        param.add_(torch.randn_like(param) * 0.05)


@pytest.mark.parametrize("arch", sorted(HF_MODELS))
def test_reference_load_hf_matches_transformers(arch: str, tmp_path: Path) -> None:
    build, reference = HF_MODELS[arch]
    hf = build()
    _perturb(hf)
    hf.eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = reference.load_hf(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 48))  # past original_max_position_embeddings=16
    with torch.no_grad():
        expected = hf(ids, use_cache=False).logits
        got = ours(ids)
    torch.testing.assert_close(got, expected, rtol=TOL, atol=TOL)


def test_llama_oracle_uses_llama3_scaling(tmp_path: Path) -> None:
    _llama().save_pretrained(tmp_path, safe_serialization=True)
    config = llama3.load_hf(tmp_path).config
    assert config.rope_scaling is not None
    assert config.rope_scaling["rope_type"] == "llama3"
    assert config.rope_theta == 500000.0
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query


def test_qwen3_oracle_has_an_independent_head_size(tmp_path: Path) -> None:
    tiny_qwen3().save_pretrained(tmp_path, safe_serialization=True)
    config = qwen3.load_hf(tmp_path).config
    assert config.head_dim * config.num_attention_heads != config.hidden_size
    assert not config.tie_word_embeddings
