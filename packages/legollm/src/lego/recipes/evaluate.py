"""``legollm eval perplexity | harness``: measure a model the way the field measures (lego-eval).

    legollm eval perplexity --model runs/tiny --text held-out.txt
    legollm eval perplexity --model runs/tiny --data data/stdlib --split val --max-length 256
    legollm eval harness --model runs/tiny --tasks lego_arithmetic_mc,lego_sort_exact
    legollm eval harness --model gpt2-dir --tasks my_task --include-path tasks/ --out results/

``--model`` takes what [`load_model()`][lego.recipes.loading.load_model] takes (a model
directory, a checkpoint or a run); the tokenizer comes from ``--tokenizer`` or the model
directory. ``perplexity`` scores every token of a text file or a prepared split exactly once
with as much left context as ``--max-length`` allows
([`lego.eval.perplexity`][lego.eval.perplexity]); ``harness`` runs lm-evaluation-harness
tasks through lego-eval's ``LegoLM`` ([`run_harness()`][lego.eval.harness.run_harness]), the
brick's offline tasks always on the include path, so ``lego_offline`` tasks run with no
network.

The table is printed; with ``--out DIR`` it is also written as ``DIR/<kind>.json`` and
``DIR/<kind>.md`` (refused when they exist, unless ``--overwrite``; written to a temporary
name and renamed, so an interruption never leaves half a file). Everything is checked
before the model is read.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TextIO

from lego.eval import text_perplexity
from lego.eval.perplexity import split_perplexity
from lego.protocols import ConfigError, DataError, Tokenizer
from lego.recipes.loading import check_tokenizer, load_model, load_tokenizer

__all__ = ["add_eval_command", "run_eval"]


def add_eval_command(commands: Any) -> None:
    """Add ``eval`` (``perplexity``, ``harness``) to the ``legollm`` subcommands.

    Args:
        commands: The ``add_subparsers()`` object of the ``legollm`` parser.
    """
    parser = commands.add_parser(
        "eval",
        help="evaluate a model: perplexity (exact sliding window) or lm-evaluation-harness tasks",
        description="Measure a model: perplexity and bits per byte on a text or a prepared "
        "split, or lm-evaluation-harness tasks (the offline lego_* tasks need no network).",
        epilog="examples:\n  legollm eval perplexity --model runs/tiny --text held-out.txt\n"
        "  legollm eval harness --model runs/tiny --tasks lego_arithmetic_mc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    ppl = kinds.add_parser(
        "perplexity",
        help="perplexity and bits per byte, every token scored exactly once",
        description="Perplexity of a model on a UTF-8 text file (--text) or a prepared "
        "lego-data split (--data, --split): sliding windows of --max-length tokens, every "
        "token scored once with as much left context as the window allows.",
        epilog="example:\n  legollm eval perplexity --model runs/tiny --text held-out.txt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_flags(ppl)
    source = ppl.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="a UTF-8 text file")
    source.add_argument("--data", help="a prepared dataset folder (lego-data prepare)")
    ppl.add_argument("--split", default="val", help="the split of --data (default: val)")
    ppl.add_argument("--max-length", type=int, help="window length (default: the context)")
    ppl.add_argument(
        "--stride", type=int, help="tokens scored per window after the first (default: half)"
    )
    ppl.add_argument("--batch-size", type=int, default=8, help="windows per forward (8)")
    ppl.add_argument(
        "--prefix-token",
        help="a special token put before the text so that its first token is scored too "
        "(e.g. '<|endoftext|>', as lm-eval does)",
    )
    harness = kinds.add_parser(
        "harness",
        help="lm-evaluation-harness tasks through lego-eval's LegoLM",
        description="Run lm-evaluation-harness tasks (needs lego-eval[harness]); the offline "
        "lego_* tasks (lego_arithmetic_mc, lego_arithmetic_exact, lego_sort_exact, "
        "lego_stdlib_ppl; tag lego_offline) are always available.",
        epilog="example:\n  legollm eval harness --model runs/tiny --tasks lego_offline --limit 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_flags(harness)
    harness.add_argument("--tasks", required=True, help="comma-separated task / group / tag names")
    harness.add_argument(
        "--include-path", action="append", default=[], help="a folder of task YAML (repeatable)"
    )
    harness.add_argument("--batch-size", type=int, default=8, help="rows per forward (8)")
    harness.add_argument("--num-fewshot", type=int, help="few-shot examples (task default)")
    harness.add_argument("--limit", type=float, help="documents per task (or a fraction < 1)")
    harness.add_argument("--max-gen-toks", type=int, default=256, help="generation budget")
    harness.add_argument("--seed", type=int, default=0)
    harness.add_argument(
        "--bootstrap-iters", type=int, default=1000, help="resamples for standard errors (1000)"
    )


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir, checkpoint or run dir")
    parser.add_argument("--tokenizer", help="tokenizer spec (default: the model directory's)")
    parser.add_argument("--dtype", help="parameter dtype: float32, bf16, float16 (stored)")
    parser.add_argument("--device", default="auto", help="torch device, or auto (default)")
    parser.add_argument("--out", help="also write <out>/<kind>.json and <out>/<kind>.md")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files --out would write"
    )


def _check_flags(args: argparse.Namespace) -> None:
    """The flags that need no model, before it is read."""
    positive = ["batch_size"]
    if args.kind == "perplexity":
        positive += ["max_length", "stride"]
        if args.text is not None and not Path(args.text).is_file():
            raise ConfigError(f"--text {args.text}: no such file", key="--text")
        if args.data is not None and not Path(args.data).exists():
            raise ConfigError(f"--data {args.data}: no such folder", key="--data")
    else:
        positive += ["max_gen_toks"]
        if not [t for t in args.tasks.split(",") if t.strip()]:
            raise ConfigError("--tasks is empty", key="--tasks", hint="e.g. --tasks lego_offline")
        for folder in args.include_path:
            if not Path(folder).is_dir():
                raise ConfigError(f"--include-path {folder}: no such folder", key="--include-path")
        if args.limit is not None and not args.limit > 0:
            raise ConfigError(f"--limit must be > 0, got {args.limit}", key="--limit")
    for name in positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be >= 1, got {value}", key=flag)
    for suffix in (".json", ".md"):
        target = _target(args, suffix)
        if target is not None and target.exists() and not args.overwrite:
            raise ConfigError(
                f"{target} exists: eval never replaces a file it was not told to",
                key="--out",
                hint="choose another --out folder, or pass --overwrite",
            )


def _target(args: argparse.Namespace, suffix: str) -> Path | None:
    return None if not args.out else Path(args.out) / f"{args.kind}{suffix}"


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _prefix_id(tokenizer: Tokenizer, name: str | None) -> int | None:
    if name is None:
        return None
    ids = tokenizer.special_tokens
    if name not in ids:
        raise ConfigError(
            f"--prefix-token {name!r} is not a special token of the tokenizer",
            key="--prefix-token",
            hint=f"one of: {', '.join(sorted(ids)) or 'none (leave it out)'}",
        )
    return ids[name]


def _perplexity(
    args: argparse.Namespace, model: Any, tokenizer: Tokenizer
) -> tuple[dict[str, Any], str]:
    options: dict[str, Any] = {
        "max_length": args.max_length,
        "stride": args.stride,
        "batch_size": args.batch_size,
        "prefix_id": _prefix_id(tokenizer, args.prefix_token),
    }
    if args.text is not None:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{args.text} is not UTF-8 text ({err.reason} at byte {err.start})",
                path=args.text,
            ) from None
        result = text_perplexity(model, tokenizer, text, **options)
        source = args.text
    else:
        result = split_perplexity(model, args.data, args.split, **options)
        source = f"{args.data} ({args.split})"
    data = {"model": args.model, "source": source, **result.to_dict()}
    data["mean_nll"] = result.mean_nll
    data["perplexity"] = result.perplexity
    data["bits_per_byte"] = result.bits_per_byte
    rows = [
        ("tokens scored", f"{result.num_tokens:,}"),
        ("mean NLL (nats / token)", f"{result.mean_nll:.4f}"),
        ("perplexity", f"{result.perplexity:.3f}"),
        (
            "bits per byte",
            "n/a (no text)" if result.bits_per_byte is None else f"{result.bits_per_byte:.4f}",
        ),
        ("window / stride", f"{result.max_length} / {result.stride}"),
    ]
    table = "| measure | value |\n| --- | ---: |\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
    return data, f"Perplexity of {args.model} on {source}\n\n{table}"


def _harness(
    args: argparse.Namespace, model: Any, tokenizer: Tokenizer
) -> tuple[dict[str, Any], str]:
    from lego.eval.harness import results_table, run_harness  # needs lego-eval[harness]

    results = run_harness(
        model,
        tokenizer,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        include_path=args.include_path or None,
        batch_size=args.batch_size,
        num_fewshot=args.num_fewshot,
        limit=int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit,
        max_gen_toks=args.max_gen_toks,
        seed=args.seed,
        bootstrap_iters=args.bootstrap_iters,
    )
    keys = ("results", "groups", "versions", "n-samples")
    data: dict[str, Any] = {k: results[k] for k in keys if k in results}
    data["model"] = args.model
    return data, f"lm-evaluation-harness on {args.model}\n\n{results_table(results)}"


def run_eval(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``legollm eval perplexity | harness``.

    Args:
        args: The parsed flags.
        out: Where the table goes.

    Returns:
        0.

    Raises:
        ConfigError: A bad flag, a missing file, an output that exists, a tokenizer that
            does not fit the model, lm-eval missing (``harness``).
        DataError: A text that is not UTF-8 or shorter than two tokens, a bad split.
    """
    _check_flags(args)
    model, model_dir = load_model(args.model, dtype=args.dtype, device=args.device)
    tokenizer = load_tokenizer(args.tokenizer, model_dir)
    check_tokenizer(tokenizer, model, spec=args.tokenizer, model_dir=model_dir)
    measure = _perplexity if args.kind == "perplexity" else _harness
    data, markdown = measure(args, model, tokenizer)
    print(markdown, file=out)
    json_path, md_path = _target(args, ".json"), _target(args, ".md")
    if json_path is not None and md_path is not None:
        _write(json_path, json.dumps(data, indent=2, default=str) + "\n")
        _write(md_path, markdown + "\n")
        print(f"written: {json_path}, {md_path}", file=out)
    return 0
