"""The pipeline's stages after pretraining: their sections, checks and the chain they run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lego.protocols import ConfigError
from lego.recipes.pipeline import PipelineConfig
from lego.recipes.pipeline_stages import FILLED, check_stages
from lego.tokenize import RegexBPETokenizer


def _config(runs: Path, **changes: Any) -> PipelineConfig:
    data: dict[str, Any] = {
        "runs_dir": str(runs),
        "max_steps": 10,
        "model": {"preset": "gpt2-tiny"},
        "data": {"corpus": "python-stdlib"},
        "schedule": {"warmup_steps": 1},
    }
    data.update(changes)
    return PipelineConfig.from_dict(data)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"sft": {"max_step": 3}}, "sft.max_step"),
        ({"sft": {"max_steps": 0}}, "sft.max_steps"),
        ({"sft": {"sft": {"finetune": "half"}}}, "sft.sft.finetune"),
        ({"dpo": {"dpo": {"beta": -1.0}}}, "dpo.dpo.beta"),
        ({"sft": {"max_steps": 5, "schedule": {"warmup_steps": 9}}}, "sft.schedule.warmup_steps"),
        ({"sft": {"model": "elsewhere"}}, "sft.model"),
        ({"dpo": {"out_dir": "elsewhere"}}, "dpo.out_dir"),
        ({"sft": {"resume": "auto"}}, "sft.resume"),
        ({"sft": {"data": {"train": "mine.jsonl"}}}, "sft.data.train"),
        ({"dpo": {"data": {"eval_count": 0}}}, "dpo.data.eval_count"),
        ({"grpo": {"data": {"task": "sorting"}}}, "grpo.data.task"),
        ({"grpo": {"data": {"task": "", "train": "x.jsonl"}}}, "grpo.data.task"),
        ({"dpo": {"dpo": {"finetune": "full"}, "output": "adapter"}}, "dpo.output"),
    ],
)
def test_bad_stage_keys_name_the_section(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, **section)
    assert caught.value.key == key


def test_stages_are_off_unless_enabled(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert [config.sft.enabled, config.dpo.enabled, config.grpo.enabled] == [False] * 3
    on = _config(tmp_path, sft={"enabled": True}, grpo={"enabled": True})
    assert [on.sft.enabled, on.dpo.enabled, on.grpo.enabled] == [True, False, True]
    assert on.grpo.sft is None  # no warm-up unless configured
    assert on.sft.add_special_tokens == ("<|im_start|>", "<|im_end|>")
    assert on.sft.model == FILLED


def test_a_stage_becomes_its_recipe_config(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        sft={"enabled": True, "max_steps": 7, "sft": {"template": "chatml", "max_length": 64}},
        dpo={"enabled": True, "dpo": {"beta": 0.3, "finetune": "lora"}},
    )
    sft = config.sft.recipe(
        model=tmp_path / "model",
        out_dir=tmp_path / "sft",
        train=tmp_path / "t.jsonl",
        eval_file=tmp_path / "e.jsonl",
    )
    assert (sft.model, sft.out_dir) == (str(tmp_path / "model"), str(tmp_path / "sft"))
    assert (sft.data.train, sft.data.eval) == (str(tmp_path / "t.jsonl"), str(tmp_path / "e.jsonl"))
    assert (sft.max_steps, sft.sft.max_length, sft.resume) == (7, 64, "auto")
    dpo = config.dpo.recipe(model=tmp_path / "sft" / "model", out_dir=tmp_path / "dpo")
    assert (dpo.dpo.beta, dpo.dpo.finetune, dpo.output) == (0.3, "lora", "merged")
    fresh = config.dpo.recipe(model=tmp_path / "m", out_dir=tmp_path / "dpo", overwrite=True)
    assert (fresh.resume, fresh.overwrite) == ("", True)
    grpo = _config(tmp_path, grpo={"enabled": True, "data": {"task": "addition"}}).grpo
    recipe = grpo.recipe(model=tmp_path / "m", out_dir=tmp_path / "grpo")
    assert recipe.data.task == "addition"
    assert recipe.sft is None


def test_the_stages_stay_out_of_pretraining(tmp_path: Path) -> None:
    config = _config(tmp_path, sft={"enabled": True})
    keys = config.pretrain_config(tmp_path / "run").to_dict()
    assert not {"sft", "dpo", "grpo"} & keys.keys()


def test_the_fingerprint_covers_stage_settings_not_switches_or_lengths(tmp_path: Path) -> None:
    base = _config(tmp_path)
    same = _config(tmp_path, sft={"enabled": True, "max_steps": 50}, dpo={"enabled": True})
    assert same.fingerprint() == base.fingerprint()
    other = _config(tmp_path, sft={"optim": {"lr": 1e-2}})
    assert other.fingerprint() != base.fingerprint()
    beta = _config(tmp_path, dpo={"dpo": {"beta": 0.5}})
    assert beta.fingerprint() != base.fingerprint()


def test_stage_lengths_are_checked_against_the_context(tmp_path: Path) -> None:
    config = _config(tmp_path, sft={"enabled": True, "sft": {"max_length": 256}})
    with pytest.raises(ConfigError) as caught:
        config.check_later_stages(context=128, prompt_tokens=[1])
    assert caught.value.key == "sft.sft.max_length"
    off = _config(tmp_path, sft={"enabled": False, "sft": {"max_length": 256}})
    off.check_later_stages(context=128, prompt_tokens=[1])  # a stage switched off: no check
    grpo = _config(
        tmp_path,
        grpo={"enabled": True, "grpo": {"max_prompt_length": 100, "max_completion_length": 40}},
    )
    with pytest.raises(ConfigError, match=r"grpo\.max_completion_length"):
        grpo.check_later_stages(context=128, prompt_tokens=[1])


def test_a_template_needs_its_tokens_added_by_some_stage(tmp_path: Path) -> None:
    tokenizer = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256})
    lacking = _config(
        tmp_path, sft={"enabled": True, "add_special_tokens": [], "sft": {"max_length": 64}}
    )
    with pytest.raises(ConfigError) as caught:
        check_stages(lacking, context=128, tokenizer=tokenizer)
    assert caught.value.key == "sft.add_special_tokens"
    assert "<|im_start|>" in caught.value.message
    # the tokenizer is not known yet: only the lengths are checked
    check_stages(lacking, context=128)
    # DPO after an SFT stage that added them: fine even though DPO adds nothing
    chain = _config(
        tmp_path,
        sft={"enabled": True, "sft": {"max_length": 64}},
        dpo={"enabled": True, "add_special_tokens": [], "dpo": {"max_length": 64}},
    )
    check_stages(chain, context=128, tokenizer=tokenizer)
    plain = _config(
        tmp_path,
        sft={"enabled": True, "add_special_tokens": [], "sft": {"template": "none"}},
        dpo={"enabled": True, "dpo": {"max_length": 64}},  # adds ChatML's tokens itself
    )
    check_stages(plain, context=2048, tokenizer=tokenizer)
