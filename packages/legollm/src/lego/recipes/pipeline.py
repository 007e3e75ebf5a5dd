"""``legollm pipeline``: raw text to a talking model, with a report, in one command.

The pipeline is the ``pretrain`` recipe plus what a person wants to see afterwards. One YAML
file (``examples/pipelines/tiny.yaml``) holds every
[`PretrainConfig`][lego.recipes.pretrain.PretrainConfig] key plus a ``report:`` section
([`ReportSpec`][lego.recipes.pipeline.ReportSpec]) and ``runs_dir``:

1. the tokenizer is trained and the corpus prepared (cached, see
   [`prepare_data()`][lego.recipes.pretrain.prepare_data]);
2. the model is pretrained into ``runs_dir/<timestamp>/`` with checkpoints;
3. the final model is evaluated (lego-eval, the ``eval:`` section,
   [`EvalSpec`][lego.recipes.pipeline_eval.EvalSpec]): held-out perplexity and bits per
   byte of the validation split, checked against the trainer's logged validation loss, and
   the offline task scores, CORE-style, into ``eval.json``
   ([`lego.recipes.pipeline_eval`][lego.recipes.pipeline_eval]); ``eval: {enabled: false}``
   skips it;
4. samples are generated with greedy, top-k and top-p decoding (lego-generate);
5. ``loss.png`` (train and validation loss, the unigram baseline, the learning rate) and
   ``attention.png`` (every head of every layer on one sample, from the explicit math
   attention) are drawn, and ``report.md`` collects the configuration, the figures, the
   evaluation's tables and the samples; the final model directory (with its tokenizer) is
   copied to ``model/``.

Everything the later stages need is checked before training starts (the report's prompts
and ``max_new_tokens`` against the model's context, matplotlib for the pictures), and each
stage hands its figures to the next (the unigram baseline comes from the pretraining
result, not from a file).

**Resuming.** Each run directory holds ``pipeline.json`` (the configuration and a status).
When the command is interrupted (Ctrl-C: the trainer saves a checkpoint and stops), running
the same command again finds the newest unfinished run with the same configuration and
continues it from its last checkpoint; a finished run is never touched again, so the next
command starts a new one. ``out_dir=...`` pins the run directory instead. Ctrl-C during the
evaluation exits 130 too, keeping the parts already in ``eval.json``; the same command
computes only the rest (a finished evaluation is not redone).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lego.arch
from lego.protocols import (
    Config,
    ConfigError,
    Interrupted,
    LegoError,
    Terminated,
    Tokenizer,
    TrainingError,
    atomic_write_text,
    check_float,
    check_int,
    read_json,
    remove_stale_temporaries,
    temporary_name,
    write_errors,
)
from lego.protocols.layout import LEGO_TOKENIZER_FILE, MODEL_DIR, read_latest
from lego.recipes.pipeline_eval import EVAL_FILE, EvalSpec, run_evaluation
from lego.recipes.pipeline_stages import (
    STAGES,
    DPOStage,
    GRPOStage,
    SFTStage,
    check_stages,
    stage_fingerprint_data,
)
from lego.recipes.preflight import check_fits_context, early_model_config
from lego.recipes.pretrain import PretrainConfig, build_pretraining
from lego.recipes.report import check_report_dependencies, write_report
from lego.train.config import SEED_MAX
from lego.train.rundir import run_lock

__all__ = [
    "ReportSpec",
    "PipelineConfig",
    "PipelineResult",
    "PIPELINE_FILE",
    "find_run_dir",
    "run_pipeline",
]

PIPELINE_FILE = "pipeline.json"
"""The file in a run directory that records the pipeline's configuration and status."""

_DONE = "done"
_RUNNING = "running"


