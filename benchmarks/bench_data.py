"""Data: lego-data's preparation and loaders against the straightforward ways.

Two parts, each in its own module section, each contributing rows:

- **prepare** (this file): ``lego.data.prepare.prepare`` tokenizing the embedded
  "python-stdlib" corpus with tiktoken's GPT-2 encoding into ``train.bin`` / ``val.bin`` +
  ``meta.json``, with every CPU as worker processes and with one, against the usual
  single-process script (nanoGPT's ``prepare.py`` style): read the documents, ``tiktoken``
  ``encode_ordinary`` per document, append the end-of-text id, ``np.array(..., uint16)``,
  ``tofile``. Both sides make the same split (lego-data's seeded document choice), and their
  files are checked to be byte-identical before timing. Throughput is MB/s of UTF-8 text.
- **loaders** (``benchmarks/_loader_bench.py``): batch assembly of ``TokenLoader`` against
  ``torch.utils.data.DataLoader`` and resident memory over a large token file.
- **shuffling** (``benchmarks/_permutation_bench.py``): the loaders' Feistel permutation
  against ``torch.randperm``: time to a resumed batch, a whole epoch, memory held.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken

from benchmarks._harness import BenchResult, Row, compare, log, package_version
from benchmarks._loader_bench import run_loader
from benchmarks._permutation_bench import run_permutation
from lego.data import PythonStdlibCorpus, __version__
from lego.data.prepare import default_workers, plan_document_split, prepare

OURS = f"lego-data {__version__}"
TIKTOKEN = f"tiktoken {package_version('tiktoken')}"
MB = 1e6


# --- prepare -------------------------------------------------------------------------------


def _script_prepare(out: Path, *, val_fraction: float, seed: int) -> None:
    """The peer: one process, encode_ordinary per document, numpy arrays written at the end."""
    encoding = tiktoken.get_encoding("gpt2")
    eot = encoding.eot_token
    docs = list(PythonStdlibCorpus())
    val_mask = plan_document_split(len(docs), val_fraction, seed)
    train: list[int] = []
    val: list[int] = []
    for doc, is_val in zip(docs, val_mask, strict=True):
        target = val if is_val else train
        target.extend(encoding.encode_ordinary(doc))
        target.append(eot)
    out.mkdir(parents=True, exist_ok=True)
    np.array(train, dtype=np.uint16).tofile(out / "train.bin")
    np.array(val, dtype=np.uint16).tofile(out / "val.bin")


def prepare_rows(quick: bool) -> tuple[list[Row], dict[str, Any], list[str]]:
    """Time prepare (all workers, one worker) against the single-process script."""
    corpus = PythonStdlibCorpus()
    text_bytes = sum(len(doc.encode("utf-8")) for doc in corpus)
    workers = default_workers()
    repeat = 1 if quick else 3
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lego-bench-prepare-") as tmp:
        folder = Path(tmp)

        def ours(n_workers: int) -> None:
            prepare(corpus, "tiktoken:gpt2", folder / f"ours{n_workers}", workers=n_workers)

        def peer() -> None:
            _script_prepare(folder / "peer", val_fraction=0.1, seed=0)

        ours(workers)
        peer()
        for name in ("train.bin", "val.bin"):
            if (folder / f"ours{workers}" / name).read_bytes() != (
                folder / "peer" / name
            ).read_bytes():
                raise RuntimeError(f"lego-data and the script wrote different {name}")
        for n_workers in dict.fromkeys((workers, 1)):
            log(f"  prepare with {n_workers} worker(s) ...")
            t_ours, t_peer = compare(
                functools.partial(ours, n_workers), peer, repeat=repeat, number=1
            )
            rows.append(
                Row(
                    what=f"prepare python-stdlib, gpt2 ({n_workers} worker{'s' * (n_workers > 1)})",
                    ours=text_bytes / t_ours / MB,
                    peer=f"{TIKTOKEN}, one process",
                    peer_value=text_bytes / t_peer / MB,
                    unit="MB/s",
                    note="text to train.bin/val.bin (+ meta.json for ours)",
                )
            )
    params = {"prepare_repeat": repeat, "prepare_workers": workers, "corpus_bytes": text_bytes}
    notes = [
        f"prepare: the python-stdlib corpus ({text_bytes / MB:.1f} MB, "
        f"{sum(1 for _ in corpus)} documents) with tiktoken's gpt2 encoding; both sides write "
        "byte-identical token files (checked). lego-data reads the corpus twice (to plan the "
        "split), streams chunks through worker processes and never holds the token stream; the "
        "script holds every id in a Python list.",
    ]
    return rows, params, notes


# --- the benchmark -------------------------------------------------------------------------


def run(quick: bool) -> BenchResult:
    rows, params, notes = prepare_rows(quick)
    loader = run_loader(quick)
    shuffle = run_permutation(quick)
    return BenchResult(
        name="data",
        title=f"Data preparation and loading: {OURS}",
        description=(
            "Tokenizing a corpus into token files (`lego.data.prepare.prepare` vs a "
            "single-process tiktoken script), assembling training batches (`TokenLoader` vs "
            "`torch.utils.data.DataLoader`), the resident memory of a pass over a large "
            "token file, and the shuffled order (`FeistelPermutation` vs `torch.randperm`)."
        ),
        rows=rows + loader.rows + shuffle.rows,
        params={**params, **loader.params, **shuffle.params},
        notes=notes + loader.notes + shuffle.notes,
    )
