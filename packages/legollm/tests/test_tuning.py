"""The finetune and align recipes: configs, overrides, bad input, tokens, the result.

Fast: a Llama-shaped model of about 0.1M parameters and a byte-level tokenizer written into
a temporary folder, runs of 2 to 4 steps in this process.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import lego.arch
from lego.peft.checkpoint import read_base_reference
from lego.protocols import CompatibilityError, ConfigError, DataError
from lego.protocols.layout import LEGO_TOKENIZER_FILE
from lego.protocols.locks import LOCK_FILE
from lego.recipes.align import (
    DPORecipeConfig,
    GRPORecipeConfig,
    RewardRecipeConfig,
    preference_stop_ids,
    run_dpo,
    run_reward,
)
from lego.recipes.cli import main
from lego.recipes.configs import read_recipe_config
from lego.recipes.finetune import FinetuneConfig, build_finetune, run_finetune
from lego.recipes.loading import default_eos_ids, load_model, load_tokenizer
from lego.recipes.ppo import PPORecipeConfig
from lego.recipes.tuning import CURVES_FILE, add_special_tokens, grow_vocabulary
from lego.tokenize import CharTokenizer, RegexBPETokenizer, load
from lego.train.state import RunState

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "align"
SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258, "<|pad|>": 259}


# -- configs ----------------------------------------------------------------------------------


def _config_class(name: str) -> type[Any]:
    if name.startswith("sft"):
        return FinetuneConfig
    if name.startswith("dpo"):
        return DPORecipeConfig
    if name.startswith("grpo"):
        return GRPORecipeConfig
    if name.startswith("ppo"):
        return PPORecipeConfig
    return RewardRecipeConfig


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_config_reads(path: Path) -> None:
    config = read_recipe_config(_config_class(path.name), path, [])
    assert config.model
    if isinstance(config, GRPORecipeConfig) and config.data.task:
        # a generated task; GRPO's steps are cheap (100 in about a minute and a half)
        assert config.max_steps <= 100
        return
    assert config.data.train.endswith(".jsonl")
    assert config.max_steps <= 60  # the examples run in well under two minutes


def test_overrides_reach_every_section() -> None:
    config = read_recipe_config(
        FinetuneConfig,
        EXAMPLES / "sft-tiny.yaml",
        [
            "sft.lora.r=4",
            "sft.finetune=qlora",
            "output=adapter",
            'add_special_tokens=["<|pad|>", "<|sep|>"]',
            "optim.lr=1e-4",
            "optim.min_lr=1e-5",
            "data.eval=''",
        ],
    )
    assert (config.sft.lora.r, config.sft.finetune, config.output) == (4, "qlora", "adapter")
    assert config.add_special_tokens == ("<|pad|>", "<|sep|>")
    assert config.optim.lr == 1e-4
    assert config.data.eval == ""
    train = config.train_config()
    assert train.max_steps == config.max_steps
    assert not hasattr(train, "sft")


@pytest.mark.parametrize(
    ("cls", "example", "override", "key", "phrase"),
    [
        (FinetuneConfig, "sft-tiny", "sft.lora.rr=3", "sft.lora.rr", "did you mean 'r'"),
        (FinetuneConfig, "sft-tiny", "sft.templat=chatml", "sft.templat", "'template'"),
        (FinetuneConfig, "sft-tiny", "ouput=merged", "ouput", "'output'"),
        (FinetuneConfig, "sft-pipeline", "output=adapter", "output", "finetune: lora"),
        (FinetuneConfig, "sft-tiny", "sft.template=chatmx", "template", "chatml"),
        (FinetuneConfig, "sft-tiny", "dtype=int8", "dtype", "float32"),
        (FinetuneConfig, "sft-tiny", "model=''", "model", "model is empty"),
        (FinetuneConfig, "sft-tiny", "data.train=''", "train", "data.train is empty"),
        (DPORecipeConfig, "dpo-tiny", "dpo.beta=0", "beta", "beta must be > 0"),
        (DPORecipeConfig, "dpo-tiny", "dpo.loss_type=sigmod", "loss_type", "sigmoid"),
        (DPORecipeConfig, "dpo-pipeline", "output=adapter", "output", "finetune: lora"),
        (RewardRecipeConfig, "reward-tiny", "output=adapter", "output", "reward models"),
    ],
)
def test_bad_settings_name_their_key(
    cls: type[Any], example: str, override: str, key: str, phrase: str
) -> None:
    with pytest.raises(ConfigError) as info:
        read_recipe_config(cls, EXAMPLES / f"{example}.yaml", [override])
    assert key in str(info.value)
    assert phrase in str(info.value)


# -- special tokens and the vocabulary ---------------------------------------------------------


def test_added_special_tokens_follow_the_last_id_and_leave_text_alone(tmp_path: Path) -> None:
    tokenizer = RegexBPETokenizer("gpt4")
    with warnings.catch_warnings():  # a short text reaches fewer ids: fine here
        warnings.simplefilter("ignore")
        tokenizer.train("the cat sat on the mat " * 20, vocab_size=300, special_tokens=["<|e|>"])
    grown, added = add_special_tokens(tokenizer, ["<|e|>", "<|pad|>", "<|sep|>", "<|pad|>"])
    n = tokenizer.vocab_size
    assert added == {"<|pad|>": n, "<|sep|>": n + 1}
    assert grown.vocab_size == n + 2
    text = "the mat sat on the cat"
    assert grown.encode(text) == tokenizer.encode(text)
    grown.save(tmp_path / "tok.json")
    again = load(tmp_path / "tok.json")
    assert again.special_tokens == grown.special_tokens
    assert again.encode(text) == tokenizer.encode(text)
    same, none = add_special_tokens(tokenizer, ["<|e|>"])
    assert same is tokenizer
    assert none == {}


def test_special_tokens_cannot_be_added_to_other_tokenizers() -> None:
    chars = CharTokenizer()
    chars.train("abc", 10)
    with pytest.raises(ConfigError, match="cannot add special tokens"):
        add_special_tokens(chars, ["<|pad|>"])


@pytest.mark.parametrize("tied", [True, False])
def test_a_grown_vocabulary_keeps_the_old_logits(tied: bool) -> None:
    torch.manual_seed(0)
    model = lego.arch.build("llama-tiny", vocab_size=20, tie_embeddings=tied).eval()
    grown = grow_vocabulary(model, 23).eval()
    assert grown.config.vocab_size == 23
    assert grown.tied == tied
    ids = torch.randint(0, 20, (2, 7))
    with torch.no_grad():
        old, new = model(ids), grown(ids)  # (2, 7, 20), (2, 7, 23)
    torch.testing.assert_close(new[..., :20], old)
    # a new row is the mean of the old rows: its logit is the mean of the old logits
    torch.testing.assert_close(new[..., 20], old.mean(dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new[..., 22], new[..., 20])
    with pytest.raises(ConfigError, match="not larger"):
        grow_vocabulary(model, 20)


def test_stop_ids_of_preference_runs(tmp_path: Path) -> None:
    tokenizer = RegexBPETokenizer("gpt4", special_tokens=SPECIALS)
    ids = preference_stop_ids(
        tokenizer, template="chatml", eos_token="<|endoftext|>", model_dir=tmp_path
    )
    assert ids == [258, 256]
    alpaca = preference_stop_ids(
        tokenizer, template="alpaca", eos_token="<|endoftext|>", model_dir=tmp_path
    )
    assert alpaca == [256]
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 7}')
    assert preference_stop_ids(tokenizer, template="chatml", eos_token="x", model_dir=tmp_path) == [
        7
    ]


# -- runs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory (byte-level tokenizer with ChatML and pad tokens) and records."""
    root = tmp_path_factory.mktemp("tuning")
    torch.manual_seed(0)
    model = lego.arch.build("llama-tiny", vocab_size=260, context_length=64, rope_scaling=None)
    model.save_pretrained(root / "model")
    RegexBPETokenizer("gpt4", special_tokens=SPECIALS).save(root / "model" / LEGO_TOKENIZER_FILE)
    (root / "model" / "generation_config.json").write_text('{"eos_token_id": [256, 258]}')
    big = RegexBPETokenizer("gpt4", special_tokens={"<|endoftext|>": 400})  # 401 ids: too many
    big.save(root / "big-tokenizer.json")
    sft = [{"prompt": f"say {w}", "completion": w} for w in ("hi", "yes", "no", "ok")]
    sft.append(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    )
    pairs = [{"prompt": f"pick {i}", "chosen": "calm", "rejected": "LOUD"} for i in range(6)]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return root


