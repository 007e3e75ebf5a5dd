"""The pipeline's stages after pretraining: their sections, checks and the chain they run."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from lego.protocols import ConfigError, Interrupted, Terminated
from lego.recipes import cli, pipeline, pipeline_stages
from lego.recipes.loading import default_eos_ids, load_model, load_tokenizer
from lego.recipes.pipeline import (
    CHAT_DIR,
    PIPELINE_FILE,
    PipelineConfig,
    PipelineResult,
    run_pipeline,
)
from lego.recipes.pipeline_stages import DATA_DIR, FILLED, check_stage_data, check_stages
from lego.recipes.serve import detect_template
from lego.tokenize import RegexBPETokenizer
from lego.train import read_metrics
from lego.train.budget import SIZING_PATIENCE, SIZING_STEPS


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
    assert on.sft.add_special_tokens == ("<|im_start|>", "<|im_end|>", "<|pad|>")
    assert on.sft.model == FILLED


def test_a_stage_becomes_its_recipe_config(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        sft={"enabled": True, "max_steps": 7, "sft": {"template": "chatml", "max_length": 64}},
        dpo={"enabled": True, "time_budget_s": 45, "dpo": {"beta": 0.3, "finetune": "lora"}},
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
    assert (dpo.time_budget_s, sft.time_budget_s) == (45.0, 0.0)  # the trainer sizes by it
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
    same = _config(
        tmp_path,
        sft={"enabled": True, "max_steps": 50, "time_budget_s": 30},
        dpo={"enabled": True},
        time_budget_s=90,
    )
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
        sft={"enabled": True, "sft": {"max_length": 64, "eos_token": "<|im_end|>"}},
        dpo={"enabled": True, "add_special_tokens": [], "dpo": {"max_length": 64}},
    )
    check_stages(chain, context=128, tokenizer=tokenizer)
    plain = _config(
        tmp_path,
        sft={"enabled": True, "add_special_tokens": ["<|pad|>"], "sft": {"template": "none"}},
        dpo={"enabled": True, "dpo": {"max_length": 64}},  # adds ChatML's tokens itself
    )
    check_stages(plain, context=2048, tokenizer=tokenizer)


def test_the_sft_stop_tokens_are_checked_before_pretraining(tmp_path: Path) -> None:
    tokenizer = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256})
    default = _config(tmp_path, sft={"enabled": True, "max_steps": 5})
    assert default.sft.sft.eos_token == "<|im_end|>"  # the chat reply ends on its turn's end
    check_stages(default, context=2048, tokenizer=tokenizer)
    given = {"template": "chatml", "eos_token": "<|endoftext|>"}  # a section without the default
    disagree = _config(tmp_path, sft={"enabled": True, "sft": given})
    with pytest.raises(ConfigError, match="stop tokens disagree") as caught:
        check_stages(disagree, context=2048, tokenizer=tokenizer)
    assert str(caught.value.key).startswith("sft.sft.")


# -- the chain ------------------------------------------------------------------------------

_TUNE = {
    "log_every": 1,
    "progress": "none",
    "checkpoint_every": 2,
    "keep_last": 1,
    "schedule": {"name": "constant", "warmup_steps": 0},
    "plots": False,
}


def _corpus(folder: Path) -> Path:
    """A small text corpus (tokenizer and pretraining in a second or two)."""
    from lego.data.stdlib_qa import qa_rows

    rows = qa_rows(split="train", count=120)
    text = "\n".join(f"{row['prompt']} {row['completion']}" for row in rows)
    path = folder / "corpus.txt"
    path.write_text(text * 3, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(corpus, cache)``: one text file and one data cache for every chain test."""
    folder = tmp_path_factory.mktemp("chain")
    return _corpus(folder), folder / "cache"


