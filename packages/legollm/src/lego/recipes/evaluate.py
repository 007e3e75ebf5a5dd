"""``legollm eval perplexity | harness | core | judge``: measure a model (lego-eval).

    legollm eval perplexity --model runs/tiny --text held-out.txt
    legollm eval perplexity --model runs/tiny --data data/stdlib --split val --max-length 256
    legollm eval harness --model runs/tiny --tasks lego_arithmetic_mc,lego_sort_exact
    legollm eval harness --model gpt2-dir --tasks my_task --include-path tasks/ --out results/
    legollm eval core --model runs/tiny --tasks lego_offline
    legollm eval core --model runs/tiny --tasks my-core-tasks.yaml --prefix-token '<|endoftext|>'
    legollm eval judge --model runs/sft --questions questions.jsonl --out judged/ \
        --judge-url http://127.0.0.1:8000/v1 --judge-model judge
    legollm eval judge --answers a.jsonl --answers-b b.jsonl --questions questions.jsonl \
        --judge-url https://api.openai.com/v1 --judge-model gpt-4o-mini \
        --api-key-env OPENAI_API_KEY --out judged/

``--model`` takes what [`load_model()`][lego.recipes.loading.load_model] takes (a model
directory, a checkpoint or a run); the tokenizer comes from ``--tokenizer`` or the model
directory. ``perplexity`` scores every token of a text file or a prepared split exactly once
with as much left context as ``--max-length`` allows
([`lego.eval.perplexity`][lego.eval.perplexity]); ``harness`` runs lm-evaluation-harness
tasks through lego-eval's ``LegoLM`` ([`run_harness()`][lego.eval.harness.run_harness]), the
brick's offline tasks always on the include path, so ``lego_offline`` tasks run with no
network. ``core`` scores CORE-style tasks ([`evaluate_core()`][lego.eval.core.evaluate_core])
given as YAML (``tasks:`` a list of [`CoreTask`][lego.eval.core.CoreTask] entries, paths
relative to the file; a folder: every ``*.yaml`` in it) or ``lego_offline``, the brick's
offline tasks in CORE form. ``judge`` has a judge model behind any OpenAI-compatible
endpoint grade a model's answers ([`judge_answers()`][lego.eval.judge.judge_answers]):
rated alone (``--mode single``) or against a baseline's answers with the positions swapped
(``pairwise``, the default when ``--baseline-model`` or ``--answers-b`` is given). The
answers are generated from ``--model`` (greedy, ``--chat-template`` for chat models) or read
from ``--answers``; every judged item is appended to ``DIR/judge.jsonl`` as it completes, so
after Ctrl-C (exit 130 / 143) or a judge that stays down (exit 2) the same command resumes.

The table is printed; with ``--out DIR`` (required by ``judge``) it is also written as
``DIR/<kind>.json`` and ``DIR/<kind>.md`` (refused when they exist, unless ``--overwrite``;
written to a temporary name and renamed, so an interruption never leaves half a file).
Everything is checked before the model is read.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from lego.eval import CoreTask, evaluate_core, load_examples, text_perplexity
from lego.eval.judge import (
    MODES,
    JudgeClient,
    JudgeError,
    JudgeMode,
    JudgeTemplate,
    Question,
    judge_answers,
    load_answers,
    load_questions,
    load_template,
)
from lego.eval.perplexity import split_perplexity
from lego.eval.tasks import write_core_tasks
from lego.generate import ChatSession, GenerationConfig, stream
from lego.protocols import ConfigError, DataError, Interrupted, Terminated, Tokenizer
from lego.protocols.configfile import read_config_file
from lego.recipes.loading import check_tokenizer, default_eos_ids, load_model, load_tokenizer

__all__ = ["add_eval_command", "run_eval"]


def add_eval_command(commands: Any) -> None:
    """Add ``eval`` (``perplexity``, ``harness``, ``core``, ``judge``) to the subcommands.

    Args:
        commands: The ``add_subparsers()`` object of the ``legollm`` parser.
    """
    parser = commands.add_parser(
        "eval",
        help="evaluate a model: perplexity, lm-evaluation-harness tasks, CORE tasks or an "
        "LLM judge",
        description="Measure a model: perplexity and bits per byte on a text or a prepared "
        "split, lm-evaluation-harness tasks (the offline lego_* tasks need no network), "
        "CORE-style tasks on local JSONL, or its answers graded by a judge model.",
        epilog="examples:\n  legollm eval perplexity --model runs/tiny --text held-out.txt\n"
        "  legollm eval harness --model runs/tiny --tasks lego_arithmetic_mc\n"
        "  legollm eval core --model runs/tiny --tasks lego_offline\n"
        "  legollm eval judge --model runs/sft --questions q.jsonl --judge-url "
        "http://127.0.0.1:8000/v1 --judge-model judge --out judged/",
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
    _add_core(kinds)
    _add_judge(kinds)


def _add_core(kinds: Any) -> None:
    core = kinds.add_parser(
        "core",
        help="CORE-style tasks: multiple choice, schema and exact-answer tasks, centred",
        description="Score CORE-style tasks (lego.eval.core) on local JSONL: --tasks is a "
        "YAML file whose 'tasks:' lists CoreTask entries (name, path relative to the file, "
        "task_type: multiple_choice | schema | language_modeling, num_fewshot, "
        "continuation_delimiter, random_baseline), a folder of such files, or lego_offline "
        "(the brick's offline arithmetic and sort tasks).",
        epilog="examples:\n  legollm eval core --model runs/tiny --tasks lego_offline\n"
        "  legollm eval core --model runs/tiny --tasks core.yaml --prefix-token '<|endoftext|>'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_flags(core)
    core.add_argument(
        "--tasks", required=True, help="a task YAML file, a folder of them, or lego_offline"
    )
    core.add_argument("--batch-size", type=int, default=16, help="prompts per forward (16)")
    core.add_argument("--max-length", type=int, help="longest prompt (default: the context)")
    core.add_argument(
        "--prefix-token",
        help="a special token put before every prompt (e.g. '<|endoftext|>', as nanochat's BOS)",
    )


def _add_judge(kinds: Any) -> None:
    judge = kinds.add_parser(
        "judge",
        help="LLM-as-judge: a judge model behind an OpenAI-compatible API grades the answers",
        description="Have a judge model (any OpenAI-compatible endpoint: legollm serve, vLLM, "
        'OpenAI...) grade a model\'s answers to --questions (JSONL of {"question", '
        'optional "reference"}): single (a 1-10 rating each) or pairwise against a '
        "baseline, every pair judged twice with the positions swapped (a verdict that flips "
        "is a tie). Each judged item is appended to OUT/judge.jsonl; the same command "
        "resumes after an interruption.",
        epilog="examples:\n  legollm eval judge --model runs/sft --questions q.jsonl "
        "--judge-url http://127.0.0.1:8000/v1 --judge-model judge --out judged/\n"
        "  legollm eval judge --model runs/sft --baseline-model runs/base --questions q.jsonl "
        "--judge-url https://api.openai.com/v1 --judge-model gpt-4o-mini "
        "--api-key-env OPENAI_API_KEY --out judged/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = judge.add_mutually_exclusive_group(required=True)
    a.add_argument("--model", help="the model evaluated: model dir, checkpoint or run dir")
    a.add_argument("--answers", help='its answers instead: JSONL of {"question", "answer"}')
    b = judge.add_mutually_exclusive_group()
    b.add_argument("--baseline-model", help="model B for pairwise judging (answers generated)")
    b.add_argument("--answers-b", help="model B's answers or reference answers (JSONL)")
    judge.add_argument("--questions", required=True, help='JSONL of {"question", "reference"?}')
    judge.add_argument("--judge-url", required=True, help="the API's base URL (.../v1)")
    judge.add_argument("--judge-model", required=True, help="the judge model's name")
    judge.add_argument("--api-key-env", help="the environment variable holding the judge's API key")
    judge.add_argument(
        "--mode", choices=MODES, help="single or pairwise (default: pairwise with model B)"
    )
    judge.add_argument(
        "--template", help="a prompt template file ({question}, {answer} or {answer_a}...)"
    )
    judge.add_argument("--out", required=True, help="writes judge.jsonl, judge.json, judge.md")
    judge.add_argument(
        "--overwrite", action="store_true", help="start over, replacing the files in --out"
    )
    judge.add_argument("--tokenizer", help="tokenizer spec of --model (default: its directory's)")
    judge.add_argument("--dtype", help="parameter dtype: float32, bf16, float16 (stored)")
    judge.add_argument("--device", default="auto", help="torch device, or auto (default)")
    judge.add_argument(
        "--chat-template",
        default="none",
        help="how questions are shown to the models: none (as plain text, default), chatml "
        "or llama3",
    )
    judge.add_argument("--max-new-tokens", type=int, default=256, help="answer length (256)")
    judge.add_argument("--judge-max-tokens", type=int, default=1024, help="judge reply (1024)")
    judge.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    judge.add_argument("--max-retries", type=int, default=4, help="retries on errors, 429, 5xx (4)")


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
    if args.kind == "judge":
        _check_judge_flags(args)
        return
    if args.kind == "core":
        positive += ["max_length"]
    elif args.kind == "perplexity":
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


def _check_judge_flags(args: argparse.Namespace) -> None:
    for name in ("max_new_tokens", "judge_max_tokens"):
        value = getattr(args, name)
        if value < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be >= 1, got {value}", key=flag)
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be > 0, got {args.timeout}", key="--timeout")
    if args.max_retries < 0:
        raise ConfigError(
            f"--max-retries must be >= 0, got {args.max_retries}", key="--max-retries"
        )
    if args.chat_template not in ("none", "chatml", "llama3"):
        raise ConfigError(
            f"--chat-template {args.chat_template!r} is not one of none, chatml, llama3",
            key="--chat-template",
        )
    has_b = args.baseline_model is not None or args.answers_b is not None
    if args.mode == "single" and has_b:
        raise ConfigError(
            "--mode single grades one model: --baseline-model / --answers-b are for pairwise",
            key="--mode",
            hint="leave out --mode (pairwise), or the baseline",
        )
    if args.mode == "pairwise" and not has_b:
        raise ConfigError(
            "--mode pairwise needs model B: --baseline-model DIR or --answers-b FILE",
            key="--mode",
        )
    for flag, value in (("--model", args.model), ("--baseline-model", args.baseline_model)):
        if value is not None and not Path(value).exists():
            raise ConfigError(f"{flag} {value}: no such file or folder", key=flag)
    if args.api_key_env is not None and not os.environ.get(args.api_key_env, "").strip():
        raise ConfigError(
            f"--api-key-env {args.api_key_env}: the variable is not set or empty",
            key="--api-key-env",
            hint=f"export {args.api_key_env}=<the judge's key>, or leave the flag out",
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a folder", key="--out")
    for suffix in (".json", ".md"):
        target = out / f"judge{suffix}"
        if target.exists() and not args.overwrite:
            raise ConfigError(
                f"{target} exists: eval never replaces a file it was not told to",
                key="--out",
                hint="choose another --out folder, or pass --overwrite to judge again",
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


def _core_tasks(spec: str, folder: Path) -> list[CoreTask]:
    """The tasks ``--tasks`` names, every file checked (rows included)."""
    if spec == "lego_offline":
        return write_core_tasks(folder)
    source = Path(spec)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix in (".yaml", ".yml"))
        if not files:
            raise ConfigError(f"--tasks {spec}: the folder holds no .yaml task file", key="--tasks")
    elif source.is_file():
        files = [source]
    else:
        raise ConfigError(
            f"--tasks {spec}: no such file or folder",
            key="--tasks",
            hint="give a task YAML file, a folder of them, or lego_offline",
        )
    tasks: list[CoreTask] = []
    for file in files:
        data = read_config_file(file, what="CORE task file")
        unknown = sorted(set(data) - {"tasks"})
        entries = data.get("tasks")
        if unknown or not isinstance(entries, list) or not entries:
            raise ConfigError(
                "a CORE task file holds 'tasks:', a list of tasks"
                + (f" (unknown key {unknown[0]!r})" if unknown else ""),
                path=file,
                key=unknown[0] if unknown else "tasks",
                hint="write tasks: then one '- name: ..., path: ..., task_type: ...' per task",
            )
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ConfigError(
                    f"task {index + 1} is not a mapping", path=file, key=f"tasks[{index}]"
                )
            path = Path(str(entry.get("path", "")))
            if "path" in entry and not path.is_absolute():
                entry = {**entry, "path": str(file.parent / path)}
            try:
                task = CoreTask.from_dict(entry)
            except ConfigError as err:
                raise ConfigError(
                    f"task {index + 1}: {err.message}",
                    path=file,
                    key=f"tasks[{index}]" + (f".{err.key}" if err.key else ""),
                    hint=err.hint,
                ) from None
            load_examples(task.path, task.task_type)  # every row checked before the model
            tasks.append(task)
    names = [t.name for t in tasks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"two CORE tasks are named {duplicate!r}", key="--tasks")
    return tasks


def _core(
    args: argparse.Namespace, model: Any, tokenizer: Tokenizer, tasks: list[CoreTask]
) -> tuple[dict[str, Any], str]:
    result = evaluate_core(
        model,
        tokenizer,
        tasks,
        bos_id=_prefix_id(tokenizer, args.prefix_token),
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    data = {"model": args.model, "tasks_source": args.tasks, **result.to_dict()}
    return data, f"CORE tasks on {args.model}\n\n{result.to_markdown()}"


def _answerer(
    spec: str, args: argparse.Namespace, tokenizer_spec: str | None
) -> Callable[[str], str]:
    """Load a model and return question -> its greedy answer (plain or in a chat template)."""
    model, model_dir = load_model(spec, dtype=args.dtype, device=args.device)
    tokenizer = load_tokenizer(tokenizer_spec, model_dir)
    check_tokenizer(tokenizer, model, spec=tokenizer_spec, model_dir=model_dir)
    config = GenerationConfig.from_options(None, max_new_tokens=args.max_new_tokens)
    if args.chat_template != "none":
        session = ChatSession(
            model=model, tokenizer=tokenizer, template=args.chat_template, generation_config=config
        )

        def chat_answer(question: str) -> str:
            session.reset()
            return "".join(session.send(question)).strip()

        return chat_answer
    eos = default_eos_ids(model_dir, tokenizer, vocab_size=model.config.vocab_size)
    if eos:
        config = GenerationConfig.from_options(config, eos_token_id=eos)

    def answer(question: str) -> str:
        return "".join(stream(model, tokenizer, question, generation_config=config)).strip()

    return answer


def _judge_inputs(
    args: argparse.Namespace,
) -> tuple[list[Question], JudgeTemplate, JudgeMode, list[str] | None, list[str] | None]:
    """Every judge input read and checked before a model is loaded or a request sent."""
    questions = load_questions(args.questions)
    answers_a = load_answers(args.answers, questions) if args.answers is not None else None
    answers_b = load_answers(args.answers_b, questions) if args.answers_b is not None else None
    pairwise = args.baseline_model is not None or args.answers_b is not None
    mode: JudgeMode = "pairwise" if (args.mode or "") == "pairwise" or pairwise else "single"
    with_reference = all(q.reference is not None for q in questions)
    template = load_template(args.template, mode, reference=with_reference)
    if template.uses_reference and not with_reference:
        lacking = next(q for q in questions if q.reference is None)
        raise DataError(
            f'line {lacking.line}: the question has no "reference", which the template shows',
            path=args.questions,
            line=lacking.line,
            key="reference",
            hint="give every question a reference, or use a template without {reference}",
        )
    return questions, template, mode, answers_a, answers_b


def _judge(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    questions, template, mode, answers_a, answers_b = _judge_inputs(args)
    api_key = os.environ[args.api_key_env].strip() if args.api_key_env else None
    try:
        client = JudgeClient(
            args.judge_url,
            args.judge_model,
            api_key=api_key,
            timeout=args.timeout,
            max_retries=args.max_retries,
            max_tokens=args.judge_max_tokens,
        )
    except ConfigError as err:
        flag = {"base_url": "--judge-url", "model": "--judge-model"}.get(err.key or "", err.key)
        raise ConfigError(err.message, key=flag, hint=err.hint) from None
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "judge.jsonl"
    if args.overwrite:
        partial.unlink(missing_ok=True)
    source_a: list[str] | Callable[[str], str] = (
        answers_a if answers_a is not None else _answerer(args.model, args, args.tokenizer)
    )
    source_b: list[str] | Callable[[str], str] | None = answers_b
    if args.baseline_model is not None:
        source_b = _answerer(args.baseline_model, args, None)
    name_a = args.model or args.answers
    name_b = args.baseline_model or args.answers_b or ""

    def progress(done: int, total: int) -> None:
        print(f"judged {done}/{total}", file=sys.stderr, flush=True)

    try:
        result = judge_answers(
            questions,
            source_a,
            client,
            mode=mode,
            baseline=source_b,
            template=template,
            results_path=partial,
            names=(name_a, name_b or "baseline"),
            on_item=progress,
        )
    except JudgeError as err:
        raise JudgeError(err.message, key="--judge-url", hint=err.hint) from None
    except KeyboardInterrupt as stop:
        lines = partial.read_text("utf-8").splitlines() if partial.exists() else []
        kept = sum(1 for line in lines if line.strip())
        raise Interrupted(
            f"stopped after {kept} of {len(questions)} judged items: kept in {partial}",
            signum=signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT,
            hint="run the same command again to resume after them",
        ) from None
    data = {
        "questions": args.questions,
        "judge_url": client.url,
        "template": template.source,
        **result.to_dict(),
    }
    against = f" against {name_b}" if mode == "pairwise" else ""
    title = f"LLM-as-judge ({mode}) of {name_a}{against}, judged by {args.judge_model}"
    return data, f"{title}\n\n{result.to_markdown()}"


def run_eval(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``legollm eval perplexity | harness | core | judge``.

    Args:
        args: The parsed flags.
        out: Where the table goes.

    Returns:
        0.

    Raises:
        ConfigError: A bad flag, a missing file, an output that exists, a tokenizer that
            does not fit the model, lm-eval missing (``harness``), a bad task YAML
            (``core``) or judge template (``judge``).
        DataError: A text that is not UTF-8 or shorter than two tokens, a bad split, a
            malformed task, question or answer row (naming the file and the line).
        JudgeError: The judge endpoint stays down after its retries (``judge``; the items
            judged so far are kept in ``OUT/judge.jsonl``).
        Interrupted: Ctrl-C or SIGTERM during ``judge`` (exit 130 / 143, items kept).
    """
    _check_flags(args)
    if args.kind == "judge":
        data, markdown = _judge(args)
    else:
        with tempfile.TemporaryDirectory(prefix="legollm-core-") as scratch:
            tasks = _core_tasks(args.tasks, Path(scratch)) if args.kind == "core" else []
            model, model_dir = load_model(args.model, dtype=args.dtype, device=args.device)
            tokenizer = load_tokenizer(args.tokenizer, model_dir)
            check_tokenizer(tokenizer, model, spec=args.tokenizer, model_dir=model_dir)
            if args.kind == "core":
                data, markdown = _core(args, model, tokenizer, tasks)
            else:
                measure = _perplexity if args.kind == "perplexity" else _harness
                data, markdown = measure(args, model, tokenizer)
    print(markdown, file=out)
    json_path, md_path = _target(args, ".json"), _target(args, ".md")
    if json_path is not None and md_path is not None:
        _write(json_path, json.dumps(data, indent=2, default=str) + "\n")
        _write(md_path, markdown + "\n")
        print(f"written: {json_path}, {md_path}", file=out)
    return 0
