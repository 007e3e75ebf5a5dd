"""Load GPT-2-style HuggingFace weights from a directory and generate text.

``lego.arch.from_hf`` reads any ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` /
``Qwen3ForCausalLM`` directory (``config.json`` + safetensors) lazily, and lego-generate
decodes with it: greedy, top-p sampling, beam search, and streaming text as it is produced.

Give ``--model`` a directory downloaded from the Hub (e.g. ``gpt2`` with its
``tokenizer.json``). Without it, the script writes a small GPT-2-shaped model with random
weights as an HF directory first (so it runs offline; the text is then gibberish), using GPT-2's
real tokenizer from tiktoken.

    python examples/hf_generate.py [--quick] [--model path/to/gpt2] [--prompt "Hello"]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from lego.arch import build, from_hf, to_hf
from lego.generate import generate, stream
from lego.protocols.layout import LEGO_TOKENIZER_FILE, find_tokenizer_file
from lego.tokenize import RegexBPETokenizer, load


def random_gpt2_dir(folder: Path) -> Path:
    """A GPT-2-shaped model (2 layers) with random weights and GPT-2's tokenizer."""
    torch.manual_seed(0)
    to_hf(build("gpt2-tiny", vocab_size=50257, context_length=256), folder)
    RegexBPETokenizer.from_tiktoken("gpt2").save_hf(folder / "tokenizer.json")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer new tokens")
    parser.add_argument("--model", type=Path, help="an HF model directory")
    parser.add_argument("--prompt", default="The meaning of life is")
    parser.add_argument("--dtype", default=None, help="e.g. bf16 (default: as stored)")
    args = parser.parse_args(argv)
    new = 8 if args.quick else 40

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or random_gpt2_dir(Path(tmp) / "gpt2-random")
        model = from_hf(folder, dtype=args.dtype)  # weights mapped lazily, eval mode
        found = find_tokenizer_file(folder)
        if found is None:
            print(f"{folder} has no tokenizer.json; pass a directory that has one")
            return 2
        # lego-tokenizer.json (lego's format) or tokenizer.json (HuggingFace's byte-level BPE)
        tokenizer = (
            load(found) if found.name == LEGO_TOKENIZER_FILE else RegexBPETokenizer.from_hf(found)
        )
        eos = tokenizer.special_tokens.get("<|endoftext|>")
        ids = torch.tensor([tokenizer.encode(args.prompt)])
        c = model.config
        print(f"{c.family}: {c.n_layers} layers, d_model {c.d_model}, vocab {c.vocab_size}")

        strategies: list[tuple[str, dict[str, Any]]] = [
            ("greedy", {}),
            ("top-p 0.9", {"top_p": 0.9, "temperature": 0.8, "seed": 0}),
            ("beam search x4", {"num_beams": 4, "length_penalty": 1.0}),
        ]
        for name, options in strategies:
            out = generate(model, ids, max_new_tokens=new, eos_token_id=eos, **options)
            text = tokenizer.decode(out[0, ids.shape[1] :].tolist())
            print(f"{name:>15}: {args.prompt}{text!r}")

        # Streaming: text arrives piece by piece, only as complete UTF-8 characters.
        print(f"{'streamed':>15}: {args.prompt}", end="")
        for piece in stream(model, tokenizer, args.prompt, max_new_tokens=new, top_k=40, seed=1):
            print(piece, end="", flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