@dataclass(frozen=True, kw_only=True)
class ReportSpec(Config):
    """What the report shows after training.

    Attributes:
        prompts: Prompts to continue; each is sampled with every strategy.
        max_new_tokens: Tokens generated per sample.
        top_k: ``k`` of the top-k samples.
        top_p: ``p`` of the top-p (nucleus) samples.
        temperature: Temperature of the top-k and top-p samples (greedy ignores it).
        seed: Seed of the sampled strategies.
        attention_tokens: Tokens of the greedy sample drawn in ``attention.png``.
    """

    prompts: list[str] = field(default_factory=lambda: ["def ", "import "])
    max_new_tokens: int = 64
    top_k: int = 40
    top_p: float = 0.9
    temperature: float = 0.8
    seed: int = 0
    attention_tokens: int = 24

    def validate(self) -> None:
        """Prompts present and non-empty; sizes positive; ``top_p`` in (0, 1]."""
        super().validate()
        if not self.prompts or not all(self.prompts):
            raise ConfigError(
                "report.prompts needs at least one non-empty prompt",
                key="prompts",
                hint='e.g. prompts: ["def ", "import "]',
            )
        for key in ("max_new_tokens", "top_k", "attention_tokens"):
            check_int(key, getattr(self, key), minimum=1)
        check_int("seed", self.seed, minimum=0, maximum=SEED_MAX)
        check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        check_float("temperature", self.temperature, low=0.0, low_open=True)


@dataclass(frozen=True, kw_only=True)
class PipelineConfig(PretrainConfig):
    """A pipeline config: a pretrain config, where runs go, the later stages and the report.

    Attributes:
        runs_dir: The folder of timestamped run directories (used unless ``out_dir`` is set).
        report: The [`ReportSpec`][lego.recipes.pipeline.ReportSpec].
        eval: The [`EvalSpec`][lego.recipes.pipeline_eval.EvalSpec] (``enabled: false``
            skips the evaluation stage).
        sft: The supervised fine-tuning stage
            ([`SFTStage`][lego.recipes.pipeline_stages.SFTStage]; off unless ``enabled``).
        dpo: The DPO stage ([`DPOStage`][lego.recipes.pipeline_stages.DPOStage]).
        grpo: The GRPO stage ([`GRPOStage`][lego.recipes.pipeline_stages.GRPOStage]).
    """

    runs_dir: str = "runs"
    report: ReportSpec = field(default_factory=ReportSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    sft: SFTStage = field(default_factory=SFTStage)
    dpo: DPOStage = field(default_factory=DPOStage)
    grpo: GRPOStage = field(default_factory=GRPOStage)
    out_dir: str = ""

    def validate(self) -> None:
        """Everything ``PretrainConfig`` checks, with an empty ``out_dir`` allowed."""
        if not self.out_dir:  # chosen by the pipeline: a timestamped folder in runs_dir
            dataclasses.replace(self, out_dir=str(Path(self.runs_dir) / "check"))
            return
        super().validate()

    def check_later_stages(
        self, *, context: int, prompt_tokens: list[int], tokenizer: Tokenizer | None = None
    ) -> None:
        """Check the report and the stages against the model before training starts.

        Args:
            context: The model's context length.
            prompt_tokens: Each report prompt's length in tokens (``[1]`` before the
                tokenizer exists: the least a prompt takes).
            tokenizer: The tokenizer, once it exists (the stages' chat templates need
                their special tokens in it or added).

        Raises:
            ConfigError: A prompt plus ``report.max_new_tokens`` exceeds the context,
                the evaluation's window does not fit it or has no validation split to
                score, a stage's rows do not fit it or its template's tokens are missing
                ([`check_stages()`][lego.recipes.pipeline_stages.check_stages]), or
                matplotlib (for the pictures) is missing.
        """
        check_stages(self, context=context, tokenizer=tokenizer)
        for length in prompt_tokens:
            check_fits_context(
                length, self.report.max_new_tokens, context, key="report.max_new_tokens"
            )
        if self.eval.enabled:
            self.eval.window(context)
            if self.data.corpus and self.data.val_fraction == 0:
                raise ConfigError(
                    "the evaluation's held-out perplexity needs a validation split, but "
                    "data.val_fraction is 0",
                    key="data.val_fraction",
                    hint="set data.val_fraction (e.g. 0.05), or eval.enabled: false",
                )
        check_report_dependencies()

    def pretrain_config(self, out_dir: Path) -> PretrainConfig:
        """The ``PretrainConfig`` that trains into ``out_dir``, resuming its latest checkpoint.

        Args:
            out_dir: The run directory.

        Returns:
            The recipe config.
        """
        data = self.to_dict()
        for key in ("runs_dir", "report", "eval", *STAGES):
            data.pop(key)
        data["out_dir"] = str(out_dir)
        if not data.get("overwrite"):  # overwrite=true: start the run over, on purpose
            data["resume"] = data.get("resume") or "auto"
        return PretrainConfig.from_dict(data)

    def fingerprint(self) -> str:
        """A hash of everything that shapes the run (not where it goes or how long it is).

        The stage sections count, less their ``enabled`` flags and lengths
        ([`stage_fingerprint_data()`][lego.recipes.pipeline_stages.stage_fingerprint_data]):
        changing a stage's settings starts a new run; switching a stage on or off, or
        giving it more steps, continues the unfinished one.
        """
        data = self.to_dict()
        for key in ("runs_dir", "out_dir", "resume", "max_steps", "progress", "report", "eval"):
            data.pop(key, None)
        data.update(stage_fingerprint_data(self))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PipelineResult:
    """What a pipeline run produced.

    Attributes:
        run_dir: The run directory.
        report: ``report.md``.
        finished: False when training was interrupted (run the command again to continue).
        val_loss: The final validation loss (NaN without validation data).
        baseline: The unigram entropy of the validation tokens (NaN without them).
        step: The optimizer steps the run has taken.
        max_steps: The steps it is to take.
        stop_signal: The signal that interrupted training (after a checkpoint), or None.
    """

    run_dir: Path
    report: Path
    finished: bool
    val_loss: float
    baseline: float
    step: int = 0
    max_steps: int = 0
    stop_signal: int | None = None


def find_run_dir(config: PipelineConfig, *, now: datetime | None = None) -> Path:
    """The run directory: ``out_dir``, an unfinished run of this config, or a new one.

    Args:
        config: The pipeline config.
        now: The time that names a new run (default: now, UTC).

    Returns:
        The directory (not created).
    """
    if config.out_dir:
        return Path(config.out_dir)
    runs = Path(config.runs_dir)
    fingerprint = config.fingerprint()
    if runs.is_dir():
        for run in sorted(runs.iterdir(), reverse=True):
            record = run / PIPELINE_FILE
            if not record.is_file():
                continue
            try:
                saved = read_json(record, what="pipeline record")
            except LegoError:  # unreadable or not JSON: not a run to continue
                continue
            if not isinstance(saved, dict):
                continue
            if saved.get("fingerprint") == fingerprint and saved.get("status") != _DONE:
                return run
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return runs / stamp


def _write_record(run_dir: Path, config: PipelineConfig, status: str) -> None:
    record = {
        "status": status,
        "fingerprint": config.fingerprint(),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
    }
    atomic_write_text(
        run_dir / PIPELINE_FILE, json.dumps(record, indent=2) + "\n", what="pipeline record"
    )


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file, or fail with a clear ConfigError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(folder / ".write-test")
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write the run directory: {exc.strerror or exc}",
            path=folder,
            hint="choose a writable place with runs_dir=... or out_dir=..., or fix the "
            "folder's permissions",
        ) from exc


