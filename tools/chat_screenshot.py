"""Ask a served chat model one question in its web page, in headless Chromium; screenshot it.

Usage::

    python tools/chat_screenshot.py --model runs/<timestamp>/chat \\
        --question "What does the function json.dumps do?" --out docs/assets/demo-chat.png

1. starts ``python -m lego.recipes.cli serve --model MODEL --port 0`` (``legollm serve``) in
   a subprocess and reads its address from the ``serving ... at URL`` line on its stderr;
2. opens the chat page (``URL/``) in Debian's headless ``chromium`` through Playwright
   (``--chromium PATH``, else ``$LEGO_CHROMIUM``, else ``chromium`` on the PATH; never a
   browser Playwright downloads), sets temperature 0 and the reply's token budget in the
   page's settings, types the question and waits until the reply has finished streaming;
3. writes a 1280x720 screenshot of the page to ``--out`` (a temporary name, then renamed)
   and prints the reply, as the page received it, on stdout;
4. stops the server with SIGINT (it exits 130).

The pieces are importable for tests: ``ChatServer`` (start the server, its URL, stop it)
and ``ask_in_page()`` (one question in the page: the reply, what the page shows, the
screenshot). Bad input (no model folder, no chromium, no playwright, a server that does not
start) exits 2 with one message; Ctrl-C exits 130 and SIGTERM 143, the server stopped
either way. Needs the legollm environment and ``pip install playwright``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lego.protocols import ConfigError, LegoError
from lego.protocols.cli import make_parser, run_cli
from lego.protocols.files import atomic_write_bytes

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

__all__ = [
    "CHROMIUM_ENV",
    "DEFAULT_QUESTION",
    "ChatServer",
    "PageReply",
    "ask_in_page",
    "default_chromium",
    "main",
]

PROG = "chat_screenshot"
CHROMIUM_ENV = "LEGO_CHROMIUM"
"""The environment variable naming the Chromium binary when ``--chromium`` is not given."""
DEFAULT_QUESTION = "What does the function json.dumps do?"
STORE_KEY = "lego-serve-chat"
"""The page's ``sessionStorage`` key for the conversation (lego-serve's static/index.html)."""
VIEWPORT = (1280, 720)

_SERVING = re.compile(r"\bserving\b.* at (http://\S+)")


def default_chromium() -> str | None:
    """The Chromium binary to use: ``$LEGO_CHROMIUM``, else ``chromium`` on the PATH.

    Returns:
        The path, or None when neither is set / found.
    """
    return os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")


class ChatServer:
    """``legollm serve --model MODEL --port 0`` in a subprocess, for as long as needed.

    The server runs in its own session with SIGINT at its default action, so a Ctrl-C in
    the terminal reaches this process only: ``stop()`` sends the one SIGINT that stops
    the server (exit 130). Its stderr is read by a thread (kept in ``stderr_lines``), so a
    chatty server never blocks on a full pipe.

    Args:
        model: What ``legollm serve --model`` takes (a chat folder ``runs/<ts>/chat``).
        extra_args: More ``legollm serve`` flags (``--max-batch 2``, ``--api-key ...``).
        python: The interpreter that runs ``lego.recipes.cli``.
        start_timeout_s: Seconds the server may take to load the model and listen.

    Attributes:
        model: As given.
        url: ``http://127.0.0.1:PORT`` once started, else None.
        returncode: The server's exit status once it stopped, else None.
        stderr_lines: What the server printed on stderr so far.

    Example:
        >>> server = ChatServer(Path("runs/tiny/chat"), extra_args=["--max-batch", "2"])
        >>> server.command()[-4:]
        ['--port', '0', '--max-batch', '2']
    """

    def __init__(
        self,
        model: Path,
        *,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.model = model
        self.extra_args = list(extra_args)
        self.python = python
        self.start_timeout_s = start_timeout_s
        self.url: str | None = None
        self.returncode: int | None = None
        self.stderr_lines: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    def command(self) -> list[str]:
        """The server's command line."""
        return [
            self.python,
            "-m",
            "lego.recipes.cli",
            "serve",
            "--model",
            str(self.model),
            "--port",
            "0",
            *self.extra_args,
        ]

    @property
    def pid(self) -> int | None:
        """The server's process id once started, else None."""
        return None if self._process is None else self._process.pid

    def start(self) -> str:
        """Start the server and wait until it listens.

        Returns:
            Its base URL, ``http://127.0.0.1:PORT`` (the chat page is ``URL/``, the API
            ``URL/v1``).

        Raises:
            LegoError: The server exited before listening (its error message is quoted) or
                did not listen within ``start_timeout_s``.
            RuntimeError: Called twice.
        """
        if self._process is not None:
            raise RuntimeError("ChatServer.start() was called twice")
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # the terminal's Ctrl-C is ours; stop() sends its own
            preexec_fn=_default_sigint,  # even when started from a background shell
        )
        assert self._process.stderr is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stderr,), name="chat-server-stderr", daemon=True
        )
        self._reader.start()
        try:
            self.url = self._wait_for_address()
        except BaseException:  # Ctrl-C while loading included: never leave it running
            self.stop()
            raise
        return self.url

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)  # the server's stderr closed

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.0))
            except queue.Empty:
                raise LegoError(
                    f"legollm serve did not listen within {self.start_timeout_s:g} s",
                    path=self.model,
                    hint="check that the model loads: legollm generate --model ...",
                ) from None
            if line is None:
                assert self._process is not None
                code = self._process.wait()
                said = "".join(self.stderr_lines).strip() or "(nothing on stderr)"
                raise LegoError(
                    f"legollm serve exited with status {code} before listening: {said}",
                    path=self.model,
                )
            found = _SERVING.search(line)
            if found:
                return found.group(1)

    def stop(self, timeout_s: float = 60.0) -> int:
        """Stop the server as Ctrl-C would (SIGINT), and wait for it.

        Calling it again, or before ``start()``, does nothing more.

        Args:
            timeout_s: Seconds to wait before killing it.

        Returns:
            Its exit status (130 after a clean SIGINT; -9 when it had to be killed), or
            -1 when it never started.
        """
        process = self._process
        if process is None:
            return -1
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)  # the pipe ends with the process
        if process.stderr is not None:
            process.stderr.close()
        self.returncode = process.returncode
        return process.returncode

    def __enter__(self) -> ChatServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _default_sigint() -> None:
    """In the child before exec: SIGINT at its default (a background shell ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _quiet_after_interrupt() -> None:
    """After Ctrl-C: silence what Playwright's half-stopped machinery says on the way out.

    A terminal's Ctrl-C also stops Playwright's driver (it shares our process group), so
    asyncio logs its unread "connection closed" futures; and when the interrupt lands while
    Playwright is building its event loop, the half-built loop fails in its finalizer
    (``'_UnixSelectorEventLoop' object has no attribute '_closed'``), which Python prints as
    an "Exception ignored" traceback. Neither is news to a user who pressed Ctrl-C: from here
    to the exit the asyncio logger is quiet and such finalizer errors are dropped.
    """
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None


@dataclasses.dataclass(frozen=True)
class PageReply:
    """What the chat page received and showed for one question.

    Attributes:
        text: The reply exactly as streamed to the page (its stored conversation).
        shown: The reply's text as rendered on the page (Markdown made into HTML).
        meta: The line under the reply (``stop · 7 tokens``, ``stopped at max tokens ...``).
        screenshot: The PNG bytes of the page after the reply.
    """

    text: str
    shown: str
    meta: str
    screenshot: bytes


def _playwright() -> Any:
    """The ``playwright.sync_api`` module, or a ConfigError saying how to install it."""
    try:  # by name: the typecheck environment has no playwright (an optional tool)
        api = importlib.import_module("playwright.sync_api")
    except ImportError:
        raise ConfigError(
            "playwright is not installed",
            hint="pip install playwright (the browser is Debian's chromium: "
            "apt-get install -y chromium; nothing else is downloaded)",
        ) from None
    return api


def _check_chromium(chromium: str | None) -> str:
    """The Chromium binary to launch, checked; a ConfigError when there is none."""
    if chromium is None:
        raise ConfigError(
            f"no chromium: none on the PATH and ${CHROMIUM_ENV} is not set",
            key="--chromium",
            hint="apt-get install -y chromium, or pass --chromium PATH",
        )
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        raise ConfigError(
            "is not an executable file",
            path=chromium,
            key="--chromium",
            hint="pass the path of Debian's chromium binary (e.g. /usr/bin/chromium)",
        )
    return chromium


def ask_in_page(
    url: str,
    question: str,
    *,
    chromium: str | None = None,
    max_tokens: int | None = None,
    api_key: str | None = None,
    timeout_s: float = 300.0,
    viewport: tuple[int, int] = VIEWPORT,
) -> PageReply:
    """Ask one question in a served chat page, greedily, and wait for the whole reply.

    Opens ``url + "/"`` in headless Chromium (``--no-sandbox``), waits until the page knows
    the model's name, sets temperature 0 (and the token budget, and the API key) in its
    settings, types ``question``, presses Enter, waits until the reply has finished
    streaming (the line under it appears) and takes a screenshot of the viewport.

    Args:
        url: The server's base URL (``http://127.0.0.1:PORT``).
        question: The user message (the page trims surrounding whitespace).
        chromium: The Chromium binary; default ``default_chromium()``.
        max_tokens: The page's *Max tokens* setting; None leaves the page's default.
        api_key: The page's *API key* setting, for a server started with one.
        timeout_s: Seconds each wait may take (the page, the reply).
        viewport: ``(width, height)`` of the page in CSS pixels (and of the screenshot).

    Returns:
        The reply, what the page shows, and the screenshot.

    Raises:
        ConfigError: No Playwright, no Chromium.
        LegoError: The browser did not start, the page timed out, or the page shows the
            server's error instead of a reply.
    """
    api = _playwright()
    binary = _check_chromium(chromium if chromium is not None else default_chromium())
    manager = browser = None
    try:
        manager = api.sync_playwright().start()
        try:
            browser = manager.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        except api.Error as err:
            raise LegoError(
                f"chromium did not start: {_first_line(err)}",
                path=binary,
                hint="check that it runs: chromium --headless --no-sandbox --version",
            ) from None
        width, height = viewport
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(timeout_s * 1000)
        try:
            return _ask(page, url, question, max_tokens=max_tokens, api_key=api_key)
        except api.TimeoutError as err:
            raise LegoError(
                f"the chat page did not finish within {timeout_s:g} s: {_first_line(err)}",
                key="timeout",
                hint="a slow model needs a longer --timeout, or a lower --max-tokens",
            ) from None
    except KeyboardInterrupt:
        _quiet_after_interrupt()
        raise
    finally:
        # Ctrl-C also reaches Playwright's driver; closing may fail then: never mask it.
        if browser is not None:
            with contextlib.suppress(Exception):
                browser.close()
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.stop()


def _ask(
    page: Any, url: str, question: str, *, max_tokens: int | None, api_key: str | None
) -> PageReply:
    """The page's part of ``ask_in_page()``."""
    page.goto(url + "/")
    page.click("#settings-button")
    if api_key is not None:
        page.fill("#api-key", api_key)
        page.dispatch_event("#api-key", "change")  # the page asks for the model again
    page.wait_for_selector("#model-name:not(:empty)")  # a request names the model
    page.fill("#temperature", "0")
    if max_tokens is not None:
        page.fill("#max-tokens", str(max_tokens))
    page.click("#settings-button")  # closed again: the screenshot shows the conversation
    page.fill("#input", question)
    page.press("#input", "Enter")
    page.wait_for_selector(".message.user")
    page.wait_for_selector(".message.assistant .meta")  # written when the stream has ended
    if page.query_selector(".message.error") is not None:
        shown = page.inner_text(".message.error .content")
        raise LegoError(f"the chat page shows an error instead of a reply: {shown}", key=url)
    stored = page.evaluate(f"sessionStorage.getItem({json.dumps(STORE_KEY)})")
    messages = json.loads(stored) if isinstance(stored, str) else []
    replies = [
        m["content"]
        for m in messages
        if isinstance(m, dict)
        and m.get("role") == "assistant"
        and isinstance(m.get("content"), str)
    ]
    if not replies:
        raise LegoError(
            f"the chat page kept no reply in sessionStorage[{STORE_KEY!r}]",
            key=url,
            hint="the page's storage key changed: update STORE_KEY in tools/chat_screenshot.py",
        )
    return PageReply(
        text=replies[-1],
        shown=page.locator(".message.assistant .content").last.inner_text(),
        meta=page.locator(".message.assistant .meta").last.inner_text(),
        screenshot=page.screenshot(),
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_paths(model: Path, out: Path) -> None:
    """The model folder exists; the screenshot is a PNG outside it."""
    if not model.is_dir():
        raise ConfigError(
            "no such model folder" if not model.exists() else "is not a folder",
            path=model,
            key="--model",
            hint="give the chat folder a pipeline wrote: --model runs/<timestamp>/chat",
        )
    if out.suffix.lower() != ".png":
        raise ConfigError("the screenshot is a PNG: name a .png file", path=out, key="--out")
    if out.resolve().is_relative_to(model.resolve()):
        raise ConfigError(
            "the screenshot would be written inside the model folder (an input)",
            path=out,
            key="--out",
            hint="write it elsewhere, e.g. --out docs/assets/demo-chat.png",
        )
    if out.is_dir():
        raise ConfigError("is a folder; name the PNG file to write", path=out, key="--out")


def _main(argv: list[str]) -> int:
    parser = make_parser(
        PROG,
        "Serve a chat model with legollm serve, ask it one question in the web chat page "
        "(headless Chromium, temperature 0), save a screenshot and print the reply.",
        example="python tools/chat_screenshot.py --model runs/<timestamp>/chat "
        "--out docs/assets/demo-chat.png",
    )
    parser.add_argument("--model", type=Path, required=True, help="the model (a chat folder)")
    parser.add_argument("--out", type=Path, required=True, help="the screenshot to write (.png)")
    parser.add_argument(
        "--question", default=DEFAULT_QUESTION, help=f"(default: {DEFAULT_QUESTION!r})"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="reply tokens at most (64)")
    parser.add_argument(
        "--chromium", help=f"the Chromium binary (default: ${CHROMIUM_ENV}, else chromium)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds each wait may take (300)"
    )
    args = parser.parse_args(argv)
    if args.max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {args.max_tokens}", key="--max-tokens")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be > 0, got {args.timeout}", key="--timeout")
    if not args.question.strip():
        raise ConfigError("--question is empty", key="--question")
    # everything is checked before the server loads the model
    _check_paths(args.model, args.out)
    chromium = _check_chromium(args.chromium or default_chromium())
    _playwright()

    with ChatServer(args.model, start_timeout_s=args.timeout) as server:
        assert server.url is not None
        print(f"{PROG}: legollm serve is at {server.url}", file=sys.stderr, flush=True)
        reply = ask_in_page(
            server.url,
            args.question,
            chromium=chromium,
            max_tokens=args.max_tokens,
            timeout_s=args.timeout,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, reply.screenshot, what="screenshot")
    print(f"{PROG}: wrote {args.out} ({reply.meta})", file=sys.stderr)
    print(reply.text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (0, 2 on bad input, 130 / 143 on a signal).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
    """
    return run_cli(_main, None if argv is None else list(argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
