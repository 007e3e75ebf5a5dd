"""The loader rows of ``bench_data.py``: batch assembly speed and resident memory.

- Batch assembly: ``lego.data.TokenLoader`` against ``torch.utils.data.DataLoader`` (0 and 2
  worker processes) over the same ``TokenDataset`` (same memmap, batch size, context length,
  shuffled windows), and against nanoGPT's ``get_batch`` (random windows, the memmap opened
  again for every batch) with the loader in random-window mode. Tokens per second of ready
  ``(input_ids, labels)`` int64 batches, the consumer doing nothing else.
- Resident memory: one sequential pass over a generated token file larger than 4 GB (a
  smaller one in quick mode) with ``TokenLoader``, against the same pass over a plain
  ``np.memmap`` kept open (nanoGPT-style slicing without re-opening), which keeps every
  touched page resident. Reported: the largest RSS growth over the start, in MB.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks._harness import Row, log, package_version
from lego.data import TokenDataset, TokenLoader, __version__

OURS = f"lego-data {__version__}"
TORCH = f"torch {package_version('torch')}"
MB = 1e6


@dataclass
class LoaderBench:
    """What the loader part contributes to ``bench_data``'s result."""

    rows: list[Row] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def rss_bytes() -> int | None:
    """The process's resident set size now (Linux), or None where unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            resident_pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def write_tokens(path: Path, n_tokens: int, *, vocab: int = 50_257, chunk: int = 1 << 24) -> None:
    """Write ``n_tokens`` pseudo-random uint16 ids in chunks (never the whole array in RAM)."""
    rng = np.random.default_rng(0)
    with path.open("wb") as handle:
        left = n_tokens
        while left:
            n = min(chunk, left)
            rng.integers(0, vocab, size=n, dtype=np.uint16).tofile(handle)
            left -= n


def _drain(batches: Iterator[Any], n: int) -> int:
    """Take ``n`` batches; return the tokens they hold."""
    tokens = 0
    for _ in range(n):
        batch = next(batches)
        tokens += int(batch["input_ids"].numel())
    return tokens


def _rate(make: Callable[[], Iterator[Any]], n_batches: int) -> float:
    """Tokens per second over ``n_batches`` after one warm-up batch (startup excluded)."""
    batches = make()
    next(batches)
    start = time.perf_counter()
    tokens = _drain(batches, n_batches)
    seconds = time.perf_counter() - start
    close = getattr(batches, "close", None)
    if callable(close):
        close()
    return tokens / seconds


def _best_interleaved(
    ours: Callable[[], Iterator[Any]],
    peer: Callable[[], Iterator[Any]],
    n_batches: int,
    repeat: int,
) -> tuple[float, float]:
    best_ours = best_peer = 0.0
    for i in range(repeat):
        order = ((ours, True), (peer, False)) if i % 2 == 0 else ((peer, False), (ours, True))
        for make, is_ours in order:
            rate = _rate(make, n_batches)
            if is_ours:
                best_ours = max(best_ours, rate)
            else:
                best_peer = max(best_peer, rate)
    return best_ours, best_peer


def _nanogpt_batches(path: Path, batch: int, context: int, seed: int) -> Iterator[Any]:
    """nanoGPT's ``get_batch`` (CPU part): a fresh memmap per batch, random windows."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        data = np.memmap(path, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - context, (batch,), generator=generator)
        x = torch.stack([torch.from_numpy(data[i : i + context].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + context].astype(np.int64)) for i in ix]
        )
        yield {"input_ids": x, "labels": y}


