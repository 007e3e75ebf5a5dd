"""``legollm pipeline``: raw text to a model you talk to, with a report, in one command.

The pipeline is the ``pretrain`` recipe, the tuning recipes after it, and what a person
wants to see afterwards. One YAML file (``examples/pipelines/tiny.yaml``) holds every
[`PretrainConfig`][lego.recipes.pretrain.PretrainConfig] key plus a ``report:`` section
([`ReportSpec`][lego.recipes.pipeline.ReportSpec]), ``runs_dir``, and the stage sections
``sft:``, ``dpo:`` and ``grpo:`` ([`lego.recipes.pipeline_stages`][lego.recipes.pipeline_stages]):

1. the tokenizer is trained and the corpus prepared (cached, see
   [`prepare_data()`][lego.recipes.pretrain.prepare_data]);
2. the model is pretrained into ``runs_dir/<timestamp>/`` with checkpoints, and its final
   model directory copied to ``model/``;
3. the pretrained model is evaluated (lego-eval, the ``eval:`` section,
   [`EvalSpec`][lego.recipes.pipeline_eval.EvalSpec]): held-out perplexity and bits per
   byte of the validation split, checked against the trainer's logged validation loss, and
   the offline task scores, CORE-style, into ``eval.json``
   ([`lego.recipes.pipeline_eval`][lego.recipes.pipeline_eval]); ``eval: {enabled: false}``
   skips it;
4. **SFT** (``sft:``, when enabled): ``legollm finetune`` in ``sft/`` from ``model/`` on
   generated question-answer rows (``data/sft-train.jsonl``, ``data/sft-eval.jsonl``, from
   lego-data's ``stdlib_qa``), rendered with ChatML, whose markers are added to the
   tokenizer (the vocabulary grows);
5. **DPO** (``dpo:``): ``legollm align dpo`` in ``dpo/`` from the previous model on
   generated preference pairs (``data/dpo-*.jsonl``); with ``dpo.finetune: lora`` the
   reference is the model with its adapter disabled, and ``output: merged`` writes the
   policy whole;
6. **GRPO** (``grpo:``, off by default): ``legollm align grpo`` in ``grpo/`` on a
   generated task with a verifiable answer;
7. the stages' models are measured side by side on the same held-out rows (``eval.stages``,
   [`lego.recipes.pipeline_stages_eval`][lego.recipes.pipeline_stages_eval]): answer loss,
   preference accuracy before and after DPO, greedy answers; ``stages.png`` draws each
   stage's curves;
8. samples of the pretrained model are generated with greedy, top-k and top-p decoding
   (lego-generate);
9. ``loss.png`` (train and validation loss, the unigram baseline, the learning rate) and
   ``attention.png`` (every head of every layer on one sample, from the explicit math
   attention) are drawn, and ``report.md`` collects the configuration, the figures, the
   evaluations' tables, the stages and the samples; it ends with the command that starts
   the chat;
10. ``chat/`` receives a copy of the last stage's model (with its tokenizer, ChatML's
    markers and the stop tokens): ``legollm serve --model runs/<timestamp>/chat``; with
    every stage switched off there is no ``chat/`` and the report names the run directory
    (its ``model/``) instead.

A stage switched off (``enabled: false``, the default for a section left out) is skipped:
the next starts from the previous enabled stage's model. Everything the later stages need
is checked before training starts (the report's prompts and ``max_new_tokens`` against
the model's context, matplotlib for the pictures, every stage's keys, lengths, template
tokens, stop and pad tokens), and each stage hands its figures to the next (the unigram
baseline comes from the pretraining result, not from a file).

**Resuming.** Each run directory holds ``pipeline.json`` (the configuration, a status and
each stage's status). When the command is interrupted (Ctrl-C or SIGTERM: the running
trainer saves a checkpoint and stops; exit 130 / 143), running the same command again
finds the newest unfinished run with the same configuration and continues it: a finished
stage (its ``model/`` written and ``pipeline.json`` saying ``done``) is not redone, the
stopped one resumes from its last checkpoint (``resume: auto``). A finished run is never
touched again, so the next command starts a new one. ``out_dir=...`` pins the run
directory instead. The configuration's fingerprint leaves out paths and lengths
(``max_steps``, ``time_budget_s``, a stage's too) and the stages' ``enabled`` switches, so
a longer or switched-on stage continues the same run; any other change starts a new one.
A stage sized by its ``time_budget_s`` keeps, when resumed, the length it was sized to.
Ctrl-C during an evaluation exits 130 too, keeping the parts already in ``eval.json``; the
same command computes only the rest (a finished evaluation is not redone).
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
from collections.abc import Mapping
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
    StagesResult,
    check_stage_data,
    check_stage_folders,
    check_stages,
    run_stages,
    stage_fingerprint_data,
    stage_template,
)
from lego.recipes.pipeline_stages_eval import (
    draw_stage_curves,
    evaluate_stages,
    stage_report_lines,
)
from lego.recipes.preflight import check_fits_context, early_model_config
from lego.recipes.pretrain import PretrainConfig, build_pretraining
from lego.recipes.report import budget_text, check_report_dependencies, write_report
from lego.train.config import SEED_MAX
from lego.train.rundir import run_lock

__all__ = [
    "ReportSpec",
    "PipelineConfig",
    "PipelineResult",
    "PIPELINE_FILE",
    "CHAT_DIR",
    "find_run_dir",
    "run_pipeline",
]

PIPELINE_FILE = "pipeline.json"
"""The file in a run directory that records the pipeline's configuration and status."""

