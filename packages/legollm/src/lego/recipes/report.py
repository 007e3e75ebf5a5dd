"""The pipeline's run report: samples, ``loss.png``, ``attention.png`` and ``report.md``.

[`write_report()`][lego.recipes.report.write_report] loads the final model directory with
lego-arch and its tokenizer with lego-tokenize, generates samples with lego-generate (greedy,
top-k and top-p, seeded), draws the loss curves (lego-train's
[`plot_run()`][lego.train.plot.plot_run], with the baseline it is given) and the attention
heatmaps of one sample (every head of every layer, from ``DecoderLM.attention_weights``: the
explicit math attention), and writes ``report.md`` beside them, with the evaluation's tables
(held-out perplexity, the trainer check, the offline task scores:
[`report_lines()`][lego.recipes.pipeline_eval.report_lines]) when the pipeline evaluated.
matplotlib comes from the ``plot`` extra (``pip install "legollm[plot]"``).

The fine-tuning and alignment recipes draw their curves with the same machinery:
[`plot_curves()`][lego.recipes.report.plot_curves] puts one panel per metric (training and
validation, e.g. the loss, DPO's reward margin and preference accuracy) above the learning
rate, from the run's ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lego.generate import generate
from lego.protocols import ConfigError, atomic_write_text, temporary_name, write_errors
from lego.protocols.layout import LEGO_TOKENIZER_FILE
from lego.recipes.loading import load_model
from lego.recipes.pipeline_eval import report_lines
from lego.tokenize import load as load_tokenizer_file
from lego.train.monitor import METRICS_FILE, read_metrics
from lego.train.plot import matplotlib_modules, plot_run
from lego.train.state import RunState

if TYPE_CHECKING:
    from lego.recipes.pipeline import PipelineConfig

__all__ = [
    "Curve",
    "plot_curves",
    "Sample",
    "generate_samples",
    "draw_attention",
    "write_report",
    "check_report_dependencies",
]

_NEEDED_BY = "the pipeline report's pictures"
_INSTALL = '"legollm[plot]"'


def check_report_dependencies() -> None:
    """Check that the report can draw its pictures (matplotlib), before any training.

    Raises:
        ConfigError: matplotlib is not installed (with the ``pip install`` to run).
    """
    matplotlib_modules(_NEEDED_BY, install='"legollm[plot]"')


@dataclass(frozen=True)
class Sample:
    """One generated continuation.

    Attributes:
        strategy: ``"greedy"``, ``"top-k (k=40, T=0.8)"``...
        prompt: The prompt text.
        text: The generated text (without the prompt).
        ids: Prompt plus generated ids.
    """

    strategy: str
    prompt: str
    text: str
    ids: list[int]


def generate_samples(model: Any, tokenizer: Any, config: PipelineConfig) -> list[Sample]:
    """Continue every report prompt with greedy, top-k and top-p decoding.

    Args:
        model: A causal LM (eval mode).
        tokenizer: Its tokenizer.
        config: The pipeline config (its ``report`` section).

    Returns:
        The samples, by prompt then strategy.
    """
    import torch

    spec = config.report
    eos = tokenizer.special_tokens.get("<|endoftext|>")
    strategies: list[tuple[str, dict[str, Any]]] = [
        ("greedy", {}),
        (f"top-k (k={spec.top_k}, T={spec.temperature:g})", {"top_k": spec.top_k}),
        (f"top-p (p={spec.top_p:g}, T={spec.temperature:g})", {"top_p": spec.top_p}),
    ]
    samples = []
    for prompt in spec.prompts:
        ids = torch.tensor([tokenizer.encode(prompt)])
        for name, options in strategies:
            if options:
                options = {**options, "temperature": spec.temperature, "seed": spec.seed}
            out = generate(
                model, ids, max_new_tokens=spec.max_new_tokens, eos_token_id=eos, **options
            )
            new = [t for t in out[0, ids.shape[1] :].tolist() if t != eos]
            samples.append(
                Sample(
                    strategy=name, prompt=prompt, text=tokenizer.decode(new), ids=out[0].tolist()
                )
            )
    return samples


def draw_attention(
    model: Any, ids: list[int], decode: Callable[[list[int]], str], output: Path
) -> Path:
    """Draw the attention of every head of every layer on one token sequence.

    Args:
        model: A lego-arch ``DecoderLM`` (its ``attention_weights`` gives the maps).
        ids: The tokens, length ``T`` (a few dozen read best).
        decode: Turns one id into its text, for the axis labels.
        output: The image file.

    Returns:
        The image path.
    """
    import torch

    agg, figure_module = matplotlib_modules(_NEEDED_BY, install='"legollm[plot]"')
    maps = model.attention_weights(torch.tensor([ids]))  # n_layers x (1, H, T, T)
    n_layers, n_heads = len(maps), int(maps[0].shape[1])
    labels = [repr(decode([i]))[1:-1][:8] for i in ids]
    size = max(2.2, 0.16 * len(ids))
    figure = figure_module.Figure(figsize=(size * n_heads, size * n_layers))
    agg.FigureCanvasAgg(figure)
    axes = figure.subplots(n_layers, n_heads, squeeze=False)
    for layer, weights in enumerate(maps):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(weights[0, head].float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=5)
            ax.set_yticks(range(len(ids)), labels, fontsize=5)
    figure.suptitle("attention: row = query token, column = key token (math path)")
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    return output


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def budget_text(run_dir: Path, *, prefix: str = "", suffix: str = "") -> str:
    """What ``time_budget_s`` made of a run's length, from its ``metrics.jsonl``.

    Args:
        run_dir: A lego-train run directory.
        prefix: Put before the text (when there is one).
        suffix: Put after it.

    Returns:
        ``"time budget 250 s at 210.0 ms a step: 1,190 of 1,500 steps"`` (with the prefix
        and suffix), or ``""`` when the run was not sized by a budget.
    """
    if not (run_dir / METRICS_FILE).is_file():
        return ""
    sized = [r for r in read_metrics(run_dir) if r.get("split") == "budget"]
    if not sized:
        return ""
    last = sized[-1]
    try:
        steps, budget = int(last["max_steps"]), float(last["time_budget_s"])
        pace, planned = float(last["step_seconds"]), int(last["configured_steps"])
    except (KeyError, TypeError, ValueError):
        return ""
    text = (
        f"time budget {budget:g} s at {pace * 1000:.1f} ms a step: {steps:,} of {planned:,} steps"
    )
    return f"{prefix}{text}{suffix}"


def write_report(
    *,
    run_dir: Path,
    model_dir: Path,
    config: PipelineConfig,
    state: RunState,
    baseline: float,
    train_seconds: float,
    evaluation: Mapping[str, Any] | None = None,
    stage_lines: Sequence[str] = (),
    closing: Sequence[str] = (),
    echo: Callable[[str], Any] = print,
) -> Path:
    """Generate samples, draw the pictures and write ``report.md`` into the run directory.

    Args:
        run_dir: The run directory (holds ``metrics.jsonl`` and the checkpoints).
        model_dir: The final model directory (with ``lego-tokenizer.json``).
        config: The pipeline config.
        state: The trainer's final state.
        baseline: Unigram entropy of the validation tokens (nats/token; NaN if none).
        train_seconds: Wall time of this invocation's training.
        evaluation: The evaluation stage's ``eval.json`` content (None: no section).
        stage_lines: The section of the stages after pretraining (markdown lines, from
            [`lego.recipes.pipeline`][lego.recipes.pipeline]), after the evaluation's.
        closing: The last lines (the command that starts the chat).
        echo: Where progress lines go.

    Returns:
        The ``report.md`` path.
    """
    model, _ = load_model(model_dir)  # verified as generate verifies it, in eval mode
    tokenizer = load_tokenizer_file(model_dir / LEGO_TOKENIZER_FILE)

    echo("generating samples (greedy, top-k, top-p)")
    samples = generate_samples(model, tokenizer, config)
    loss_png = plot_run(run_dir, run_dir / "loss.png", baseline=baseline)
    greedy = samples[0].ids[: config.report.attention_tokens]
    attention_png = draw_attention(model, greedy, tokenizer.decode, run_dir / "attention.png")

    val_loss = float(state.metrics.get("val_loss", math.nan))
    n_params = sum(p.numel() for p in model.parameters())
    below = not math.isnan(val_loss) and not math.isnan(baseline) and val_loss < baseline
    verdict = (
        f"**{baseline - val_loss:.2f} nats below** the unigram baseline"
        if below
        else "not below the unigram baseline"
    )
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"A {n_params / 1e6:.2f}M-parameter `{model.config.family}` model "
        f"({model.config.n_layers} layers, d_model {model.config.d_model}, "
        f"{model.config.n_heads} heads, context {model.config.context_length}) trained from "
        f"scratch on `{config.data.corpus or config.data.path}` with a "
        f"{tokenizer.vocab_size}-token tokenizer. Validation loss {_fmt(val_loss)} nats/token: "
        f"{verdict} ({_fmt(baseline)}, the loss of a model that ignores context).",
        "",
        "## Figures",
        "",
        "| What | Value |",
        "| --- | ---: |",
        f"| optimizer steps | {state.step}{budget_text(run_dir, prefix=' (', suffix=')')} |",
        f"| training tokens | {state.tokens_seen:,} |",
        f"| final training loss | {_fmt(float(state.metrics.get('loss', math.nan)))} |",
        f"| validation loss | {_fmt(val_loss)} |",
        f"| validation perplexity | {_fmt(math.exp(min(val_loss, 700.0)), 1)} |",
        f"| unigram entropy of the validation tokens | {_fmt(baseline)} |",
        f"| tokens/s (last logged) | {state.metrics.get('tokens_per_s', math.nan):,.0f} |",
        f"| training time of the last invocation | {train_seconds:.0f} s |",
        f"| parameters | {n_params:,} |",
        "",
        "![loss](loss.png)",
        "",
        "`loss.png`: training loss, validation loss, the unigram baseline (dashed) and the "
        "learning rate.",
        "",
        "![attention](attention.png)",
        "",
        "`attention.png`: every head of every layer on the first "
        f"{len(greedy)} tokens of the first greedy sample (rows are queries, columns keys).",
        "",
    ]
    if evaluation is not None:
        lines += report_lines(evaluation)
    lines += stage_lines
    lines += ["## Samples", ""]
    for sample in samples:
        lines += [f"### {sample.strategy}, prompt {sample.prompt!r}", "", "```text"]
        lines += [sample.prompt + sample.text, "```", ""]
    lines += [
        "## Files",
        "",
        "- `model/`: the final model directory (HF-compatible `config.json` + "
        "`model.safetensors`, `lego-tokenizer.json`, `tokenizer.json` when expressible); "
        f"`legollm generate --model {run_dir} --prompt 'def '` continues a prompt",
        "- `checkpoints/`: the last checkpoints (`latest` names the newest)",
        "- `metrics.jsonl`: every logged record; `pipeline.json`: the configuration"
        + ("; `eval.json`: the evaluation (`eval/`: its task rows)" if evaluation else ""),
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(config.to_dict(), indent=2),
        "```",
        "",
        *closing,
    ]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines), what="run report")
    echo(f"wrote {loss_png.name}, {attention_png.name} and {report.name}")
    return report


@dataclass(frozen=True)
class Curve:
    """One panel of [`plot_curves()`][lego.recipes.report.plot_curves]: a metric over the steps.

    Attributes:
        title: The panel's y label (``"loss"``, ``"reward margin"``).
        train: The metric's key in the training records (``"rewards/margins"``).
        val: Its key in the validation records (``"val_rewards/margins"``), or None.
    """

    title: str
    train: str
    val: str | None = None


def _series(
    records: Sequence[dict[str, Any]], split: str, key: str
) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if record.get("split") == split and isinstance(value, (int, float)):
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def plot_curves(
    run_dir: str | os.PathLike[str], output: str | os.PathLike[str], curves: Sequence[Curve]
) -> Path:
    """Draw metrics of a run (training and validation) and its learning rate into one image.

    Each [`Curve`][lego.recipes.report.Curve] is a panel with the training values as a line
    and the validation values as points; the last panel is the learning rate. A metric the
    log does not hold leaves its panel empty (titled so).

    Args:
        run_dir: The run directory (holds ``metrics.jsonl``).
        output: The image file (``.png``); written atomically.
        curves: The panels, top to bottom.

    Returns:
        The image path.

    Raises:
        ConfigError: matplotlib is missing, the run has no training record, or the image
            cannot be written (the disk is full or read-only).

    Example:
        >>> curves = [Curve("loss", "loss", "val_loss"), Curve("accuracy", "accuracy")]
        >>> tuple(c.train for c in curves)
        ('loss', 'accuracy')
    """
    agg, figure_module = matplotlib_modules(_NEEDED_BY, install=_INSTALL)
    folder = Path(run_dir)
    records = read_metrics(folder)
    if not any(r.get("split") == "train" for r in records):
        raise ConfigError(
            "the run has no training records to plot",
            path=folder / "metrics.jsonl",
            hint="train for at least one logged step",
        )
    figure = figure_module.Figure(figsize=(8, 2.4 * (len(curves) + 1)))
    agg.FigureCanvasAgg(figure)
    axes = figure.subplots(len(curves) + 1, 1, sharex=True, squeeze=False)[:, 0]
    for ax, curve in zip(axes, curves, strict=False):
        steps, values = _series(records, "train", curve.train)
        if steps:
            ax.plot(steps, values, label=f"train {curve.title}")
        if curve.val is not None:
            val_steps, val_values = _series(records, "val", curve.val)
            if val_steps:
                ax.plot(val_steps, val_values, "o-", label=f"validation {curve.title}")
        ax.set_ylabel(curve.title if steps else f"{curve.title} (not logged)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
    steps, rates = _series(records, "train", "lr")
    axes[-1].plot(steps, rates, color="C2")
    axes[-1].set_ylabel("learning rate")
    axes[-1].set_xlabel("optimizer step")
    axes[-1].grid(alpha=0.3)
    figure.suptitle(str(folder))
    figure.tight_layout()
    target = Path(output)
    staging = temporary_name(target)
    try:
        with write_errors(target, what="image file", hint="free some space, then run again"):
            figure.savefig(staging, format=target.suffix.lstrip(".").lower() or "png")
            os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target