def throughput_rows(folder: Path, *, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Batch assembly rows on a generated token file in ``folder``."""
    n_tokens = 20_000_000 if quick else 100_000_000
    path = folder / "throughput.bin"
    write_tokens(path, n_tokens)
    repeat = 2 if quick else 3
    configs = [(16, 1024, 40 if quick else 200), (64, 128, 40 if quick else 200)]
    rows: list[Row] = []
    for batch, context, n_batches in configs:
        ds = TokenDataset(path, context_length=context, dtype="uint16")
        shape = f"B={batch}, T={context}, shuffled"

        def ours(ds: TokenDataset = ds, batch: int = batch) -> Iterator[Any]:
            return iter(TokenLoader(ds, batch_size=batch, seed=0, pin_memory=False))

        for workers in (0, 2):

            def peer(ds: TokenDataset = ds, batch: int = batch, workers: int = workers) -> Any:
                loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
                    ds,
                    batch_size=batch,
                    shuffle=True,
                    drop_last=True,
                    num_workers=workers,
                    generator=torch.Generator().manual_seed(0),
                )
                return iter(loader)

            log(f"  loader {shape} vs DataLoader(num_workers={workers}) ...")
            t_ours, t_peer = _best_interleaved(ours, peer, n_batches, repeat)
            rows.append(
                Row(
                    what=f"batch assembly, {shape}",
                    ours=t_ours,
                    peer=f"{TORCH} DataLoader(num_workers={workers})",
                    peer_value=t_peer,
                    unit="tokens/s",
                    note="same TokenDataset and memmap; default collate",
                )
            )
        random_ds = TokenDataset(path, context_length=context, mode="random", dtype="uint16")

        def ours_random(ds: TokenDataset = random_ds, batch: int = batch) -> Iterator[Any]:
            return iter(TokenLoader(ds, batch_size=batch, seed=0, pin_memory=False))

        def nanogpt(batch: int = batch, context: int = context) -> Iterator[Any]:
            return _nanogpt_batches(path, batch, context, 0)

        log(f"  loader {shape} random windows vs nanoGPT get_batch ...")
        t_ours, t_peer = _best_interleaved(ours_random, nanogpt, n_batches, repeat)
        rows.append(
            Row(
                what=f"random windows, B={batch}, T={context}",
                ours=t_ours,
                peer="nanoGPT get_batch (memmap per batch)",
                peer_value=t_peer,
                unit="tokens/s",
                note="loader mode='random'",
            )
        )
    params = {
        "throughput_file_tokens": n_tokens,
        "throughput_batches_per_timing": {f"B{b}xT{t}": n for b, t, n in configs},
        "throughput_repeat": repeat,
    }
    return rows, params


def _plain_memmap_pass(path: Path, batch: int, context: int, sample_every: int) -> int:
    """A sequential pass with slices of one open ``np.memmap``; return the peak RSS growth."""
    start = rss_bytes() or 0
    peak = 0
    data = np.memmap(path, dtype=np.uint16, mode="r")
    width = context + 1
    n_windows = (len(data) - 1) // context
    out = np.empty((batch, width), dtype=np.int64)
    for k in range(n_windows // batch):
        for row in range(batch):
            s = (k * batch + row) * context
            out[row] = data[s : s + width]
        if k % sample_every == 0:
            peak = max(peak, (rss_bytes() or 0) - start)
    peak = max(peak, (rss_bytes() or 0) - start)
    del data
    return peak


def _loader_pass(path: Path, batch: int, context: int, sample_every: int) -> tuple[int, int]:
    """A sequential pass with ``TokenLoader``; return (peak RSS growth, tokens seen)."""
    ds = TokenDataset(path, context_length=context, dtype="uint16")
    loader = TokenLoader(ds, batch_size=batch, shuffle=False, pin_memory=False)
    start = rss_bytes() or 0
    peak = 0
    tokens = 0
    for k, item in enumerate(loader):
        tokens += int(item["input_ids"].numel())
        if k % sample_every == 0:
            peak = max(peak, (rss_bytes() or 0) - start)
    peak = max(peak, (rss_bytes() or 0) - start)
    loader.close()
    return peak, tokens


def memory_rows(folder: Path, *, quick: bool) -> tuple[list[Row], dict[str, Any], list[str]]:
    """The resident-memory row, on a generated file in ``folder`` (deleted by the caller)."""
    if rss_bytes() is None:
        return [], {}, ["resident memory not measured: /proc/self/statm is unavailable"]
    n_tokens = (128 << 20) if quick else (2200 << 20)  # 256 MiB / 4.6 GB of uint16
    path = folder / "big.bin"
    log(f"  writing a {n_tokens * 2 / 1e9:.2f} GB token file ...")
    write_tokens(path, n_tokens)
    batch, context = 64, 1024
    log("  resident memory: TokenLoader pass ...")
    ours, tokens = _loader_pass(path, batch, context, sample_every=64)
    log("  resident memory: plain np.memmap pass ...")
    peer = _plain_memmap_pass(path, batch, context, sample_every=64)
    size = path.stat().st_size
    path.unlink()
    row = Row(
        what=f"RSS growth over one pass of a {size / 1e9:.2f} GB token file",
        ours=ours / MB,
        peer="np.memmap kept open (slicing)",
        peer_value=peer / MB,
        unit="MB",
        higher_is_better=False,
        better="smaller",
        worse="larger",
        note=f"B={batch}, T={context}, sequential",
    )
    notes = [
        f"TokenLoader's RSS grew by at most {ours / MB:.1f} MB over a pass of "
        f"{tokens:,} tokens ({size / 1e9:.2f} GB file): it unmaps the pages it has read "
        "every 64 MB (madvise MADV_DONTNEED); a plain memmap keeps them resident.",
    ]
    return [row], {"rss_file_bytes": size}, notes


def run_loader(quick: bool) -> LoaderBench:
    """Run every loader row (files in a temporary directory, deleted afterwards)."""
    result = LoaderBench()
    with tempfile.TemporaryDirectory(prefix="lego-bench-data-") as tmp:
        folder = Path(tmp)
        rows, params = throughput_rows(folder, quick=quick)
        result.rows += rows
        result.params.update(params)
        (folder / "throughput.bin").unlink()
        rows, params, notes = memory_rows(folder, quick=quick)
        result.rows += rows
        result.params.update(params)
        result.notes += notes
    result.notes.append(
        "Batch assembly: ready int64 (input_ids, labels) batches per second with a consumer "
        "that does nothing else; TokenLoader gathers in one background thread, DataLoader "
        "indexes the dataset item by item (in worker processes with num_workers=2)."
    )
    return result