CHAT_DIR = "chat"
"""The folder in a run directory with the model to talk to (the last stage's model)."""

_DONE = "done"
_RUNNING = "running"
_PRETRAINING = "pretraining"


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
        lengths = ("max_steps", "time_budget_s")
        for key in ("runs_dir", "out_dir", "resume", *lengths, "progress", "report", "eval"):
            data.pop(key, None)
        data.update(stage_fingerprint_data(self))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PipelineResult:
    """What a pipeline run produced.

    Attributes:
        run_dir: The run directory.
        report: ``report.md``.
        finished: False when a stage was interrupted (run the command again to continue).
        val_loss: The pretraining's final validation loss (NaN without validation data).
        baseline: The unigram entropy of the validation tokens (NaN without them).
        step: The optimizer steps the interrupted (or last) training stage has taken.
        max_steps: The steps it is to take.
        stop_signal: The signal that interrupted training (after a checkpoint), or None.
        stage: The stage ``step`` counts: ``pretraining``, ``sft``, ``dpo`` or ``grpo``.
        stage_dir: Where that stage's checkpoints are (the run directory for pretraining).
        chat: ``run_dir/chat``, the last stage's model to talk to, once the run finished
            (None when no stage ran after pretraining).
    """

    run_dir: Path
    report: Path
    finished: bool
    val_loss: float
    baseline: float
    step: int = 0
    max_steps: int = 0
    stop_signal: int | None = None
    stage: str = "pretraining"
    stage_dir: Path | None = None
    chat: Path | None = None


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


def _write_record(
    run_dir: Path, config: PipelineConfig, status: str, stages: dict[str, str]
) -> None:
    record = {
        "status": status,
        "fingerprint": config.fingerprint(),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stages": stages,
        "config": config.to_dict(),
    }
    atomic_write_text(
        run_dir / PIPELINE_FILE, json.dumps(record, indent=2) + "\n", what="pipeline record"
    )


