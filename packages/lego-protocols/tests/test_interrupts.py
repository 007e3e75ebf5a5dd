from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest

from lego.protocols import Interrupted, run_cli
from lego.protocols.cli import EXIT_INTERRUPTED, EXIT_TERMINATED


def test_interrupted_exits_128_plus_signal_with_its_message() -> None:
    def stop(argv: list[str]) -> int:
        raise Interrupted("stopped at step 3: checkpoint saved", signum=signal.SIGTERM,
                          hint="run the same command again")  # fmt: skip

    err = io.StringIO()
    assert run_cli(stop, [], prog="tool", stderr=err) == EXIT_TERMINATED
    assert err.getvalue() == (
        "tool: stopped at step 3: checkpoint saved\n  what to do: run the same command again\n"
    )


def test_ctrl_c_exits_130() -> None:
    def interrupt(argv: list[str]) -> int:
        raise KeyboardInterrupt

    err = io.StringIO()
    assert run_cli(interrupt, [], prog="tool", stderr=err) == EXIT_INTERRUPTED
    assert err.getvalue() == "tool: interrupted\n"


def test_interrupted_pickles() -> None:
    again = pickle.loads(pickle.dumps(Interrupted("x", signum=15, hint="h")))
    assert (again.message, again.signum, again.hint, again.exit_code) == ("x", 15, "h", 143)


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_sigterm_unwinds_and_exits_143() -> None:
    code = textwrap.dedent(
        """
        import sys, time
        from lego.protocols import run_cli

        def main(argv):
            try:
                print("ready", flush=True)
                time.sleep(30)
            finally:
                print("cleaned up", flush=True)

        sys.exit(run_cli(main, [], prog="tool"))
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == EXIT_TERMINATED
    assert out == "cleaned up\n"
    assert err == "tool: terminated\n"


def test_worker_signals_leave_ctrl_c_to_the_parent() -> None:
    import signal as _signal

    from lego.protocols.cli import worker_signals

    before = _signal.getsignal(_signal.SIGINT), _signal.getsignal(_signal.SIGTERM)
    try:
        worker_signals()
        assert _signal.getsignal(_signal.SIGINT) is _signal.SIG_IGN
        with pytest.raises(SystemExit):
            _signal.getsignal(_signal.SIGTERM)(_signal.SIGTERM, None)  # type: ignore[operator,misc]
    finally:
        _signal.signal(_signal.SIGINT, before[0])
        _signal.signal(_signal.SIGTERM, before[1])
