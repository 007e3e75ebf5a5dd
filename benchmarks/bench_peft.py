"""lego-peft: LoRA and QLoRA fine-tuning steps side by side with PEFT (+ bitsandbytes).

Sections, on a Llama-3-shaped model of about 0.5B parameters (random weights, written once
by ``lego.arch.to_hf``; both sides read the same directory):

- **LoRA step**: r=16, alpha 32, all linear layers of the blocks, fp32 on the CPU; one
  training step is forward, cross-entropy, backward and ``torch.optim.AdamW`` over the
  adapters, batch 1 x 512 tokens. Ours: ``lego.arch.from_hf`` + ``lego.peft.apply_lora``;
  the peer: transformers' ``LlamaForCausalLM`` + ``peft.get_peft_model``. Step time: both
  models in one process, steps alternated ABBA after a warm-up each, the median per side.
  Peak memory: each side in its own fresh process, so its peak RSS (``VmHWM``) is its own;
  the row reports the growth of the peak above the interpreter with its libraries
  imported.
- **QLoRA step**: the same with the adapted layers' weights in NF4 (block 64, double
  quantization), each side loaded the way its documentation says: ours ``from_hf`` then
  ``lego.peft.quantize_model``, the peer ``from_pretrained(...,
  quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))`` (bitsandbytes'
  ``Linear4bit``, its CPU path) under PEFT.
- **NF4 quantize / dequantize** throughput against bitsandbytes (``benchmarks/_nf4_bench.py``,
  when present).
- **KV-cached generation** (``lego.generate.generate``, greedy, 32 new tokens after 16) with
  the adapter unmerged, merged, and on the base model alone.
- **Size estimate**: ``lego.arch.estimate_lora_size`` against the measured peak RSS growth
  of our training processes.

Quick mode shrinks the model to 2 layers and the sequence to 64 tokens.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._harness import BenchResult, Row, log, package_version
from lego.arch import build, estimate_lora_size, from_hf, to_hf
from lego.peft import LoraConfig, __version__, apply_lora

OURS = f"lego-peft {__version__}"
PEER = f"peft {package_version('peft')} + transformers {package_version('transformers')}"
PEER_BNB = f"{PEER} + bitsandbytes {package_version('bitsandbytes')}"

# Llama 3 shape (grouped-query attention 16/8 heads of 64, SwiGLU, RoPE, tied 128256 vocab)
MODEL: dict[str, Any] = {
    "d_model": 1024,
    "n_heads": 16,
    "n_kv_heads": 8,
    "d_ff": 4096,
    "n_layers": 24,
}
RANK = 16
ALPHA = 32

_STEP_SCRIPT = (
    textwrap.dedent(
        """
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    side, mode, path = sys.argv[1], sys.argv[2], sys.argv[3]
    seq, steps = int(sys.argv[4]), int(sys.argv[5])
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)

    def peak_kib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    if side == "ours":
        from lego.arch import from_hf
        from lego.peft import LoraConfig, apply_lora, quantize_model
    else:
        import peft
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    # The first AdamW imports torch._dynamo (72 MiB), which transformers imports anyway:
    # import it on both sides before the mark, so that it counts as an import on both.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    before = peak_kib()

    if side == "ours":
        model = from_hf(path)
        if mode == "qlora":
            quantize_model(model)  # every linear layer but the head, NF4 block 64, double quant
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear")
        model = apply_lora(model, config)
        forward = lambda ids: model(ids)
    else:
        if mode == "qlora":  # transformers' own 4-bit loading (quantized as it loads)
            nf4 = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch.float32, quantization_config=nf4, device_map="cpu")
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear",
                                 lora_dropout=0.0, task_type="CAUSAL_LM")
        model = peft.get_peft_model(model, config)
        forward = lambda ids: model(input_ids=ids, use_cache=False).logits
    model.train()
    loaded = peak_kib()
    # The peak of loading (the fp32 weights before quantization) is not the training peak:
    # return freed memory to the system and restart the peak (Linux: clear_refs 5).
    import ctypes, gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    settled = peak_kib()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    vocab = 128256
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (1, seq + 1), generator=generator)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        logits = forward(inputs)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        loss = F.cross_entropy(flat, labels.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
        del logits, flat, loss
    print(json.dumps({"times": times, "losses": losses, "before_kib": before,
                      "loaded_kib": loaded, "settled_kib": settled, "peak_kib": peak_kib(),
                      "trainable": sum(p.numel() for p in trainable)}))
    """
    )
    .replace("RANK", str(RANK))
    .replace("ALPHA", str(ALPHA))
)


_LIVE_MEMORY_ENV = {"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc returns freed memory at once, on both sides: peak RSS then tracks live tensors
(with its defaults, ~850 MiB of freed memory stays resident at the peak)."""


def _measure_steps(side: str, mode: str, path: Path, seq: int, steps: int) -> dict[str, Any]:
    log(f"  {mode} {side}: {steps} steps of 1 x {seq} in a fresh process")
    done = subprocess.run(
        [sys.executable, "-c", _STEP_SCRIPT, side, mode, str(path), str(seq), str(steps)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **_LIVE_MEMORY_ENV},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {side} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    log(f"    {result}")
    return result


def _mib(measured: dict[str, Any], key: str) -> float:
    """A ``*_kib`` figure of a training process, above its RSS after the imports, in MiB."""
    return float(measured[key] - measured["before_kib"]) / 1024


def _step_rows(
    label: str, mode: str, path: Path, seq: int, steps: int, pairs: int
) -> tuple[list[Row], dict[str, Any]]:
    ours = _measure_steps("ours", mode, path, seq, steps)
    peer = _measure_steps("peer", mode, path, seq, steps)
    if ours["trainable"] != peer["trainable"]:
        raise RuntimeError(
            f"{mode}: {ours['trainable']} trainable here, {peer['trainable']} in PEFT"
        )
    # B starts at zero on both sides: the first loss is the base model's, on the same weights
    if abs(ours["losses"][0] - peer["losses"][0]) > 1e-3 * max(1.0, abs(peer["losses"][0])):
        raise RuntimeError(
            f"{mode}: first loss {ours['losses'][0]} here, {peer['losses'][0]} in PEFT"
        )
    peer_name = PEER_BNB if mode == "qlora" else PEER
    interleaved = interleaved_step_times(mode, path, seq, pairs)
    rows = [
        Row(
            what=f"{label}: training step, batch 1 x {seq} (fwd + bwd + AdamW)",
            ours=statistics.median(interleaved["ours"]),
            peer=peer_name,
            peer_value=statistics.median(interleaved["peer"]),
            unit="s",
            higher_is_better=False,
            note=f"{ours['trainable']:,} trainable parameters; median of {2 * pairs} steps "
            "per side, interleaved ABBA in one process after 1 warm-up each",
        ),
        Row(
            what=f"{label}: peak RSS while training, above the imports",
            ours=(ours["peak_kib"] - ours["before_kib"]) / 1024,
            peer=peer_name,
            peer_value=(peer["peak_kib"] - peer["before_kib"]) / 1024,
            unit="MiB",
            higher_is_better=False,
            better="smaller",
            worse="larger",
            note=f"resident after loading: ours {_mib(ours, 'settled_kib'):.0f}, "
            f"peer {_mib(peer, 'settled_kib'):.0f} MiB",
        ),
        Row(
            what=f"{label}: peak RSS of loading (fp32 weights, then quantized)"
            if mode == "qlora"
            else f"{label}: peak RSS of loading",
            ours=(ours["loaded_kib"] - ours["before_kib"]) / 1024,
            peer=peer_name,
            peer_value=(peer["loaded_kib"] - peer["before_kib"]) / 1024,
            unit="MiB",
            higher_is_better=False,
            better="smaller",
            worse="larger",
        ),
    ]
    return rows, ours


_INTERLEAVED_SCRIPT = (
    textwrap.dedent(
        """
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    mode, path, seq, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    import torch
    import torch.nn.functional as F
    import peft
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from lego.arch import from_hf
    from lego.peft import LoraConfig, apply_lora, quantize_model
    torch.manual_seed(0)
    ours = from_hf(path)
    if mode == "qlora":
        quantize_model(ours)
    ours = apply_lora(ours, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear"))
    if mode == "qlora":
        nf4 = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
        theirs = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, quantization_config=nf4, device_map="cpu")
    else:
        theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear",
                             lora_dropout=0.0, task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(theirs, config)
    ids = torch.randint(0, 128256, (1, seq + 1), generator=torch.Generator().manual_seed(1))

    def stepper(model, forward):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        def step():
            start = time.perf_counter()
            logits = forward(ids[:, :-1])
            flat = logits.reshape(-1, logits.shape[-1])
            F.cross_entropy(flat, ids[:, 1:].reshape(-1)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - start
        return step

    a = stepper(ours, lambda x: ours(x))
    b = stepper(theirs, lambda x: theirs(input_ids=x, use_cache=False).logits)
    a(); b()  # warm-up
    ta, tb = [], []
    for _ in range(pairs):  # ABBA
        ta.append(a()); tb.append(b()); tb.append(b()); ta.append(a())
    print(json.dumps({"ours": ta, "peer": tb}))
    """
    )
    .replace("RANK", str(RANK))
    .replace("ALPHA", str(ALPHA))
)


def interleaved_step_times(mode: str, path: Path, seq: int, pairs: int) -> dict[str, list[float]]:
    """Training-step seconds of ours and the peer in one process, in ABBA order.

    Args:
        mode: ``"lora"`` or ``"qlora"``.
        path: The model directory.
        seq: Tokens per sequence.
        pairs: ABBA rounds (each times two steps per side).

    Returns:
        ``{"ours": [...], "peer": [...]}``.
    """
    log(f"  {mode}: interleaved steps (ABBA x {pairs}) in one process")
    done = subprocess.run(
        [sys.executable, "-c", _INTERLEAVED_SCRIPT, mode, str(path), str(seq), str(pairs)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} interleaved failed:\n{done.stderr[-3000:]}")
    result: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    log(f"    {result}")
    return result


def _generation_rows(path: Path, quick: bool) -> list[Row]:
    from lego.generate import generate

    model = from_hf(path)
    adapted = apply_lora(
        model,
        LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", init_lora_weights=False),
    )
    adapted.eval()
    prompt = torch.randint(
        0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2)
    )
    new = 8 if quick else 32

    def timed(fn_model: Any) -> tuple[float, torch.Tensor]:
        best = float("inf")
        out = torch.empty(0)
        for _ in range(2):
            start = time.perf_counter()
            with torch.no_grad():
                out = generate(fn_model, prompt, max_new_tokens=new, do_sample=False)
            best = min(best, time.perf_counter() - start)
        return best, out

    log("  generation: unmerged adapter")
    unmerged_s, unmerged_out = timed(adapted)
    adapted.merge()
    log("  generation: merged adapter")
    merged_s, merged_out = timed(adapted)
    adapted.unmerge()
    log("  generation: base model")
    with adapted.disabled():
        base_s, _ = timed(adapted)
    same = bool(torch.equal(unmerged_out, merged_out))

    def tokens_per_s(seconds: float) -> float:
        return new / seconds

    return [
        Row(
            what=f"KV-cached greedy generation, {new} tokens: unmerged adapter vs merged",
            ours=tokens_per_s(unmerged_s),
            peer="lego-peft, merged adapter",
            peer_value=tokens_per_s(merged_s),
            unit="tokens/s",
            note=f"merged and unmerged give the same tokens: {same}",
        ),
        Row(
            what=f"KV-cached greedy generation, {new} tokens: merged adapter vs the base model",
            ours=tokens_per_s(merged_s),
            peer="lego-arch base model (adapter disabled)",
            peer_value=tokens_per_s(base_s),
            unit="tokens/s",
        ),
    ]


def _estimate_row(label: str, base: str, measured: dict[str, Any], seq: int, config: Any) -> Row:
    estimate = estimate_lora_size(config, r=RANK, base=base, batch_size=1, seq_len=seq)
    grown = (measured["peak_kib"] - measured["before_kib"]) / 1024
    return Row(
        what=f"{label}: estimate_lora_size vs measured peak RSS growth (ours)",
        ours=estimate.training / 2**20,
        peer="measured",
        peer_value=grown,
        unit="MiB",
        higher_is_better=False,
        better="below the measure",
        worse="above the measure",
        note=(
            f"weights {estimate.weights / 2**20:.0f} MiB, adapters + grads + AdamW "
            f"{(estimate.adapter + estimate.gradients + estimate.optimizer) / 2**20:.0f} MiB, "
            f"activations {estimate.activations / 2**20:.0f} MiB; "
            f"{estimate.bits_per_quantized_weight:.3f} bits per adapted weight"
        ),
    )


def _nf4_rows(quick: bool, notes: list[str]) -> list[Row]:
    try:
        from benchmarks import _nf4_bench
    except ImportError:
        notes.append("NF4 quantize/dequantize rows skipped: benchmarks/_nf4_bench.py is absent.")
        return []
    runner = getattr(_nf4_bench, "rows", None) or getattr(_nf4_bench, "run_rows", None)
    if runner is None:
        notes.append("NF4 quantize/dequantize rows skipped: _nf4_bench has no rows() function.")
        return []
    rows: list[Row] = list(runner(quick))
    return rows


def run(quick: bool) -> BenchResult:
    seq = 64 if quick else 512
    steps = 2  # the separate processes measure memory and check the first loss
    pairs = 1 if quick else 2
    overrides = dict(MODEL, n_layers=2) if quick else dict(MODEL)
    notes: list[str] = []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llama"
        torch.manual_seed(0)
        model = build("llama-3.2-1b", **overrides)
        n_params = sum(p.numel() for p in model.parameters())
        label = f"Llama-3-shaped {n_params / 1e9:.2f}B"
        log(f"{label}: writing {path}")
        to_hf(model, path)
        config = model.config
        del model
        lora_rows, lora_ours = _step_rows(f"{label} LoRA r={RANK}", "lora", path, seq, steps, pairs)
        rows += lora_rows
        rows.append(_estimate_row(f"{label} LoRA", "fp32", lora_ours, seq, config))
        qlora_rows, qlora_ours = _step_rows(
            f"{label} QLoRA (NF4) r={RANK}", "qlora", path, seq, steps, pairs
        )
        rows += qlora_rows
        rows.append(_estimate_row(f"{label} QLoRA", "nf4", qlora_ours, seq, config))
        rows += _nf4_rows(quick, notes)
        rows += _generation_rows(path, quick)
    return BenchResult(
        name="peft",
        title=f"LoRA / QLoRA fine-tuning: {OURS} side by side with {PEER} (+ bitsandbytes)",
        description=(
            "One training step (forward, backward, AdamW on the adapters) of a rank-16 "
            "all-linear LoRA on the same Llama-3-shaped weights, fp32 and NF4 bases: time "
            "interleaved in one process, peak memory each side in its own process; "
            "KV-cached generation with the adapter unmerged, merged and disabled; the size "
            "estimate against the measured peak."
        ),
        rows=rows,
        params={
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": overrides,
            "seq_len": seq,
            "steps": steps,
            "rank": RANK,
            "alpha": ALPHA,
            "quick": quick,
        },
        notes=[
            *notes,
            "Each side trains in a fresh process on the same weights and token ids; the "
            "first step's loss agrees (B starts at zero) before any time is reported.",
            "Step times: both models in one process, steps alternated ABBA, the median per "
            "side, so load on the machine falls on both alike.",
            "Peak RSS growth: VmHWM at the end minus VmHWM after the imports, each side in "
            "its own process with glibc returning freed memory at once "
            "(MALLOC_TRIM_THRESHOLD_=0, MALLOC_MMAP_THRESHOLD_=131072) on both sides.",
        ],
    )