def _read_stages(run_dir: Path) -> dict[str, str]:
    """Each stage's status from ``pipeline.json`` (empty when absent or unreadable)."""
    try:
        saved = read_json(run_dir / PIPELINE_FILE, what="pipeline record")
    except LegoError:
        return {}
    stages = saved.get("stages") if isinstance(saved, dict) else None
    if not isinstance(stages, dict):
        return {}
    return {str(k): str(v) for k, v in stages.items()}


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
    """Train a model from raw text, run the later stages and write the report (module docs).

    Args:
        config: The pipeline config.
        echo: Where progress lines go (``print`` by default).

    Returns:
        The [`PipelineResult`][lego.recipes.pipeline.PipelineResult]; ``finished`` is False
        when SIGINT or SIGTERM stopped a training stage after a checkpoint (``stage`` and
        ``stop_signal`` say which): the same command continues.

    Raises:
        ConfigError: Bad settings (the report's, the evaluation's and the stages' included,
            checked before the tokenizer is trained or the data prepared), matplotlib
            missing, an unwritable run directory (or stage folder), a run directory
            another process is writing.
        TrainingError: Training failed, or the disk filled up (the run can be continued).
        Interrupted: SIGINT or SIGTERM outside a training loop (an evaluation, a stage
            being set up; exit 130 / 143): what was done is kept and the same command
            continues.
    """
    early = early_model_config(config.pretrain_config(Path(config.runs_dir) / "check"))
    config.check_later_stages(context=int(early.context_length), prompt_tokens=[1])
    run_dir = find_run_dir(config)
    _check_writable(run_dir)
    check_stage_folders(config, run_dir)
    check_stage_data(config)
    with (
        run_lock(run_dir) as lock,
        write_errors(run_dir, what="run", error=TrainingError, hint=_DISK_HINT),
    ):
        remove_stale_temporaries(run_dir)
        resumed = (run_dir / PIPELINE_FILE).is_file()
        statuses = _read_stages(run_dir) if resumed and not config.overwrite else {}

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
        statuses[_PRETRAINING] = _RUNNING
        _write_record(run_dir, config, _RUNNING, statuses)
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
        if state.step < state.max_steps:  # the trainer's length (time_budget_s sizes it)
            return PipelineResult(
                run_dir=run_dir,
                report=run_dir / "report.md",
                finished=False,
                val_loss=val_loss,
                baseline=baseline,
                step=state.step,
                max_steps=state.max_steps,
                stop_signal=state.stop_signal,
                stage_dir=run_dir,
            )
        model_dir = _final_model_dir(run_dir)
        statuses[_PRETRAINING] = _DONE
        _write_record(run_dir, config, _RUNNING, statuses)
        evaluation = None
        if config.eval.enabled:
            evaluation = _evaluate(
                config, run_dir, model_dir, pretraining.data.path, state.step, echo
            )
        else:
            (run_dir / EVAL_FILE).unlink(missing_ok=True)  # from an earlier, enabled try
        stages = _run_stages(config, run_dir, model_dir, statuses, echo)
        stopped = stages.stopped
        if stopped is not None and stopped.state is not None:
            return PipelineResult(
                run_dir=run_dir,
                report=run_dir / "report.md",
                finished=False,
                val_loss=val_loss,
                baseline=baseline,
                step=stopped.state.step,
                max_steps=stopped.state.max_steps,
                stop_signal=stopped.state.stop_signal,
                stage=stopped.name,
                stage_dir=run_dir / stopped.name,
            )
        stage_evaluation = None
        if evaluation is not None and config.eval.stages.enabled and len(stages.models) > 1:
            stage_evaluation = _evaluate_stages(config, run_dir, stages, echo)
        chat: Path | None = None
        if stages.model_dir is not None and stages.model_dir != model_dir:
            chat = _copy_model(stages.model_dir, run_dir / CHAT_DIR)
        report = write_report(
            run_dir=run_dir,
            model_dir=model_dir,
            config=config,
            state=state,
            baseline=baseline,
            train_seconds=seconds,
            evaluation=evaluation,
            stage_lines=_stage_lines(run_dir, stages, stage_evaluation),
            closing=_closing_lines(chat or run_dir, stages),
            echo=echo,
        )
        _write_record(run_dir, config, _DONE, statuses)
    echo(f"report: {report}")
    echo(f"talk to the model: legollm serve --model {chat or run_dir}")
    return PipelineResult(
        run_dir=run_dir,
        report=report,
        finished=True,
        val_loss=val_loss,
        baseline=baseline,
        step=state.step,
        max_steps=state.max_steps,
        chat=chat,
    )


def _stop_of(stop: KeyboardInterrupt) -> int:
    return stop.signum if isinstance(stop, Terminated) else int(signal.SIGINT)


def _run_stages(
    config: PipelineConfig,
    run_dir: Path,
    pretrained: Path,
    statuses: dict[str, str],
    echo: Any,
) -> StagesResult:
    """Run the stages after pretraining; a signal outside a training loop is ``Interrupted``."""

    def save() -> None:
        _write_record(run_dir, config, _RUNNING, statuses)

    try:
        return run_stages(
            config, run_dir=run_dir, pretrained=pretrained, statuses=statuses, save=save, echo=echo
        )
    except KeyboardInterrupt as stop:
        running = [name for name in STAGES if statuses.get(name) == _RUNNING]
        where = f"the {running[0]} stage" if running else "the stages after pretraining"
        raise Interrupted(
            f"stopped during {where}: the stages finished so far are kept in {run_dir}",
            signum=_stop_of(stop),
            hint="run the same command again: it continues where it stopped",
        ) from None


