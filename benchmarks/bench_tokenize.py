"""Tokenizers: LegoLLM's RegexBPETokenizer against HuggingFace tokenizers and tiktoken.

On the embedded "python-stdlib" corpus (benchmarks/_corpus.py; every 20th document held
out):

- training wall time at vocab 4096 and 32768: ``RegexBPETokenizer("gpt4")`` with
  ``workers=os.cpu_count()`` against ``tokenizers``' BPE trainer set up the same way
  (GPT-4 split regex, byte-level alphabet, the same special token), and the bytes per token
  each result gets on the held-out documents;
- encoding throughput on the held-out documents, one thread and all threads, against a
  ``tiktoken.Encoding`` built from the same ranks (identical ids checked first);
- the pure-Python encoder's throughput with a cold cache (a new encoder per run).
"""

from __future__ import annotations

import functools
import os

import tiktoken
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from benchmarks._corpus import python_stdlib
from benchmarks._harness import BenchResult, Row, compare, log, package_version
from lego.tokenize import RegexBPETokenizer, __version__
from lego.tokenize.bpe import PythonEncoder
from lego.tokenize.patterns import GPT4_PATTERN

OURS = f"lego-tokenize {__version__}"
HF = f"tokenizers {package_version('tokenizers')}"
TIKTOKEN = f"tiktoken {package_version('tiktoken')}"
EOT = "<|endoftext|>"


def train_ours(docs: list[str], vocab_size: int) -> RegexBPETokenizer:
    tok = RegexBPETokenizer("gpt4")
    tok.train(docs, vocab_size, special_tokens=[EOT], workers=os.cpu_count())
    return tok


