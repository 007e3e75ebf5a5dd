"""The run directory's guard, failed saves, file modes and signals (issue 17)."""

from __future__ import annotations

import errno
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lego.protocols import ConfigError, FolderLock, FormatError, TrainingError
from lego.train import TrainConfig, Trainer, check_run_dir
from lego.train.checkpoint import CheckpointManager, torch_load, torch_save
from lego.train.rundir import clear_run, run_contents

MakeTrainer = Callable[..., Trainer]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_fresh_run_never_replaces_a_finished_one(
    make_trainer: MakeTrainer, base_config: TrainConfig
) -> None:
    make_trainer(base_config).fit()
    run = Path(base_config.out_dir)
    before = _files(run)
    with pytest.raises(ConfigError, match="already holds a training run") as info:
        make_trainer(base_config)
    assert "resume=auto" in str(info.value.hint)
    assert "overwrite=true" in str(info.value.hint)
    assert _files(run) == before


def test_resume_auto_continues_and_overwrite_replaces(
    make_trainer: MakeTrainer, base_config: TrainConfig
) -> None:
    make_trainer(base_config.replace(max_steps=3)).fit()
    run = Path(base_config.out_dir)
    resumed = make_trainer(base_config.replace(resume="auto"))
    assert resumed.state.step == 3
    resumed.fit()
    assert resumed.state.step == 6
    (run / "notes.txt").write_text("mine")
    fresh = make_trainer(base_config.replace(max_steps=2, overwrite=True))
    assert fresh.state.step == 0
    fresh.fit()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000002"]
    assert max(r["step"] for r in _metrics(run)) == 2  # the old log went with its run
    assert (run / "notes.txt").read_text() == "mine"


def _metrics(run: Path) -> list[dict[str, Any]]:
    import json

    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_overwrite_and_resume_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="choose one"):
        TrainConfig(out_dir="x", overwrite=True, resume="auto")


def test_resuming_another_runs_checkpoint_into_a_run_is_refused(
    make_trainer: MakeTrainer, base_config: TrainConfig
) -> None:
    make_trainer(base_config.replace(max_steps=2, out_dir=base_config.out_dir + "a")).fit()
    make_trainer(base_config.replace(max_steps=2)).fit()
    other = Path(base_config.out_dir + "a") / "checkpoints" / "step-00000002"
    with pytest.raises(ConfigError, match="mix two runs"):
        check_run_dir(base_config.replace(resume=str(other)))
    own = Path(base_config.out_dir) / "checkpoints" / "step-00000002"
    check_run_dir(base_config.replace(resume=str(own)))  # rewinding its own run is fine


def test_out_dir_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="must be a folder"):
        check_run_dir(TrainConfig(out_dir=str(tmp_path / "f")))


def test_run_contents_and_clear_run(tmp_path: Path) -> None:
    assert run_contents(tmp_path / "missing") == []
    (tmp_path / "checkpoints" / "step-00000001").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert run_contents(tmp_path) == ["1 checkpoint", "metrics.jsonl"]
    assert [p.name for p in clear_run(tmp_path)] == ["checkpoints", "metrics.jsonl"]
    assert run_contents(tmp_path) == []


def test_a_second_writer_gets_one_clear_error(
    make_trainer: MakeTrainer, base_config: TrainConfig
) -> None:
    trainer = make_trainer(base_config)
    with FolderLock(base_config.out_dir, what="training run"):
        with pytest.raises(ConfigError, match="being written by another process"):
            trainer.fit()
        assert not (Path(base_config.out_dir) / "metrics.jsonl").exists()
    trainer.fit()  # the lock is free again
    assert not (Path(base_config.out_dir) / ".lego.lock").exists()


def test_seed_past_64_bits_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="seed"):
        TrainConfig(seed=2**64)
    with pytest.raises(ConfigError, match="seed"):
        TrainConfig(seed=-1)
    TrainConfig(seed=2**64 - 1)


