"""Target matching by PEFT's rules: names (exact or dotted tail), regex, "all-linear"."""

from __future__ import annotations

import pytest

from lego.peft.targets import Candidate, saved_module_matches, select_targets, target_matches
from lego.protocols import ConfigError


def _c(name: str, kind: str = "Linear", *, linear: bool = True) -> Candidate:
    adaptable = kind in ("Linear", "Embedding")
    return Candidate(path=name, name=name, kind=kind, adaptable=adaptable, linear=linear)


MODEL = [
    _c("embed", "Embedding", linear=False),
    _c("layers", "ModuleList", linear=False),
    _c("layers.0", "Block", linear=False),
    _c("layers.0.q_proj"),
    _c("layers.0.xq_proj"),
    _c("layers.0.v_proj"),
    _c("layers.0.norm", "LayerNorm", linear=False),
    _c("lm_head", linear=False),
]


def _paths(found: list[Candidate]) -> list[str]:
    return [c.path for c in found]


def test_list_names_match_whole_dotted_tails() -> None:
    assert target_matches(["q_proj"], "layers.0.q_proj")
    assert not target_matches(["q_proj"], "layers.0.xq_proj")
    assert target_matches(["layers.0.v_proj"], "layers.0.v_proj")
    assert _paths(select_targets(MODEL, ["q_proj", "embed"])) == ["embed", "layers.0.q_proj"]


def test_a_string_is_a_full_match_regex() -> None:
    assert _paths(select_targets(MODEL, r".*\.(q|v)_proj")) == [
        "layers.0.q_proj",
        "layers.0.v_proj",
    ]
    with pytest.raises(ConfigError, match="matches no module"):
        select_targets(MODEL, "q_proj")  # not a full match of any name


def test_all_linear_leaves_out_the_head_and_embeddings() -> None:
    assert _paths(select_targets(MODEL, "all-linear")) == [
        "layers.0.q_proj",
        "layers.0.xq_proj",
        "layers.0.v_proj",
    ]
    assert _paths(select_targets(MODEL, "ALL-LINEAR")) == _paths(
        select_targets(MODEL, "all-linear")
    )


def test_a_name_matching_nothing_lists_what_could_match() -> None:
    with pytest.raises(ConfigError, match="'o_proj' matches no module") as info:
        select_targets(MODEL, ["q_proj", "o_proj"])
    hint = info.value.hint or ""
    assert "q_proj (e.g. layers.0.q_proj)" in hint
    assert "embed" in hint
    assert "norm" not in hint  # not adaptable


def test_a_module_that_cannot_take_an_adapter_is_named() -> None:
    with pytest.raises(ConfigError, match=r"layers\.0\.norm \(LayerNorm\)"):
        select_targets(MODEL, ["norm"])


def test_modules_to_save_are_never_targets() -> None:
    found = select_targets(MODEL, "all-linear", modules_to_save=["q_proj"])
    assert _paths(found) == ["layers.0.xq_proj", "layers.0.v_proj"]
    assert saved_module_matches(["norm"], "layers.0.norm")
    assert saved_module_matches(["head"], "lm_head")  # PEFT's plain suffix rule