def _chain(out: Path, corpus: tuple[Path, Path], **changes: Any) -> PipelineConfig:
    text, cache = corpus
    data: dict[str, Any] = {
        "out_dir": str(out),
        "max_steps": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": "none",
        "schedule": {"warmup_steps": 1},
        "model": {
            "preset": "gpt2-tiny",
            "overrides": {
                "context_length": 256,
                "d_model": 64,
                "n_layers": 2,
                "n_heads": 2,
                "d_ff": 128,
            },
        },
        "data": {
            "corpus": str(text),
            "vocab_size": 320,
            "batch_size": 4,
            "context_length": 64,
            "val_fraction": 0.1,
            "cache_dir": str(cache),
        },
        "eval": {"enabled": False},
        "report": {"prompts": ["What "], "max_new_tokens": 4, "attention_tokens": 4},
        "sft": {
            **_TUNE,
            "enabled": True,
            "max_steps": 4,
            "optim": {"lr": 3e-3, "min_lr": 3e-3, "weight_decay": 0.0},
            "data": {"train_count": 32, "eval_count": 8},
            "sft": {
                "template": "chatml",
                "eos_token": "<|im_end|>",
                "max_length": 256,
                "batch_size": 4,
            },
        },
        "dpo": {
            **_TUNE,
            "enabled": True,
            "max_steps": 2,
            "optim": {"lr": 1e-3, "min_lr": 1e-3, "weight_decay": 0.0},
            "data": {"train_count": 16, "eval_count": 8},
            "dpo": {
                "finetune": "lora",
                "lora": {"target_modules": "all-linear", "r": 4, "lora_alpha": 8},
                "max_length": 256,
                "batch_size": 4,
            },
        },
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return PipelineConfig.from_dict(data)


def _quiet(text: str) -> None:
    """Progress lines go nowhere."""


@pytest.fixture(scope="module")
def chained(tmp_path_factory: pytest.TempPathFactory, corpus: tuple[Path, Path]) -> Path:
    """The run directory of an uninterrupted chain: pretraining, SFT, DPO."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    evaluation = {
        "enabled": True,
        "max_tokens": 256,
        "batch_size": 4,
        "max_rows": 2,
        "tasks": ["lego_arithmetic_mc"],
        "stages": {"answers": 2, "max_new_tokens": 6, "batch_size": 8},
    }
    result = run_pipeline(_chain(run, corpus, eval=evaluation), echo=_quiet)
    assert result.finished
    assert result.chat == run / CHAT_DIR
    return run


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_the_chain_leaves_each_stage_and_a_chat_model(chained: Path) -> None:
    run = chained
    for stage in ("sft", "dpo"):
        assert (run / stage / "model" / "model.safetensors").is_file(), stage
        assert (run / DATA_DIR / f"{stage}-train.jsonl").is_file()
    assert not (run / "grpo").exists()  # switched off
    record = json.loads((run / PIPELINE_FILE).read_text())
    assert record["status"] == "done"
    assert record["stages"] == {
        "pretraining": "done",
        "sft": "done",
        "dpo": "done",
        "grpo": "skipped",
    }
    chat = run / CHAT_DIR
    assert _bytes(chat) == _bytes(run / "dpo" / "model")  # a copy of the last stage's model
    tokenizer = load_tokenizer(None, chat)
    assert detect_template(tokenizer) == "chatml"  # what legollm serve finds
    model, _ = load_model(chat)
    eos = default_eos_ids(chat, tokenizer, vocab_size=model.config.vocab_size)
    assert tokenizer.special_tokens["<|im_end|>"] in eos  # the end of turn ends a reply
    assert model.config.vocab_size >= tokenizer.vocab_size
    sft_rows = (run / DATA_DIR / "sft-train.jsonl").read_text().splitlines()
    assert len(sft_rows) == 32
    assert set(json.loads(sft_rows[0])) == {"prompt", "completion"}
    pairs = (run / DATA_DIR / "dpo-eval.jsonl").read_text().splitlines()
    assert set(json.loads(pairs[0])) == {"prompt", "chosen", "rejected"}
    report = (run / "report.md").read_text()
    assert "## Stages after pretraining" in report
    assert "held-out preference accuracy" in report  # the stage evaluation's section
    assert "](stages.png)" in report
    assert (run / "stages.png").read_bytes().startswith(b"\x89PNG")
    measured = json.loads((run / "eval.json").read_text())["stages"]
    assert list(measured["models"]) == ["pretrained", "sft", "dpo"]
    assert report.rstrip().endswith(f"legollm serve --model {chat}")


def test_a_finished_stage_is_not_redone(
    chained: Path, tmp_path: Path, corpus: tuple[Path, Path]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(chained, run)
    data = _bytes(run / DATA_DIR)
    before = {stage: _bytes(run / stage / "model") for stage in ("sft", "dpo")}
    stamps = {stage: (run / stage / "model").stat().st_mtime_ns for stage in ("sft", "dpo")}
    lines: list[str] = []
    result = run_pipeline(_chain(run, corpus), echo=lines.append)
    assert result.finished
    assert "sft: done earlier" in "\n".join(lines)
    for stage in ("sft", "dpo"):
        assert _bytes(run / stage / "model") == before[stage]
        assert (run / stage / "model").stat().st_mtime_ns == stamps[stage]
    assert _bytes(run / DATA_DIR) == data  # the same records, byte for byte


def test_a_stage_switched_off_is_skipped(tmp_path: Path, corpus: tuple[Path, Path]) -> None:
    run = tmp_path / "run"
    evaluation = {"enabled": True, "max_tokens": 256, "max_rows": 2, "tasks": ["lego_sort_exact"]}
    config = _chain(run, corpus, sft={"enabled": False}, eval=evaluation)
    result = run_pipeline(config, echo=_quiet)
    assert result.finished
    assert not (run / "sft").exists()
    adapter = run / "dpo" / "checkpoints"
    (config_file,) = adapter.glob("step-*/model/adapter_config.json")
    base = json.loads(config_file.read_text())["base_model_name_or_path"]
    assert Path(base) == (run / "model").resolve()  # DPO started from the pretrained model
    assert json.loads((run / PIPELINE_FILE).read_text())["stages"]["sft"] == "skipped"
    assert detect_template(load_tokenizer(None, run / CHAT_DIR)) == "chatml"  # DPO added them
    measured = json.loads((run / "eval.json").read_text())["stages"]
    assert list(measured["models"]) == ["pretrained", "dpo"]
    assert "- `sft`: switched off (enabled: false)" in (run / "report.md").read_text()


def test_a_stage_sized_by_its_time_budget_finishes_at_that_length(
    tmp_path: Path, corpus: tuple[Path, Path]
) -> None:
    # a budget no step fits: SFT trains the steps it took to size itself, not its 60 (its
    # padded batches change length, so it waits for five of repeated shapes, at most 50)
    run = tmp_path / "run"
    sft = {"max_steps": SIZING_PATIENCE + 10, "time_budget_s": 0.001, "checkpoint_every": 0}
    config = _chain(run, corpus, sft=sft, dpo={"enabled": False})
    result = run_pipeline(config, echo=_quiet)
    assert result.finished
    assert json.loads((run / PIPELINE_FILE).read_text())["stages"]["sft"] == "done"
    (budget,) = [r for r in read_metrics(run / "sft") if r["split"] == "budget"]
    sized = budget["step"]
    assert SIZING_STEPS + 1 <= sized <= SIZING_PATIENCE
    assert (budget["fits"], budget["max_steps"]) == (0, sized)
    (latest,) = (run / "sft" / "checkpoints").glob("step-*")
    assert latest.name == f"step-{sized:08d}"
    state = json.loads((latest / "trainer_state.json").read_text())
    assert (state["step"], state["budget_steps"]) == (sized, sized)
    bullet = next(
        x for x in (run / "report.md").read_text().splitlines() if x.startswith("- `sft`")
    )
    assert "; time budget 0.001 s at " in bullet
    assert bullet.endswith(f"a step: {sized} of {SIZING_PATIENCE + 10} steps")


class _StopAt:
    """A trainer callback that sends this process SIGINT after step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: Any) -> None:
        if state.step == self.step:
            signal.raise_signal(signal.SIGINT)


