"""``lego-peft`` against transformers and PEFT: merge, info and quantize on real directories.

Tiny random transformers models (Llama with grouped-query attention, GPT-2 with ``Conv1D``
projections and a tied head) and adapters made by ``peft.get_peft_model(...,
init_lora_weights=False)``:

- ``lego-peft merge`` writes a directory that transformers loads, whose logits equal PEFT's
  adapted model's (and lego-peft's ``load_adapter`` model's) within 1e-5 in fp32, for LoRA,
  rsLoRA with a rank pattern, DoRA, embedding LoRA and modules_to_save;
- ``lego-peft info`` reports the base model, targets, rank and parameter counts;
- ``lego-peft quantize`` writes bitsandbytes' NF4 layout that lego-peft's ``NF4Tensor``
  reads back to what ``quantize_nf4`` gives, and that transformers + bitsandbytes load with
  logits close to the full-precision model's.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_hf import VOCAB, tiny_gpt2, tiny_llama
from transformers import AutoModelForCausalLM, PreTrainedModel

from lego.arch import from_hf
from lego.peft import load_adapter
from lego.peft.cli import _main
from lego.peft.nf4 import NF4Tensor, quantize_nf4
from lego.protocols import run_cli

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

TOL = {"rtol": 1e-5, "atol": 1e-5}

VARIANTS: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "llama-lora": (tiny_llama, {"target_modules": ["q_proj", "v_proj", "down_proj"]}),
    "llama-rslora-pattern": (
        tiny_llama,
        {
            "target_modules": "all-linear",
            "use_rslora": True,
            "rank_pattern": {"layers.1.mlp.up_proj": 2},
            "alpha_pattern": {"o_proj": 3},
        },
    ),
    "llama-dora": (tiny_llama, {"target_modules": ["k_proj", "gate_proj"], "use_dora": True}),
    "llama-embedding-saved": (
        tiny_llama,
        {"target_modules": ["embed_tokens", "q_proj"], "modules_to_save": ["norm"]},
    ),
    "gpt2-conv1d": (tiny_gpt2, {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}),
}


def _cli(*args: str) -> int:
    return run_cli(_main, list(args), prog="lego-peft")


def _adapter(tmp_path: Path, variant: str) -> tuple[Path, Path, torch.Tensor]:
    """Write the base model and a PEFT adapter; return their folders and PEFT's logits."""
    make, settings = VARIANTS[variant]
    torch.manual_seed(0)
    base = make()
    model_dir = tmp_path / "model"
    base.save_pretrained(model_dir)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = peft.get_peft_model(base, config)
    if "modules_to_save" in settings:
        with torch.no_grad():
            for name, p in adapted.named_parameters():
                if "modules_to_save" in name:
                    p.add_(0.25)
    adapter_dir = tmp_path / "adapter"
    adapted.save_pretrained(adapter_dir)
    adapted.eval()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = adapted(input_ids=ids).logits
    return model_dir, adapter_dir, logits


IDS = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_merge_gives_a_transformers_directory_with_the_adapted_logits(
    tmp_path: Path, variant: str
) -> None:
    model_dir, adapter_dir, expected = _adapter(tmp_path, variant)
    out = tmp_path / "merged"
    assert (
        _cli("merge", "--model", str(model_dir), "--adapter", str(adapter_dir), "-o", str(out)) == 0
    )
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    merged.eval()
    with torch.no_grad():
        got = merged(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, **TOL)
    ours = load_adapter(from_hf(model_dir), adapter_dir)
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(got, ours(IDS), **TOL)
    assert not list(tmp_path.glob(".merged.tmp-*"))


def test_info_reports_base_targets_rank_and_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, adapter_dir, _ = _adapter(tmp_path, "llama-lora")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert _cli("info", str(adapter_dir), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["r"] == 4
    assert info["base_model"] == config["base_model_name_or_path"]
    assert sorted(info["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    assert len(info["adapted_modules"]) == 6  # 3 modules x 2 layers
    expected = sum(
        t.numel() for t in load_file(str(adapter_dir / "adapter_model.safetensors")).values()
    )
    assert info["parameters"] == info["lora_parameters"] == expected
    assert _cli("info", str(adapter_dir)) == 0
    text = capsys.readouterr().out
    assert "r=4" in text
    assert f"{expected:,}" in text


def test_quantize_writes_bitsandbytes_nf4_that_reads_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = tiny_llama()
    model_dir = tmp_path / "model"
    base.save_pretrained(model_dir)
    out = tmp_path / "nf4"
    assert _cli("quantize", "--model", str(model_dir), "-o", str(out)) == 0
    source = load_file(str(model_dir / "model.safetensors"))
    written = load_file(str(out / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert written[name].dtype == torch.uint8
    for suffix in ("absmax", "quant_map", "nested_absmax", "nested_quant_map"):
        assert f"{name}.{suffix}" in written
    again = NF4Tensor.from_state_dict(written, prefix=name)
    expected = quantize_nf4(source[name], block_size=64, double_quant=True)
    assert torch.equal(again.packed, expected.packed)
    assert torch.equal(again.absmax, expected.absmax)
    assert torch.equal(written["model.embed_tokens.weight"], source["model.embed_tokens.weight"])
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = AutoModelForCausalLM.from_pretrained(out)
    import bitsandbytes as bnb

    layer = loaded.model.layers[0].mlp.up_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    dequantized = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    # bitsandbytes reads our file as it reads its own quantization of the same weight
    packed, state = bnb.functional.quantize_4bit(
        source[name], blocksize=64, compress_statistics=True, quant_type="nf4"
    )
    assert torch.equal(dequantized, bnb.functional.dequantize_4bit(packed, state))
