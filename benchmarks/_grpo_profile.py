"""Where bench_grpo's steps spend their time: an operator profile of each side's GRPO step.

    python benchmarks/_grpo_profile.py --layers 12 --new-tokens 32 [--sides ours,ours_auto,trl]

Writes the model and tokenizer as ``bench_grpo`` does (its width, vocabulary and reward;
fewer layers or new tokens when asked), builds ours and TRL's side with ``_grpo_bench``'s
builders, runs a warm-up step on each, then one step of each side under ``torch.profiler``:
the step's own timers (generation, forward + loss, backward, AdamW) and the operators with
the most self CPU time, with their share of the step.

Prints JSON, one entry per side.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_grpo  # noqa: E402
from benchmarks._grpo_bench import BUILDERS, Side  # noqa: E402


def operators(side: Side, top: int = 12) -> dict[str, Any]:
    """One step of ``side`` under the profiler: its timers and the costliest operators."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        side.run()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    rows = sorted(averages, key=lambda e: -e.self_cpu_time_total)[:top]
    return {
        "timers_s": {k: round(v, 3) for k, v in side.records[-1].items() if k.endswith("_s")},
        "self_cpu_s": total / 1e6,
        "top": [
            {
                "op": e.key,
                "calls": e.count,
                "self_s": round(e.self_cpu_time_total / 1e6, 3),
                "share": round(e.self_cpu_time_total / total, 3) if total else 0.0,
            }
            for e in rows
        ],
    }


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--sides",
        default="ours,trl",
        help="comma-separated: ours (fp32 sampling), ours_auto (rollout_dtype auto), trl",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="grpo-profile-") as tmp:
        folder = Path(tmp)
        bench_grpo.make_tokenizer(folder / "tokenizer", bench_grpo.MODEL["vocab_size"])
        model, _, _ = bench_grpo.write_model(folder, args.layers)
        settings: dict[str, Any] = {
            "model": str(model),
            "tokenizer": str(folder / "tokenizer"),
            "vocab": bench_grpo.MODEL["vocab_size"],
            "prompts": bench_grpo.make_prompts(args.prompts),
            "generations": bench_grpo.GENERATIONS,
            "new_tokens": args.new_tokens,
            "lr": bench_grpo.LR,
        }
        torch.manual_seed(0)
        keep: dict[str, Any] = {}
        sides = [BUILDERS[name](settings, keep) for name in args.sides.split(",")]
        for side in sides:
            side.run()  # warm-up: AdamW's state, first-call costs
        out = {side.name: operators(side) for side in sides}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
