"""Faults of ``legollm pretrain`` and ``lego-train plot`` (issue 17), through real processes.

Every test runs the command as a user would, asserts its exit code, one message on stderr
without "Traceback", and that every file that existed before is byte-identical afterwards.
One finished tiny run (4 steps, checkpoints at 2 and 4) and its prepared data are made once
per module; each test works on a copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import harness
import pytest
from tiny_train import TINY_RUN

SMALL = [
    "--config",
    "tiny",
    "eval_every=0",
    "checkpoint_every=2",
    "log_every=1",
    "progress=plain",
    "sample.every=-1",
    *TINY_RUN,
]


def pretrain(out: Path, cache: Path, *extra: str) -> list[str]:
    """``legollm pretrain`` of the tiny run into ``out``."""
    return harness.command(
        "lego.recipes.cli", "pretrain", *SMALL, f"out_dir={out}", f"data.cache_dir={cache}", *extra
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(run, cache)``: a finished 4-step run and the data cache it filled."""
    root = tmp_path_factory.mktemp("finished")
    run, cache = root / "run", root / "cache"
    result = harness.run(pretrain(run, cache, "max_steps=4"), cwd=root)
    assert result.code == 0, result.stderr
    return run, cache


@pytest.fixture
def run_copy(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the finished run, for a test to break."""
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    return copy


def _weights(run: Path, step: int) -> bytes:
    model = run / "checkpoints" / f"step-{step:08d}" / "model" / "model.safetensors"
    return model.read_bytes()


def test_a_second_run_into_a_finished_run_is_refused(
    finished: tuple[Path, Path], run_copy: Path, tmp_path: Path
) -> None:
    """Item 1: the same command twice never replaces the finished run."""
    cache = finished[1]
    before = harness.snapshot(tmp_path)
    result = harness.run(pretrain(run_copy, cache, "max_steps=4"), cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase="already holds a training run")
    assert "resume=auto" in result.stderr
    assert "overwrite=true" in result.stderr
    harness.assert_unchanged(before, tmp_path)
    # resume=auto continues it; the old checkpoints stay as they were
    result = harness.run(pretrain(run_copy, cache, "max_steps=6", "resume=auto"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "resumed from" in result.stderr
    assert (run_copy / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    # overwrite=true replaces it, on purpose
    result = harness.run(pretrain(run_copy, cache, "max_steps=2", "overwrite=true"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "deleted the previous run" in result.stderr
    names = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    assert names == ["latest", "step-00000002"]


def test_two_pretrains_on_one_out_dir(finished: tuple[Path, Path], tmp_path: Path) -> None:
    """Item 4 (and 14 for SIGTERM): the second writer gets one clear error; 143 after."""
    cache = finished[1]
    run = tmp_path / "run"
    first = harness.start(pretrain(run, cache, "max_steps=100000"), cwd=tmp_path)
    try:
        harness.run_until(first, "train: 2 of")
        before = harness.snapshot(tmp_path, exclude=[run])
        second = harness.run(pretrain(run, cache, "max_steps=4", "resume=auto"), cwd=tmp_path)
        harness.assert_one_message(second, prog="legollm", phrase="another process")
        assert "pid" in second.stderr
        harness.assert_unchanged(before, tmp_path)
        stopped = harness.interrupt(first, signal.SIGTERM)
    finally:
        if first.poll() is None:
            first.kill()
    assert stopped.code == 143, stopped.stdout
    assert "Traceback" not in stopped.stdout
    assert "resume=auto" in stopped.stdout
    assert not (run / ".lego.lock").exists()


def test_ctrl_c_exits_130_after_a_checkpoint_and_says_how_to_continue(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Item 14: an interrupted pretrain exits 130, saved, with the command to continue."""
    cache = finished[1]
    run = tmp_path / "run"
    process = harness.start(pretrain(run, cache, "max_steps=100000"), cwd=tmp_path)
    try:
        harness.run_until(process, "train: 3 of")
        result = harness.interrupt(process, signal.SIGINT)
    finally:
        if process.poll() is None:
            process.kill()
    assert result.code == 130, result.stdout
    assert "Traceback" not in result.stdout
    assert "checkpoint saved" in result.stdout
    assert "resume=auto" in result.stdout
    saved = (run / "checkpoints" / "latest").read_text().strip()
    step = int(saved.removeprefix("step-"))
    assert step >= 3
    again = harness.run(pretrain(run, cache, f"max_steps={step + 1}", "resume=auto"), cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert f"at step {step}" in again.stderr


@contextmanager
def full_disk(folder: Path, *, used_kib: int, free_kib: int) -> Iterator[tuple[Path, int | None]]:
    """A disk with ``free_kib`` left after ``used_kib``: a tmpfs, or a per-file limit."""
    with harness.small_disk(folder, size_kib=used_kib + free_kib) as (disk, limit):
        yield disk, (None if limit is None else free_kib * 1024)


def size_kib(folder: Path) -> int:
    """The KiB the files under ``folder`` take, plus 64 for folders and small writes."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024 + 64


def test_a_full_disk_leaves_no_temporary_checkpoint(
    finished: tuple[Path, Path], run_copy: Path, tmp_path: Path
) -> None:
    """Items 5 and 10: exit 2, no .tmp-step-N, and the next run resumes the newest step."""
    cache = finished[1]
    with full_disk(tmp_path / "disk", used_kib=size_kib(run_copy), free_kib=200) as (disk, lim):
        run = disk / "run"
        shutil.copytree(run_copy, run)
        before = harness.snapshot(tmp_path, exclude=[run / "metrics.jsonl"])
        result = harness.run(
            pretrain(run, cache, "max_steps=6", "resume=auto"), cwd=tmp_path, file_size_limit=lim
        )
        harness.assert_one_message(result, prog="legollm", phrase="resume=auto")
        assert "space" in result.stderr or "too large" in result.stderr
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        assert leftovers == []
        harness.assert_unchanged(before, tmp_path)
        freed = tmp_path / "freed"
        shutil.copytree(run, freed)
    result = harness.run(pretrain(freed, cache, "max_steps=6", "resume=auto"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "step-00000004 at step 4" in result.stderr


@contextmanager
def _read_only(folder: Path) -> Iterator[Path]:
    """``folder`` made read-only: a read-only bind mount as root (root ignores modes)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        folders = [folder, *[p for p in folder.rglob("*") if p.is_dir()]]
        for each in folders:
            each.chmod(0o555)
        try:
            yield folder
        finally:
            for each in folders:
                each.chmod(0o755)
        return
    view = folder.with_name(folder.name + "-ro")
    view.mkdir()
    mount = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(view)], check=False)
    if mount.returncode != 0:
        pytest.skip("cannot make a read-only folder here (root, no bind mounts)")
    try:
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_a_read_only_run_directory_is_one_message(
    finished: tuple[Path, Path], run_copy: Path, tmp_path: Path
) -> None:
    """Item 10: a run directory that cannot be written is exit 2, not a traceback."""
    before = harness.snapshot(tmp_path)
    with _read_only(run_copy) as run:
        result = harness.run(pretrain(run, finished[1], "max_steps=6", "resume=auto"), cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase="cannot lock the training run")
    harness.assert_unchanged(before, tmp_path)