def _evaluate_stages(
    config: PipelineConfig, run_dir: Path, stages: StagesResult, echo: Any
) -> dict[str, Any]:
    """The stage evaluation (``eval.json``'s ``stages``); a signal is ``Interrupted``."""
    template = _chat_template(config)
    try:
        return evaluate_stages(
            run_dir=run_dir,
            models=dict(stages.models),
            qa_test=stages.qa_test,
            pairs_test=stages.pairs_test,
            spec=config.eval.stages,
            device=config.device,
            template=template,
            echo=echo,
        )
    except KeyboardInterrupt as stop:
        raise Interrupted(
            "stopped during the stage evaluation: the stages' models are kept, the parts "
            f"measured so far in {run_dir / EVAL_FILE}",
            signum=_stop_of(stop),
            hint="run the same command again: it computes only the rest and writes the report",
        ) from None


def _chat_template(config: PipelineConfig) -> str:
    """The chat template of the stages (the first enabled one that uses a chat template)."""
    for stage in (config.sft, config.dpo, config.grpo):
        template = stage_template(stage)
        if stage.enabled and template.lower() not in ("none", "alpaca"):
            return template
    return "chatml"


def _stage_lines(
    run_dir: Path, stages: StagesResult, evaluation: Mapping[str, Any] | None
) -> list[str]:
    """The report's stages section: what ran, the stage evaluation, the curves."""
    ran = [r for r in stages.runs if r.status != "skipped"]
    if not ran:
        return []
    said = {
        "done": "trained now",
        "done earlier": "finished by an earlier invocation",
        "skipped": "switched off (enabled: false)",
    }
    lines = ["## Stages after pretraining", ""]
    lines += [
        f"- `{r.name}`: {said.get(r.status, r.status)}"
        + (f", model in `{r.model_dir.relative_to(run_dir)}/`" if r.model_dir else "")
        + budget_text(run_dir / r.name, prefix="; ")
        for r in stages.runs
    ]
    lines.append("")
    folders = {"pretrained": run_dir, **{r.name: run_dir / r.name for r in ran}}
    picture = draw_stage_curves(run_dir=run_dir, stages=folders)
    if picture is not None:
        lines += [f"![stages]({picture.name})", ""]
        lines += [
            f"`{picture.name}`: each stage's curves from its `metrics.jsonl` (loss; DPO's "
            "reward margin and preference accuracy; GRPO's reward and exact answers).",
            "",
        ]
    times = {r.name: r.seconds for r in stages.runs if r.status == "done"}
    if evaluation is not None:
        lines += stage_report_lines(evaluation, times=times or None)
    return lines


def _closing_lines(chat: Path, stages: StagesResult) -> list[str]:
    """The report's last lines: the command that starts the chat (or the server)."""
    last = [r.name for r in stages.runs if r.model_dir is not None]
    what = (
        f"`{chat.name}/` is the {last[-1]} stage's model, with its tokenizer (ChatML's "
        "markers) and stop tokens:"
        if last
        else "No stage ran after pretraining: the server offers completions of the "
        "pretrained model (`model/`):"
    )
    return ["## Talk to it", "", what, "", f"    legollm serve --model {chat}", ""]


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
        signum = _stop_of(stop)
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
    target = _copy_model(checkpoint / MODEL_DIR, run_dir / MODEL_DIR)
    if not (target / LEGO_TOKENIZER_FILE).is_file():
        raise TrainingError(
            f"the model directory has no {LEGO_TOKENIZER_FILE}",
            path=target,
            hint="train from a corpus or give data.tokenizer, so samples can be decoded",
        )
    return target


def _copy_model(source: Path, target: Path) -> Path:
    """Copy a model directory to ``target`` (a temporary name, then a rename) and return it."""
    staging = temporary_name(target)
    try:
        shutil.copytree(source, staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
