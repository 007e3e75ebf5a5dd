"""Bad input to apply_lora leaves the model as it was and says what could have matched."""

from __future__ import annotations

from typing import Any

import pytest

from lego.peft import LoraConfig, apply_lora
from lego.protocols import ConfigError


def test_a_pattern_matching_nothing_lists_the_names_and_changes_nothing(tiny: Any) -> None:
    before = dict(tiny.named_modules())
    with pytest.raises(ConfigError, match="matches no module") as info:
        apply_lora(tiny, LoraConfig(r=2, target_modules=["q_proj", "qkv_proj"]))
    assert "q_proj" in (info.value.hint or "")
    assert "down" in (info.value.hint or "")  # a linear layer it could have matched
    assert dict(tiny.named_modules()) == before  # no adapter layer left behind
    assert all(p.requires_grad for p in tiny.parameters())


def test_a_regex_matching_nothing_is_refused(tiny: Any) -> None:
    with pytest.raises(ConfigError, match="matches no module"):
        apply_lora(tiny, LoraConfig(r=2, target_modules=r".*\.attn\.c_attn"))


@pytest.mark.parametrize("r", [0, -1])
def test_a_rank_below_one_is_refused_before_anything_changes(tiny: Any, r: int) -> None:
    with pytest.raises(ConfigError, match="r must be at least 1"):
        apply_lora(tiny, LoraConfig(r=r, target_modules="all-linear"))
    assert not any("lora" in name for name, _ in tiny.named_parameters())