@pytest.mark.parametrize(
    "content", [b"\xff\xfe\x00\x80garbage", b"step-99999999\n", b"x" * 100_000]
)
def test_garbage_in_checkpoints_latest(
    finished: tuple[Path, Path], run_copy: Path, tmp_path: Path, content: bytes
) -> None:
    """Item 11: a damaged ``checkpoints/latest`` is one FormatError, nothing changed."""
    (run_copy / "checkpoints" / "latest").write_bytes(content)
    before = harness.snapshot(tmp_path)
    result = harness.run(
        pretrain(run_copy, finished[1], "max_steps=6", "resume=auto"), cwd=tmp_path
    )
    harness.assert_one_message(result, prog="legollm", phrase="latest-checkpoint file")
    harness.assert_unchanged(before, tmp_path)


def test_a_tokenizer_other_than_the_datas_is_refused(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Item 7: data.tokenizer must be the tokenizer meta.json records."""
    from lego.tokenize import RegexBPETokenizer

    (data,) = (finished[1] / "train-data").iterdir()
    other = RegexBPETokenizer()
    other.train(["def other(tokenizer):\n    return 1\n" * 20], 260)
    other.save(tmp_path / "other.json")
    before = harness.snapshot(tmp_path)
    result = harness.run(
        pretrain(
            tmp_path / "run",
            finished[1],
            "data.corpus=''",
            f"data.path={data}",
            f"data.tokenizer={tmp_path / 'other.json'}",
        ),
        cwd=tmp_path,
    )
    harness.assert_one_message(result, prog="legollm", phrase="not the tokenizer the data")
    harness.assert_unchanged(before, tmp_path)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("device=cuda", "CPU-only"),
        ("model.overrides.vocab_size=1000000000000", "TiB"),
        ("seed=18446744073709551616", "seed"),
        ("sample.every=0", "sample.max_new_tokens"),  # 48 new tokens > context 32
    ],
)
def test_impossible_settings_fail_before_any_work(
    tmp_path: Path, override: str, phrase: str
) -> None:
    """Items 12 and 15: one message, before the tokenizer is trained or anything written."""
    import torch

    if override == "device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cache, run = tmp_path / "cache", tmp_path / "run"
    result = harness.run(pretrain(run, cache, "max_steps=4", override), cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase=phrase)
    assert not run.exists()
    assert not (cache / "train-data").exists() or not list((cache / "train-data").iterdir())


def test_an_out_dir_that_is_a_file(tmp_path: Path) -> None:
    """Item 12: ``out_dir`` naming an existing file is exit 2; the file is left alone."""
    (tmp_path / "notes.txt").write_text("mine")
    before = harness.snapshot(tmp_path)
    result = harness.run(pretrain(tmp_path / "notes.txt", tmp_path / "cache"), cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase="must be a folder")
    harness.assert_unchanged(before, tmp_path)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("name", "phrase"), [("loss.xyz", "matplotlib cannot write"), ("loss", "no extension")]
)
def test_plot_to_a_format_matplotlib_cannot_write(
    finished: tuple[Path, Path], tmp_path: Path, name: str, phrase: str
) -> None:
    """Item 12: ``lego-train plot -o loss.xyz`` is exit 2 before drawing."""
    pytest.importorskip("matplotlib")
    before = harness.snapshot(finished[0])
    result = harness.run(
        harness.command("lego.train.cli", "plot", str(finished[0]), "-o", name), cwd=tmp_path
    )
    harness.assert_one_message(result, prog="lego-train", phrase=phrase)
    harness.assert_unchanged(before, finished[0])
    assert not (tmp_path / name).exists()


def test_checkpoint_files_follow_the_umask(finished: tuple[Path, Path]) -> None:
    """Item 17: model.safetensors is written like every other file (0644 under umask 022)."""
    checkpoint = finished[0] / "checkpoints" / "step-00000004"
    modes = {
        str(p.relative_to(checkpoint)): stat.S_IMODE(p.stat().st_mode)
        for p in checkpoint.rglob("*")
        if p.is_file()
    }
    assert modes["model/model.safetensors"] == modes["trainer_state.json"]
    assert len(set(modes.values())) == 1, modes


def test_a_pickle_in_a_checkpoint_gets_no_weights_only_advice(
    finished: tuple[Path, Path], run_copy: Path, tmp_path: Path
) -> None:
    """Item 17: the error names the damage, without torch's advice to unpickle the file."""
    import hashlib
    import pickle

    checkpoint = run_copy / "checkpoints" / "step-00000004"
    # a state file with a pickled object, its manifest entry updated (as an attacker would)
    (checkpoint / "scheduler.pt").write_bytes(pickle.dumps(Path("x")))
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    data = (checkpoint / "scheduler.pt").read_bytes()
    state["files"]["scheduler.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    state_file.write_text(json.dumps(state))
    before = harness.snapshot(tmp_path)
    result = harness.run(
        pretrain(run_copy, finished[1], "max_steps=6", "resume=auto"), cwd=tmp_path
    )
    harness.assert_one_message(result, prog="legollm", phrase="scheduler")
    assert "weights_only" not in result.stderr
    harness.assert_unchanged(before, tmp_path)


def test_a_full_disk_while_the_data_is_prepared(tmp_path: Path) -> None:
    """Item 10, the same class in the data cache: exit 2, no temporary folder left."""
    with full_disk(tmp_path / "disk", used_kib=0, free_kib=100) as (disk, limit):
        cache = disk / "cache"
        result = harness.run(
            pretrain(tmp_path / "run", cache, "max_steps=4"), cwd=tmp_path, file_size_limit=limit
        )
        harness.assert_one_message(result, prog="legollm", phrase="cannot write")
        assert "data.cache_dir" in result.stderr  # where to look, not a removed temp folder
        assert ".tmp-" not in result.stderr
        assert list((cache / "train-data").iterdir()) == []
    assert not (tmp_path / "run").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _torchrun(*launch: str, procs: int, args: list[str]) -> list[str]:
    """``torchrun LAUNCH --nproc-per-node PROCS -m lego.recipes.cli`` with the command of
    ``args`` (a [`pretrain()`][test_train.pretrain] command line)."""
    tail = args[args.index("lego.recipes.cli") :]
    return harness.command(
        "torch.distributed.run", *launch, "--nproc-per-node", str(procs), "-m", *tail
    )


def _steps_logged(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    steps = [0]
    for line in metrics.read_text().splitlines():
        with contextlib.suppress(ValueError):
            steps.append(int(json.loads(line).get("step", 0)))
    return max(steps)


def test_a_killed_rank_restarts_the_group_and_ends_bit_identical(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Item 18: two torchrun agents (c10d rendezvous, --nnodes 2) stand in for two machines.

    SIGKILL to rank 0 mid-run: torchrun restarts the group, the new processes resume from
    the last complete checkpoint (resume=auto) and the final weights equal an unbroken run's.
    """
    cache = finished[1]
    env = {"OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    train = ["max_steps=40", "checkpoint_every=4", "strategy=ddp", "resume=auto"]
    base = tmp_path / "base"
    standalone = _torchrun("--standalone", procs=2, args=pretrain(base, cache, *train))
    unbroken = harness.run(standalone, cwd=tmp_path, env=env)
    assert unbroken.code == 0, unbroken.stderr[-3000:]
    run = tmp_path / "run"
    endpoint = f"127.0.0.1:{_free_port()}"
    argv = _torchrun(
        "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
        "--rdzv-id", f"lego-{tmp_path.name}", "--max-restarts", "2", "--monitor-interval", "0.2",
        procs=1, args=pretrain(run, cache, *train),
    )  # fmt: skip
    agents = [harness.start(argv, cwd=tmp_path, env=env) for _ in range(2)]
    try:
        while _steps_logged(run) < 10 and all(a.poll() is None for a in agents):
            time.sleep(0.05)
        holder = json.loads((run / ".lego.lock").read_text())["pid"]
        os.kill(holder, signal.SIGKILL)  # rank 0, the writer, mid-run
        harness.COUNTS["faults"] += 1
        outputs = [a.communicate(timeout=300)[0] for a in agents]
    finally:
        for each in agents:
            if each.poll() is None:
                each.kill()
    both = "\n".join(outputs)
    assert [a.returncode for a in agents] == [0, 0], both[-4000:]
    assert "resumed from" in both
    assert "Traceback" not in both
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000040"
    assert _weights(run, 40) == _weights(base, 40)


if sys.platform == "win32":  # pragma: no cover - signals and tmpfs are POSIX
    pytest.skip("POSIX only", allow_module_level=True)
