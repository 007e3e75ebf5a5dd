"""The ``lego-train`` command: ``pretrain`` a model from a YAML config, ``plot`` a run.

lego-train pretrain --config tiny
lego-train pretrain --config my.yaml out_dir=runs/a max_steps=2000 optim.lr=3e-4
lego-train pretrain --config tiny resume=latest
torchrun --nproc_per_node 2 -m lego.train.cli pretrain --config tiny strategy=ddp
lego-train plot runs/tiny -o curves.png
lego-train configs
lego-train pipeline --config examples/pipelines/tiny.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from lego.protocols import make_parser, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lego-train``."""
    parser = make_parser(
        "lego-train",
        "Pretrain causal language models with exact resume, mixed precision and torchrun.",
        example="lego-train pretrain --config tiny max_steps=300 optim.lr=1e-3\n"
        "lego-train pretrain --config tiny resume=latest\n"
        "lego-train plot runs/tiny -o curves.png",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser(
        "pretrain",
        help="train a model from a YAML config",
        description="Train from a YAML config (a path or a shipped name: tiny, gpt2-124m); "
        "key=value overrides follow, dotted for nested keys (optim.lr=3e-4).",
    )
    pretrain.add_argument("--config", required=True, help="YAML file or shipped config name")
    pretrain.add_argument("overrides", nargs="*", help="key=value overrides")
    pretrain.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    plot = commands.add_parser("plot", help="draw loss and lr curves of a run")
    plot.add_argument("run_dir", help="the run's out_dir")
    plot.add_argument("-o", "--output", default="curves.png", help="image file (.png/.svg)")
    plot.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    commands.add_parser("configs", help="list the shipped configs")
    pipeline = commands.add_parser(
        "pipeline",
        help="tokenizer, data, pretraining, samples and a report, from one YAML",
        description="Train a model from raw text and write runs/<timestamp>/report.md with "
        "samples, loss.png and attention.png. Run the same command again after an "
        "interruption to continue the run.",
    )
    pipeline.add_argument("--config", required=True, help="pipeline YAML file")
    pipeline.add_argument("overrides", nargs="*", help="key=value overrides")
    pipeline.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "configs":
        from lego.train.yamlconfig import shipped_configs

        for name in shipped_configs():
            print(name)
        return 0
    if args.command == "plot":
        from lego.train.plot import plot_run

        out = plot_run(args.run_dir, args.output)
        print(f"wrote {out}")
        return 0
    from lego.train.recipe import PretrainConfig, run_pretrain
    from lego.train.yamlconfig import apply_overrides, find_config, load_yaml

    path = find_config(args.config)
    data = apply_overrides(load_yaml(path), list(args.overrides))
    if args.command == "pipeline":
        from lego.train.pipeline import PipelineConfig, run_pipeline

        result = run_pipeline(PipelineConfig.from_dict(data, path=path))
        return 0 if result.finished else 130
    config = PretrainConfig.from_dict(data, path=path)
    state = run_pretrain(config)
    print(
        f"done: step {state.step}/{state.max_steps}, "
        f"loss {state.metrics.get('loss', float('nan')):.4f}"
        + (f", val_loss {state.metrics['val_loss']:.4f}" if "val_loss" in state.metrics else "")
        + f"; run in {config.out_dir}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console-script entry point."""
    sys.exit(run_cli(_main, argv, prog="lego-train"))


if __name__ == "__main__":
    main()
