"""The NF4 rows of ``bench_peft.py``: quantize and dequantize throughput against bitsandbytes.

One Llama-shaped weight (2048 x 8192, an MLP projection of Llama 3.2 1B; 512 x 2048 in
quick mode), random normal, quantized to NF4 with block 64 by
``lego.peft.quantize_nf4`` and by ``bitsandbytes.functional.quantize_4bit(quant_type="nf4")``
(its CPU path), with and without double quantization, and dequantized again by
``NF4Tensor.dequantize()`` and ``bitsandbytes.functional.dequantize_4bit``. Before timing,
both sides must give the same packed codes, absmax state and dequantized values, bit for
bit. Throughput in millions of weights per second, the best of interleaved timings
(ABBA), both sides with the process's threads (torch's and bitsandbytes' OpenMP).

``rows(quick)`` returns the rows (``bench_peft.run`` calls it); ``run(quick)`` wraps them as a
result of their own, for profiling this part alone (``python benchmarks/_nf4_bench.py``).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import BenchResult, Row, compare, log, package_version
from lego.peft import NF4Tensor, __version__, quantize_nf4

OURS = f"lego-peft {__version__}"
SHAPE = (2048, 8192)
QUICK_SHAPE = (512, 2048)
BLOCK = 64


def _bitsandbytes() -> tuple[str, object] | None:
    """``(peer label, bitsandbytes.functional)``, or None when it cannot be imported."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes.functional as functional  # an optional peer
    except ImportError:
        return None
    return f"bitsandbytes {package_version('bitsandbytes')} (CPU)", functional


def _check_equal(ours: NF4Tensor, packed: torch.Tensor, state: object, double: bool) -> None:
    """Both sides hold the same NF4 state and dequantize to the same values."""
    functional = _bitsandbytes()
    assert functional is not None
    _, bf = functional
    same = torch.equal(ours.packed, packed) and torch.equal(ours.absmax, state.absmax)  # type: ignore[attr-defined]
    if double:
        same = same and torch.equal(ours.offset, state.offset)  # type: ignore[attr-defined, arg-type]
    restored = bf.dequantize_4bit(packed, state)  # type: ignore[attr-defined]
    if not (same and torch.equal(ours.dequantize(), restored)):
        raise RuntimeError("lego.peft and bitsandbytes disagree on NF4: a bug, not a slow run")


def rows(quick: bool) -> list[Row]:
    """The NF4 quantize / dequantize rows (none when bitsandbytes is not installed).

    Args:
        quick: A smaller weight and fewer timings.

    Returns:
        One row per measure, ours against bitsandbytes.
    """
    peer = _bitsandbytes()
    if peer is None:
        log("NF4 rows skipped: bitsandbytes is not installed")
        return []
    label, bf = peer
    shape = QUICK_SHAPE if quick else SHAPE
    repeat = 3 if quick else 15
    numel = shape[0] * shape[1]
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    name = f"{shape[0]}x{shape[1]} fp32, block {BLOCK}"
    result: list[Row] = []

    def measure(what: str, ours: Callable[[], object], theirs: Callable[[], object]) -> None:
        log(f"NF4: {what}")
        seconds_ours, seconds_peer = compare(ours, theirs, repeat=repeat, number=1)
        result.append(
            Row(
                what=what,
                ours=numel / seconds_ours / 1e6,
                peer=label,
                peer_value=numel / seconds_peer / 1e6,
                unit="M weights/s",
            )
        )

    for double in (False, True):
        kind = "double quantization" if double else "no double quantization"
        packed, state = bf.quantize_4bit(  # type: ignore[attr-defined]
            weight, blocksize=BLOCK, quant_type="nf4", compress_statistics=double
        )
        ours = quantize_nf4(weight, BLOCK, double_quant=double)
        _check_equal(ours, packed, state, double)
        measure(
            f"NF4 quantize {name}, {kind}",
            lambda double=double: quantize_nf4(weight, BLOCK, double_quant=double),  # type: ignore[misc]
            lambda double=double: bf.quantize_4bit(  # type: ignore[attr-defined, misc]
                weight, blocksize=BLOCK, quant_type="nf4", compress_statistics=double
            ),
        )
        measure(
            f"NF4 dequantize to fp32 {name}, {kind}",
            ours.dequantize,
            lambda packed=packed, state=state: bf.dequantize_4bit(packed, state),  # type: ignore[attr-defined, misc]
        )
    return result


def run(quick: bool) -> BenchResult:
    """The NF4 rows alone, as a result (for profiling this part).

    Args:
        quick: A smaller weight and fewer timings.

    Returns:
        The rows with their settings.
    """
    return BenchResult(
        name="nf4",
        title=f"NF4 quantize / dequantize: {OURS} side by side with bitsandbytes (CPU)",
        description=__doc__.split("\n\n")[1] if __doc__ else "",
        rows=rows(quick),
        params={"shape": list(QUICK_SHAPE if quick else SHAPE), "block_size": BLOCK},
    )


if __name__ == "__main__":
    from benchmarks._harness import machine_info, to_markdown

    print(to_markdown(run("--quick" in sys.argv), machine_info()))
