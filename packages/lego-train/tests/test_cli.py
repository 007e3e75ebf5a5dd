from __future__ import annotations

from pathlib import Path

import pytest

from lego.protocols import ConfigError
from lego.train.cli import _main, main


def test_plot_without_a_run_is_a_config_error(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(ConfigError, match=r"metrics\.jsonl"):
        _main(["plot", str(tmp_path), "-o", str(tmp_path / "c.png")])


def test_pretrain_is_no_longer_a_lego_train_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--config", "tiny"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "lego-train plot runs/tiny" in capsys.readouterr().out
