"""Shared fixtures of the lego-data tests."""

from __future__ import annotations

import http.server
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest

# --- instruction data: a tiny byte-level tokenizer (D2) ------------------------------------

CHAT_SPECIALS = {
    "<|endoftext|>": 256,
    "<|im_start|>": 257,
    "<|im_end|>": 258,
    "<|begin_of_text|>": 259,
    "<|start_header_id|>": 260,
    "<|end_header_id|>": 261,
    "<|eot_id|>": 262,
    "<|pad|>": 263,
}


class ByteTokenizer:
    """Bytes are ids 0..255, specials 256..263, optional merges 300+ (longest match first).

    ``encode`` never turns text into special tokens, like tiktoken's ``encode_ordinary``.
    """

    def __init__(self, merges: Sequence[str] = ()) -> None:
        self._merges = {text: 300 + i for i, text in enumerate(merges)}
        self._specials = dict(CHAT_SPECIALS)
        ordered = sorted(self._merges, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(m) for m in ordered)) if ordered else None

    @property
    def vocab_size(self) -> int:
        return 300 + len(self._merges)

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return self._specials

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        while pos < len(text):
            match = self._pattern.match(text, pos) if self._pattern else None
            if match and match.group():
                ids.append(self._merges[match.group()])
                pos = match.end()
            else:
                ids.extend(text[pos].encode("utf-8"))
                pos += 1
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        inverse = {v: k for k, v in {**self._merges, **self._specials}.items()}
        out = bytearray()
        for i in ids:
            out += inverse[i].encode("utf-8") if i in inverse else bytes([i])
        return out.decode("utf-8", errors="replace")


@pytest.fixture
def byte_tokenizer() -> ByteTokenizer:
    """A byte-level tokenizer with the ChatML / Llama-3 / end-of-text specials."""
    return ByteTokenizer()


@pytest.fixture
def make_byte_tokenizer() -> Callable[..., ByteTokenizer]:
    """Build a byte tokenizer with merges (multi-character tokens)."""
    return ByteTokenizer


# --- prepare, summary, CLI: a UTF-8 byte tokenizer ------------------------------------------


class Utf8Tokenizer:
    """UTF-8 bytes are ids; ``<|endoftext|>`` is 256; ``offset`` shifts every byte id."""

    def __init__(self, *, offset: int = 0, vocab_size: int | None = None, eot: bool = True) -> None:
        self.offset = offset
        self._vocab_size = vocab_size if vocab_size is not None else 257 + offset
        self._specials = {"<|endoftext|>": 256 + offset} if eot else {}

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return self._specials

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i - self.offset for i in ids if i - self.offset < 256).decode(
            "utf-8", errors="replace"
        )


@pytest.fixture(scope="session")
def utf8_tokenizer() -> type[Utf8Tokenizer]:
    """Build a UTF-8 byte tokenizer: ``utf8_tokenizer(offset=0, vocab_size=None, eot=True)``.

    Session-scoped (it holds no state), so hypothesis tests may use it.
    """
    return Utf8Tokenizer


# --- downloads: a local HTTP server on 127.0.0.1 (D1) --------------------------------------


class FileServer:
    """Serves ``files`` (path -> bytes) over HTTP on 127.0.0.1 in a background thread.

    ``mode`` shapes the answers: ``"normal"`` honours ``Range`` with 206; ``"ignore-range"``
    always sends the whole file with 200; ``"cut-once"`` sends only the first half of the
    body on the first request, then closes the connection (the next requests are normal).
    Every request's path and ``Range`` header are recorded in ``requests``.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "normal"
        self.requests: list[tuple[str, str | None]] = []
        self._cut_done = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if range_header and server.mode != "ignore-range":
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.mode == "cut-once" and not server._cut_done:
                    server._cut_done = True
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """A local HTTP file server (see ``FileServer``)."""
    server = FileServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