def test_sigint_during_sft_then_the_same_command_finishes(
    chained: Path, tmp_path: Path, corpus: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    config = _chain(run, corpus)
    real = pipeline_stages.build_finetune

    def interrupted(recipe: Any) -> Any:
        tuning = real(recipe)
        tuning.trainer.trainer.callbacks.append(_StopAt(2))
        return tuning

    monkeypatch.setattr(pipeline_stages, "build_finetune", interrupted)
    stopped = run_pipeline(config, echo=_quiet)
    assert not stopped.finished
    assert (stopped.stage, stopped.step, stopped.stop_signal) == ("sft", 2, signal.SIGINT)
    assert stopped.stage_dir == run / "sft"
    assert (run / "sft" / "checkpoints" / "latest").is_file()
    assert not (run / "sft" / "model").exists()
    assert json.loads((run / PIPELINE_FILE).read_text())["stages"]["sft"] == "running"
    monkeypatch.setattr(pipeline_stages, "build_finetune", real)
    lines: list[str] = []
    result = run_pipeline(config, echo=lines.append)
    assert result.finished
    for stage in ("model", "sft/model", "dpo/model", "chat"):
        assert _bytes(run / stage) == _bytes(chained / stage), stage  # as if never stopped


def test_the_cli_says_which_stage_stopped(
    tmp_path: Path, corpus: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    config = _chain(run, corpus)
    stopped = PipelineResult(
        run_dir=run,
        report=run / "report.md",
        finished=False,
        val_loss=1.0,
        baseline=2.0,
        step=3,
        max_steps=4,
        stop_signal=signal.SIGTERM,
        stage="dpo",
        stage_dir=run / "dpo",
    )
    monkeypatch.setattr(cli, "read_recipe_config", lambda *args: config)
    monkeypatch.setattr(cli, "run_pipeline", lambda config: stopped)
    with pytest.raises(Interrupted) as caught:
        cli._main(["pipeline", "--config", "x.yaml"])
    assert caught.value.exit_code == 143
    assert caught.value.message == (
        f"stopped the dpo stage at step 3 of 4: checkpoint saved in {run / 'dpo'}"
    )


def test_grpo_runs_after_the_enabled_stages(tmp_path: Path, corpus: tuple[Path, Path]) -> None:
    run = tmp_path / "run"
    grpo = {
        **_TUNE,
        "enabled": True,
        "max_steps": 2,
        "eval_every": 2,
        "optim": {"lr": 1e-4, "min_lr": 1e-4, "weight_decay": 0.0},
        "data": {"task": "addition", "train_count": 16, "eval_count": 4},
        "sft": {"max_steps": 2, "batch_size": 4, "max_length": 64, "schedule": {"warmup_steps": 0}},
        "grpo": {
            "template": "chatml",
            "eos_token": "<|im_end|>",
            "pad_token": "<|pad|>",
            "num_generations": 2,
            "prompts_per_step": 2,
            "max_prompt_length": 48,
            "max_completion_length": 8,
        },
    }
    config = _chain(run, corpus, dpo={"enabled": False}, grpo=grpo)
    result = run_pipeline(config, echo=_quiet)
    assert result.finished
    assert (run / "grpo" / "sft" / "model").is_dir()  # its warm-up, configured here
    assert _bytes(run / CHAT_DIR) == _bytes(run / "grpo" / "model")
    adapterless = json.loads((run / "grpo" / "model" / "config.json").read_text())
    assert (
        adapterless["vocab_size"]
        == json.loads((run / "sft/model/config.json").read_text())["vocab_size"]
    )  # GRPO started from the SFT model (its grown vocabulary), DPO switched off
    stages = json.loads((run / PIPELINE_FILE).read_text())["stages"]
    assert (stages["sft"], stages["dpo"], stages["grpo"]) == ("done", "skipped", "done")


def test_cli_overrides_reach_the_stage_keys(tmp_path: Path) -> None:
    config = cli.read_recipe_config(
        PipelineConfig,
        Path(__file__).resolve().parents[3] / "examples" / "pipelines" / "tiny.yaml",
        ["sft.max_steps=20", "dpo.enabled=false", "dpo.dpo.beta=0.3", "grpo.data.task=sort"],
    )
    assert (config.sft.max_steps, config.dpo.enabled, config.dpo.dpo.beta) == (20, False, 0.3)
    assert config.grpo.data.task == "sort"
    with pytest.raises(ConfigError) as caught:
        cli.read_recipe_config(PipelineConfig, "tiny-missing.yaml", [])
    assert caught.value.key == "--config"
    tiny = Path(__file__).resolve().parents[3] / "examples" / "pipelines" / "tiny.yaml"
    with pytest.raises(ConfigError) as bad:
        cli.read_recipe_config(PipelineConfig, tiny, ["sft.sft.batchsize=4"])
    assert bad.value.key == "sft.sft.batchsize"


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt(), 130), (Terminated(), 143)])
def test_a_signal_while_a_stage_is_set_up_says_how_to_continue(
    tmp_path: Path,
    corpus: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    stop: KeyboardInterrupt,
    code: int,
) -> None:
    def stopped(recipe: Any) -> Any:
        raise stop

    monkeypatch.setattr(pipeline_stages, "build_finetune", stopped)
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as caught:
        run_pipeline(_chain(run, corpus), echo=_quiet)
    assert caught.value.exit_code == code
    assert caught.value.message.startswith("stopped during the sft stage")
    assert "run the same command again" in str(caught.value.hint)
    record = json.loads((run / PIPELINE_FILE).read_text())
    assert (record["status"], record["stages"]["pretraining"]) == ("running", "done")


