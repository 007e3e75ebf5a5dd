"""lego-train: training throughput of our Trainer against a minimal loop and transformers.

The model is a 6-layer, 384-wide GPT-2 (6 heads, vocab 8192, context 256) built with
``lego.arch.build("gpt2", ...)``; each optimizer step trains one batch of 8 x 256 tokens on
the CPU. Three trainers run side by side, one step at a time in ABBA order so a slow phase of
the (shared) machine hits all alike, and the best step time of each is kept:

- ours: [`lego.train.Trainer`][lego.train.trainer.Trainer] (fused AdamW, no-decay groups,
  cosine schedule, gradient clipping, token-weighted loss, NaN check) driven step by step;
- a minimal hand-written loop on the same model: forward, ``cross_entropy``, backward,
  ``torch.optim.AdamW`` step (no clipping, no schedule);
- transformers' ``GPT2LMHeadModel`` of the same shape (SDPA attention) in the same plain loop.

Precisions: fp32, and bf16 autocast (``bf16-mixed``) for all three; ours also in
``bf16-true`` (bf16 weights, fp32 master copy in the optimizer). MFU divides the model FLOPs
(``6 x params x tokens/s`` plus the attention term, ``lego.train.flops_per_token``) by the
matmul peak of the same dtype, measured in the same run with a 2048 x 2048 matmul probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as fn

from benchmarks._harness import BenchResult, Row, log, package_version

SHAPE: dict[str, Any] = {
    "d_model": 384,
    "n_layers": 6,
    "n_heads": 6,
    "d_ff": 1536,
    "vocab_size": 8192,
    "context_length": 256,
    "dropout": 0.0,
}
BATCH = 8
LR = 3e-4
OURS = f"lego-train {package_version('lego-train')}"
HF = f"transformers {package_version('transformers')}"


class _Forever:
    """A BatchSource of random token batches (the same stream for every trainer)."""

    def __init__(self, seed: int, batch: int, context: int, vocab: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.batch, self.context, self.vocab = batch, context, vocab
        self.position = 0

    def __iter__(self) -> Any:
        while True:
            self.position += 1
            ids = torch.randint(0, self.vocab, (self.batch, self.context + 1), generator=self.gen)
            yield {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        self.position = int(state["position"])


def _lego_model() -> torch.nn.Module:
    import lego.arch

    torch.manual_seed(0)
    return lego.arch.build("gpt2", **SHAPE)


def _hf_model() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=SHAPE["vocab_size"],
        n_positions=SHAPE["context_length"],
        n_embd=SHAPE["d_model"],
        n_layer=SHAPE["n_layers"],
        n_head=SHAPE["n_heads"],
        n_inner=SHAPE["d_ff"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


def _ours(precision: str, out_dir: Path) -> Callable[[], None]:
    from lego.train import TrainConfig, Trainer

    config = TrainConfig(
        out_dir=str(out_dir),
        max_steps=10_000,
        precision=precision,  # type: ignore[arg-type]
        progress="none",
        peak_flops=1.0,
        optim={"lr": LR},  # type: ignore[arg-type]
        schedule={"warmup_steps": 10},  # type: ignore[arg-type]
    )
    source = _Forever(0, BATCH, SHAPE["context_length"], SHAPE["vocab_size"])
    trainer = Trainer(model=_lego_model(), train_data=source, config=config)

    def step() -> None:
        trainer.train_step()  # fit()'s loop body without logging and checkpoints

    return step


def _plain(model: torch.nn.Module, precision: str, hf: bool) -> Callable[[], None]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    source = iter(_Forever(0, BATCH, SHAPE["context_length"], SHAPE["vocab_size"]))
    autocast = precision == "bf16-mixed"

    def step() -> None:
        batch = next(source)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(batch["input_ids"])
            logits = out.logits if hf else out  # (B, T, V)
            loss = fn.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1)
            )
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _race(steps: dict[str, Callable[[], None]], *, warmup: int, repeat: int) -> dict[str, float]:
    """Best seconds per step of each trainer, stepped in ABBA order."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    best = dict.fromkeys(steps, float("inf"))
    names = list(steps)
    for i in range(repeat):
        for name in names if i % 2 == 0 else reversed(names):
            start = time.perf_counter()
            steps[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def run(quick: bool) -> BenchResult:
    import tempfile

    from lego.train import flops_per_token, measure_peak_flops

    torch.set_num_threads(torch.get_num_threads())
    repeat = 3 if quick else 8
    warmup = 1 if quick else 2
    tokens = BATCH * SHAPE["context_length"]
    flops = flops_per_token(_lego_model())
    rows: list[Row] = []
    notes: list[str] = []
    params: dict[str, Any] = {"batch": BATCH, **SHAPE, "repeat": repeat, "warmup": warmup}
    with tempfile.TemporaryDirectory() as tmp:
        for label, dtype, precisions in (
            ("fp32", torch.float32, ["fp32"]),
            ("bf16", torch.bfloat16, ["bf16-mixed", "bf16-true"]),
        ):
            log(f"  {label}: building trainers")
            steps: dict[str, Callable[[], None]] = {}
            for precision in precisions:
                steps[f"ours {precision}"] = _ours(precision, Path(tmp) / precision)
            mixed = "fp32" if label == "fp32" else "bf16-mixed"
            steps["minimal"] = _plain(_lego_model(), mixed, hf=False)
            steps["transformers"] = _plain(_hf_model(), mixed, hf=True)
            log(f"  {label}: racing {', '.join(steps)}")
            best = _race(steps, warmup=warmup, repeat=repeat)
            peak = measure_peak_flops(dtype=dtype)
            params[f"{label}_matmul_peak_gflops"] = round(peak / 1e9, 1)
            rate = {name: tokens / seconds for name, seconds in best.items()}
            for precision in precisions:
                ours = rate[f"ours {precision}"]
                mfu_ours = flops * ours / peak
                mfu_hf = flops * rate["transformers"] / peak
                note = f"MFU ours {100 * mfu_ours:.0f}%, transformers {100 * mfu_hf:.0f}%"
                rows.append(
                    Row(
                        what=f"train step, {precision} vs {mixed} minimal loop (CPU)",
                        ours=ours,
                        peer=f"minimal PyTorch loop (torch {torch.__version__})",
                        peer_value=rate["minimal"],
                        unit="tokens/s",
                        note=note,
                    )
                )
                rows.append(
                    Row(
                        what=f"train step, {precision} vs {mixed} GPT2LMHeadModel (CPU)",
                        ours=ours,
                        peer=HF,
                        peer_value=rate["transformers"],
                        unit="tokens/s",
                        note=note,
                    )
                )
            notes.append(
                f"{label}: matmul peak {peak / 1e9:.0f} GFLOP/s; "
                + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in rate.items())
            )
    notes.append(
        "Measured on a shared 2-core machine while other jobs ran: ratios are side by side, "
        "absolute numbers are noisy."
    )
    return BenchResult(
        name="train",
        title=f"Training throughput: {OURS} against a minimal loop and {HF}",
        description=(
            "Tokens/s of one optimizer step (batch 8 x 256 tokens) of a 6-layer, 384-wide "
            "GPT-2 (vocab 8192) on the CPU: our Trainer, a minimal forward/backward/AdamW "
            "loop on the same lego-arch model, and transformers' GPT2LMHeadModel of the "
            "same shape in that loop; fp32 and bf16. MFU against the measured matmul peak "
            "of the same dtype."
        ),
        rows=rows,
        params=params,
        notes=notes,
    )