def _settings(base: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(base / "model"),
        "out_dir": str(out),
        "max_steps": 2,
        "progress": "none",
        "peak_flops": 1e12,
        "plots": False,
        "schedule": {"warmup_steps": 0},
        **extra,
    }


def test_finetune_writes_a_merged_model_with_its_stop_tokens(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    config = FinetuneConfig.from_dict(
        _settings(
            base,
            out,
            data={"train": str(base / "sft.jsonl")},
            sft={
                "finetune": "lora",
                "lora": {"r": 2, "target_modules": "all-linear"},
                "batch_size": 2,
                "max_length": 32,
            },
            plots=True,
        )
    )
    result = run_finetune(config)
    assert result.finished
    assert result.model_dir == out / "model"
    model = lego.arch.from_hf(out / "model")  # the adapter merged in: a plain model directory
    assert model.config.vocab_size == 260
    saved = json.loads((out / "model" / "config.json").read_text())
    assert (saved["eos_token_id"], saved["pad_token_id"]) == ([256, 258], 259)
    generation = json.loads((out / "model" / "generation_config.json").read_text())
    assert generation == {"eos_token_id": [256, 258], "pad_token_id": 259}
    assert load(out / "model" / LEGO_TOKENIZER_FILE).special_tokens == SPECIALS
    assert (out / CURVES_FILE).read_bytes().startswith(b"\x89PNG")
    assert not (out / LOCK_FILE).exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]