def train_hf(docs: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOT],
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def run(quick: bool) -> BenchResult:
    corpus = python_stdlib()
    train_docs = list(corpus.train[: len(corpus.train) // 10] if quick else corpus.train)
    held_out = list(corpus.held_out[:8] if quick else corpus.held_out)
    train_mb = sum(len(d.encode()) for d in train_docs) / 1e6
    held_bytes = sum(len(d.encode()) for d in held_out)
    held_mb = held_bytes / 1e6
    repeat = 1 if quick else 3
    vocab_sizes = (1024, 4096) if quick else (4096, 32768)
    rows: list[Row] = []
    notes: list[str] = []
    ours_tok: RegexBPETokenizer | None = None
    for vocab_size in vocab_sizes:
        log(f"  training at vocab {vocab_size} ...")
        t_ours, t_hf = compare(
            functools.partial(train_ours, train_docs, vocab_size),
            functools.partial(train_hf, train_docs, vocab_size),
            repeat=repeat,
            number=1,
        )
        rows.append(
            Row(
                what=f"train, vocab {vocab_size}",
                ours=t_ours,
                peer=HF,
                peer_value=t_hf,
                unit="s",
                higher_is_better=False,
                note=f"{train_mb:.1f} MB, gpt4 split, workers={os.cpu_count()}",
            )
        )
        ours_tok = train_ours(train_docs, vocab_size)
        hf_tok = train_hf(train_docs, vocab_size)
        if ours_tok.vocab_size != vocab_size or hf_tok.get_vocab_size() != vocab_size:
            raise RuntimeError("a trainer did not reach the requested vocabulary size")
        n_ours = sum(len(ids) for ids in ours_tok.encode_ordinary_batch(held_out))
        n_hf = sum(len(enc.ids) for enc in hf_tok.encode_batch(held_out))
        rows.append(
            Row(
                what=f"bytes per token on held-out text, vocab {vocab_size}",
                ours=held_bytes / n_ours,
                peer=HF,
                peer_value=held_bytes / n_hf,
                unit="bytes/token",
                higher_is_better=True,
                better="more compact",
                worse="less compact",
                note=f"{len(held_out)} documents, {held_mb:.2f} MB",
            )
        )
    assert ours_tok is not None
    reference = tiktoken.Encoding(
        "reference",
        pat_str=ours_tok.pattern,
        mergeable_ranks=dict(ours_tok.mergeable_ranks),
        special_tokens=dict(ours_tok.special_tokens),
    )
    # The same history for both encoders (tiktoken's engine runs a little slower on one
    # thread once an encoding has been used from several threads): a batch, then singles.
    batch_threads = os.cpu_count() or 1
    if ours_tok.encode_batch(held_out, num_threads=batch_threads) != reference.encode_batch(
        held_out, num_threads=batch_threads
    ):
        raise RuntimeError("our ids differ from tiktoken's on the held-out documents")
    for doc in held_out:
        if ours_tok.encode(doc) != reference.encode(doc):
            raise RuntimeError("our ids differ from tiktoken's on a held-out document")
    threads = os.cpu_count() or 1

    def ours_one() -> None:
        for doc in held_out:
            ours_tok.encode(doc)

    def tiktoken_one() -> None:
        for doc in held_out:
            reference.encode(doc)

    log("  encoding ...")
    cases = [
        ("encode, 1 thread", ours_one, tiktoken_one, "encode() per document"),
        (
            f"encode_batch, {threads} threads",
            lambda: ours_tok.encode_batch(held_out, num_threads=threads),
            lambda: reference.encode_batch(held_out, num_threads=threads),
            "encode_batch()",
        ),
        (
            "pure-Python encoder, 1 thread, cold cache",
            lambda: PythonEncoder(
                ranks=ours_tok.mergeable_ranks, pattern=ours_tok.pattern
            ).encode_ordinary("".join(held_out)),
            tiktoken_one,
            "engine='python'; a new encoder (empty cache) per run",
        ),
    ]
    number = 1 if quick else 3
    encode_repeat = 3 if quick else 11
    for what, ours, peer, note in cases:
        t_ours, t_peer = compare(ours, peer, repeat=encode_repeat, number=number)
        rows.append(
            Row(
                what=f"{what}, vocab {vocab_sizes[-1]}",
                ours=held_mb / t_ours,
                peer=TIKTOKEN,
                peer_value=held_mb / t_peer,
                unit="MB/s",
                note=note,
            )
        )
    notes += [
        "Training times are the best of the runs of each side, interleaved; both sides "
        "count pre-tokens in parallel (ours: worker processes; tokenizers: Rust threads) "
        "and merge on one core.",
        "Both trainers split with the GPT-4 pattern, start from the 256 bytes, add "
        "<|endoftext|> and stop at the same vocabulary size; ties between equally frequent "
        "pairs are broken differently, so the merges differ slightly.",
        "Encoding rows: the same ranks in both, ids checked identical on every held-out "
        "document before timing (one encode_batch and one encode per document on each side, "
        "so both encodings have the same history); ours calls tiktoken's engine "
        "(engine='tiktoken').",
        "The pure-Python row runs LegoLLM's readable reference encoder; the peer value is "
        "tiktoken's one-thread throughput, for scale (target: at least 2 MB/s).",
    ]
    return BenchResult(
        name="tokenize",
        title=f"Tokenizers: {OURS} vs {HF} (training) and {TIKTOKEN} (encoding)",
        description=(
            f"The python-stdlib corpus: {len(train_docs)} training documents "
            f"({train_mb:.1f} MB), {len(held_out)} held-out documents ({held_mb:.2f} MB). "
            "Training: `RegexBPETokenizer('gpt4').train(..., workers=os.cpu_count())` vs "
            "`tokenizers` BpeTrainer with Split(gpt4 regex, isolated) + ByteLevel"
            "(use_regex=False). Encoding: our tokenizer vs a `tiktoken.Encoding` with the "
            "same ranks."
        ),
        rows=rows,
        params={
            "train_repeat": repeat,
            "encode_repeat": encode_repeat,
            "encode_calls_per_timing": number,
            "threads": threads,
            "vocab_sizes": list(vocab_sizes),
        },
        notes=notes,
    )
