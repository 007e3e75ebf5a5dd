"""The ``lego-train`` command: draw a run's curves from its metrics log.

    lego-train plot runs/tiny -o curves.png

Training from a YAML config composes several bricks (a model, a tokenizer, token data) and
is the application's job: ``legollm pretrain --config tiny`` (the ``legollm``
distribution). lego-train is the library those recipes train with.
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
        "Tools for lego-train runs (pretraining itself is `legollm pretrain`).",
        example="lego-train plot runs/tiny -o curves.png",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    plot = commands.add_parser(
        "plot",
        help="draw loss and lr curves of a run",
        description="Draw the training loss, validation loss, baseline and learning rate "
        "logged in RUN_DIR/metrics.jsonl (needs matplotlib: lego-train[plot]).",
    )
    plot.add_argument("run_dir", help="the run's out_dir")
    plot.add_argument("-o", "--output", default="curves.png", help="image file (.png/.svg)")
    plot.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from lego.train.plot import plot_run

    out = plot_run(args.run_dir, args.output)
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console-script entry point."""
    sys.exit(run_cli(_main, argv, prog="lego-train"))


if __name__ == "__main__":
    main()
