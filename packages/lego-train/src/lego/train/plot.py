"""``lego-train plot RUN_DIR -o curves.png``: training loss, validation loss and lr curves."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from lego.protocols import ConfigError, check_output_path, import_optional, write_errors
from lego.train.monitor import METRICS_FILE, read_metrics

__all__ = ["plot_run", "matplotlib_modules"]


def matplotlib_modules(needed_by: str, *, install: str = '"lego-train[plot]"') -> tuple[Any, Any]:
    """Matplotlib's Agg canvas and Figure modules (the ``plot`` extra), without pyplot.

    Args:
        needed_by: Who draws, for the error message.
        install: The requirement that brings matplotlib, for the error message.

    Returns:
        ``(matplotlib.backends.backend_agg, matplotlib.figure)``, typed ``Any``: matplotlib is
        an optional extra without stubs in the type check.

    Raises:
        ConfigError: When matplotlib is not installed.
    """
    agg = import_optional("matplotlib.backends.backend_agg", needed_by=needed_by, install=install)
    figure = import_optional("matplotlib.figure", needed_by=needed_by, install=install)
    return agg, figure


def plot_run(
    run_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    baseline: float | None = None,
) -> Path:
    """Draw a run's loss (train and validation) and learning-rate curves into an image.

    Args:
        run_dir: The run directory (holds ``metrics.jsonl``).
        output: The image file (``.png``, ``.svg``, ``.pdf``).
        baseline: A loss to draw as a dashed line (e.g. the unigram entropy of the
            validation tokens); None draws the last ``baseline`` record of the log, if any.

    Returns:
        The image path.

    Raises:
        ConfigError: When matplotlib is missing, the run has no training records, or the
            output is a folder, an input, has an extension matplotlib cannot write, or
            cannot be written (its folder is missing, the disk is full or read-only).
    """
    agg, figure_module = matplotlib_modules("lego-train plot")
    out = check_output_path(
        output, inputs=[Path(run_dir) / METRICS_FILE], what="image file", key="-o", kind="file"
    )
    check_image_path(out, agg)
    records = read_metrics(Path(run_dir))
    train = [r for r in records if r.get("split") == "train" and isinstance(r.get("loss"), float)]
    val = [r for r in records if r.get("split") == "val" and "val_loss" in r]
    if not train:
        raise ConfigError(
            "the run has no training records to plot",
            path=Path(run_dir) / "metrics.jsonl",
            hint="train for at least one logged step",
        )
    if baseline is None:
        logged = [r["unigram_entropy"] for r in records if r.get("split") == "baseline"]
        baseline = float(logged[-1]) if logged else None
    figure = figure_module.Figure(figsize=(8, 6))
    agg.FigureCanvasAgg(figure)
    ax_loss, ax_lr = figure.subplots(2, 1, sharex=True)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    if baseline is not None and math.isfinite(baseline):
        ax_loss.axhline(baseline, linestyle="--", color="gray", label="unigram entropy")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot([r["step"] for r in train], [r.get("lr", 0.0) for r in train], color="C2")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    figure.suptitle(str(run_dir))
    figure.tight_layout()
    with write_errors(out, what="image file", hint="choose another -o, or free some space"):
        figure.savefig(out)
    return out


def check_image_path(output: Path, agg: Any) -> None:
    """Check, before drawing, that matplotlib can write ``output`` (its extension, its folder).

    Args:
        output: The image file.
        agg: Matplotlib's Agg backend module (from
            [`matplotlib_modules()`][lego.train.plot.matplotlib_modules]).

    Raises:
        ConfigError: An extension matplotlib cannot write (or none), or a missing folder.
    """
    formats = sorted(agg.FigureCanvasAgg.get_supported_filetypes())
    suffix = output.suffix.lower().lstrip(".")
    if suffix not in formats:
        told = f"extension .{suffix}" if suffix else "no extension"
        raise ConfigError(
            f"the image file has {told}, which matplotlib cannot write",
            path=output,
            key="-o",
            hint="end the name with one of: " + ", ".join(f".{f}" for f in formats),
        )
    if not output.parent.is_dir():
        raise ConfigError(
            "the image file's folder does not exist",
            path=output.parent,
            key="-o",
            hint="create the folder first, or choose another path",
        )
