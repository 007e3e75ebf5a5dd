"""``legollm serve``: an OpenAI-compatible server and chat page for a model (lego-serve).

    legollm serve --model runs/20261207-101500/chat
    legollm serve --model gpt2-dir --port 8001 --max-batch 16 --template none
    LEGO_API_KEY=sk-... legollm serve --model runs/sft --host 0.0.0.0

``--model`` takes what [`load_model()`][lego.recipes.loading.load_model] takes: an HF or
lego model directory, a lego-train checkpoint or a run directory; the tokenizer comes from
``--tokenizer SPEC`` or the model directory, the end-of-sequence ids from its
``generation_config.json`` (or the tokenizer). The chat template is named with
``--template`` or found from the tokenizer's special tokens (ChatML's ``<|im_start|>``,
Llama 3's ``<|start_header_id|>``); without one the server answers completions only.

Everything is checked before the model is read (the flags, the API key, the address: the
port is bound first, so a port in use is a clear error and ``--port 0`` picks a free one),
then the model and tokenizer. The server binds to 127.0.0.1 unless told otherwise. Ctrl-C
(or SIGTERM) stops it: it stops accepting connections, lets running responses finish for
up to 5 seconds, cancels what remains, and the command exits 130 (143).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

import uvicorn

from lego.protocols import ConfigError, Tokenizer
from lego.recipes.loading import check_tokenizer, default_eos_ids, load_model, load_tokenizer
from lego.serve import Engine, create_app
from lego.serve.auth import check_api_key

__all__ = ["add_serve_command", "run_serve", "API_KEY_ENV", "detect_template"]

API_KEY_ENV = "LEGO_API_KEY"
"""The environment variable read for the API key when ``--api-key`` is not given (a key on
the command line is visible to every user of the machine in the process list)."""

_TEMPLATES = ("auto", "chatml", "llama3", "none")
_GRACE_S = 5
"""Seconds a stopping server lets running responses finish before it cuts them."""


def add_serve_command(commands: Any) -> None:
    """Add ``serve`` to the ``legollm`` subcommands.

    Args:
        commands: The ``add_subparsers()`` object of the ``legollm`` parser.
    """
    serve = commands.add_parser(
        "serve",
        help="serve a model: OpenAI-compatible API and a web chat page",
        description="Serve a model over HTTP with continuous batching: /v1/chat/completions, "
        "/v1/completions, /v1/models, vLLM's /tokenize, and a chat page at /. Binds to "
        "127.0.0.1 unless --host says otherwise. Ctrl-C stops it.",
        epilog="example:\n  legollm serve --model runs/tiny --port 8000\n"
        "  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' "
        '-d \'{"messages": [{"role": "user", "content": "Hi"}]}\'',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = serve.add_argument_group("model")
    g.add_argument("--model", required=True, help="model dir, lego-train checkpoint or run dir")
    g.add_argument("--tokenizer", help="tokenizer spec (file, tiktoken:NAME, hf:FILE, gpt2:DIR)")
    g.add_argument("--dtype", help="parameter dtype: float32, bf16, float16 (default: stored)")
    g.add_argument("--device", default="auto", help="torch device, or auto (default: auto)")
    g.add_argument(
        "--template",
        default="auto",
        help="chat template: chatml, llama3, none (completions only) or auto: found from "
        "the tokenizer's special tokens (default: auto)",
    )
    g.add_argument(
        "--model-name", help="the id clients send as model (default: --model's folder name)"
    )
    s = serve.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (8000)")
    s.add_argument("--max-batch", type=int, default=8, help="rows decoded together (8)")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting at most (64)")
    s.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} when set, else none)",
    )
    s.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one request may take (600)"
    )
    s.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="(4 MiB)")
    s.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an origin whose pages may call the API (repeatable; default: none)",
    )


def detect_template(tokenizer: Tokenizer) -> str | None:
    """The chat template a tokenizer's special tokens belong to, or None.

    Args:
        tokenizer: Any tokenizer.

    Returns:
        ``"chatml"`` (``<|im_start|>`` and ``<|im_end|>``), ``"llama3"``
        (``<|start_header_id|>``, ``<|end_header_id|>`` and ``<|eot_id|>``) or None.

    Example:
        >>> class Tok:
        ...     special_tokens = {"<|im_start|>": 1, "<|im_end|>": 2}
        >>> detect_template(Tok())  # type: ignore[arg-type]
        'chatml'
    """
    specials = tokenizer.special_tokens
    if {"<|im_start|>", "<|im_end|>"} <= specials.keys():
        return "chatml"
    if {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= specials.keys():
        return "llama3"
    return None


def _check_flags(args: argparse.Namespace) -> str | None:
    """Every flag before the model is read; returns the API key (or None)."""
    if args.template not in _TEMPLATES:
        raise ConfigError(
            f"--template {args.template!r} is not one of {', '.join(_TEMPLATES)}",
            key="--template",
        )
    for flag, value, low in (
        ("--max-batch", args.max_batch, 1),
        ("--max-queue", args.max_queue, 1),
        ("--max-body-bytes", args.max_body_bytes, 1),
        ("--port", args.port, 0),
    ):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}", key=flag)
    if args.port > 65535:
        raise ConfigError(f"--port must be <= 65535, got {args.port}", key="--port")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {args.timeout}", key="--timeout")
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if key is not None:
        try:
            check_api_key(key)
        except ConfigError as err:
            where = "--api-key" if args.api_key is not None else API_KEY_ENV
            raise ConfigError(err.message, key=where, hint=err.hint) from None
    return key


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so that a busy port is an error before loading."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"--host {host!r} is not an address: {err}", key="--host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {err.strerror or err}",
            key="--port",
            hint="pick another port (--port 0 takes a free one), or stop the server using it",
        ) from None
    sock.set_inheritable(True)
    return sock


def run_serve(args: argparse.Namespace, err: TextIO | None = None) -> int:
    """Serve until interrupted.

    Args:
        args: The parsed ``legollm serve`` flags.
        err: Where the address and notes go (default: stderr).

    Returns:
        0 when the server stopped by itself (an interrupt raises ``KeyboardInterrupt`` /
        ``Terminated``, which the command turns into 130 / 143).

    Raises:
        ConfigError: A bad flag or key, an address that cannot be bound, no model at
            ``--model``, a tokenizer that does not fit the model.
        FormatError: A damaged checkpoint.
    """
    out = err if err is not None else sys.stderr
    api_key = _check_flags(args)
    sock = _bind(args.host, args.port)
    try:
        model, model_dir = load_model(args.model, dtype=args.dtype, device=args.device)
        tokenizer = load_tokenizer(args.tokenizer, model_dir)
        check_tokenizer(tokenizer, model, spec=args.tokenizer, model_dir=model_dir)
        template = detect_template(tokenizer) if args.template == "auto" else args.template
        template = None if template == "none" else template
        eos = default_eos_ids(model_dir, tokenizer, vocab_size=model.config.vocab_size)
        engine = Engine(
            model=model,
            tokenizer=tokenizer,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            eos_token_ids=eos,
        )
        name = args.model_name or Path(args.model).resolve().name  # a run: its folder
        app = create_app(
            engine,
            model_name=name,
            chat_template=template,
            api_key=api_key,
            max_body_bytes=args.max_body_bytes,
            cors_origins=tuple(args.cors_origin),
            request_timeout_s=args.timeout,
        )
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(
            f"legollm: serving {name} at http://{shown}:{port} (chat page: /, API: /v1; "
            f"template: {template or 'none, completions only'}; key: "
            f"{'required' if api_key else 'none'}); Ctrl-C stops",
            file=out,
            flush=True,
        )
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=_GRACE_S,  # then streams still running are cut
        )
        with engine:
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