_DISK_HINT = (
    "free some disk space (or fix the permissions) and run the same command again: it "
    "continues from the last complete checkpoint"
)


def run_pipeline(config: PipelineConfig, *, echo: Any = print) -> PipelineResult:
    """Train a model from raw text and write its report (see the module docs).

    Args:
        config: The pipeline config.
        echo: Where progress lines go (``print`` by default).

    Returns:
        The [`PipelineResult`][lego.recipes.pipeline.PipelineResult]; ``finished`` is False
        when SIGINT or SIGTERM stopped training after a checkpoint (``stop_signal`` says
        which): the same command continues.

    Raises:
        ConfigError: Bad settings (the report's and the evaluation's included, checked
            before the tokenizer is trained or the data prepared), matplotlib missing, an
            unwritable run directory, a run directory another process is writing.
        TrainingError: Training failed, or the disk filled up (the run can be continued).
        Interrupted: SIGINT or SIGTERM during the evaluation (exit 130 / 143): the parts
            in ``eval.json`` are kept and the same command computes the rest.
    """
    early = early_model_config(config.pretrain_config(Path(config.runs_dir) / "check"))
    config.check_later_stages(context=int(early.context_length), prompt_tokens=[1])
    run_dir = find_run_dir(config)
    _check_writable(run_dir)
    with (
        run_lock(run_dir) as lock,
        write_errors(run_dir, what="run", error=TrainingError, hint=_DISK_HINT),
    ):
        remove_stale_temporaries(run_dir)
        resumed = (run_dir / PIPELINE_FILE).is_file()

        def check_report(model: lego.arch.DecoderConfig, tokenizer: Tokenizer | None) -> None:
            if tokenizer is not None:
                config.check_later_stages(
                    context=int(model.context_length),
                    prompt_tokens=[len(tokenizer.encode(p)) for p in config.report.prompts],
                    tokenizer=tokenizer,
                )

        pretraining = build_pretraining(
            config.pretrain_config(run_dir), lock=lock, check_later=check_report
        )
        _write_record(run_dir, config, _RUNNING)
        echo(f"{'continuing' if resumed else 'starting'} the run in {run_dir}")
        start = time.perf_counter()
        try:
            result = pretraining.run()
        except TrainingError as exc:
            if not exc.message.startswith("cannot write the "):  # write_errors' message
                raise
            # the disk: here the same command continues (the Trainer says resume=auto)
            raise TrainingError(exc.message, path=exc.path, hint=_DISK_HINT) from exc.__cause__
        state = result.state
        seconds = time.perf_counter() - start
        val_loss = float(state.metrics.get("val_loss", math.nan))
        baseline = result.baseline
        done = {"step": state.step, "max_steps": config.max_steps}
        if state.step < config.max_steps:
            return PipelineResult(
                run_dir=run_dir,
                report=run_dir / "report.md",
                finished=False,
                val_loss=val_loss,
                baseline=baseline,
                stop_signal=state.stop_signal,
                **done,
            )
        model_dir = _final_model_dir(run_dir)
        evaluation = None
        if config.eval.enabled:
            evaluation = _evaluate(
                config, run_dir, model_dir, pretraining.data.path, state.step, echo
            )
        else:
            (run_dir / EVAL_FILE).unlink(missing_ok=True)  # from an earlier, enabled try
        report = write_report(
            run_dir=run_dir,
            model_dir=model_dir,
            config=config,
            state=state,
            baseline=baseline,
            train_seconds=seconds,
            evaluation=evaluation,
            echo=echo,
        )
        _write_record(run_dir, config, _DONE)
    echo(f"report: {report}")
    return PipelineResult(
        run_dir=run_dir,
        report=report,
        finished=True,
        val_loss=val_loss,
        baseline=baseline,
        **done,
    )


