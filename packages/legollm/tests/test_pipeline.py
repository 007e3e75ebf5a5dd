"""The pipeline's run-directory rules and its evaluation settings (no training needed)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from lego.eval import load_examples
from lego.eval.tasks import tasks_dir
from lego.protocols import ConfigError, Interrupted, Terminated
from lego.recipes import pipeline
from lego.recipes.pipeline import PIPELINE_FILE, PipelineConfig, ReportSpec, find_run_dir
from lego.recipes.pipeline_eval import EvalSpec, core_tasks, report_lines

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


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


def _record(run: Path, config: PipelineConfig, status: str) -> None:
    run.mkdir(parents=True)
    record = {"status": status, "fingerprint": config.fingerprint(), "config": {}}
    (run / PIPELINE_FILE).write_text(json.dumps(record))


def test_a_new_run_is_named_by_the_time(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert find_run_dir(config, now=NOW) == tmp_path / "20260102-030405"


def test_an_unfinished_run_of_the_same_config_is_continued(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _record(tmp_path / "20250101-000000", config, "running")
    _record(tmp_path / "20250102-000000", config, "done")
    assert find_run_dir(config, now=NOW) == tmp_path / "20250101-000000"
    # a longer max_steps is the same run; another model is not
    assert find_run_dir(_config(tmp_path, max_steps=99), now=NOW).name == "20250101-000000"
    other = _config(tmp_path, model={"preset": "llama-tiny"})
    assert find_run_dir(other, now=NOW).name == "20260102-030405"


def test_out_dir_pins_the_run(tmp_path: Path) -> None:
    config = _config(tmp_path, out_dir=str(tmp_path / "mine"))
    assert find_run_dir(config, now=NOW) == tmp_path / "mine"
    assert config.pretrain_config(tmp_path / "mine").resume == "auto"
    replaced = _config(tmp_path, out_dir=str(tmp_path / "mine"), overwrite=True)
    assert replaced.pretrain_config(tmp_path / "mine").resume == ""  # not refused as a mix


def test_broken_records_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "20250101-000000").mkdir()
    (tmp_path / "20250101-000000" / PIPELINE_FILE).write_text("{not json")
    assert find_run_dir(_config(tmp_path), now=NOW).name == "20260102-030405"


def test_report_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="top_p"):
        ReportSpec(top_p=1.5)
    with pytest.raises(ConfigError, match="prompt"):
        ReportSpec(prompts=[])
    with pytest.raises(ConfigError, match="warmup"):
        _config(Path("runs"), schedule={"warmup_steps": 50})


def test_eval_settings_are_checked() -> None:
    assert EvalSpec().enabled
    assert EvalSpec().window(128) == (128, 64)
    assert EvalSpec(max_length=64, stride=16).window(128) == (64, 16)
    with pytest.raises(ConfigError, match="lego_sort_exact"):  # the closest name suggested
        EvalSpec(tasks=["lego_sort"])
    with pytest.raises(ConfigError, match="twice"):
        EvalSpec(tasks=["lego_sort_exact", "lego_sort_exact"])
    with pytest.raises(ConfigError, match="stride"):
        EvalSpec(max_length=32, stride=64)
    with pytest.raises(ConfigError, match="max_tokens"):
        EvalSpec(max_tokens=1)
    with pytest.raises(ConfigError, match="batch_size"):
        EvalSpec(batch_size=0)
    with pytest.raises(ConfigError, match="context length 32"):
        EvalSpec(max_length=64).window(32)
    with pytest.raises(ConfigError, match="stride 64 exceeds the window of 32"):
        EvalSpec(stride=64).window(32)


def test_eval_is_checked_before_training(tmp_path: Path) -> None:
    config = _config(tmp_path, eval={"stride": 4096})
    with pytest.raises(ConfigError, match=r"eval\.stride"):
        config.check_later_stages(context=128, prompt_tokens=[1])
    no_val = _config(tmp_path, data={"corpus": "python-stdlib", "val_fraction": 0.0})
    with pytest.raises(ConfigError, match="val_fraction"):
        no_val.check_later_stages(context=128, prompt_tokens=[1])
    switched_off = _config(
        tmp_path, eval={"enabled": False}, data={"corpus": "python-stdlib", "val_fraction": 0.0}
    )
    switched_off.check_later_stages(context=128, prompt_tokens=[1])  # nothing to evaluate


def test_eval_settings_do_not_change_the_run(tmp_path: Path) -> None:
    config = _config(tmp_path)
    other = _config(tmp_path, eval={"enabled": False, "max_rows": 5})
    assert other.fingerprint() == config.fingerprint()  # an unfinished run is continued
    assert "eval" not in other.pretrain_config(tmp_path / "run").to_dict()


def _packaged(name: str) -> list[dict[str, Any]]:
    lines = (tasks_dir() / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_core_tasks_are_the_packaged_rows(tmp_path: Path) -> None:
    spec = EvalSpec(max_rows=7, tasks=["lego_sort_exact", "lego_stdlib_ppl", "lego_arithmetic_mc"])
    tasks = core_tasks(spec, tmp_path / "eval")
    assert [t.name for t in tasks] == ["lego_sort_exact", "lego_arithmetic_mc"]  # docs: no CORE
    sort, mc = (load_examples(t.path, t.task_type) for t in tasks)
    packaged = _packaged("sort_exact.jsonl")
    assert len(sort) == 7
    assert sort[0] == {"context": packaged[0]["prompt"], "continuation": packaged[0]["answer"]}
    assert tasks[0].continuation_delimiter == " "  # "sort 5 2 9 = 2 5 9", as trained
    first = _packaged("arithmetic_mc.jsonl")[0]
    assert mc[0] == {"query": first["prompt"], "choices": first["choices"], "gold": first["answer"]}
    assert tasks[1].task_type == "multiple_choice"
    assert tasks[1].continuation_delimiter == ""


def _evaluation(core: float | None = 0.1) -> dict[str, Any]:
    ppl = {"num_tokens": 1000, "mean_nll": 3.0, "perplexity": 20.09, "bits_per_byte": 1.2}
    score = {
        "task_type": "multiple_choice",
        "num_examples": 50,
        "accuracy": 0.4,
        "random_baseline": 0.25,
        "centered": 0.2,
    }
    check = {
        "num_tokens": 512,
        "window": 32,
        "mean_nll": 3.1,
        "val_loss_logged": 3.1000001,
        "difference": -1e-7,
    }
    parts = {"perplexity": ppl, "trainer_check": check, "lego_arithmetic_mc": score}
    return {"settings": {"max_length": 128, "stride": 64}, "parts": parts, "core": core}


def test_the_report_section_shows_every_part() -> None:
    text = "\n".join(report_lines(_evaluation()))
    assert "windows of 128 tokens, stride 64" in text
    assert "| perplexity | 20.09 |" in text
    assert "| bits per byte | 1.2000 |" in text
    assert "logged `val_loss` 3.100000 (difference -1.0e-07)" in text
    assert "| `lego_arithmetic_mc` | multiple_choice | 50 | 0.4000 | 0.2500 | 0.2000 |" in text
    assert "| **CORE** (mean centred) | | | | | 0.1000 |" in text
    skipped = _evaluation(core=None)
    skipped["parts"] = {"perplexity": {"skipped": "no validation split"}}
    text = "\n".join(report_lines(skipped))
    assert "| measure |" not in text  # no table of nothing
    assert "CORE" not in text


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt(), 130), (Terminated(), 143)])
def test_a_signal_during_the_evaluation_says_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: KeyboardInterrupt, code: int
) -> None:
    def stopped(**kwargs: Any) -> dict[str, Any]:
        raise stop

    monkeypatch.setattr(pipeline, "run_evaluation", stopped)
    with pytest.raises(Interrupted) as caught:
        pipeline._evaluate(_config(tmp_path), tmp_path, tmp_path / "model", tmp_path, 10, print)
    assert caught.value.exit_code == code
    assert "stopped during the evaluation" in caught.value.message
    assert "computes only the rest" in str(caught.value.hint)
