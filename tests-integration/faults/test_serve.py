"""Faults of ``legollm serve`` (issue 21), through real processes.

Each test runs the command as a user would, on the tiny model ``examples/align/make_tiny.py``
writes once per module, and asserts the exit code, one message without "Traceback", and
that the model directory is byte-identical afterwards (a server writes nothing):

- bad flags and a bad API key (on the command line or in ``LEGO_API_KEY``): exit 2 naming
  the flag, before the model is read;
- a model folder that does not exist, a host that is not an address, a port in use: exit 2
  with what to do;
- Ctrl-C (SIGINT) and SIGTERM while serving, also while a reply streams: exit 130 / 143, the
  stream ends, nothing written.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import harness
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROG = "legollm"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder make_tiny.py writes (``model/`` is a ChatML-ready lego-arch model)."""
    root = tmp_path_factory.mktemp("serve-tiny")
    script = ROOT / "examples" / "align" / "make_tiny.py"
    result = harness.run([sys.executable, str(script), str(root)], cwd=root)
    assert result.code == 0, result.stderr
    return root


def serve(model: Path | str, *flags: str) -> list[str]:
    return harness.command("lego.recipes.cli", "serve", "--model", str(model), *flags)


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--port", "70000"], "--port must be <= 65535"),
        (["--port", "-1"], "--port must be >= 0"),
        (["--max-batch", "0"], "--max-batch must be >= 1"),
        (["--max-queue", "0"], "--max-queue must be >= 1"),
        (["--timeout", "0"], "--timeout must be > 0"),
        (["--template", "vicuna"], "--template 'vicuna' is not one of"),
        (["--api-key", "two words"], "the API key must be a non-empty string"),
        (["--host", "no such host.invalid"], "--host 'no such host.invalid' is not an address"),
    ],
)
def test_bad_flags_are_refused_before_the_model_is_read(
    tiny: Path, tmp_path: Path, flags: list[str], phrase: str
) -> None:
    before = harness.snapshot(tiny)
    # the model path does not exist: a flag error must come first
    result = harness.run(serve(tmp_path / "absent", *flags), cwd=tmp_path)
    harness.assert_one_message(result, prog=PROG, phrase=phrase)
    harness.assert_unchanged(before, tiny)


def test_a_bad_key_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    result = harness.run(serve(tmp_path, "--port", "0"), cwd=tmp_path, env={"LEGO_API_KEY": " "})
    harness.assert_one_message(result, prog=PROG, phrase="'LEGO_API_KEY'")


def test_a_missing_model_is_named(tmp_path: Path) -> None:
    result = harness.run(serve(tmp_path / "nowhere", "--port", "0"), cwd=tmp_path)
    harness.assert_one_message(result, prog=PROG, phrase="nowhere")


def test_a_port_in_use_is_a_clear_error(tiny: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        result = harness.run(serve(tiny / "model", "--port", port), cwd=tmp_path)
    harness.assert_one_message(result, prog=PROG, phrase=f"cannot listen on 127.0.0.1:{port}")
    assert "--port 0" in result.stderr


def _address(output: str) -> str:
    line = next(line for line in output.splitlines() if "serving" in line)
    return line.split(" at ", 1)[1].split(" ", 1)[0]


def _get(url: str, **headers: str) -> Any:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_a_signal_stops_the_server_cleanly(
    tiny: Path, tmp_path: Path, signum: int, code: int, word: str
) -> None:
    before = harness.snapshot(tiny)
    process = harness.start(
        serve(tiny / "model", "--port", "0", "--model-name", "tiny"),
        cwd=tmp_path,
        env={"LEGO_API_KEY": "sk-fault-test"},
    )
    url = _address(harness.run_until(process, "serving"))
    auth = {"Authorization": "Bearer sk-fault-test"}
    assert _get(f"{url}/v1/models", **auth)["data"][0]["id"] == "tiny"
    assert _get(f"{url}/health")["status"] == "ok"

    # a long streamed reply is running when the signal comes
    body = json.dumps(
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 100,
            "stream": True,
        }
    ).encode()
    started = threading.Event()
    seen: list[bytes] = []

    def client() -> None:
        request = urllib.request.Request(
            f"{url}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json", **auth},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                for line in response:
                    seen.append(line)
                    started.set()
        except OSError:
            pass  # the server went away: the point of the test
        finally:
            started.set()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    assert started.wait(120)
    result = harness.interrupt(process, signum)
    thread.join(120)
    assert not thread.is_alive()
    assert seen  # the stream had begun
    assert result.code == code, result.stdout
    assert "Traceback" not in result.stdout
    assert f"{PROG}: {word}" in result.stdout
    harness.assert_unchanged(before, tiny)
