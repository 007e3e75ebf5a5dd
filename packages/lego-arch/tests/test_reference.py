"""The one-file reference models (``lego.arch.reference``) against the modular ``DecoderLM``.

For each family: a tiny random lego model, saved with ``to_hf``, loaded by the reference
file's ``load_hf``, gives the same logits (fp32, 1e-5); the reference configs' defaults are
the published models; the files import nothing from ``lego``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file, save_file

import lego.arch
from lego.arch import DecoderLM, to_hf
from lego.arch.reference import gpt2, llama3, qwen3

TOL = 1e-5

REFERENCE: dict[str, ModuleType] = {"gpt2-tiny": gpt2, "llama-tiny": llama3, "qwen3-tiny": qwen3}
"""Each tiny preset and the reference file of its family."""

FULL: dict[str, tuple[ModuleType, type[torch.nn.Module], object]] = {
    "gpt2": (gpt2, gpt2.GPT2, gpt2.GPT2Config()),
    "llama-3.2-1b": (llama3, llama3.Llama3, llama3.Llama3Config()),
    "qwen3-0.6b": (qwen3, qwen3.Qwen3, qwen3.Qwen3Config()),
}
"""The preset each reference config's defaults stand for."""

ALLOWED_IMPORTS = {
    "__future__",
    "dataclasses",
    "json",
    "math",
    "pathlib",
    "safetensors",
    "torch",
    "typing",
}


@torch.no_grad()
def _perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its initial value (norm scales of one, zero biases)."""
    for param in model.parameters():
        param.add_(torch.randn_like(param) * 0.05)


def _tiny(preset: str) -> DecoderLM:
    model = lego.arch.build(preset)
    _perturb(model)
    return model.eval()


def _ids(model: DecoderLM, length: int = 96) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (2, length))


@pytest.mark.parametrize("preset", sorted(REFERENCE))
def test_load_hf_matches_decoder_lm(preset: str, tmp_path: Path) -> None:
    model = _tiny(preset)
    to_hf(model, tmp_path)
    reference = REFERENCE[preset].load_hf(tmp_path)
    assert not reference.training
    ids = _ids(model)
    with torch.no_grad():
        torch.testing.assert_close(reference(ids), model(ids), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("preset", sorted(REFERENCE))
def test_load_hf_reads_shards(preset: str, tmp_path: Path) -> None:
    model = _tiny(preset)
    to_hf(model, tmp_path, max_shard_size="30KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    reference = REFERENCE[preset].load_hf(tmp_path)
    ids = _ids(model, length=16)
    with torch.no_grad():
        torch.testing.assert_close(reference(ids), model(ids), rtol=TOL, atol=TOL)


def test_gpt2_reads_the_hubs_original_names(tmp_path: Path) -> None:
    """openai-community/gpt2: no ``transformer.`` prefix, and the old causal-mask buffers."""
    model = _tiny("gpt2-tiny")
    to_hf(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    hub = {name.removeprefix("transformer."): t for name, t in tensors.items()}
    for layer in {name.split(".")[1] for name in hub if name.startswith("h.")}:
        hub[f"h.{layer}.attn.bias"] = torch.ones(1, 1, 128, 128).tril()
    save_file(hub, tmp_path / "model.safetensors")
    reference = gpt2.load_hf(tmp_path)
    ids = _ids(model)
    with torch.no_grad():
        torch.testing.assert_close(reference(ids), model(ids), rtol=TOL, atol=TOL)


def test_llama_tiny_runs_past_the_original_rope_context(tmp_path: Path) -> None:
    """The comparison above exercises every band of llama3 RoPE scaling."""
    to_hf(_tiny("llama-tiny"), tmp_path)
    config = llama3.load_hf(tmp_path).config
    assert config.rope_scaling is not None
    assert config.rope_scaling["rope_type"] == "llama3"
    assert config.rope_scaling["original_max_position_embeddings"] < 96


@pytest.mark.parametrize("preset", sorted(REFERENCE))
def test_tied_head_is_one_parameter(preset: str, tmp_path: Path) -> None:
    to_hf(_tiny(preset), tmp_path)
    reference = REFERENCE[preset].load_hf(tmp_path)
    assert reference.lm_head.weight is reference.tok_emb.weight


@pytest.mark.parametrize("preset", sorted(REFERENCE))
def test_load_hf_keeps_the_file_dtype(preset: str, tmp_path: Path) -> None:
    to_hf(_tiny(preset).to(torch.bfloat16), tmp_path)
    reference = REFERENCE[preset].load_hf(tmp_path)
    assert {p.dtype for p in reference.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = reference(torch.randint(0, 1000, (2, 8)))
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("preset", sorted(FULL))
def test_default_configs_are_the_published_models(preset: str) -> None:
    _, model_class, config = FULL[preset]
    with torch.device("meta"):
        reference = model_class(config)
        modular = lego.arch.build(preset)
    ours = sum(p.numel() for p in reference.parameters())
    assert ours == sum(p.numel() for p in modular.parameters())


@pytest.mark.parametrize("module", [gpt2, llama3, qwen3], ids=lambda m: m.__name__)
def test_files_import_only_torch_safetensors_and_the_standard_library(
    module: ModuleType,
) -> None:
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            assert node.module is not None
            imported.add(node.module)
    assert {name.split(".")[0] for name in imported} <= ALLOWED_IMPORTS


@pytest.mark.parametrize("module", [gpt2, llama3, qwen3], ids=lambda m: m.__name__)
def test_another_family_is_refused(module: ModuleType, tmp_path: Path) -> None:
    other = "qwen3-tiny" if module is gpt2 else "gpt2-tiny"
    to_hf(_tiny(other), tmp_path)
    with pytest.raises(ValueError, match="model_type"):
        module.load_hf(tmp_path)


@pytest.mark.parametrize("module", [gpt2, llama3, qwen3], ids=lambda m: m.__name__)
def test_an_unknown_tensor_is_refused(module: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"tensor='model\.vision\.weight'"):
        module.our_name("model.vision.weight")


def test_llama_reads_both_rope_spellings() -> None:
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    sizes = {
        "model_type": "llama",
        "vocab_size": 100,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
    }
    hub = llama3.Llama3Config.from_hf_config(
        {**sizes, "rope_theta": 500000.0, "rope_scaling": scaling}
    )
    v5 = llama3.Llama3Config.from_hf_config(
        {**sizes, "rope_parameters": {**scaling, "rope_theta": 500000.0}}
    )
    assert hub == v5
    assert hub.rope_theta == 500000.0
    assert hub.rope_scaling == scaling
    plain = llama3.Llama3Config.from_hf_config({**sizes, "rope_scaling": None})
    assert plain.rope_scaling is None
    assert plain.rope_theta == 10000.0
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        llama3.Llama3Config.from_hf_config({**sizes, "rope_scaling": {"rope_type": "yarn"}})


def test_qwen3_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    to_hf(_tiny("qwen3-tiny"), tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(ValueError, match="use_sliding_window"):
        qwen3.Qwen3Config.from_hf_config({**data, "use_sliding_window": True})
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        qwen3.Qwen3Config.from_hf_config({**data, "rope_scaling": {"rope_type": "yarn"}})