def test_a_full_disk_during_a_save_leaves_no_temporary_folder(
    make_trainer: MakeTrainer, base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_trainer(base_config.replace(max_steps=2)).fit()
    run = Path(base_config.out_dir)
    before = _files(run / "checkpoints")

    def full(obj: object, path: Path) -> None:
        if path.name == "optimizer.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        torch_save(obj, path)

    monkeypatch.setattr("lego.train.trainer.torch_save", full)
    trainer = make_trainer(base_config.replace(max_steps=4, resume="auto"))
    with pytest.raises(TrainingError, match="No space left on device") as info:
        trainer.fit()
    assert "resume=auto" in str(info.value.hint)
    assert _files(run / "checkpoints") == before
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_failed_latest_write_undoes_the_rename(tmp_path: Path) -> None:
    manager = CheckpointManager(run_dir=tmp_path, keep_last=0)
    first = manager.begin(1)
    (first / "trainer_state.json").write_text("{}")
    manager.commit(first, 1)
    second = manager.begin(2)
    (second / "trainer_state.json").write_text("{}")
    latest = tmp_path / "checkpoints" / "latest"
    latest.unlink()
    latest.mkdir()  # the rewrite of latest fails (as on a full disk)
    with pytest.raises(ConfigError, match="latest-checkpoint file"):
        manager.commit(second, 2)
    assert second.is_dir()  # back under its temporary name, for the caller to remove
    assert not (tmp_path / "checkpoints" / "step-00000002").exists()
    latest.rmdir()
    assert manager.latest() == tmp_path / "checkpoints" / "step-00000001"


def test_latest_without_its_file_is_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    manager = CheckpointManager(run_dir=tmp_path, keep_last=0)
    for step in (1, 2):
        folder = manager.begin(step)
        (folder / "trainer_state.json").write_text("{}")
        manager.commit(folder, step)
    (tmp_path / "checkpoints" / ".tmp-step-00000003").mkdir()  # a save killed midway
    (tmp_path / "checkpoints" / "latest").unlink()
    assert manager.latest() == tmp_path / "checkpoints" / "step-00000002"
    (tmp_path / "checkpoints" / "latest").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(FormatError, match="latest-checkpoint file"):
        manager.latest()
    assert [p.name for p in manager.remove_leftovers()] == [".tmp-step-00000003"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_torch_save_on_a_full_disk_raises_the_os_error(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    target.symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left") as info:
        torch_save({"x": torch.zeros(100_000)}, target)
    assert info.value.errno == errno.ENOSPC


_SAVE_TINY = """
import errno, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import tiny
from lego.train.checkpoint import save_model_dir
try:
    save_model_dir(tiny.TinyLM(), Path(sys.argv[1]))
except OSError as exc:
    print("OSError", errno.errorcode[exc.errno])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_safetensors_on_a_full_disk_raises_the_os_error(tmp_path: Path) -> None:
    import resource
    import subprocess
    import sys

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    here = str(Path(__file__).resolve().parent)
    done = subprocess.run(
        [sys.executable, "-c", _SAVE_TINY, str(tmp_path / "model"), here],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        check=False,
    )
    assert done.stdout.strip() == "OSError EFBIG", done.stderr


def test_checkpoint_files_follow_the_umask(
    make_trainer: MakeTrainer, base_config: TrainConfig
) -> None:
    previous = os.umask(0o022)
    try:
        make_trainer(base_config.replace(max_steps=2)).fit()
    finally:
        os.umask(previous)
    folder = Path(base_config.out_dir) / "checkpoints" / "step-00000002"
    modes = {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}
    assert modes["model/model.safetensors"] == 0o644
    assert set(modes.values()) <= {0o644, 0o755}


def test_a_pickle_in_a_state_file_gets_no_weights_only_advice(tmp_path: Path) -> None:
    path = tmp_path / "optimizer.pt"
    torch.save({"a": Path("x")}, path)  # a pathlib object: not plain state
    with pytest.raises(FormatError) as info:
        torch_load(path, what="optimizer")
    text = str(info.value)
    assert "weights_only" not in text
    assert "Re-running" not in text
    assert "pickled objects" in text


def test_a_signal_stops_after_a_checkpoint_and_is_recorded(
    make_trainer: MakeTrainer, base_config: TrainConfig
) -> None:
    class Stop:
        def on_step_end(self, state: Any) -> None:
            if state.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    trainer = make_trainer(base_config, callbacks=[Stop()])
    state = trainer.fit()
    assert state.step == 2
    assert state.stop_signal == signal.SIGTERM
    latest = Path(base_config.out_dir) / "checkpoints" / "latest"
    assert latest.read_text().strip() == "step-00000002"
    assert signal.getsignal(signal.SIGTERM) is not trainer._handle_signal