def test_an_adapter_output_references_its_base(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    config = DPORecipeConfig.from_dict(
        _settings(
            base,
            out,
            output="adapter",
            data={"train": str(base / "pairs.jsonl")},
            dpo={
                "finetune": "lora",
                "lora": {"r": 2, "target_modules": "all-linear"},
                "batch_size": 2,
                "max_length": 32,
            },
        )
    )
    assert run_dpo(config).finished
    names = sorted(p.name for p in (out / "model").iterdir())
    assert names == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "base_model.json",
        "generation_config.json",
        LEGO_TOKENIZER_FILE,
        "tokenizer.json",
    ]
    reference = read_base_reference(out / "model")
    assert reference["base_model_name_or_path"] == str((base / "model").resolve())
    adapter = json.loads((out / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((base / "model").resolve())

    # legollm generate / chat open it: the base checked, the adapter merged in
    model, model_dir = load_model(out)
    assert model_dir == out / "model"
    assert isinstance(model, lego.arch.DecoderLM)
    tokenizer = load_tokenizer(None, model_dir)
    assert default_eos_ids(model_dir, tokenizer, vocab_size=260) == [256, 258]
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert not torch.equal(model(ids), lego.arch.from_hf(base / "model")(ids))

    # another base at the recorded path, or none there: one clear error each
    moved = json.loads((out / "model" / "base_model.json").read_text())
    other = tmp_path / "other"
    torch.manual_seed(1)
    lego.arch.build(
        "llama-tiny", vocab_size=260, context_length=64, rope_scaling=None
    ).save_pretrained(other)
    moved["base_model_name_or_path"] = str(other)
    (out / "model" / "base_model.json").write_text(json.dumps(moved))
    with pytest.raises(CompatibilityError, match="not the one the adapter was trained on"):
        load_model(out)
    moved["base_model_name_or_path"] = str(tmp_path / "gone")
    (out / "model" / "base_model.json").write_text(json.dumps(moved))
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(out / "model")


def test_a_reward_model_is_saved_for_sequence_classification(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "rm"
    config = RewardRecipeConfig.from_dict(
        _settings(
            base,
            out,
            data={"train": str(base / "pairs.jsonl"), "eval": str(base / "pairs.jsonl")},
            reward={"batch_size": 2, "max_length": 32},
            eval_every=2,
        )
    )
    result = run_reward(config)
    assert 0.0 <= result.state.metrics["val_accuracy"] <= 1.0
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "val"] == [0, 2]  # before and after


def test_added_tokens_grow_the_model_and_refuse_an_adapter_output(
    base: Path, tmp_path: Path
) -> None:
    data = {"train": str(base / "sft.jsonl")}
    sft = {
        "batch_size": 2,
        "max_length": 32,
        "finetune": "lora",
        "lora": {"r": 2, "target_modules": "all-linear"},
    }
    adapter = FinetuneConfig.from_dict(
        _settings(
            base,
            tmp_path / "a",
            data=data,
            sft=sft,
            output="adapter",
            add_special_tokens=["<|sep|>"],
        )
    )
    with pytest.raises(ConfigError, match="grew the vocabulary from 260 to 261"):
        run_finetune(adapter)
    assert not (tmp_path / "a").exists()  # the failed build left no folder behind
    merged = FinetuneConfig.from_dict(
        _settings(base, tmp_path / "m", data=data, sft=sft, add_special_tokens=["<|sep|>"])
    )
    run_finetune(merged)
    assert lego.arch.from_hf(tmp_path / "m" / "model").config.vocab_size == 261
    tokenizer = load(tmp_path / "m" / "model" / LEGO_TOKENIZER_FILE)
    assert tokenizer.special_tokens["<|sep|>"] == 260


def test_overwrite_removes_the_replaced_runs_results(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    settings = _settings(
        base, out, data={"train": str(base / "sft.jsonl")}, sft={"max_length": 32}, plots=True
    )
    run_finetune(FinetuneConfig.from_dict(settings))
    assert (out / "model").is_dir()
    assert (out / CURVES_FILE).is_file()
    tuning = build_finetune(FinetuneConfig.from_dict({**settings, "overwrite": True}))
    stopped = RunState(max_steps=2, step=1, stop_signal=2)
    tuning.trainer.fit = lambda: stopped  # interrupted after the first step
    result = tuning.run()
    tuning.trainer.close()  # the loaders fit() would have closed
    assert not result.finished
    assert not (out / "model").exists()  # no model of the replaced run beside the new one
    assert not (out / CURVES_FILE).exists()
    assert not (out / LOCK_FILE).exists()


def test_a_bad_record_names_file_and_line_and_leaves_nothing(base: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = (base / "sft.jsonl").read_text().splitlines()
    lines[2] = '{"prompt": "x", "completion": '
    bad.write_text("\n".join(lines) + "\n")
    config = FinetuneConfig.from_dict(
        _settings(base, tmp_path / "out", data={"train": str(bad)}, sft={"max_length": 32})
    )
    with pytest.raises(DataError) as info:
        run_finetune(config)
    assert "line 3" in str(info.value)
    assert str(bad) in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "error", "phrase"),
    [
        ({"data": {"train": "missing.jsonl"}}, ConfigError, "data.train does not exist"),
        ({"sft": {"max_length": 65}}, ConfigError, "longer than the model's context of 64"),
        ({"tokenizer": "BIG"}, CompatibilityError, "401"),
        ({"sft": {"eos_token": "<|pad|>", "max_length": 32}}, ConfigError, "stop tokens"),
    ],
)
def test_checks_before_training(
    base: Path, tmp_path: Path, change: dict[str, Any], error: type[Exception], phrase: str
) -> None:
    settings = _settings(base, tmp_path / "out", data={"train": str(base / "sft.jsonl")})
    settings.update(change)
    if settings.get("tokenizer") == "BIG":
        settings["tokenizer"] = str(base / "big-tokenizer.json")
    config = FinetuneConfig.from_dict(settings)
    with pytest.raises(error, match=phrase):
        run_finetune(config)
    assert not (tmp_path / "out").exists()


def test_the_model_may_not_lie_inside_out_dir(base: Path, tmp_path: Path) -> None:
    config = FinetuneConfig.from_dict(
        _settings(base, base, data={"train": str(base / "sft.jsonl")}, sft={"max_length": 32})
    )
    with pytest.raises(ConfigError, match="inside out_dir"):
        run_finetune(config)
    assert not (base / LOCK_FILE).exists()


# -- the command ----------------------------------------------------------------------------------


def _exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    assert isinstance(code, int)
    return code


def test_help_of_the_tuning_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit(["--help"]) == 0
    out = capsys.readouterr().out
    assert "finetune" in out
    assert "align" in out
    assert _exit(["finetune", "--help"]) == 0
    assert "legollm finetune --config examples/align/sft-tiny.yaml" in capsys.readouterr().out
    assert _exit(["align", "--help"]) == 0
    out = capsys.readouterr().out
    assert "dpo" in out
    assert "reward" in out
    assert "resume=auto" in out
    for method in ("dpo", "reward"):
        assert _exit(["align", method, "--help"]) == 0
        assert f"legollm align {method} --config" in capsys.readouterr().out


def test_bad_input_is_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    code = _exit(["align", "dpo", "--config", str(EXAMPLES / "dpo-tiny.yaml"), "dpo.bet=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("legollm: error:")
    assert "did you mean 'beta'" in err
    assert "Traceback" not in err
    assert _exit(["align", "--config", "x.yaml"]) == 2  # the method is missing
