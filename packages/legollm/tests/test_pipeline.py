"""The pipeline's run-directory rules (no sibling bricks needed)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from lego.protocols import ConfigError
from lego.recipes.pipeline import PIPELINE_FILE, PipelineConfig, ReportSpec, find_run_dir

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
