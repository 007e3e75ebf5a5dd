"""LoRA / QLoRA memory estimates (estimate_lora_size)."""

from __future__ import annotations

import pytest

from lego.arch import build, estimate_lora_size, estimate_size
from lego.protocols import ConfigError


def test_adapter_count_matches_peft_on_llama_3_2_1b() -> None:
    # PEFT's print_trainable_parameters for Llama-3.2-1B, r=16, all-linear: 11,272,192
    estimate = estimate_lora_size("llama-3.2-1b", r=16, seq_len=512)
    assert estimate.adapter_parameters == 11_272_192
    assert estimate.adapter == estimate.gradients == 4 * 11_272_192
    assert estimate.optimizer == 8 * 11_272_192


def test_nf4_with_double_quantization_is_about_4_13_bits() -> None:
    double = estimate_lora_size("llama-3.2-1b", r=16, base="nf4", seq_len=512)
    single = estimate_lora_size("llama-3.2-1b", r=16, base="nf4", seq_len=512, double_quant=False)
    assert double.bits_per_quantized_weight == pytest.approx(4.127, abs=1e-3)
    assert single.bits_per_quantized_weight == pytest.approx(4.5, abs=1e-3)
    fp32 = estimate_lora_size("llama-3.2-1b", r=16, seq_len=512)
    kept = (fp32.base_parameters - fp32.adapted_parameters) * 4  # embeddings, norms: fp32
    assert double.weights == pytest.approx(kept + fp32.adapted_parameters * 4.127 / 8, rel=1e-3)
    assert double.activations == fp32.activations


def test_the_base_is_frozen_and_activations_follow_full_training() -> None:
    model = build("llama-tiny")
    lora = estimate_lora_size(model, r=4, seq_len=64)
    full = estimate_size(model, seq_len=64, dtypes=("fp32",)).for_dtype("fp32")
    assert lora.weights == full.weights
    assert lora.activations > full.activations  # plus A x and the logits' gradient
    assert lora.training < full.training  # type: ignore[operator]
    bf16 = estimate_lora_size(model, r=4, base="bf16", seq_len=64)
    assert bf16.weights * 2 == lora.weights


@pytest.mark.parametrize(("kwargs", "key"), [({"r": 0}, "r"), ({"r": 4, "base": "int3"}, "base")])
def test_bad_settings_are_config_errors(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        estimate_lora_size("llama-tiny", **kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
