"""lego-generate: greedy decoding tokens/s against transformers' ``generate``, same weights.

GPT-2 124M shape with random weights (``lego.arch.build("gpt2")``), written once by
``to_hf`` and read by ``lego.arch.from_hf`` and by transformers' ``from_pretrained``, on the
CPU. A 32-token prompt, 128 new tokens (256 in the full run), greedy, every token generated
(transformers gets ``min_new_tokens`` so an end-of-text token cannot stop it early; ours has
no end-of-sequence id). Rows:

- tokens/s at batch 1 and batch 8, fp32 and bf16, ours (KV cache, ``inference_mode``, the
  native decode kernels as by default) against ``model.generate(do_sample=False,
  use_cache=True)``; ours with ``native_kernels=False`` (PyTorch's kernels only); and, at
  batch 1 in the full run, ours with ``compile=True`` (the decode step compiled by inductor
  around the native kernels);
- the time of one new token at 512 tokens of context: our cached decode step against
  recomputing the whole sequence without a cache (the "uncached" path);
- at batch 1, the fraction of the memory-bandwidth bound: ``weight bytes x tokens/s`` over the
  read bandwidth of a large matrix-vector product of the same dtype measured in the same
  run: a weight of at least 512 MiB and twice the last-level cache, so that it streams from
  memory, through the fastest kernel available (``F.linear``, the native kernels in both
  layouts, oneDNN's prepacked linear).
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from benchmarks._harness import BenchResult, Row, compare, log, package_version, timeit_best
from lego.arch import DecoderLM, build, from_hf, to_hf
from lego.generate import ModelRunner, __version__, generate
from lego.generate.linears import decode_linears
from lego.generate.native import native_status, prepare_skinny

OURS = f"lego-generate {__version__}"
PEER = f"transformers {package_version('transformers')}"
PROMPT = 32


def _weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct parameters (a tied head is read once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def _last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs), or 0 when unknown."""
    sizes = [0]
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes)


def _matvec_bandwidth(dtype: torch.dtype, repeat: int) -> tuple[float, dict[str, float]]:
    """Read bandwidth (bytes/s) of a large weight @ vector in ``dtype``, and of each kernel.

    The weight has at least 512 MiB and twice the last-level cache, so it streams from
    memory; the bound is what the fastest kernel available here reaches on it.
    """
    target = max(512 << 20, 2 * _last_level_cache_bytes())
    cols = 8192
    rows = -(-target // (cols * torch.finfo(dtype).bits // 8))
    layer = torch.nn.Linear(cols, rows, bias=False).to(dtype)
    x = torch.randn(1, 1, cols, dtype=dtype)
    nbytes = layer.weight.numel() * layer.weight.element_size()
    weight = layer.weight.detach()
    kernels: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "F.linear": lambda v: torch.nn.functional.linear(v, weight)
    }
    if native_status().available:
        kernels["native (N, K)"] = prepare_skinny(weight)
        kernels["native (K, N)"] = prepare_skinny(weight.t().contiguous().t())  # same values
    speeds: dict[str, float] = {}
    with torch.inference_mode():
        for name, kernel in kernels.items():
            seconds = timeit_best(functools.partial(kernel, x), repeat=repeat * 3, number=3)
            speeds[name] = nbytes / seconds
        with decode_linears(layer, native=False, pack=True) as counts:
            if counts.packed:  # bf16 on a oneDNN build: one row goes to the packed weight
                speeds["oneDNN prepacked"] = nbytes / timeit_best(
                    lambda: layer(x), repeat=repeat * 3, number=3
                )
    return max(speeds.values()), speeds


def _load(folder: Path, dtype: torch.dtype) -> tuple[DecoderLM, PreTrainedModel]:
    ours = from_hf(folder, dtype=dtype)
    ours.train(False)
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    theirs.train(False)
    return ours, theirs


def _same_tokens(ours: DecoderLM, theirs: PreTrainedModel, ids: torch.Tensor) -> bool:
    with torch.inference_mode():
        a = generate(ours, ids, max_new_tokens=8)
        b = theirs.generate(  # type: ignore[operator]
            ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0
        )
    return bool(torch.equal(a, b))


