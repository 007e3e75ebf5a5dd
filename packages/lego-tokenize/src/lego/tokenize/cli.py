"""``lego-tokenize``: train, run, inspect and compare tokenizers from the command line.

Subcommands:

- ``train PATH... -o tok.json``: train a tokenizer on files and folders (folders are walked
  in sorted order for text files; hidden entries are skipped); a human-readable ``tok.vocab``
  dump goes beside it (said on stderr; ``--vocab-file`` elsewhere, ``--no-vocab-file`` none);
- ``encode`` / ``decode``: text to ids and back, from stdin or ``--input`` to stdout or
  ``--output`` (written atomically: an error never leaves a half-written file);

Outputs are checked before any work: an output is never one of the command's inputs (the
training files, the input text, the tokenizer's own files), never a folder, and the dump
beside a tokenizer never replaces a file that is not an earlier dump.
- ``info``: type, vocabulary size, merges, special tokens, split pattern and bytes per
  token on a sample;
- ``compare``: several tokenizers side by side on one text: token counts, bytes per token
  and the text split into coloured tokens.

Wherever a tokenizer is expected, a *tokenizer spec* names it: a lego tokenizer file,
``tiktoken:cl100k_base``, ``tiktoken:file.tiktoken`` (with ``--pattern``),
``hf:tokenizer.json`` or ``gpt2:folder`` (see
[`resolve_tokenizer`][lego.tokenize.interop.resolve.resolve_tokenizer]).

Exit codes follow [`run_cli`][lego.protocols.run_cli]: 0 success, 2 bad input (one message,
no traceback unless ``--debug``), 1 a bug.
"""

from __future__ import annotations

import argparse
import codecs
import inspect
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lego.protocols import (
    ConfigError,
    DataError,
    FormatError,
    atomic_write_text,
    check_output_path,
    decode_utf8,
    make_parser,
    parse_json,
    read_text,
    remove_stale_temporaries,
    run_cli,
)

if TYPE_CHECKING:
    from lego.protocols import Tokenizer

__all__ = [
    "PROG",
    "TOKENIZER_TYPES",
    "build_parser",
    "main",
    "collect_training_files",
    "parse_ids",
    "token_pieces",
]

PROG = "lego-tokenize"
"""The command's name."""

TOKENIZER_TYPES: tuple[str, ...] = ("regex_bpe", "naive_bpe", "word", "char")
"""The ``--type`` choices of ``train``."""

_SPEC_HELP = (
    "a lego tokenizer file, tiktoken:NAME (e.g. tiktoken:cl100k_base), tiktoken:FILE.tiktoken "
    "(with --pattern), hf:TOKENIZER.JSON or gpt2:FOLDER (encoder.json + vocab.bpe)"
)
_SNIFF_BYTES = 8192
_SAMPLE_CHARS = 200_000


# -- the parser -----------------------------------------------------------------------------