def test_a_signal_during_the_stage_evaluation_keeps_the_stages(
    chained: Path, tmp_path: Path, corpus: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(chained, run)
    record = json.loads((run / PIPELINE_FILE).read_text())
    (run / PIPELINE_FILE).write_text(json.dumps({**record, "status": "running"}))

    def stopped(**kwargs: Any) -> dict[str, Any]:
        raise Terminated

    monkeypatch.setattr(pipeline, "evaluate_stages", stopped)
    evaluation = {"enabled": True, "max_tokens": 256, "tasks": ["lego_arithmetic_mc"]}
    with pytest.raises(Interrupted) as caught:
        run_pipeline(_chain(run, corpus, eval=evaluation), echo=_quiet)
    assert caught.value.exit_code == 143
    assert "stopped during the stage evaluation" in caught.value.message
    stages = json.loads((run / PIPELINE_FILE).read_text())["stages"]
    assert (stages["sft"], stages["dpo"]) == ("done", "done")


def test_the_stage_data_counts_are_checked_before_any_work(tmp_path: Path) -> None:
    fits = _config(
        tmp_path,
        sft={"enabled": True, "data": {"train_count": 8, "eval_count": 4}},
        grpo={"enabled": True, "data": {"task": "addition", "eval_count": 80}},
    )
    check_stage_data(fits)
    too_many = _config(
        tmp_path, grpo={"enabled": True, "data": {"task": "addition", "eval_count": 100}}
    )
    with pytest.raises(ConfigError, match="87 problems") as caught:
        check_stage_data(too_many)
    assert caught.value.key == "grpo.data.eval_count"
    unknown = _config(tmp_path, sft={"enabled": True, "data": {"kinds": ["riddle"]}})
    with pytest.raises(ConfigError) as kinds:
        check_stage_data(unknown)
    assert kinds.value.key == "sft.data.kinds"
