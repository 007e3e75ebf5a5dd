"""Data, shuffling: lego-data's Feistel permutation against ``torch.randperm``.

Part of ``bench_data.py`` (and runnable alone: ``python benchmarks/_permutation_bench.py``).
A shuffled loader needs, for each batch, the items at some positions of the epoch's order.
``torch.randperm(n)`` builds the whole order (``8 * n`` bytes, rebuilt every epoch and again
on every resume); lego-data's ``FeistelPermutation`` computes any position's item on demand
in O(1) memory. Three measures for an epoch of ``n`` items, batches of 64:

- the first batch at a resumed position (mid-epoch): build the order, take 64 items;
- a whole epoch's order, in the blocks lego-data's ``EpochPlan`` evaluates (65,536 at a
  time) against one ``randperm``;
- the memory the order holds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import BenchResult, Row, compare, log, to_markdown
from lego.data import __version__
from lego.data.permutation import FeistelPermutation, derive_key

OURS = f"lego-data {__version__}"
TORCH = f"torch {torch.__version__}"
BATCH = 64
BLOCK = 1 << 16


def run_permutation(quick: bool) -> BenchResult:
    """Time and size the epoch order: Feistel (ours) against ``torch.randperm`` (peer)."""
    n = 1_000_000 if quick else 10_000_000
    repeat = 2 if quick else 5
    middle = np.arange(n // 2, n // 2 + BATCH, dtype=np.int64)
    generator = torch.Generator()

    def ours_first_batch() -> Any:
        return FeistelPermutation(n, key=derive_key(0, 1))(middle)

    def peer_first_batch() -> Any:
        generator.manual_seed(1)
        return torch.randperm(n, generator=generator)[n // 2 : n // 2 + BATCH]

    def ours_epoch() -> None:
        perm = FeistelPermutation(n, key=derive_key(0, 1))
        for start in range(0, n, BLOCK):
            perm(np.arange(start, min(start + BLOCK, n), dtype=np.int64))

    def peer_epoch() -> None:
        generator.manual_seed(1)
        torch.randperm(n, generator=generator)

    whole = np.concatenate(
        [FeistelPermutation(n, key=derive_key(0, 1))(np.arange(n, dtype=np.int64))]
    )
    if not np.array_equal(np.sort(whole), np.arange(n)):
        raise RuntimeError("the Feistel order is not a permutation")
    log(f"  permutation of {n:,} items ...")
    first_ours, first_peer = compare(ours_first_batch, peer_first_batch, repeat=repeat, number=3)
    epoch_ours, epoch_peer = compare(ours_epoch, peer_epoch, repeat=repeat, number=1)
    rows = [
        Row(
            what=f"shuffled order, first batch of 64 at a resumed position, n={n:,}",
            ours=first_ours * 1e3,
            peer=f"{TORCH} randperm",
            peer_value=first_peer * 1e3,
            unit="ms",
            higher_is_better=False,
            note="build the epoch's order, take 64 items from its middle",
        ),
        Row(
            what=f"shuffled order, a whole epoch, n={n:,}",
            ours=n / epoch_ours / 1e6,
            peer=f"{TORCH} randperm",
            peer_value=n / epoch_peer / 1e6,
            unit="M items/s",
            note=f"ours in blocks of {BLOCK:,} positions, as EpochPlan.iter_batches",
        ),
        Row(
            what=f"shuffled order, memory held, n={n:,}",
            ours=BLOCK * 8 / 1e6,
            peer=f"{TORCH} randperm",
            peer_value=n * 8 / 1e6,
            unit="MB",
            higher_is_better=False,
            better="smaller",
            worse="larger",
            note="ours: one block of int64 positions, whatever n; randperm: n int64",
        ),
    ]
    notes = [
        f"shuffling: an epoch of {n:,} items (e.g. {n * 1024 / 1e9:.0f}B tokens in windows "
        "of 1,024); the Feistel order is checked to be a permutation first. A batch of 64 "
        "windows costs tens of microseconds to gather, so the order's cost per batch "
        "(under a microsecond either way) does not show in the loader's throughput; what "
        "differs is memory and the time to start or resume an epoch.",
    ]
    return BenchResult(
        name="data",
        title=f"Shuffling: {OURS}",
        description="The epoch order of a shuffled loader: FeistelPermutation vs torch.randperm.",
        rows=rows,
        params={"permutation_items": n, "permutation_repeat": repeat},
        notes=notes,
    )


if __name__ == "__main__":
    print(to_markdown(run_permutation(quick="--quick" in sys.argv)))
