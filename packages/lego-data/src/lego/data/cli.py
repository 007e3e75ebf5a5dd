"""The ``lego-data`` command: ``download``, ``prepare`` and ``summary``.

Exit codes follow [`run_cli()`][lego.protocols.run_cli]: 0 ok, 2 bad input (one message, no
traceback unless ``--debug``), 1 a bug.

``--tokenizer`` takes lego-tokenize's tokenizer spec (``tiktoken:gpt2`` or a bare tiktoken
name, a lego tokenizer ``.json`` file, ``hf:tokenizer.json``, ``gpt2:FOLDER``; see
[`lego.tokenize.resolve_tokenizer`][lego.tokenize.resolve_tokenizer]).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from lego.protocols import ConfigError, make_parser, run_cli

__all__ = ["main", "run", "COMMANDS"]

PROG = "lego-data"


# ------------------------------------------------------------------------------ shared


def _add_reading_options(
    parser: argparse.ArgumentParser, *, defaults: bool, tokenizer_help: str
) -> None:
    """Add ``--tokenizer`` and how a corpus is read (unit, separator, text field, errors).

    Args:
        parser: The subcommand's parser.
        defaults: Give the options their defaults here (``summary``); ``prepare`` leaves
            them None so a config file can set them.
        tokenizer_help: The ``--tokenizer`` help text.
    """
    parser.add_argument("--tokenizer", help=tokenizer_help)
    parser.add_argument(
        "--unit", choices=["file", "line", "paragraph"], default="file" if defaults else None
    )
    parser.add_argument("--separator", help="a document separator line in text files")
    parser.add_argument(
        "--text-field",
        dest="text_field",
        default="text" if defaults else None,
        help="the text key of .jsonl lines",
    )
    parser.add_argument(
        "--errors", choices=["strict", "skip"], default="strict" if defaults else None
    )


_TOKENIZER_HELP = (
    "tiktoken:gpt2 (or a tiktoken name), a lego tokenizer .json file, hf:tokenizer.json "
    "or gpt2:FOLDER"
)

# ------------------------------------------------------------------------------ download


def _download_parser(prog: str) -> argparse.ArgumentParser:
    parser = make_parser(
        prog,
        "Download a corpus by name (tiny_shakespeare, tinystories, ...) or any http(s) URL: "
        "streamed, resumable, sha256-verified where the hash is known.",
        example=f"{prog} tiny_shakespeare data/\n{prog} https://example.org/corpus.txt "
        "corpus.txt --sha256 <hex>\n"
        f"{prog} --list",
    )
    parser.add_argument("source", nargs="?", help="a corpus name or an http(s) URL")
    parser.add_argument("dest", nargs="?", help="the file to write, or an existing folder")
    parser.add_argument("--sha256", help="the expected sha256 (overrides the registry's)")
    parser.add_argument(
        "--no-resume", action="store_true", help="discard a partial download and start over"
    )
    parser.add_argument("--list", action="store_true", help="list the corpora known by name")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def _download(argv: list[str], prog: str) -> int:
    from lego.data.corpora import KNOWN_SOURCES, corpus_names, normalize_name
    from lego.data.download import download, is_url
    from lego.protocols import DataError, did_you_mean

    parser = _download_parser(prog)
    args = parser.parse_args(argv)
    if args.list:
        for name in corpus_names():
            source = KNOWN_SOURCES.get(name)
            text = source.description if source else "embedded: Python's docs and stdlib sources"
            print(f"{name:<20} {text}")
        return 0
    if args.source is None or args.dest is None:
        parser.error("give a corpus name or URL and a destination (or --list)")
    sha256 = args.sha256
    if is_url(args.source):
        url = args.source
        filename = Path(url.split("?", 1)[0].rstrip("/")).name or "download.txt"
    else:
        key = normalize_name(args.source)
        if key not in KNOWN_SOURCES:
            embedded = key == normalize_name("python-stdlib")
            raise DataError(
                f"{args.source!r} is not a downloadable corpus",
                key="source",
                hint="python-stdlib ships with Python: use it directly with `lego-data "
                "prepare python-stdlib`"
                if embedded
                else did_you_mean(key, KNOWN_SOURCES) + " (or give an http(s) URL)",
            )
        known = KNOWN_SOURCES[key]
        url, filename = known.url, known.filename
        sha256 = sha256 or known.sha256
    dest = Path(args.dest)
    if dest.is_dir() or args.dest.endswith(("/", "\\")):
        dest = dest / filename
    path = download(url, dest, sha256=sha256, resume=not args.no_resume, progress=not args.quiet)
    print(path)
    return 0


# ------------------------------------------------------------------------------ prepare


def _prepare_parser(prog: str) -> argparse.ArgumentParser:
    parser = make_parser(
        prog,
        "Tokenize a corpus into train.bin / val.bin token files and meta.json, in worker "
        "processes. Options come from --config FILE.yaml, flags and key=value overrides "
        "(later ones win).",
        example=f"{prog} python-stdlib --tokenizer tiktoken:gpt2 --out-dir data/stdlib\n"
        f"{prog} --config examples/configs/datasets/tiny_shakespeare.yaml val_fraction=0.05",
    )
    parser.add_argument(
        "items",
        nargs="*",
        metavar="CORPUS | key=value",
        help="the corpus (name, path or URL), then key=value overrides",
    )
    parser.add_argument("--config", help="a YAML config file")
    _add_reading_options(parser, defaults=False, tokenizer_help=_TOKENIZER_HELP)
    parser.add_argument("--out-dir", "-o", dest="out_dir", help="the dataset directory to write")
    parser.add_argument("--val-fraction", dest="val_fraction", type=float)
    parser.add_argument("--split", choices=["auto", "documents", "characters"])
    parser.add_argument("--workers", type=int, help="worker processes (default: all CPUs)")
    parser.add_argument("--eot-id", dest="eot_id", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--dtype", choices=["uint16", "uint32"])
    parser.add_argument("--cache-dir", dest="cache_dir", help="where downloads are kept")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


_PREPARE_FLAGS = (
    "tokenizer",
    "out_dir",
    "val_fraction",
    "split",
    "workers",
    "eot_id",
    "seed",
    "dtype",
    "unit",
    "separator",
    "text_field",
    "errors",
    "cache_dir",
)


def _prepare(argv: list[str], prog: str) -> int:
    from lego.data.config import build_prepare_config
    from lego.data.corpora import get_corpus
    from lego.data.prepare import prepare

    args = _prepare_parser(prog).parse_intermixed_args(argv)
    overrides = [
        item for item in args.items if "=" in item and item.split("=", 1)[0].isidentifier()
    ]
    positional = [item for item in args.items if item not in overrides]
    if len(positional) > 1:
        raise ConfigError(
            f"give one corpus, got {len(positional)}: {', '.join(positional)}",
            key="corpus",
            hint="overrides look like key=value",
        )
    flags = {name: getattr(args, name) for name in _PREPARE_FLAGS}
    if positional:
        flags["corpus"] = positional[0]
    config = build_prepare_config(file=args.config, flags=flags, overrides=overrides)
    corpus = get_corpus(
        config.corpus,
        unit=config.unit,
        separator=config.separator,
        text_field=config.text_field,
        errors=config.errors,
        cache_dir=config.cache_dir,
        progress=not args.quiet,
    )
    meta = prepare(
        corpus,
        config.tokenizer,
        config.out_dir,
        val_fraction=config.val_fraction,
        split=config.split,
        workers=config.workers,
        eot_id=config.eot_id,
        seed=config.seed,
        dtype=config.dtype,
        progress=not args.quiet,
    )
    train, val = meta.splits["train"], meta.splits["val"]
    print(
        f"{config.out_dir}: train {train.tokens:,} tokens ({train.documents:,} documents), "
        f"val {val.tokens:,} tokens ({val.documents:,} documents), {meta.dtype}, "
        f"vocab {meta.vocab_size:,}, split by {meta.split.method}"
    )
    if corpus.skipped:
        print(f"skipped {len(corpus.skipped)} unreadable file(s) or part(s)", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ summary


def _summary_parser(prog: str) -> argparse.ArgumentParser:
    parser = make_parser(
        prog,
        "Show a corpus's bytes, characters, lines, documents and distinct characters; with a "
        "tokenizer also tokens, bytes per token and the most common tokens.",
        example=f"{prog} python-stdlib\n{prog} data/input.txt --tokenizer tiktoken:gpt2 "
        "--plot summary.png",
    )
    parser.add_argument("source", help="a corpus name, path or URL")
    _add_reading_options(parser, defaults=True, tokenizer_help=_TOKENIZER_HELP)
    parser.add_argument("--plot", help="also draw the histograms into this image (.png)")
    parser.add_argument("--top-k", dest="top_k", type=int, default=10, help="common tokens shown")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _summary(argv: list[str], prog: str) -> int:
    from lego.data.corpora import get_corpus
    from lego.data.summary import check_plot_path, plot, summarize

    args = _summary_parser(prog).parse_args(argv)
    corpus = get_corpus(
        args.source,
        unit=args.unit,
        separator=args.separator,
        text_field=args.text_field,
        errors=args.errors,
        progress=True,
    )
    if args.plot:  # before the long work: a format matplotlib writes, never over the corpus
        check_plot_path(args.plot, inputs=getattr(corpus, "files", []))
    summary = summarize(corpus, args.tokenizer, top_k=args.top_k)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        from rich.console import Console

        Console().print(summary.table())
    if args.plot:
        print(f"plot written to {plot(summary, args.plot)}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ dispatch

COMMANDS: dict[str, tuple[Callable[[list[str], str], int], str]] = {
    "download": (_download, "download a corpus by name or URL"),
    "prepare": (_prepare, "tokenize a corpus into token files + meta.json"),
    "summary": (_summary, "show a corpus's statistics (and plot them)"),
}
"""Subcommand name to (handler, one-line help)."""


def _top_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "LegoLLM's data pipeline. Commands:\n"
        + "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
        + f"\nRun `{PROG} COMMAND --help` for a command's options.",
        example=f"{PROG} download tiny_shakespeare data/\n"
        f"{PROG} prepare data/tiny_shakespeare.txt --tokenizer tiktoken:gpt2 -o data/shakespeare\n"
        f"{PROG} summary python-stdlib --tokenizer gpt2",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="the command to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments")
    return parser


def run(argv: list[str]) -> int:
    """Run ``lego-data`` with arguments (without the program name).

    Args:
        argv: e.g. ``["prepare", "python-stdlib", "--tokenizer", "gpt2", "-o", "out"]``.

    Returns:
        The exit code (a [`LegoError`][lego.protocols.LegoError] propagates; ``main`` turns it
        into exit code 2).
    """
    args = list(argv)
    while args and args[0] == "--debug":  # run_cli already acted on it; commands accept it too
        args.pop(0)
    if args and args[0] in COMMANDS:
        handler, _ = COMMANDS[args[0]]
        return handler(args[1:], f"{PROG} {args[0]}")
    _top_parser().parse_args(args)  # --help, or a usage error naming the valid commands
    return 2  # pragma: no cover - parse_args exits on every input that reaches here


def main() -> NoReturn:
    """The ``lego-data`` console script."""
    sys.exit(run_cli(run, prog=PROG))


if __name__ == "__main__":  # pragma: no cover - python -m lego.data.cli
    main()
