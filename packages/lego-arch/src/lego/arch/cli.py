"""``lego-arch``: inspect models from the command line.

Subcommands:

- ``info MODEL [--batch N] [--seq-len T] [--dtype D ...] [--json]``: parameters by part
  and memory for weights, gradients, AdamW state, activations and the KV cache (see
  [`lego.arch.size`][lego.arch.size] for the conventions). ``MODEL`` is a preset name
  (``lego-arch list`` shows them), a HuggingFace model directory or its ``config.json``
  (read through ``lego.arch.hf.read_hf_config``), or a lego config
  written by ``DecoderConfig.to_json``. Nothing is allocated: the model is built on the
  meta device.
- ``list``: the presets with their family and parameter count.

Exit codes follow [`run_cli`][lego.protocols.run_cli]: 0 success, 2 bad input (one message,
no traceback unless ``--debug``), 1 a bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lego.arch.config import DecoderConfig
from lego.arch.decoder import DecoderLM
from lego.arch.hf import read_hf_config
from lego.arch.hf.directory import is_lego_config
from lego.arch.loading import SkipInit
from lego.arch.registry import get_preset, list_presets, presets
from lego.arch.size import MEMORY_DTYPES, SizeEstimate, estimate_size, format_count, size_tables
from lego.protocols import ConfigError, did_you_mean, make_parser, read_json, run_cli

__all__ = ["PROG", "build_parser", "load_model_config", "main", "memory_dtype"]

PROG = "lego-arch"
"""The command's name."""

_DTYPE_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "int8": "int8",
    "nf4": "nf4",
}


def memory_dtype(value: str) -> str:
    """Normalize a ``--dtype`` value to a memory row name (``"bfloat16"`` -> ``"bf16"``).

    Args:
        value: ``fp32`` / ``float32``, ``bf16`` / ``bfloat16``, ``int8`` or ``nf4``.

    Returns:
        The row name, one of [`MEMORY_DTYPES`][lego.arch.size.MEMORY_DTYPES].

    Raises:
        ConfigError: An unknown name, with the closest valid ones.
    """
    key = value.strip().lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ConfigError(
            f"unknown dtype {value!r}", key="--dtype", hint=did_you_mean(key, _DTYPE_ALIASES)
        )
    return _DTYPE_ALIASES[key]


def load_model_config(spec: str) -> tuple[str, DecoderConfig]:
    """Resolve ``MODEL``: a preset name, an HF model directory or config file, a lego config.

    Args:
        spec: The argument as typed.

    Returns:
        ``(display name, config)``.

    Raises:
        ConfigError: Neither a preset nor an existing path (with close preset names), or a
            lego config that is not valid.
        CompatibilityError: An HF config of an unsupported architecture.
    """
    path = Path(spec)
    if not path.exists():
        if "/" in spec or os.sep in spec or spec.endswith(".json"):  # meant as a path
            raise ConfigError(
                f"{spec!r} does not exist",
                path=path,
                hint="pass a preset name (lego-arch list), a HuggingFace model folder or a "
                "config.json file",
            )
        return spec, get_preset(spec)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"{spec!r} is a folder without a config.json",
            path=path,
            hint="pass a preset name, a HuggingFace model folder or a config.json file",
        )
    if file.suffix != ".json":
        raise ConfigError(
            f"{spec!r} is a {file.suffix or 'suffix-less'} file, not a config.json",
            path=file,
            hint=f"pass the model folder that holds it ({file.parent}) or its config.json",
        )
    data = read_json(file, what="config file")
    if isinstance(data, dict) and is_lego_config(data):  # a custom family is fine here
        return path.name or spec, DecoderConfig.from_dict(data, path=file)
    name = (path if path.is_dir() else path.parent).name or spec
    return name, read_hf_config(file)


def build_parser() -> argparse.ArgumentParser:
    """The ``lego-arch`` argument parser.

    Returns:
        The parser with the ``info`` and ``list`` subcommands.
    """
    parser = make_parser(
        PROG,
        "Inspect LegoLLM model architectures: parameters and memory.",
        example="lego-arch info llama-3.1-8b --batch 8 --seq-len 4096 --dtype bf16\n"
        "lego-arch info path/to/hf-model\n"
        "lego-arch list",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser(
        "info",
        help="parameters by part and memory per dtype",
        description="Parameters by part and memory (weights, gradients, AdamW state, "
        "activations, KV cache) of a preset, an HF model folder or a config file.",
    )
    info.add_argument("model", help="a preset name, an HF model folder, or a config.json")
    info.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    info.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence (default: the context length, at most 2048)",
    )
    info.add_argument(
        "--dtype",
        action="append",
        default=None,
        help=f"a memory row to show ({', '.join(MEMORY_DTYPES)}); repeat for several "
        "(default: all)",
    )
    info.add_argument("--json", action="store_true", help="print the estimate as JSON")
    commands.add_parser("list", help="the presets", description="List the presets.")
    return parser


def _estimate_json(estimate: SizeEstimate) -> dict[str, Any]:
    memory = []
    for row in estimate.memory:
        item = dataclasses.asdict(row)
        item.update(
            inference=row.inference,
            training=row.training,
            training_checkpointed=row.training_checkpointed,
        )
        memory.append(item)
    return {
        "name": estimate.name,
        "batch_size": estimate.batch_size,
        "seq_len": estimate.seq_len,
        "parameters": dataclasses.asdict(estimate.parameters),
        "memory": memory,
        "config": estimate.config.to_dict(),
    }


def _info(args: argparse.Namespace) -> int:
    name, config = load_model_config(args.model)
    dtypes = tuple(dict.fromkeys(memory_dtype(d) for d in args.dtype or MEMORY_DTYPES))
    estimate = estimate_size(config, batch_size=args.batch, seq_len=args.seq_len, dtypes=dtypes)
    estimate = dataclasses.replace(estimate, name=name)
    if args.json:
        print(json.dumps(_estimate_json(estimate), indent=2))
        return 0
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    for table in size_tables(estimate):
        console.print(table)
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in list_presets():
        config = presets()[name]
        with torch.device("meta"), SkipInit():
            model = DecoderLM.from_config(config, initialize=False)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name:<16} {config.family:<7} {format_count(n):>8}")
    return 0


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return _info(args)
    return _list(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lego-arch`` (the console-script entry point).

    Args:
        argv: The arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 2 bad input (a one-line message on stderr), 1 a bug,
        130 interrupted.
    """
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":  # pragma: no cover - python -m lego.arch.cli
    sys.exit(main())
