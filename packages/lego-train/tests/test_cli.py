from __future__ import annotations

from pathlib import Path

import pytest

from lego.train.cli import _main, main
from lego.train.yamlconfig import find_config, load_yaml, shipped_configs


def test_shipped_configs_are_listed_and_valid() -> None:
    from lego.train.recipe import PretrainConfig

    assert {"tiny", "gpt2-124m"} <= set(shipped_configs())
    for name in shipped_configs():
        config = PretrainConfig.from_dict(load_yaml(find_config(name)))
        assert config.max_steps > 0


def test_unknown_key_exits_2_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--config", "tiny", "max_step=3"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "max_steps" in err
    assert "Traceback" not in err


def test_missing_config_names_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--config", "tinyy"])
    assert info.value.code == 2
    assert "tiny" in capsys.readouterr().err


def test_bad_yaml_is_a_format_error_with_the_line(tmp_path: Path) -> None:
    from lego.protocols import FormatError

    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 3\noptim: [\n")
    with pytest.raises(FormatError) as info:
        _main(["pretrain", "--config", str(bad)])
    assert info.value.line is not None


def test_plot_without_a_run_is_a_config_error(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from lego.protocols import ConfigError

    with pytest.raises(ConfigError, match=r"metrics\.jsonl"):
        _main(["plot", str(tmp_path), "-o", str(tmp_path / "c.png")])
