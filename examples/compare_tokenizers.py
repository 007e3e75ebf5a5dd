"""Train tokenizers on the embedded corpus and compare them with GPT-2's and GPT-4's.

Four tokenizers read the same held-out text (every 20th document of the ``python-stdlib``
corpus, which ships with Python, so this needs no network):

- ``CharTokenizer``: one id per character;
- ``RegexBPETokenizer`` trained here with GPT-4's split pattern, at two vocabulary sizes;
- GPT-2's and GPT-4's (``cl100k_base``) tiktoken encodings, named by lego-tokenize's one
  tokenizer spec (``tiktoken:gpt2``, as every command takes it), when tiktoken finds them
  (offline they need ``TIKTOKEN_CACHE_DIR``; the script skips them otherwise).

For each, the script prints the vocabulary size, the held-out bytes per token (more is a
better compression, so more text fits in a context) and how one line of code is split.

    python examples/compare_tokenizers.py [--quick] [--vocab-size 4096]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from lego.data.corpora import PythonStdlibCorpus
from lego.protocols import DataError
from lego.tokenize import CharTokenizer, RegexBPETokenizer, resolve_tokenizer

SAMPLE = "def tokenize(text: str) -> list[int]:  # 你好"


def split_documents(limit: int | None) -> tuple[list[str], str]:
    """Training documents and one held-out text (every 20th document)."""
    documents = list(PythonStdlibCorpus().iter_documents())[:limit]
    train = [d for i, d in enumerate(documents) if i % 20]
    held_out = "\n".join(d for i, d in enumerate(documents) if i % 20 == 0)
    return train, held_out


def show(name: str, vocab: int, encode: Callable[[str], list[int]], held_out: str,
         decode: Callable[[list[int]], str]) -> None:  # fmt: skip
    """Print a tokenizer's held-out compression and its split of the sample line."""
    ids = encode(held_out)
    ratio = len(held_out.encode("utf-8")) / max(1, len(ids))
    pieces = [decode([i]) for i in encode(SAMPLE)]  # a byte of a character decodes as "�"
    print(f"{name:>22}: vocab {vocab:>6}, {ratio:4.2f} bytes/token, {len(pieces)} tokens: "
          + "|".join(pieces))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few documents, small vocab")
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args(argv)
    train, held_out = split_documents(60 if args.quick else None)
    sizes = (300, 512) if args.quick else (args.vocab_size // 4, args.vocab_size)
    print(f"training on {sum(map(len, train)) / 1e6:.2f}M characters, "
          f"comparing on {len(held_out) / 1e6:.2f}M held out")  # fmt: skip

    chars = CharTokenizer()
    chars.train(train, vocab_size=256)  # the 255 most frequent characters + <unk>
    show("CharTokenizer", chars.vocab_size, chars.encode, held_out, chars.decode)

    for size in sizes:
        bpe = RegexBPETokenizer("gpt4")
        start = time.perf_counter()
        bpe.train(train, vocab_size=size, special_tokens=["<|endoftext|>"], workers=1)
        label = f"BPE {size} ({time.perf_counter() - start:.1f} s)"
        show(label, bpe.vocab_size, bpe.encode_ordinary, held_out, bpe.decode)

    for spec in ("tiktoken:gpt2", "tiktoken:cl100k_base"):
        try:
            tok = resolve_tokenizer(spec)
        except DataError as err:  # offline without a tiktoken cache: skip the reference rows
            print(f"({spec} skipped: {err.message})")
            continue
        assert isinstance(tok, RegexBPETokenizer)
        show(spec, tok.vocab_size, tok.encode_ordinary, held_out, tok.decode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