def _generate_rows(
    label: str,
    ours: DecoderLM,
    theirs: PreTrainedModel,
    *,
    new_tokens: int,
    repeat: int,
    bound: float,
    mode: str = "",
    native_kernels: bool | None = None,
    compile: bool = False,
    batches: tuple[int, ...] = (1, 8),
) -> list[Row]:
    """Ours (with those ``generate`` options) against transformers, per batch size."""
    rows: list[Row] = []
    vocab = ours.config.vocab_size
    for batch in batches:
        ids = torch.randint(0, vocab, (batch, PROMPT), generator=torch.Generator().manual_seed(0))

        def run_ours(ids: torch.Tensor = ids) -> None:
            generate(
                ours,
                ids,
                max_new_tokens=new_tokens,
                native_kernels=native_kernels,
                compile=compile,
            )

        def run_peer(ids: torch.Tensor = ids) -> None:
            with torch.inference_mode():
                theirs.generate(  # type: ignore[operator]
                    ids,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=0,
                )

        log(f"  generate {label}{mode} batch {batch} x {new_tokens} new tokens")
        run_ours()  # warm up (and compile, with compile=True) outside the timings
        ours_s, peer_s = compare(run_ours, run_peer, repeat=repeat, number=1)
        ours_tps, peer_tps = batch * new_tokens / ours_s, batch * new_tokens / peer_s
        note = ""
        if batch == 1:
            note = (
                f"bandwidth bound {bound:.0f} tok/s: ours {ours_tps / bound:.0%}, "
                f"transformers {peer_tps / bound:.0%} of it"
            )
        rows.append(
            Row(
                what=f"greedy generate, {label}{mode}, batch {batch}, {PROMPT}-token prompt + "
                f"{new_tokens} new (CPU)",
                ours=ours_tps,
                peer=PEER,
                peer_value=peer_tps,
                unit="tokens/s",
                note=note,
            )
        )
    return rows


def _uncached_row(ours: DecoderLM, *, context: int, repeat: int) -> Row:
    ids = torch.randint(0, ours.config.vocab_size, (1, context), generator=torch.Generator())

    def runner(use_cache: bool) -> Callable[[], None]:
        run = ModelRunner(model=ours, batch_size=1, max_seq_len=context, use_cache=use_cache)
        with torch.inference_mode():
            run.forward(ids[:, : context - 1])

        def step() -> None:
            with torch.inference_mode():
                run.forward(ids[:, context - 1 :])
            run.crop(context - 1)

        return step

    log(f"  one new token at {context} tokens: cached vs uncached")
    cached_s, uncached_s = compare(runner(True), runner(False), repeat=repeat, number=3)
    return Row(
        what=f"one decode step at {context} tokens of context, fp32, batch 1 (CPU)",
        ours=cached_s * 1e3,
        peer=f"{OURS} without KV cache (recompute)",
        peer_value=uncached_s * 1e3,
        unit="ms/token",
        higher_is_better=False,
    )


def run(quick: bool) -> BenchResult:
    new_tokens = 128 if quick else 256
    repeat = 2 if quick else 3
    result = BenchResult(
        name="generate",
        title="lego-generate: greedy decoding vs transformers.generate (GPT-2 124M, CPU)",
        description=(
            f"GPT-2 124M shape, random weights shared through a to_hf directory; {PROMPT}-token "
            f"prompt, {new_tokens} new tokens, greedy, every token generated; best of "
            f"{repeat} interleaved runs. The bandwidth bound is weight bytes over the read "
            "bandwidth of a matrix-vector product of the same dtype with a weight larger than "
            "the caches (>= 512 MiB and twice the last-level cache), through the fastest "
            "kernel measured in the same run."
        ),
        params={"new_tokens": new_tokens, "prompt": PROMPT, "repeat": repeat, "quick": quick},
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        to_hf(build("gpt2"), folder)
        for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            ours, theirs = _load(folder, dtype)
            check = torch.randint(0, ours.config.vocab_size, (1, PROMPT))
            same = _same_tokens(ours, theirs, check)
            result.notes.append(f"{label}: first 8 greedy tokens identical to transformers: {same}")
            bandwidth, speeds = _matvec_bandwidth(dtype, repeat)
            bound = bandwidth / _weight_bytes(ours)
            each = ", ".join(f"{name} {speed / 1e9:.1f}" for name, speed in speeds.items())
            result.notes.append(
                f"{label}: large matrix-vector read bandwidth (GB/s): {each}; weights "
                f"{_weight_bytes(ours) / 1e6:.0f} MB -> bound {bound:.0f} tokens/s at batch 1"
            )
            rows = functools.partial(
                _generate_rows,
                label,
                ours,
                theirs,
                new_tokens=new_tokens,
                repeat=repeat,
                bound=bound,
            )
            result.rows += rows()
            result.rows += rows(
                mode=" (PyTorch kernels only: native_kernels=False)", native_kernels=False
            )
            if not quick:
                result.rows += rows(mode=" (compile=True)", compile=True, batches=(1,))
            if dtype == torch.float32:
                result.rows.append(_uncached_row(ours, context=512, repeat=repeat))
            del ours, theirs
    result.notes.append(
        f"Native kernels: {native_status().reason or 'available'}. A 2-core machine: "
        "ratios are side by side, absolute numbers are noisy."
    )
    return result
