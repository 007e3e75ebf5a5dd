"""``legollm generate`` (one prompt) and ``legollm chat`` (an interactive conversation).

    legollm generate --model runs/gpt2 --prompt "Once upon a time" --max-new-tokens 50
    legollm generate --model gpt2-dir --prompt "def f(" --temperature 0.8 --top-p 0.95 --seed 0
    legollm chat --model runs/sft --template chatml

``--model`` takes an HF or lego model directory, a lego-train checkpoint or a run directory
([`load_model()`][lego.recipes.loading.load_model]); the tokenizer comes from
``--tokenizer SPEC`` or from the model directory. Decoding is lego-generate's.

Everything is checked before the first token: the decoding flags (before the model is
read), the checkpoint's integrity, the weights, the tokenizer against the model. A chat
that outgrows the model's context drops its oldest exchanges (a ``legollm: note:`` line on
stderr says how many) and goes on; a message too long on its own is reported and the
session goes on too.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any, TextIO

import torch

import lego.arch
from lego.generate import (
    ChatSession,
    ConversationTrimmedWarning,
    GenerationConfig,
    generate,
    stream,
)
from lego.protocols import ConfigError, Tokenizer
from lego.recipes.loading import check_tokenizer, default_eos_ids, load_model, load_tokenizer

__all__ = ["add_generate_command", "add_chat_command", "run_generate", "run_chat"]


def _strategy_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and decoding")
    g.add_argument("--model", required=True, help="model dir, lego-train checkpoint or run dir")
    g.add_argument("--tokenizer", help="tokenizer spec (file, tiktoken:NAME, hf:FILE, gpt2:DIR)")
    g.add_argument("--dtype", help="parameter dtype: float32, bf16, float16 (default: stored)")
    g.add_argument(
        "--device",
        default="auto",
        help="torch device, or auto: CUDA, then Apple's MPS, then the CPU (default: auto)",
    )
    g.add_argument("--seed", type=int, help="seed for reproducible sampling")
    g.add_argument("--max-new-tokens", type=int, default=256, help="default: 256")
    g.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--temperature", type=float, help="0 means greedy")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float, help="nucleus mass in (0, 1]")
    g.add_argument("--min-p", type=float)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--presence-penalty", type=float)
    g.add_argument("--frequency-penalty", type=float)
    g.add_argument("--no-repeat-ngram-size", type=int)
    g.add_argument("--stop", action="append", dest="stop_strings", help="stop string (repeat)")
    g.add_argument("--no-cache", action="store_true", help="recompute the prefix every step")
    g.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    g.add_argument(
        "--native-kernels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode steps' linear layers on the native CPU kernels (default: where "
        "available; --native-kernels asks for them and warns when they cannot run)",
    )
    g.add_argument(
        "--pack-weights", action="store_true", help="oneDNN-reordered bf16 weights for the prefill"
    )
    g.add_argument("--truncate-prompt", action="store_true", help="left-truncate a too-long prompt")


def add_generate_command(commands: Any) -> None:
    """Add ``generate`` to the ``legollm`` subcommands.

    Args:
        commands: The ``add_subparsers()`` object of the ``legollm`` parser.
    """
    run = commands.add_parser(
        "generate",
        help="continue one prompt and print the text",
        description="Continue a prompt with a trained model: greedy by default, sampling "
        "with --temperature/--top-k/--top-p, beam search with --num-beams.",
        epilog='example:\n  legollm generate --model runs/tiny --prompt "def " --top-k 40',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--prompt", required=True, help="the text to continue")
    run.add_argument("--num-beams", type=int, default=1, help="beam search with N beams")
    run.add_argument("--length-penalty", type=float, default=1.0)
    _strategy_flags(run)


def add_chat_command(commands: Any) -> None:
    """Add ``chat`` to the ``legollm`` subcommands.

    Args:
        commands: The ``add_subparsers()`` object of the ``legollm`` parser.
    """
    chat = commands.add_parser(
        "chat",
        help="interactive multi-turn chat, replies streamed",
        description="Talk to a model through its chat template; /reset starts over, /exit quits.",
        epilog="example:\n  legollm chat --model runs/sft --template chatml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("--template", default="chatml", help="chatml or llama3 (default: chatml)")
    chat.add_argument("--system", help="a system prompt")
    _strategy_flags(chat)


def _config(args: argparse.Namespace, eos: list[int]) -> GenerationConfig:
    options: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "stop_strings": args.stop_strings,
        "seed": args.seed,
        "use_cache": not args.no_cache,
        "compile": args.compile,
        "native_kernels": args.native_kernels,
        "pack_weights": args.pack_weights,
        "truncate_prompt": args.truncate_prompt,
        "eos_token_id": eos or None,
    }
    if args.command == "generate":
        options["num_beams"] = args.num_beams
        options["length_penalty"] = args.length_penalty
    return GenerationConfig.from_options(None, **options)


def _load(
    args: argparse.Namespace, *, eos: bool = True
) -> tuple[lego.arch.DecoderLM, Tokenizer, GenerationConfig]:
    """Check the decoding flags, then load and check the model and its tokenizer.

    Returns:
        ``(model, tokenizer, config)``; the config's ``eos_token_id`` from the model
        directory when ``eos`` (plain generation; a chat stops on its template's token).
    """
    config = _config(args, [])  # every flag is checked before the model is read
    model, model_dir = load_model(args.model, dtype=args.dtype, device=args.device)
    tokenizer = load_tokenizer(args.tokenizer, model_dir)
    check_tokenizer(tokenizer, model, spec=args.tokenizer, model_dir=model_dir)
    if eos:
        ids = default_eos_ids(model_dir, tokenizer, vocab_size=model.config.vocab_size)
        if ids:
            config = GenerationConfig.from_options(config, eos_token_id=ids)
    return model, tokenizer, config


def _reply(session: ChatSession, text: str, out: TextIO) -> None:
    """Stream one reply; a conversation trimmed to fit the context is a notice on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConversationTrimmedWarning)
        for piece in session.send(text):
            _notices(caught)
            out.write(piece)
            out.flush()
        _notices(caught)


