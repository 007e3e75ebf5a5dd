"""The weight-name rule engine: expansion, transforms, expert stacking, prefixes, ignores."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.arch import build
from lego.arch.convert.mapping import TensorPlan, WeightRule, WeightTable, identity, transpose
from lego.arch.gpt2.hf import WEIGHTS as GPT2_WEIGHTS
from lego.arch.llama.hf import WEIGHTS as LLAMA_WEIGHTS
from lego.arch.qwen3.hf import MOE_WEIGHTS
from lego.arch.qwen3.hf import WEIGHTS as QWEN3_WEIGHTS
from lego.protocols import CompatibilityError

TABLE = WeightTable(
    rules=(
        WeightRule("model.embed.weight", "embed.weight"),
        WeightRule("model.layers.{i}.proj.weight", "blocks.{i}.proj.weight", transpose, transpose),
        WeightRule("model.layers.{i}.experts.{e}.w", "blocks.{i}.experts.w"),
    ),
    ignore=(r"model\.layers\.\d+\.inv_freq",),
    base_prefix="model.",
)


def test_plan_expands_layers_and_experts_in_key_order() -> None:
    keys = ["embed.weight", "blocks.1.proj.weight", "blocks.0.experts.w"]
    plans = TABLE.plan(keys, n_layers=2, n_experts=3)
    assert [p.lego for p in plans] == keys
    assert plans[0].hf == ("model.embed.weight",)
    assert plans[1].hf == ("model.layers.1.proj.weight",)
    assert plans[2].hf == tuple(f"model.layers.0.experts.{e}.w" for e in range(3))
    assert plans[2].stacked
    assert not plans[1].stacked


def test_first_matching_rule_wins() -> None:
    table = WeightTable(
        rules=(WeightRule("first.{i}", "x.{i}"), WeightRule("second.{i}", "x.{i}")),
    )
    (plan,) = table.plan(["x.0"], n_layers=1)
    assert plan.hf == ("first.0",)


def test_unmapped_keys_are_listed_together() -> None:
    with pytest.raises(CompatibilityError) as info:
        TABLE.plan(["embed.weight", "extra.a", "extra.b"], n_layers=1)
    assert "extra.a" in str(info.value)
    assert "extra.b" in str(info.value)
    assert info.value.tensor == "extra.a"


def test_transpose_both_ways() -> None:
    plan = TABLE.plan(["blocks.0.proj.weight"], n_layers=1)[0]
    conv1d = torch.randn(3, 5)  # GPT-2's (in, out)
    linear = plan.build([conv1d])
    assert linear.shape == (5, 3)
    assert linear.is_contiguous()  # parameters are contiguous: the transpose is copied
    assert torch.equal(linear, conv1d.t())
    back = plan.split(linear)
    assert list(back) == ["model.layers.0.proj.weight"]
    assert torch.equal(back["model.layers.0.proj.weight"], conv1d)
    assert back["model.layers.0.proj.weight"].is_contiguous()


def test_experts_stack_and_split() -> None:
    plan = TABLE.plan(["blocks.0.experts.w"], n_layers=1, n_experts=4)[0]
    experts = [torch.full((2, 3), float(e)) for e in range(4)]
    stacked = plan.build(experts)
    assert stacked.shape == (4, 2, 3)
    assert torch.equal(stacked[2], experts[2])
    split = plan.split(stacked)
    assert list(split) == [f"model.layers.0.experts.{e}.w" for e in range(4)]
    assert all(torch.equal(split[name], experts[e]) for e, name in enumerate(split))


def test_expected_shape_needs_no_data() -> None:
    plan = TABLE.plan(["blocks.0.experts.w"], n_layers=1, n_experts=4)[0]
    assert plan.expected_shape([(2, 3)] * 4) == (4, 2, 3)
    proj = TABLE.plan(["blocks.0.proj.weight"], n_layers=1)[0]
    assert proj.expected_shape([(3, 5)]) == (5, 3)


def test_resolve_accepts_the_unprefixed_spelling() -> None:
    assert TABLE.resolve("model.embed.weight", {"model.embed.weight"}) == "model.embed.weight"
    assert TABLE.resolve("model.embed.weight", {"embed.weight"}) == "embed.weight"
    assert TABLE.resolve("model.embed.weight", {"other"}) is None


def test_ignored_patterns_match_whole_names() -> None:
    assert TABLE.ignored("model.layers.3.inv_freq")
    assert not TABLE.ignored("model.layers.3.inv_freq.extra")
    assert not TABLE.ignored("model.embed.weight")


@pytest.mark.parametrize(
    ("hf", "lego"),
    [("a.{i}", "b"), ("a", "b.{i}"), ("a.{e}", "b.{e}"), ("a.{j}", "b.{j}")],
)
def test_bad_rules_are_refused(hf: str, lego: str) -> None:
    with pytest.raises(ValueError, match="weight rule"):
        WeightRule(hf, lego)


def test_default_transforms_are_identity() -> None:
    rule = WeightRule("a", "b")
    tensor = torch.zeros(2)
    assert rule.to_lego is identity
    assert rule.to_hf is identity
    assert TensorPlan(lego="b", hf=("a",)).build([tensor]) is tensor  # no copy


@pytest.mark.parametrize(
    ("preset", "table"),
    [
        ("gpt2-tiny", GPT2_WEIGHTS),
        ("llama-tiny", LLAMA_WEIGHTS),
        ("qwen3-tiny", QWEN3_WEIGHTS),
        ("qwen3-moe-tiny", MOE_WEIGHTS),
    ],
)
def test_every_family_table_covers_its_tiny_model(preset: str, table: WeightTable) -> None:
    model = build(preset)
    keys = [name for name, _ in model.named_parameters()]
    config = model.config
    plans = table.plan(keys, n_layers=config.n_layers, n_experts=config.n_experts or 0)
    hf_names = [name for plan in plans for name in plan.hf]
    assert len(hf_names) == len(set(hf_names))  # no HF tensor is used twice
    for plan in plans:
        param = model.get_parameter(plan.lego)
        parts = plan.split(param.detach())
        assert plan.expected_shape([t.shape for t in parts.values()]) == tuple(param.shape)
        assert torch.equal(plan.build(list(parts.values())), param.detach())


def test_gpt2_table_transposes_conv1d_and_keeps_c_attn_fused() -> None:
    model = build("gpt2-tiny")
    plans = {
        p.lego: p
        for p in GPT2_WEIGHTS.plan(
            [n for n, _ in model.named_parameters()], n_layers=model.config.n_layers
        )
    }
    qkv = plans["blocks.0.attention.qkv_proj.weight"]
    assert qkv.hf == ("transformer.h.0.attn.c_attn.weight",)
    weight = model.get_parameter("blocks.0.attention.qkv_proj.weight").detach()
    stored = qkv.split(weight)["transformer.h.0.attn.c_attn.weight"]
    d = model.config.d_model
    assert stored.shape == (d, 3 * d)  # Conv1D: (in, out)
    assert GPT2_WEIGHTS.ignored("h.0.attn.masked_bias")
    assert GPT2_WEIGHTS.ignored("transformer.h.11.attn.bias")


@settings(max_examples=25, deadline=None)
@given(
    n_layers=st.integers(1, 4),
    n_experts=st.integers(1, 5),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
)
def test_round_trip_property(n_layers: int, n_experts: int, rows: int, cols: int) -> None:
    keys = [f"blocks.{i}.experts.w" for i in range(n_layers)] + [
        f"blocks.{i}.proj.weight" for i in range(n_layers)
    ]
    for plan in TABLE.plan(keys, n_layers=n_layers, n_experts=n_experts):
        shape = (n_experts, rows, cols) if plan.stacked else (rows, cols)
        tensor = torch.randn(shape)
        parts = plan.split(tensor)
        assert len(parts) == (n_experts if plan.stacked else 1)
        assert torch.equal(plan.build(list(parts.values())), tensor)
