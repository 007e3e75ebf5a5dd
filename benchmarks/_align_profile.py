"""Where bench_align's steps spend time and memory: saved tensors and an operator profile.

    python benchmarks/_align_profile.py dpo --layers 4 --seq 512
    python benchmarks/_align_profile.py sft --layers 4 --seq 512

Writes the model, adapter and data as ``bench_align`` does (a shallower model by default,
same width and vocabulary), builds ours and TRL's side with ``_align_bench``'s builders, runs
a warm-up step on each, then for each side:

- **saved tensors**: one step under ``torch.autograd.graph.saved_tensors_hooks``, the bytes
  autograd keeps for the backward pass (each storage counted once), largest first, grouped
  by shape and dtype;
- **operators**: one step under ``torch.profiler``, the operators with the most self CPU
  time.

Prints JSON: per side the saved bytes and groups, and the top operators with their share of
the step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_align  # noqa: E402
from benchmarks._align_bench import BUILDERS, Side  # noqa: E402


def saved_tensors(side: Side) -> dict[str, Any]:
    """Bytes autograd saves during one step of ``side`` (each storage once), by shape.

    Parameters (the frozen weights a matrix product keeps for its backward) are left out:
    they are in memory anyway; what is counted is what the step adds.
    """
    module = side.module
    seen: set[int] = (
        {p.untyped_storage().data_ptr() for p in module.parameters()} if module else set()
    )
    groups: dict[str, int] = defaultdict(int)
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and storage.nbytes() > 0:
            seen.add(key)
            total += storage.nbytes()
            groups[f"{tuple(tensor.shape)} {tensor.dtype}"] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        side.run()
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:12]
    return {
        "saved_mib": total / 2**20,
        "largest": [{"tensors": k, "mib": v / 2**20} for k, v in top],
    }


def operators(side: Side, top: int = 14) -> dict[str, Any]:
    """The operators with the most self CPU time in one step of ``side``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        side.run()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    rows = sorted(averages, key=lambda e: -e.self_cpu_time_total)[:top]
    # The log-probability functions with everything they call (forward and backward).
    regions = {
        e.key: e.cpu_time_total / 1e6 for e in averages if "LogProb" in e.key or "Gather" in e.key
    }
    return {
        "step_s": side.times[-1],
        "self_cpu_s": total / 1e6,
        "logprob_regions_s": regions,
        "top": [
            {
                "op": e.key,
                "calls": e.count,
                "self_s": e.self_cpu_time_total / 1e6,
                "share": e.self_cpu_time_total / total if total else 0.0,
            }
            for e in rows
        ],
    }


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["dpo", "sft"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=1, help="DPO pairs / SFT rows")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="align-profile-") as tmp:
        folder = Path(tmp)
        tok = bench_align.make_tokenizer(folder / "tokenizer")
        model, adapter, _ = bench_align.write_model(folder, args.layers)
        settings: dict[str, Any] = {
            "tokenizer": str(folder / "tokenizer"),
            "lr": bench_align.LR,
            "beta": bench_align.BETA,
            "seq": args.seq,
            "model": str(model),
            "adapter": str(adapter),
        }
        if args.what == "dpo":
            records, batch = bench_align.dpo_data(folder, args.pairs, args.seq)
            names = ["ours-lora", "trl-peft"]
        else:
            records, batch, _ = bench_align.sft_data(folder, tok, args.pairs, args.seq)
            names = ["ours", "trl"]
            settings["rows"] = args.pairs
        settings.update(records=str(records), batch=str(batch))
        torch.manual_seed(0)
        sides = [BUILDERS[name](settings) for name in names]
        for side in sides:
            side.run()  # warm-up: AdamW's state, first-call costs
        out = {
            side.name: {"saved": saved_tensors(side), "profile": operators(side)} for side in sides
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