def _notices(caught: list[warnings.WarningMessage]) -> None:
    """Print the trimming notices caught so far (other warnings go on as warnings)."""
    while caught:
        record = caught.pop(0)
        if issubclass(record.category, ConversationTrimmedWarning):
            print(f"legollm: note: {record.message}", file=sys.stderr, flush=True)
        else:
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)


def run_generate(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``legollm generate``: continue the prompt and write the text to ``out``.

    Args:
        args: The parsed arguments.
        out: Where the text goes (streamed piece by piece).

    Returns:
        The exit code.

    Raises:
        ConfigError: An empty prompt, a bad model path or tokenizer, bad decoding flags.
    """
    if not args.prompt:
        raise ConfigError("the prompt is empty", key="--prompt", hint="give some text")
    model, tokenizer, config = _load(args)
    device = next(model.parameters()).device
    if config.seed is not None:
        torch.manual_seed(config.seed)
    if config.num_beams > 1:
        ids = torch.tensor([tokenizer.encode(args.prompt)], device=device)
        result = generate(model, ids, generation_config=config)
        new = [t for t in result[0, ids.shape[1] :].tolist() if t not in config.eos_ids]
        out.write(tokenizer.decode(new) + "\n")
        return 0
    for piece in stream(model, tokenizer, args.prompt, generation_config=config):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


def run_chat(args: argparse.Namespace, out: TextIO, inp: TextIO) -> int:
    """Run ``legollm chat``: read messages from ``inp``, stream replies to ``out``.

    Args:
        args: The parsed arguments.
        out: Where prompts and replies go.
        inp: Where the user's lines come from.

    Returns:
        The exit code (0 at ``/exit`` or end of input).

    Raises:
        ConfigError: A bad model path or tokenizer, a template the tokenizer cannot encode.
    """
    model, tokenizer, config = _load(args, eos=False)
    session = ChatSession(
        model=model,
        tokenizer=tokenizer,
        template=args.template,
        system_prompt=args.system,
        generation_config=config,
    )
    out.write("chat: type a message; /reset starts over, /exit (or an empty line at EOF) quits\n")
    while True:
        out.write("> ")
        out.flush()
        line = inp.readline()
        if not line:
            out.write("\n")
            return 0
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit"):
            return 0
        if text.strip() == "/reset":
            session.reset()
            continue
        if not text.strip():
            continue
        try:
            _reply(session, text, out)
        except ConfigError as err:
            if err.key != "message":
                raise
            print(f"legollm: note: {err.message}; {err.hint}", file=sys.stderr, flush=True)
            continue  # the session is as it was before the message
        out.write("\n")