def _subparser(
    sub: Any, name: str, *, help_text: str, description: str, example: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for bad input")
    return parser


def _add_pattern(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pattern",
        help="split pattern for a tiktoken:FILE.tiktoken tokenizer: gpt2, gpt4, o200k, llama3 "
        "or a regex",
    )


def _add_conversion(parser: argparse.ArgumentParser, *, source: str, result: str) -> None:
    """The arguments of a stdin-to-stdout conversion: tokenizer, input, output, pattern."""
    parser.add_argument("-t", "--tokenizer", required=True, help=_SPEC_HELP)
    parser.add_argument("-i", "--input", help=f"{source} (default: stdin)")
    parser.add_argument("-o", "--output", help=f"file to write {result} to (default: stdout)")
    _add_pattern(parser)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``lego-tokenize`` argument parser with its five subcommands.

    Returns:
        The parser.
    """
    parser = make_parser(
        PROG,
        "Train tokenizers, encode and decode text, inspect and compare tokenizers "
        "(lego files, tiktoken encodings, HuggingFace tokenizer.json, GPT-2 files).",
        example="lego-tokenize train corpus/ --vocab-size 4096 --special '<|endoftext|>' "
        "-o tok.json\n"
        "echo 'hello world' | lego-tokenize encode -t tok.json\n"
        "lego-tokenize compare tok.json tiktoken:cl100k_base --text 'Hello, world!'",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = _subparser(
        sub,
        "train",
        help_text="train a tokenizer on files and folders",
        description="Train a tokenizer on text files and folders (walked in sorted order; "
        "hidden and binary files are skipped) and save it as one lego tokenizer file.",
        example="lego-tokenize train data/ extra.txt --vocab-size 32768 --pattern gpt4 "
        "--special '<|endoftext|>' -o tok.json",
    )
    train.add_argument("paths", nargs="+", metavar="PATH", help="text files or folders")
    train.add_argument("-o", "--output", required=True, help="the tokenizer file to write")
    dump = train.add_mutually_exclusive_group()
    dump.add_argument(
        "--vocab-file",
        metavar="PATH",
        help="where the human-readable vocabulary dump goes (default: beside the output, "
        "tok.json -> tok.vocab, replacing only an earlier dump)",
    )
    dump.add_argument("--no-vocab-file", action="store_true", help="write no vocabulary dump")
    train.add_argument(
        "--type", choices=TOKENIZER_TYPES, default="regex_bpe", help="default: regex_bpe"
    )
    train.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        help="size of the id space, special tokens included (at least 256 + the number of "
        "special tokens for the BPE types)",
    )
    train.add_argument(
        "--pattern",
        default=None,
        help="regex_bpe split pattern: gpt2, gpt4 (default), o200k, llama3 or a regex",
    )
    train.add_argument(
        "--special",
        action="append",
        default=[],
        metavar="TOKEN",
        help="a special token (repeatable); ids follow the ordinary vocabulary",
    )
    train.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per CPU)"
    )
    train.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="bytes that are not UTF-8: an error (strict, default) or U+FFFD (replace)",
    )
    train.add_argument("-v", "--verbose", action="store_true", help="show progress")

    encode = _subparser(
        sub,
        "encode",
        help_text="encode text to token ids",
        description="Encode text (stdin or --input) to token ids (stdout or --output), "
        "separated by spaces or as a JSON list.",
        example="lego-tokenize encode -t tiktoken:cl100k_base -i story.txt -o story.ids",
    )
    _add_conversion(encode, source="text file to encode", result="the ids")
    encode.add_argument(
        "--format", choices=("text", "json"), default="text", help="ids as text or JSON"
    )
    encode.add_argument(
        "--allow-special",
        action="store_true",
        help="encode special-token strings in the text as their ids (default: an error)",
    )

    decode = _subparser(
        sub,
        "decode",
        help_text="decode token ids to text",
        description="Decode token ids (whitespace-separated or a JSON list; stdin or --input) "
        "to text (stdout or --output).",
        example="echo '15339 1917' | lego-tokenize decode -t tiktoken:cl100k_base",
    )
    _add_conversion(decode, source="file of ids", result="the text")

    info = _subparser(
        sub,
        "info",
        help_text="describe a tokenizer",
        description="Show a tokenizer's type, vocabulary size, merges, special tokens, split "
        "pattern and bytes per token on a sample text (Python's own documentation by "
        "default, or --sample FILE).",
        example="lego-tokenize info tok.json --sample held_out.txt",
    )
    info.add_argument("tokenizer", metavar="TOKENIZER", help=_SPEC_HELP)
    info.add_argument("--sample", help="text file to measure bytes per token on")
    _add_pattern(info)

    compare = _subparser(
        sub,
        "compare",
        help_text="compare tokenizers side by side",
        description="Encode one text with several tokenizers: token counts, bytes per token, "
        "and the text split into tokens (coloured on a terminal, '|'-separated otherwise).",
        example="lego-tokenize compare tok.json tiktoken:gpt2 tiktoken:cl100k_base -i text.txt",
    )
    compare.add_argument("tokenizers", nargs="+", metavar="TOKENIZER", help=_SPEC_HELP)
    source = compare.add_mutually_exclusive_group()
    source.add_argument("--text", help="the text to compare on")
    source.add_argument("-i", "--input", help="a text file to compare on")
    compare.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the tokens: auto (on a terminal), always or never",
    )
    compare.add_argument(
        "--max-chars",
        type=int,
        default=2000,
        help="show at most this many characters of the split text (default 2000; 0: all)",
    )
    _add_pattern(compare)
    return parser


# -- helpers --------------------------------------------------------------------------------


def _resolve(spec: str, pattern: str | None) -> Tokenizer:
    from lego.tokenize.interop.resolve import resolve_tokenizer

    return resolve_tokenizer(spec, pattern=pattern)


def _read_input(path: str | None, *, what: str) -> str:
    if path is not None:
        return read_text(path, what=what)
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stand-in (e.g. io.StringIO)
        return sys.stdin.read()
    return decode_utf8(stream.read(), path=None, what=f"{what.removesuffix(' file')} on stdin")


def _spec_files(spec: str) -> list[Path]:
    """The files a tokenizer spec reads (none for a tiktoken encoding name)."""
    from lego.tokenize.interop.resolve import parse_tokenizer_spec

    try:
        return parse_tokenizer_spec(spec).files
    except ConfigError:  # resolving it reports the bad spec
        return []


def _check_output(
    output: str | None, *, inputs: Sequence[str | os.PathLike[str] | None], what: str
) -> None:
    """Check ``-o`` before any work: not an input, not a folder, its folder exists."""
    if output is None:
        return
    path = check_output_path(
        output, inputs=[item for item in inputs if item is not None], what=what, key="-o"
    )
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(
            f"cannot write the {what}: its folder does not exist",
            path=folder,
            key="-o",
            hint="create the folder first or choose another path",
        )


def _write_output(path: str | None, text: str) -> None:
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(path, text, what="output file")


def _accepts(function: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _encode(tokenizer: Tokenizer, text: str, *, allow_special: bool) -> list[int]:
    if allow_special:
        if not _accepts(tokenizer.encode, "allowed_special"):
            raise ConfigError(
                f"{type(tokenizer).__name__} has no special-token handling",
                key="--allow-special",
                hint="drop --allow-special",
            )
        ids: list[int] = tokenizer.encode(text, allowed_special="all")  # type: ignore[call-arg]
        return ids
    return tokenizer.encode(text)


def _token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    single = getattr(tokenizer, "decode_single_token_bytes", None)
    if callable(single):
        data = single(token_id)
        if isinstance(data, bytes):
            return data
    return tokenizer.decode([token_id]).encode("utf-8")


def _type_name(tokenizer: Tokenizer) -> str:
    name = getattr(tokenizer, "type_name", None)
    return f"{name} ({type(tokenizer).__name__})" if name else type(tokenizer).__name__


def _default_sample() -> tuple[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - a Python built without pydoc_data
        from lego.protocols.testing import DEFAULT_TEXTS

        return "\n".join(DEFAULT_TEXTS), "the built-in test texts"
    text = "\n\n".join(topics[key] for key in sorted(topics))
    return text[:_SAMPLE_CHARS], f"Python's documentation topics (first {_SAMPLE_CHARS:,} chars)"


def _is_text_file(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return b"\x00" not in head


def collect_training_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into the list of training files, deterministically.

    Files are taken as given (in order). Folders are walked recursively in sorted order;
    hidden files and folders (names starting with ``.``) and binary files (a NUL byte in
    the first 8 KiB) are skipped. A file reached twice is listed once.

    Args:
        paths: Files and folders.

    Returns:
        The files, in order.

    Raises:
        ConfigError: When a path does not exist.
        DataError: When a folder holds no text file.
    """
    files: list[Path] = []
    seen: set[Path] = set()

    def add(file: Path) -> None:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            files.append(file)

    for raw in paths:
        path = Path(raw)
        if path.is_file():
            add(path)
            continue
        if not path.is_dir():
            raise ConfigError(
                "training path not found", path=path, hint="give existing files or folders"
            )
        found = 0
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                file = Path(root) / name
                if name.startswith(".") or not file.is_file() or not _is_text_file(file):
                    continue
                add(file)
                found += 1
        if not found:
            raise DataError(
                "the folder holds no text files",
                path=path,
                hint="put .txt (or other text) files in it, or give files directly",
            )
    return files


# -- subcommands ----------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    from lego import tokenize as lt
    from lego.tokenize.fileformat import is_vocab_dump, vocab_path

    if args.pattern is not None and args.type != "regex_bpe":
        raise ConfigError(
            f"--pattern applies to regex_bpe only, not {args.type}",
            key="--pattern",
            hint="drop --pattern or use --type regex_bpe",
        )
    if args.workers is not None and args.workers < 1:
        raise ConfigError(
            f"--workers must be at least 1, got {args.workers}",
            key="--workers",
            hint="omit it to use one worker per CPU",
        )
    files = collect_training_files(args.paths)
    named = [path for path in args.paths if Path(path).is_file()]
    _check_output(args.output, inputs=named, what="tokenizer file")
    # a folder's walk may meet the files an earlier run wrote there: never train on them
    skip = {Path(args.output).resolve()} - {Path(path).resolve() for path in named}
    if not args.no_vocab_file:
        earlier = Path(args.vocab_file) if args.vocab_file else vocab_path(args.output)
        if is_vocab_dump(earlier) and earlier.resolve() not in {Path(p).resolve() for p in named}:
            skip.add(earlier.resolve())
    files = [file for file in files if file.resolve() not in skip]
    dump = _dump_target(args, inputs=files)
    if not files:
        raise DataError(
            "no training files are left once the output files are set aside",
            path=args.paths[0],
            hint="give text files other than the tokenizer's own output",
        )
    tokenizer: Any
    if args.type == "regex_bpe":
        tokenizer = lt.RegexBPETokenizer(pattern=args.pattern or "gpt4")
    elif args.type == "naive_bpe":
        tokenizer = lt.NaiveBPETokenizer()
    elif args.type == "word":
        tokenizer = lt.WordTokenizer()
    else:
        tokenizer = lt.CharTokenizer()
    options: dict[str, Any] = {"special_tokens": list(args.special), "verbose": args.verbose}
    for name, value in (("workers", args.workers), ("errors", args.errors)):
        if _accepts(tokenizer.train, name):
            options[name] = value
    if args.verbose:
        size = sum(file.stat().st_size for file in files)
        print(f"training {args.type} on {len(files)} file(s), {size:,} bytes", file=sys.stderr)
    with warnings.catch_warnings():  # said below, for every type, as one line
        warnings.simplefilter("ignore", lt.VocabSizeNotReachedWarning)
        tokenizer.train(files, args.vocab_size, **options)
    if tokenizer.vocab_size < args.vocab_size:
        note = lt.VocabSizeNotReachedWarning.of(tokenizer, args.vocab_size)
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    remove_stale_temporaries(Path(args.output).parent)  # of a run killed while saving
    written = tokenizer.save(args.output, vocab_file=dump if dump is not None else False)
    merges = getattr(tokenizer, "merges", None)
    print(
        f"wrote {args.output}: {args.type}, vocab size {tokenizer.vocab_size}"
        + (f", {len(merges)} merges" if merges is not None else "")
        + f", {len(tokenizer.special_tokens)} special token(s), from {len(files)} file(s)"
    )
    if written is not None:
        print(
            f"wrote {written}: the vocabulary, human-readable (never read back; "
            "--no-vocab-file to skip it)",
            file=sys.stderr,
        )
    return 0


def _dump_target(args: argparse.Namespace, *, inputs: Sequence[Path]) -> Path | None:
    """Where ``train`` writes its vocabulary dump (checked now), or None for no dump."""
    from lego.tokenize.fileformat import check_vocab_file, vocab_path

    if args.no_vocab_file:
        return None
    explicit = args.vocab_file is not None
    target = Path(args.vocab_file) if explicit else vocab_path(args.output)
    if target.resolve() in {file.resolve() for file in inputs}:
        raise ConfigError(
            "the vocabulary dump would overwrite a training file",
            path=target,
            key="--vocab-file" if explicit else "-o",
            hint="write the dump elsewhere (--vocab-file PATH) or skip it (--no-vocab-file)"
            + ("" if explicit else ", or choose another -o"),
        )
    return check_vocab_file(
        target,
        tokenizer_file=args.output,
        explicit=explicit,
        inputs=inputs,
        key="--vocab-file" if explicit else None,
    )


def _encode_command(args: argparse.Namespace) -> int:
    _check_output(args.output, inputs=[args.input, *_spec_files(args.tokenizer)], what="ids file")
    tokenizer = _resolve(args.tokenizer, args.pattern)
    text = _read_input(args.input, what="input text file")
    try:
        ids = _encode(tokenizer, text, allow_special=args.allow_special)
    except DataError as err:
        if not isinstance(err, ValueError):  # DisallowedSpecialError is both
            raise
        raise DataError(
            err.message,
            path=args.input,
            key=err.key,
            hint="pass --allow-special to encode special-token strings as their ids",
        ) from None
    out = json.dumps(ids) if args.format == "json" else " ".join(map(str, ids))
    _write_output(args.output, out + "\n")
    return 0


def parse_ids(text: str, *, source: str | None = None) -> list[int]:
    """Parse token ids written as whitespace-separated integers or as a JSON list.

    Args:
        text: The ids, e.g. ``"15339 1917"`` or ``"[15339, 1917]"``.
        source: The file they came from, for messages.

    Returns:
        The ids.

    Raises:
        FormatError: When text that starts with ``[`` is not valid JSON (with the line and
            column).
        DataError: On anything that is not a non-negative integer (with its position).
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            values = parse_json(text, path=source, what="JSON list of ids")
        except FormatError as err:
            if source is not None:
                raise
            # stdin is no file that was "cut short": say what to check in the stream
            raise FormatError(
                err.message.replace("the document ends too early", "the input ends too early"),
                line=err.line,
                column=err.column,
                hint="check the ids given on stdin: a complete JSON list such as [1, 2, 3], "
                "or ids separated by spaces",
            ) from None
        if not isinstance(values, list):
            values = [values]
        items: list[object] = list(values)
    else:
        items = list(stripped.split())
    ids: list[int] = []
    for position, item in enumerate(items, start=1):
        if isinstance(item, str) and item.isdigit():
            ids.append(int(item))
        elif isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            ids.append(item)
        else:
            raise DataError(
                f"item {position} of the ids, {item!r}, is not a non-negative integer",
                path=source,
                hint="write ids as a JSON list [1, 2, 3] or separated by spaces",
            )
    return ids


def _decode_command(args: argparse.Namespace) -> int:
    _check_output(args.output, inputs=[args.input, *_spec_files(args.tokenizer)], what="text file")
    tokenizer = _resolve(args.tokenizer, args.pattern)
    ids = parse_ids(_read_input(args.input, what="ids file"), source=args.input)
    _write_output(args.output, tokenizer.decode(ids))
    return 0


def _bytes_per_token(tokenizer: Tokenizer, text: str) -> tuple[int, int]:
    encode_ordinary = getattr(tokenizer, "encode_ordinary", None)
    ids = encode_ordinary(text) if callable(encode_ordinary) else tokenizer.encode(text)
    return len(text.encode("utf-8")), len(ids)


def _info(args: argparse.Namespace) -> int:
    from lego.tokenize.patterns import pattern_name

    tokenizer = _resolve(args.tokenizer, args.pattern)
    rows: list[tuple[str, str]] = [
        ("tokenizer", args.tokenizer),
        ("type", _type_name(tokenizer)),
        ("vocab size", f"{tokenizer.vocab_size:,}"),
    ]
    merges = getattr(tokenizer, "merges", None)
    if merges is not None:
        rows.append(("merges", f"{len(merges):,}"))
    specials = dict(tokenizer.special_tokens)
    rows.append(
        (
            "special tokens",
            ", ".join(f"{token} = {token_id}" for token, token_id in specials.items()) or "none",
        )
    )
    pattern = getattr(tokenizer, "pattern", None)
    if isinstance(pattern, str):
        name = pattern_name(pattern)
        rows.append(("pattern", f"{name}  {pattern}" if name else pattern))
    if args.sample is not None:
        text, label = _read_input(args.sample, what="sample text file"), args.sample
    else:
        text, label = _default_sample()
    n_bytes, n_tokens = _bytes_per_token(tokenizer, text)
    ratio = f"{n_bytes / n_tokens:.3f}" if n_tokens else "n/a"
    rows.append(
        ("bytes per token", f"{ratio}  ({n_bytes:,} bytes -> {n_tokens:,} tokens on {label})")
    )
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0


_COLOURS = ("on #264653", "on #2a6f4e", "on #6d597a", "on #7a4f2a", "on #1d3557", "on #5c2a3a")


def _compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if args.max_chars < 0:
        raise ConfigError(f"--max-chars must be 0 or more, got {args.max_chars}", key="--max-chars")
    if args.text is not None:
        text = args.text
    elif args.input is not None:
        text = _read_input(args.input, what="text file")
    else:
        from lego.protocols.testing import DEFAULT_TEXTS

        text = "\n".join(DEFAULT_TEXTS)
    tokenizers = [(spec, _resolve(spec, args.pattern)) for spec in args.tokenizers]
    console = Console(
        file=sys.stdout,
        force_terminal=True if args.color == "always" else None,
        no_color=args.color == "never",
        highlight=False,
        soft_wrap=True,
    )
    styled = args.color == "always" or (args.color == "auto" and console.is_terminal)
    n_bytes = len(text.encode("utf-8"))
    table = Table(title=f"{n_bytes:,} bytes of text", title_justify="left")
    for column, justify in (
        ("tokenizer", "left"),
        ("vocab size", "right"),
        ("tokens", "right"),
        ("bytes/token", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    encoded: list[tuple[str, Tokenizer, list[int]]] = []
    for spec, tokenizer in tokenizers:
        ids = _encode(tokenizer, text, allow_special=_accepts(tokenizer.encode, "allowed_special"))
        encoded.append((spec, tokenizer, ids))
        ratio = f"{n_bytes / len(ids):.3f}" if ids else "n/a"
        table.add_row(spec, f"{tokenizer.vocab_size:,}", f"{len(ids):,}", ratio)
    console.print(table)
    limit = args.max_chars or len(text)
    for spec, tokenizer, ids in encoded:
        console.print()
        console.print(Text(f"{spec}: {len(ids):,} tokens", style="bold" if styled else ""))
        line = Text()
        shown = 0
        for index, (piece, count) in enumerate(token_pieces(tokenizer, ids)):
            if shown >= limit:
                line.append(" ...")
                break
            shown += len(piece)
            piece = piece.replace("\n", "\u21b5\n")
            if styled:
                style = _COLOURS[index % len(_COLOURS)] + (" underline" if count > 1 else "")
                line.append(piece, style=style)
            else:
                line.append(piece if index == 0 else "|" + piece)
        console.print(line)
    return 0


def token_pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[tuple[str, int]]:
    """Split encoded text into displayable pieces, one per token where possible.

    A token that ends inside a multi-byte character (byte-level BPE splits rare characters
    into several tokens) is shown together with the tokens that complete the character.

    Args:
        tokenizer: The tokenizer that made ``ids``.
        ids: Token ids.

    Returns:
        ``(text, number_of_tokens)`` pairs whose texts concatenate to the decoded text.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[tuple[str, int]] = []
    text = ""
    count = 0
    for token_id in ids:
        text += decoder.decode(_token_bytes(tokenizer, token_id))
        count += 1
        if not decoder.getstate()[0]:
            pieces.append((text, count))
            text, count = "", 0
    text += decoder.decode(b"", final=True)
    if count:
        pieces.append((text, count))
    return pieces


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train,
    "encode": _encode_command,
    "decode": _decode_command,
    "info": _info,
    "compare": _compare,
}


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return _COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lego-tokenize`` (the console-script entry point).

    Args:
        argv: The arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 2 bad input (a one-line message on stderr), 1 a bug,
        130 interrupted.
    """
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":  # pragma: no cover - python -m lego.tokenize.cli
    sys.exit(main())
