"""What the GRPO and PPO fault tests share: signals mid-run, checkpoints, refused settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import harness

from lego.protocols.layout import read_latest
from lego.train.checkpoint import CheckpointManager


def checkpoint_step(run: Path) -> int:
    """The newest checkpoint's step, after the check a resume makes (sizes, SHA-256s)."""
    latest = read_latest(run)
    assert latest is not None
    CheckpointManager(run_dir=run, keep_last=0).read_state(latest)
    return int(latest.name.removeprefix("step-"))


def interrupt_after(
    command: Sequence[str],
    cwd: Path,
    marker: str,
    signum: int,
    *,
    meanwhile: Callable[[], None] | None = None,
) -> harness.Result:
    """Start ``command``, wait for ``marker``, run ``meanwhile``, send ``signum``.

    The result must be an exit after a checkpoint (``code``, no traceback, the message
    saying how to continue): check it with ``assert_saved()``.
    """
    process = harness.start(list(command), cwd=cwd)
    try:
        harness.run_until(process, marker)
        if meanwhile is not None:
            meanwhile()
        return harness.interrupt(process, signum)
    finally:
        if process.poll() is None:
            process.kill()


def assert_saved(result: harness.Result, code: int) -> None:
    """An interrupted run: exit ``code``, a checkpoint saved, the message names resume=auto."""
    assert result.code == code, result.stdout
    assert "Traceback" not in result.stdout
    assert "checkpoint saved" in result.stdout
    assert "resume=auto" in result.stdout


def assert_refused(
    command: Sequence[str], workdir: Path, inputs: Path, run: Path, phrase: str
) -> harness.Result:
    """``command`` exits 2 with one message holding ``phrase`` and writes nothing.

    Args:
        command: The command (``run`` its ``out_dir``).
        workdir: Its working directory (byte-identical afterwards).
        inputs: The model and records it read (byte-identical afterwards).
        run: Its ``out_dir``, which must not exist afterwards.
        phrase: What the one message says.

    Returns:
        The result, for more checks.
    """
    before, inputs_before = harness.snapshot(workdir), harness.snapshot(inputs)
    result = harness.run(list(command), cwd=workdir)
    harness.assert_one_message(result, prog="legollm", phrase=phrase)
    assert not run.exists()
    harness.assert_unchanged(before, workdir)
    harness.assert_unchanged(inputs_before, inputs)
    return result