def _evaluate(
    config: PipelineConfig,
    run_dir: Path,
    model_dir: Path,
    data_path: Path,
    step: int,
    echo: Any,
) -> dict[str, Any]:
    """Run the evaluation stage; a signal during it becomes ``Interrupted`` (130 / 143)."""
    try:
        return run_evaluation(
            run_dir=run_dir,
            model_dir=model_dir,
            data_path=data_path,
            spec=config.eval,
            train_context=config.data.context_length,
            step=step,
            device=config.device,
            echo=echo,
        )
    except KeyboardInterrupt as stop:
        signum = stop.signum if isinstance(stop, Terminated) else signal.SIGINT
        raise Interrupted(
            f"stopped during the evaluation: the model is in {model_dir}, the parts measured "
            f"so far in {run_dir / EVAL_FILE}",
            signum=signum,
            hint="run the same command again: it computes only the rest and writes the report",
        ) from None


def _final_model_dir(run_dir: Path) -> Path:
    """Copy the newest checkpoint's model directory to ``run_dir/model`` and return it."""
    checkpoint = read_latest(run_dir)
    if checkpoint is None:
        raise TrainingError(
            "the run finished without a checkpoint",
            path=run_dir,
            hint="check checkpoint_every and keep_last in the config",
        )
    source = checkpoint / MODEL_DIR
    target = run_dir / MODEL_DIR
    staging = temporary_name(target)
    try:
        shutil.copytree(source, staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (target / LEGO_TOKENIZER_FILE).is_file():
        raise TrainingError(
            f"the model directory has no {LEGO_TOKENIZER_FILE}",
            path=target,
            hint="train from a corpus or give data.tokenizer, so samples can be decoded",
        )
    return target
