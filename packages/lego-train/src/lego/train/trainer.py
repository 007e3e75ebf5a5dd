"""The [`Trainer`][lego.train.trainer.Trainer]: any causal LM, any batch source, exact resume.

One optimizer step takes ``grad_accum`` micro-batches. The loss is the *token-weighted*
mean cross-entropy over every trained label of the step (all micro-batches, all ranks): each
micro-batch's summed loss is divided by the step's total trained tokens, so accumulating
``k`` micro-batches of ``B`` rows gives the same gradient as one batch of ``k * B`` rows, and
``W`` ranks of ``B`` rows the same as one process of ``W * B`` rows, even when the number of
ignored labels differs between micro-batches.

Example (``model`` any ``CausalLM``, ``loader`` and ``val_loader`` any ``BatchSource``, e.g.
a lego-arch model and lego-data ``TokenLoader``s; ``examples/pretrain.py`` runs it)::

    trainer = Trainer(model=model, train_data=loader, eval_data=val_loader,
                      config=TrainConfig(out_dir="runs/demo", max_steps=200))
    state = trainer.fit()     # resumes from runs/demo when config.resume == "latest"
    state.metrics["val_loss"]
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lego.protocols import (
    BatchSource,
    ConfigError,
    DataError,
    FolderLock,
    LMBatch,
    TrainerCallback,
    TrainingError,
    remove_stale_temporaries,
    write_errors,
)
from lego.protocols.layout import HF_TOKENIZER_FILE, LEGO_TOKENIZER_FILE, MODEL_DIR
from lego.protocols.progress import Progress, Task, make_progress
from lego.train import distributed as dd
from lego.train.budget import SIZING_PATIENCE, SIZING_STEPS, size_to_budget
from lego.train.checkpoint import (
    TRAINER_STATE_FILE,
    CheckpointManager,
    TrainerStateFile,
    check_compatible,
    file_manifest,
    load_model_dir,
    model_signature,
    save_model_dir,
    torch_load,
    torch_save,
)
from lego.train.config import Precision, TrainConfig
from lego.train.flops import flops_per_token, measure_peak_flops, mfu
from lego.train.monitor import MetricsLog, TensorBoardWriter, format_step
from lego.train.objective import Objective, TokenObjective, as_float, token_loss
from lego.train.optim import build_optimizer
from lego.train.precision import (
    MasterWeights,
    autocast_context,
    choose_precision,
    compute_dtype,
    decide_precision,
    make_grad_scaler,
)
from lego.train.rng import capture_rng_state, restore_rng_state, seed_everything
from lego.train.rundir import check_run_dir, clear_run, run_lock
from lego.train.schedule import build_scheduler
from lego.train.state import RunState

__all__ = ["Trainer", "token_loss"]  # token_loss lives in lego.train.objective

_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, _OOM_ERRORS):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


class Trainer:
    """Trains a causal LM on a batch source; saves, resumes, evaluates, logs.

    Args:
        model: Any [`CausalLM`][lego.protocols.CausalLM] ``nn.Module``
            (``model(input_ids, attention_mask=..., position_ids=...) -> (B, T, V)``), on CPU
            or already on the device; when it has ``aux_loss`` (MoE), that term is added.
        train_data: A [`BatchSource`][lego.protocols.BatchSource] of
            [`LMBatch`][lego.protocols.LMBatch] (or of whatever batches ``objective``
            reads); re-iterated when it ends. Under ``torchrun`` it must already yield this
            rank's shard (lego-data's ``TokenLoader(rank=, world_size=)``).
        config: The run's [`TrainConfig`][lego.train.config.TrainConfig].
        eval_data: A batch source for evaluation; it is rewound to its initial state before
            each evaluation, so every evaluation sees the same batches.
        callbacks: [`TrainerCallback`][lego.protocols.TrainerCallback] objects.
        tokenizer: Saved into every checkpoint's model directory (``save(path)`` as
            ``lego-tokenizer.json``, ``save_hf(path)`` as ``tokenizer.json`` when it can).
        tokenizer_hash: Identifies the tokenizer (e.g. SHA-256 of its file); resuming with
            another one is a [`CompatibilityError`][lego.protocols.CompatibilityError].
        console_stream: Where progress lines go (default: stderr).
        lock: The lock of ``out_dir`` when the caller already holds it (a recipe locks the
            run before preparing its data); None: ``fit()`` takes it
            ([`run_lock()`][lego.train.rundir.run_lock]) and releases it at the end.
        objective: What to minimise, an [`Objective`][lego.train.objective.Objective]
            (a reward model's loss, DPO...); None: the next-token cross-entropy of
            ``LMBatch`` labels ([`TokenObjective`][lego.train.objective.TokenObjective]).

    Attributes:
        state: The [`RunState`][lego.train.state.RunState] (step, tokens, metrics).
        checkpoints: The run's [`CheckpointManager`][lego.train.checkpoint.CheckpointManager].
        resumed_from: The checkpoint the run resumed from, or None.
        precision_reason: What ``precision: auto`` resolved to and why, or None.
        budget_steps: The length ``time_budget_s`` gave the run (0 until it is sized, and
            without a budget).
        budget_reason: The sizing's one line (the budget, the pace, the length), or None.

    Raises:
        ConfigError: On an impossible setting (activation checkpointing on a model without
            it, strategy/world mismatch, a bad resume path), an ``out_dir`` that is a file
            or already holds a run that the config neither continues nor overwrites
            ([`check_run_dir()`][lego.train.rundir.check_run_dir]).
        FormatError: When the resume checkpoint is damaged (naming the file).
        CompatibilityError: When it belongs to another model shape or tokenizer.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        train_data: BatchSource[LMBatch] | BatchSource[Mapping[str, torch.Tensor]],
        config: TrainConfig,
        eval_data: BatchSource[LMBatch] | BatchSource[Mapping[str, torch.Tensor]] | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        tokenizer: object | None = None,
        tokenizer_hash: str | None = None,
        console_stream: Any = None,
        lock: FolderLock | None = None,
        objective: Objective | None = None,
    ) -> None:
        self.config = config
        self.objective: Objective = objective if objective is not None else TokenObjective()
        self.train_data = train_data
        self.eval_data = eval_data
        self.callbacks = list(callbacks)
        self.tokenizer = tokenizer
        self.tokenizer_hash = tokenizer_hash
        self._console_stream = console_stream
        self._lock = lock
        self.device = dd.pick_device(config.device)
        self.dist = dd.init_distributed(self.device)
        problem: BaseException | None = None
        if self.dist.is_main:
            try:
                check_run_dir(config)
            except ConfigError as exc:
                problem = exc
        dd.raise_together(problem, self.device)
        if config.tensorboard:
            TensorBoardWriter.check_available()
        self.strategy = dd.resolve_strategy(config.strategy, self.dist)
        if self.strategy == "fsdp" and config.precision in ("bf16-true", "fp16-mixed"):
            raise ConfigError(
                f"precision {config.precision!r} is not supported with strategy 'fsdp'",
                key="precision",
                hint="use precision: bf16-mixed (or fp32) with FSDP, or strategy: ddp",
            )
        self.run_dir = Path(config.out_dir)
        self.checkpoints = CheckpointManager(run_dir=self.run_dir, keep_last=config.keep_last)
        self.state = RunState(max_steps=config.max_steps)
        self._signal: int | None = None
        self._batch_rows = 0
        # time_budget_s: the batch shapes this process has run (a step that meets a new one
        # is not timed), the flag for the current step, and the steps left out so far
        self._shapes_seen: set[tuple[tuple[str, tuple[int, ...]], ...]] = set()
        self._new_shape = False
        self._untimed: list[float] = []
        seed_everything(config.seed)

        self.model = model
        if config.activation_checkpointing:
            if not hasattr(model, "activation_checkpointing"):
                raise ConfigError(
                    f"{type(model).__name__} has no activation_checkpointing attribute",
                    key="activation_checkpointing",
                    hint="set activation_checkpointing: false, or use a lego-arch model",
                )
            model.activation_checkpointing = True  # type: ignore[assignment,unused-ignore]
        model.to(self.device)
        model.train()

        # Resume, part 1: verify the checkpoint and load the weights before wrapping.
        self.resumed_from = self.checkpoints.resolve(config.resume)
        saved: TrainerStateFile | None = None
        if self.resumed_from is not None:
            saved = self.checkpoints.read_state(self.resumed_from)
            check_compatible(
                saved.model,
                model_signature(model),
                path=self.resumed_from,
                saved_tokenizer=saved.tokenizer_hash,
                current_tokenizer=tokenizer_hash,
            )
            load_model_dir(model, self.resumed_from / MODEL_DIR)

        self.precision_reason: str | None = None  # what precision: auto resolved to, and why
        if config.precision == "auto":
            config = self._resolve_precision(model, saved)

        # time_budget_s: a resumed run keeps the length it was sized to; a fresh one times
        # its first steps in _fit (self._timed collects them) and is sized then
        self.budget_steps = 0
        self.budget_reason: str | None = None
        self._timed: list[float] | None = None
        if config.time_budget_s > 0:
            if saved is not None and saved.budget_steps > 0:
                self.budget_steps = min(saved.budget_steps, config.max_steps)
                self.budget_reason = (
                    f"time budget: {self.budget_steps:,} steps (as the checkpoint it resumes "
                    "from was sized)"
                )
                config = self.config = dataclasses.replace(config, max_steps=self.budget_steps)
                self.state.max_steps = self.budget_steps
            else:
                self._timed = []

        self.masters = MasterWeights(model) if config.precision == "bf16-true" else None
        wrapped = dd.wrap_model(model, self.strategy, self.device)
        self.fsdp = dd.is_fsdp(wrapped) and self.strategy == "fsdp"
        self.forward_model: nn.Module = wrapped
        if config.compile:
            self.forward_model = torch.compile(wrapped)  # type: ignore[assignment]
        self.wrapped = wrapped
        params = self.masters.masters if self.masters is not None else None
        self.optimizer = build_optimizer(model, config.optim, params=params)
        self.scheduler = build_scheduler(
            self.optimizer,
            optim=config.optim,
            schedule=config.schedule,
            max_steps=config.max_steps,
        )
        self.scaler = make_grad_scaler(config.precision, self.device)
        self._eval_start = eval_data.state_dict() if eval_data is not None else None
        if saved is not None and self.resumed_from is not None:
            self._load_training_state(self.resumed_from, saved)

        self._flops_per_token: float | None = None
        self._peak: float | None = config.peak_flops or None
        self._iterator: Iterator[Mapping[str, Any]] | None = None
        self._log: MetricsLog | None = None
        self._tb: TensorBoardWriter | None = None
        self._progress: Progress | None = None
        self._task: Task | None = None

    # -- setup helpers -------------------------------------------------------------------

    @property
    def unwrapped(self) -> nn.Module:
        """The user's model (outside DDP / ``torch.compile``)."""
        return self.model

    def _load_training_state(self, checkpoint: Path, saved: TrainerStateFile) -> None:
        optim_state = torch_load(checkpoint / "optimizer.pt", what="optimizer")
        try:
            if self.fsdp:
                dd.load_full_optimizer_state(self.wrapped, self.optimizer, optim_state)
            else:
                self.optimizer.load_state_dict(optim_state)
            # LambdaLR.load_state_dict overwrites the schedule's fields with the saved ones;
            # the schedule must follow *this* run's config (e.g. a longer max_steps on
            # resume). With an unchanged config this recomputes exactly the saved rates.
            current = [dict(vars(fn)) for fn in self.scheduler.lr_lambdas]
            self.scheduler.load_state_dict(
                torch_load(checkpoint / "scheduler.pt", what="scheduler")
            )
            for fn, fields in zip(self.scheduler.lr_lambdas, current, strict=True):
                vars(fn).update(fields)
            self.scheduler.base_lrs = [self.config.optim.lr] * len(self.optimizer.param_groups)
            for group in self.optimizer.param_groups:
                group["initial_lr"] = self.config.optim.lr
            self._refresh_rates()
            if self.scaler is not None and (checkpoint / "scaler.pt").is_file():
                self.scaler.load_state_dict(torch_load(checkpoint / "scaler.pt", what="scaler"))
        except (ValueError, KeyError, RuntimeError) as exc:
            raise TrainingError(
                f"the checkpoint's optimizer state does not fit this run ({exc})",
                path=checkpoint,
                hint="resume with the same optimizer settings and strategy, or start fresh",
            ) from exc
        self.train_data.load_state_dict(torch_load(checkpoint / "data.pt", what="data position"))
        restore_rng_state(torch_load(checkpoint / "rng.pt", what="RNG"), path=str(checkpoint))
        self.state.step = saved.step
        self.state.tokens_seen = saved.tokens_seen
        self.state.skipped_steps = saved.skipped_steps
        self.state.metrics = dict(saved.metrics)

    def _refresh_rates(self) -> None:
        """Set each group's rate to what the schedule gives the current step."""
        step = self.scheduler.last_epoch
        pairs = zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True)
        for (group, base), fn in zip(pairs, self.scheduler.lr_lambdas, strict=True):
            group["lr"] = base * fn(step)

    def _time_step(self, seconds: float) -> None:
        """Note one step's time; after the timed steps, size the run to ``time_budget_s``.

        A step that met a batch shape this process had not run is left out (it picks
        kernels and allocates for that shape; the process's first step always does): on
        any rank, so that every rank sizes at the same step. When ``SIZING_PATIENCE``
        steps have passed without ``SIZING_STEPS`` timed ones, every step but the first
        counts. Under ``torchrun`` the ranks' times are averaged, so every rank sizes alike.
        """
        timed = self._timed
        if timed is None:
            return
        (new_votes,) = dd.all_reduce_sum([1.0 if self._new_shape else 0.0], self.device)
        if new_votes > 0:
            self._untimed.append(seconds)
        else:
            timed.append(seconds)
        if len(timed) >= SIZING_STEPS:
            times = list(timed)
        elif len(timed) + len(self._untimed) >= SIZING_PATIENCE:
            times = timed + self._untimed[1:]  # shapes keep changing: all but the first
        else:
            return
        world = self.dist.world_size
        times = [t / world for t in dd.all_reduce_sum(times, self.device)]
        config = self.config
        at_least = min(config.max_steps, max(self.state.step, config.schedule.warmup_steps))
        sizing = size_to_budget(
            times, budget_s=config.time_budget_s, max_steps=config.max_steps, at_least=at_least
        )
        self._timed = None
        self._shapes_seen.clear()
        self.budget_steps = sizing.max_steps
        self.budget_reason = sizing.reason
        self.config = dataclasses.replace(config, max_steps=sizing.max_steps)
        self.state.max_steps = sizing.max_steps
        for fn in self.scheduler.lr_lambdas:
            vars(fn).update(max_steps=sizing.max_steps)  # the LRSchedule follows the length
        self._refresh_rates()
        if self._task is not None:
            self._task.update(self.state.step, total=sizing.max_steps)
        self.message(sizing.reason)
        self.log_record(
            {
                "step": self.state.step,
                "split": "budget",
                "time_budget_s": config.time_budget_s,
                "step_seconds": sizing.step_seconds,
                "fits": sizing.fits,
                "configured_steps": config.max_steps,
                "max_steps": sizing.max_steps,
            }
        )

    # -- batches -------------------------------------------------------------------------

    def _next_batch(self) -> Mapping[str, Any]:
        batch = self._draw_batch()
        if self._timed is not None:  # sizing to a time budget: note a shape not run before
            shapes = tuple(
                sorted((k, tuple(v.shape)) for k, v in batch.items() if isinstance(v, torch.Tensor))
            )
            if shapes not in self._shapes_seen:
                self._shapes_seen.add(shapes)
                self._new_shape = True
        return batch

    def _draw_batch(self) -> Mapping[str, Any]:
        if self._iterator is None:
            self._iterator = iter(self.train_data)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.train_data)
            try:
                return next(self._iterator)
            except StopIteration:
                raise DataError(
                    "the training batch source yields no batches",
                    key="train_data",
                    hint="check that the dataset holds at least one batch per rank",
                ) from None

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if "input_ids" not in batch:
            raise DataError(
                f"a batch must hold input_ids, got keys {sorted(batch)}",
                key="batch",
                hint="yield LMBatch dictionaries (or the batches your objective reads)",
            )
        moved: dict[str, torch.Tensor] = {}
        for key, value in batch.items():
            assert isinstance(value, torch.Tensor)
            moved[key] = value.to(self.device, non_blocking=True)
        return moved

    # -- the step --------------------------------------------------------------------------

    def _train_step(self) -> tuple[float, int, float, dict[str, float]]:
        """One optimizer step; returns (mean loss, tokens over ranks, grad norm, metrics)."""
        config = self.config
        objective = self.objective
        micro = []
        for _ in range(config.grad_accum):
            batch = self._to_device(self._next_batch())
            self._batch_rows = int(batch["input_ids"].shape[0])
            micro.append(batch)
        local_units = sum(objective.units(b) for b in micro)
        (global_units,) = dd.all_reduce_sum([float(local_units)], self.device)
        if global_units <= 0:
            raise DataError(
                f"step {self.state.step + 1} has nothing to train on (no trained labels: all "
                "are IGNORE_INDEX, or no units for the objective)",
                key="labels",
                hint="check the batch source's labels",
            )
        scale = self.dist.world_size / global_units
        loss_total = torch.zeros((), device=self.device, dtype=torch.float32)
        metric_totals: dict[str, torch.Tensor] = {}
        tokens = 0.0
        aux_source = self.unwrapped if hasattr(self.unwrapped, "aux_loss") else None
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            with (
                dd.no_sync(self.wrapped, not last),
                autocast_context(config.precision, self.device),
            ):
                out = objective(self.forward_model, batch)
                loss_sum = out.loss_sum
                objective_value = loss_sum
                if aux_source is not None:
                    aux = aux_source.aux_loss
                    if isinstance(aux, torch.Tensor):
                        units = objective.units(batch)
                        objective_value = objective_value + aux.float() * units
                objective_value = objective_value * scale
            if self.scaler is not None:
                self.scaler.scale(objective_value).backward()  # type: ignore[no-untyped-call]
            else:
                objective_value.backward()  # type: ignore[no-untyped-call]
            loss_total += loss_sum.detach().float()
            tokens += as_float(out.tokens)
            for name, value in out.metrics.items():
                value = value.detach().double()
                known = metric_totals.get(name)
                metric_totals[name] = value if known is None else known + value
        names = sorted(metric_totals)
        summed = dd.all_reduce_sum(
            [float(loss_total), tokens, *(float(metric_totals[n]) for n in names)], self.device
        )
        loss = summed[0] / global_units
        metrics = {name: v / global_units for name, v in zip(names, summed[2:], strict=True)}
        global_tokens = int(summed[1])
        if not math.isfinite(loss):
            return loss, global_tokens, float("nan"), metrics
        return loss, global_tokens, self._optimizer_step(), metrics

    def train_step(self) -> dict[str, float]:
        """Take one optimizer step (the body of the training loop, without the rest).

        This is [`fit()`][lego.train.trainer.Trainer.fit]'s loop body without logging,
        evaluation, callbacks and checkpoints.

        Returns:
            ``{"loss", "lr", "tokens", "grad_norm"}``: the step's loss (the mean per unit
            of the objective: per trained token by default), the learning rate it used, its
            tokens over all ranks and the gradient norm before clipping (NaN when the
            update was skipped); then the objective's metrics (means per unit).

        Raises:
            TrainingError: On a non-finite loss with ``on_nan: stop``, or out of memory.
        """
        lr = float(self.optimizer.param_groups[0]["lr"])
        try:
            loss, tokens, grad_norm, metrics = self._train_step()
        except Exception as error:
            if _is_oom(error):
                raise self._oom_error(error) from error
            raise
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss):
            self._skip_step(loss)
        self.state.step += 1
        self.scheduler.step()
        self.state.tokens_seen += tokens
        result = {"loss": loss, "lr": lr, "tokens": float(tokens), "grad_norm": grad_norm}
        return {**result, **{k: v for k, v in metrics.items() if k not in result}}

    def _optimizer_step(self) -> float:
        if self.masters is not None:
            self.masters.grads_to_masters()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = self.config.optim.grad_clip
        max_norm = clip if clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        full = getattr(norm, "full_tensor", None)
        if callable(full):
            norm = full()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.masters is not None:
            self.masters.masters_to_model()
        return float(norm)

    def _skip_step(self, loss: float) -> None:
        step = self.state.step + 1
        if self.config.on_nan == "stop":
            latest = self.checkpoints.latest() if self.dist.is_main else None
            where = f"the last good checkpoint is {latest}" if latest else "no checkpoint yet"
            raise TrainingError(
                f"non-finite loss ({loss}) at step {step}; training stopped ({where})",
                key="on_nan",
                hint="lower the learning rate or warm up longer, resume=latest, or set "
                "on_nan: skip to skip such steps",
            )
        self.message(f"step {step}: non-finite loss ({loss}); update skipped (on_nan: skip)")
        self.state.skipped_steps += 1

    # -- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The objective's loss (and metrics) over the evaluation source.

        Returns:
            ``{"val_loss": ..., "val_ppl": ..., "val_tokens": ...}`` for the default
            objective (``val_ppl`` only when the objective's ``perplexity`` is true), plus
            ``val_<name>`` for each metric of the objective (means per unit); empty
            without ``eval_data``; identical on every rank.
        """
        if self.eval_data is None or self._eval_start is None:
            return {}
        self.eval_data.load_state_dict(self._eval_start)
        self.forward_model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        totals: dict[str, torch.Tensor] = {}
        units = 0
        tokens = 0.0
        try:
            for index, raw in enumerate(self.eval_data):
                if self.config.eval_batches and index >= self.config.eval_batches:
                    break
                batch = self._to_device(raw)
                units += self.objective.units(batch)
                with autocast_context(self.config.precision, self.device):
                    out = self.objective(self.forward_model, batch)
                loss_sum += out.loss_sum.double()
                tokens += as_float(out.tokens)
                for name, value in out.metrics.items():
                    value = value.detach().double()
                    known = totals.get(name)
                    totals[name] = value if known is None else known + value
        finally:
            self.forward_model.train()
        names = sorted(totals)
        total, count, token_count, *sums = dd.all_reduce_sum(
            [float(loss_sum), float(units), tokens, *(float(totals[n]) for n in names)],
            self.device,
        )
        if count <= 0:
            raise DataError(
                "the evaluation source yielded no trained labels (no units for the objective)",
                key="eval_data",
                hint="give a non-empty validation set or set eval_every: 0",
            )
        val_loss = total / count
        result = {"val_loss": val_loss}
        if self.objective.perplexity:
            result["val_ppl"] = math.exp(min(val_loss, 700.0))
        result["val_tokens"] = token_count
        for name, metric_sum in zip(names, sums, strict=True):
            result.setdefault(f"val_{name}", metric_sum / count)
        return result

    # -- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (collective under torchrun).

        Returns:
            The checkpoint folder on rank 0, None on other ranks.
        """
        model_state: Mapping[str, torch.Tensor] | None = None
        if self.fsdp:
            full_model, optim_state = dd.full_state_dicts(self.wrapped, self.optimizer)
            model_state = full_model
        else:
            optim_state = self.optimizer.state_dict()
            if self.masters is not None:
                model_state = self.masters.state_dict_of(self.unwrapped)
        final: Path | None = None
        problem: Exception | None = None
        if self.dist.is_main:
            try:
                final = self._write_checkpoint(optim_state, model_state)
            except Exception as exc:  # every rank must hear of it (a full disk on rank 0)
                problem = exc
        dd.raise_together(problem, self.device)
        if final is not None:
            for callback in self.callbacks:
                hook = getattr(callback, "on_save", None)
                if hook is not None:
                    hook(self.state, final)
        if dist.is_initialized():
            dist.barrier()
        return final

    def _write_checkpoint(
        self, optim_state: Mapping[str, Any], model_state: Mapping[str, torch.Tensor] | None
    ) -> Path:
        """Write the checkpoint folder on rank 0; on any failure remove what was written."""
        step = self.state.step
        tmp = self.checkpoints.begin(step)
        try:
            model_dir = tmp / MODEL_DIR
            save_model_dir(self.unwrapped, model_dir, state_dict=model_state)
            self._save_tokenizer(model_dir)
            torch_save(optim_state, tmp / "optimizer.pt")
            torch_save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.scaler is not None:
                torch_save(self.scaler.state_dict(), tmp / "scaler.pt")
            torch_save(capture_rng_state(), tmp / "rng.pt")
            torch_save(self.train_data.state_dict(), tmp / "data.pt")
            trainer_state = TrainerStateFile(
                step=step,
                max_steps=self.config.max_steps,
                budget_steps=self.budget_steps,
                tokens_seen=self.state.tokens_seen,
                skipped_steps=self.state.skipped_steps,
                metrics={k: v for k, v in self.state.metrics.items() if math.isfinite(v)},
                world_size=self.dist.world_size,
                strategy=self.strategy,
                precision=self.config.precision,
                tokenizer_hash=self.tokenizer_hash,
                model=model_signature(self.unwrapped),
                config=self.config.to_dict(),
                files=file_manifest(tmp),
            )
            (tmp / TRAINER_STATE_FILE).write_text(
                json.dumps(trainer_state.to_dict(), indent=2) + "\n", encoding="utf-8"
            )
            return self.checkpoints.commit(tmp, step)
        except BaseException:
            self.checkpoints.abort(tmp)
            raise

    def _save_tokenizer(self, model_dir: Path) -> None:
        tokenizer = self.tokenizer
        if tokenizer is None:
            return
        save = getattr(tokenizer, "save", None)
        if callable(save):
            save(model_dir / LEGO_TOKENIZER_FILE)
            for extra in model_dir.glob("*.vocab"):
                extra.unlink()  # lego-tokenize's human-readable dump; not part of the model
        save_hf = getattr(tokenizer, "save_hf", None)
        if callable(save_hf):
            try:
                save_hf(model_dir / HF_TOKENIZER_FILE)
            except Exception as exc:  # not every tokenizer has an HF equivalent
                self.message(f"tokenizer.json not written ({type(exc).__name__}: {exc})")

    # -- logging ---------------------------------------------------------------------------

    def message(self, text: str) -> None:
        """Print a line on rank 0 (above the progress bar while training).

        Args:
            text: The line.
        """
        if not self.dist.is_main:
            return
        if self._progress is not None:
            self._progress.message(text)
        elif self.config.progress != "none":
            import sys

            stream = self._console_stream if self._console_stream is not None else sys.stderr
            print(text, file=stream, flush=True)

    def _resolve_precision(self, model: nn.Module, saved: TrainerStateFile | None) -> TrainConfig:
        """Turn ``precision: auto`` into ``bf16-mixed`` or ``fp32`` (``self.config`` too).

        A resumed run keeps the precision its checkpoint recorded. Otherwise
        [`choose_precision()`][lego.train.precision.choose_precision] measures; under
        ``torchrun`` every rank's times are summed first, so all ranks choose alike.
        """
        if saved is not None and saved.precision in ("fp32", "bf16-mixed"):
            precision: Precision = "bf16-mixed" if saved.precision == "bf16-mixed" else "fp32"
            reason = f"auto: {precision} (as the checkpoint it resumes from)"
        else:
            choice = choose_precision(model, self.device)
            if choice.fp32_seconds == choice.fp32_seconds:  # measured (not NaN): agree
                fp32, bf16 = dd.all_reduce_sum(
                    [choice.fp32_seconds, choice.bf16_seconds], self.device
                )
                choice = decide_precision(fp32, bf16)
            precision, reason = choice.precision, choice.reason
        self.precision_reason = reason
        self.config = dataclasses.replace(self.config, precision=precision)
        return self.config

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Append a record to ``metrics.jsonl`` (and TensorBoard) on rank 0.

        Args:
            record: Must hold ``step``; ``split`` defaults to ``train``.
        """
        if not self.dist.is_main:
            return
        if self._log is None:
            self._log = MetricsLog(run_dir=self.run_dir)
        self._log.write(record)
        if self._tb is not None:
            self._tb.write(record)

    def _mfu(self, tokens_per_s: float, context: int) -> float:
        if self._flops_per_token is None:
            self._flops_per_token = flops_per_token(self.unwrapped, context_length=context)
        if self._peak is None:
            self._peak = measure_peak_flops(
                dtype=compute_dtype(self.config.precision), device=self.device
            )
        per_device = tokens_per_s / self.dist.world_size
        return mfu(
            flops_per_token=self._flops_per_token,
            tokens_per_second=per_device,
            peak_flops=self._peak,
        )

    # -- the loop ----------------------------------------------------------------------------

    def _handle_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signum

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        import threading

        if threading.current_thread() is not threading.main_thread():
            return previous
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, self._handle_signal)
        return previous

    def _call(self, name: str, *args: Any) -> None:
        for callback in self.callbacks:
            hook: Callable[..., Any] | None = getattr(callback, name, None)
            if hook is not None:
                hook(self.state, *args)

    def fit(self) -> RunState:
        """Train until ``max_steps`` (or a stop), evaluating, logging and checkpointing.

        ``out_dir`` is locked while it trains (unless the caller gave its ``lock``). On
        SIGINT or SIGTERM the step finishes, a checkpoint is saved and ``fit`` returns with
        ``state.stop_signal`` set: the caller decides how to exit (the ``legollm`` recipes
        exit 130 or 143, with a message that says how to continue).

        Returns:
            The final [`RunState`][lego.train.state.RunState].

        Raises:
            TrainingError: On a non-finite loss with ``on_nan: stop``, out of memory
                (naming a batch size and accumulation that would fit), or a disk that
                cannot take the run's files (full, read-only: nothing half-written is left,
                and ``resume=auto`` continues from the last complete checkpoint).
            ConfigError: Another process writes ``out_dir``.
            DataError: When the batch source yields nothing or no trained labels.

        Under ``torchrun``, a collective that fails because another process died is a
        TrainingError too ([`peer_errors()`][lego.train.distributed.peer_errors]).
        """
        previous = self._install_signals()
        lock: FolderLock | None = None
        try:
            with (
                write_errors(
                    self.run_dir,
                    what="training run",
                    error=TrainingError,
                    hint="free some disk space (or fix the folder's permissions), then run again "
                    "with resume=auto: it continues from the last complete checkpoint",
                ),
                dd.peer_errors(),
            ):
                lock = self._take_lock()
                self._fit()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.close()
            if lock is not None:
                lock.release()
        return self.state

    def _take_lock(self) -> FolderLock | None:
        """Lock ``out_dir`` on rank 0 (unless the caller holds it) and tidy it up."""
        lock: FolderLock | None = None
        problem: BaseException | None = None
        if self.dist.is_main:
            try:
                if self._lock is None:
                    lock = run_lock(self.run_dir).acquire()
                if self.config.overwrite and self.resumed_from is None:
                    if self._log is not None:  # records logged before fit() go with the old run
                        self._log.close()
                        self._log = None
                    removed = clear_run(self.run_dir)
                    if removed:
                        self.message(f"overwrite=true: deleted the previous run in {self.run_dir}")
                self.checkpoints.remove_leftovers()
                remove_stale_temporaries(self.run_dir)
            except Exception as exc:
                problem = exc
                if lock is not None:
                    lock.release()
                    lock = None
        dd.raise_together(problem, self.device)
        return lock

    def _fit(self) -> None:
        config = self.config
        state = self.state
        last_saved = state.step if self.resumed_from is not None else -1
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self._log is None:
                self._log = MetricsLog(run_dir=self.run_dir)
            if config.tensorboard and self._tb is None:
                self._tb = TensorBoardWriter(log_dir=self.run_dir / "tensorboard")
            self._progress = make_progress(config.progress, stream=self._console_stream, interval=0)
            self._task = self._progress.task(
                "train", total=config.max_steps, unit="steps", completed=state.step
            )
            if self.resumed_from is not None:
                self.message(f"resumed from {self.resumed_from} at step {state.step}")
            if self.precision_reason is not None:
                self.message(f"precision {self.precision_reason}")
            if self.budget_reason is not None:
                self.message(self.budget_reason)
        self._call("on_train_begin")
        window_tokens, window_start = 0, time.perf_counter()
        while state.step < config.max_steps and not state.should_stop:
            self._new_shape = False
            began = time.perf_counter()
            result = self.train_step()
            if self._timed is not None:
                self._time_step(time.perf_counter() - began)
                config = self.config  # sized: max_steps may have changed
            loss, lr, grad_norm = result["loss"], result["lr"], result["grad_norm"]
            window_tokens += int(result["tokens"])
            state.metrics.update({"loss": loss, "lr": lr})
            state.metrics.update(
                {k: v for k, v in result.items() if k not in ("tokens", "grad_norm", "loss", "lr")}
            )
            if math.isfinite(grad_norm):
                state.metrics["grad_norm"] = grad_norm
            last = state.step >= config.max_steps
            if state.step % config.log_every == 0 or last:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                tokens_per_s = window_tokens / elapsed
                context = self._context_length()
                state.metrics["tokens_per_s"] = tokens_per_s
                mfu_value = self._mfu(tokens_per_s, context) if self.dist.is_main else 0.0
                state.metrics["mfu"] = mfu_value
                record = {"step": state.step, "split": "train", **state.metrics}
                record["tokens_seen"] = state.tokens_seen
                self.log_record(record)
                if self._task is not None:
                    self._task.update(state.step, info=format_step(state.metrics))
                window_tokens, window_start = 0, time.perf_counter()
            if config.eval_every and (state.step % config.eval_every == 0 or last):
                metrics = self.evaluate()
                if metrics:
                    state.metrics.update(metrics)
                    self.log_record({"step": state.step, "split": "val", **metrics})
                    line = f"step {state.step}: val_loss {metrics['val_loss']:.4f}"
                    if "val_ppl" in metrics:
                        line += f"  val_ppl {metrics['val_ppl']:.2f}"
                    self.message(line)
                    self._call("on_evaluate", metrics)
                window_start = time.perf_counter()
            self._call("on_step_end")
            # A signal or a callback's stop on any rank stops every rank after this step.
            stop_flag = 1.0 if (self._signal is not None or state.should_stop) else 0.0
            (stop_votes,) = dd.all_reduce_sum([stop_flag], self.device)
            state.should_stop = stop_votes > 0
            periodic = config.checkpoint_every and state.step % config.checkpoint_every == 0
            if periodic or last or state.should_stop:
                self.save_checkpoint()
                last_saved = state.step
                window_start = time.perf_counter()
            if self._signal is not None:
                state.stop_signal = self._signal
                name = signal.Signals(self._signal).name
                self.message(f"{name} received: checkpoint saved at step {state.step}")
        if last_saved != state.step:
            self.save_checkpoint()
        self._call("on_train_end")

    def _context_length(self) -> int:
        config = getattr(self.unwrapped, "config", None)
        value = getattr(config, "context_length", 0)
        return value if isinstance(value, int) else 0

    def _oom_error(self, error: BaseException) -> TrainingError:
        accum = self.config.grad_accum
        batch = self._last_batch_size()
        if batch > 1:
            smaller, more = max(1, batch // 2), accum * (2 if batch > 1 else 1)
            hint = (
                f"use batch_size {smaller} with grad_accum {more} (the same tokens per step); "
                "or precision bf16-mixed, activation_checkpointing: true"
            )
        else:
            hint = (
                "shorten the context, use activation_checkpointing: true or bf16, "
                "or a smaller model"
            )
        return TrainingError(
            f"out of memory at step {self.state.step + 1} with micro-batch size {batch} x "
            f"grad_accum {accum} ({type(error).__name__})",
            key="batch_size",
            hint=hint,
        )

    def _last_batch_size(self) -> int:
        if self._batch_rows:
            return self._batch_rows
        size = getattr(self.train_data, "batch_size", None)
        return size if isinstance(size, int) else 0

    def close(self) -> None:
        """Close the metrics log, TensorBoard and the progress bar."""
        if self._task is not None:
            if self.state.step >= self.config.max_steps:
                self._task.finish()
            else:
                self._task.stop()
            self._task = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
