"""The Trainer's configuration: validated, frozen dataclasses that round-trip through YAML/JSON.

[`TrainConfig`][lego.train.config.TrainConfig] holds everything the
[`Trainer`][lego.train.trainer.Trainer] needs besides the model and the data: the optimizer
([`OptimConfig`][lego.train.config.OptimConfig]), the learning-rate schedule
([`ScheduleConfig`][lego.train.config.ScheduleConfig]), precision, accumulation, evaluation,
checkpointing, fault handling and distribution. Unknown keys are errors that suggest the
closest valid key (see [`lego.protocols.Config`][lego.protocols.Config]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from lego.protocols import Config, ConfigError, check_int

__all__ = [
    "SEED_MAX",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "Precision",
    "Strategy",
    "ScheduleName",
]

SEED_MAX = 2**64 - 1
"""The largest seed (torch's generators take 64-bit unsigned seeds)."""

Precision = Literal["fp32", "bf16-mixed", "fp16-mixed", "bf16-true", "auto"]
"""How the model computes: fp32; bf16 or fp16 autocast over fp32 weights (fp16 with a
GradScaler); bf16 weights with an fp32 master copy in the optimizer (``bf16-true``); or
``auto``: ``bf16-mixed`` or ``fp32``, whichever the device runs faster, measured when the
trainer starts ([`choose_precision()`][lego.train.precision.choose_precision]; a resumed
run keeps its checkpoint's)."""

Strategy = Literal["auto", "single", "ddp", "fsdp"]
"""How several processes share the work: ``auto`` is DDP under torchrun, else one process."""

ScheduleName = Literal["cosine", "linear", "constant", "wsd"]
"""Learning-rate schedules (all after a linear warmup): cosine to ``min_lr``, linear to
``min_lr``, constant, warmup-stable-decay."""


@dataclass(frozen=True, kw_only=True)
class OptimConfig(Config):
    """AdamW with decoupled weight decay.

    Attributes:
        lr: The peak learning rate (``> 0``).
        min_lr: The floor of the decaying schedules (``0 <= min_lr <= lr``).
        weight_decay: Decoupled weight decay of the decayed parameters.
        betas: AdamW's ``(beta1, beta2)``.
        eps: AdamW's epsilon.
        fused: Use the fused AdamW kernel: True, False, or None for "when available".
        no_decay_norms_biases_embeddings: Exempt norm scales, biases and embeddings (every
            parameter with fewer than two dimensions, and every ``nn.Embedding`` weight) from
            weight decay.
        grad_clip: Clip the global gradient norm to this value; 0 disables clipping.
    """

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    fused: bool | None = None
    no_decay_norms_biases_embeddings: bool = True
    grad_clip: float = 1.0

    def validate(self) -> None:
        """Check the learning rates, betas and clipping."""
        super().validate()
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}", key="lr", hint="e.g. lr: 3.0e-4")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(
                f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}",
                key="min_lr",
                hint="e.g. min_lr = lr / 10",
            )
        if self.weight_decay < 0:
            raise ConfigError(
                f"weight_decay must be >= 0, got {self.weight_decay}", key="weight_decay"
            )
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ConfigError(f"betas[{i}] must be in [0, 1), got {beta}", key="betas")
        if not self.eps > 0:
            raise ConfigError(f"eps must be > 0, got {self.eps}", key="eps")
        if self.grad_clip < 0:
            raise ConfigError(
                f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}",
                key="grad_clip",
            )


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig(Config):
    """The learning-rate schedule, counted in optimizer steps.

    Attributes:
        name: ``cosine`` (warmup, then cosine from ``lr`` to ``min_lr`` at ``max_steps``),
            ``linear`` (warmup, then linear to ``min_lr``), ``constant`` (warmup, then
            ``lr``) or ``wsd`` (warmup, stable at ``lr``, then linear to ``min_lr`` over the
            last ``decay_fraction`` of the steps).
        warmup_steps: Steps of linear warmup from 0 to ``lr``.
        decay_fraction: The share of ``max_steps`` that ``wsd`` spends decaying.
    """

    name: ScheduleName = "cosine"
    warmup_steps: int = 0
    decay_fraction: float = 0.2

    def validate(self) -> None:
        """Check the warmup and the decay fraction."""
        super().validate()
        if self.warmup_steps < 0:
            raise ConfigError(
                f"warmup_steps must be >= 0, got {self.warmup_steps}", key="warmup_steps"
            )
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(
                f"decay_fraction must be in (0, 1], got {self.decay_fraction}",
                key="decay_fraction",
            )


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """Everything the [`Trainer`][lego.train.trainer.Trainer] needs besides model and data.

    Attributes:
        out_dir: The run directory (checkpoints, ``metrics.jsonl``, TensorBoard events).
        max_steps: Optimizer steps to train for (with ``time_budget_s``: at most).
        time_budget_s: 0 trains ``max_steps``. Above 0, the seconds the run's steps may
            take: the trainer times its first steps and trains the steps that fit, at most
            ``max_steps`` and at least the warmup (see [`lego.train.budget`][lego.train.budget];
            evaluations and checkpoints come on top). A resumed run keeps the length its
            checkpoint recorded.
        grad_accum: Micro-batches per optimizer step (gradient accumulation).
        optim: The optimizer.
        schedule: The learning-rate schedule.
        precision: See [`Precision`][lego.train.config.Precision].
        activation_checkpointing: Recompute activations in the backward pass (sets
            ``model.activation_checkpointing = True`` when the model has that attribute).
        compile: Wrap the model with ``torch.compile``.
        seed: Seeds python, numpy and torch before the model's first step (``0 ..
            2**64 - 1``, what torch accepts).
        eval_every: Evaluate every this many steps (and after the last); 0 never.
        eval_batches: Batches per evaluation (0: the whole evaluation source).
        checkpoint_every: Save a checkpoint every this many steps (and after the last);
            0 only at the end.
        keep_last: Keep this many newest checkpoints (0 keeps all).
        log_every: Log training metrics every this many steps.
        on_nan: On a non-finite loss, ``skip`` the step (weights untouched) or ``stop`` with
            a [`TrainingError`][lego.protocols.TrainingError].
        progress: ``auto`` (a rich bar on a terminal, plain lines otherwise), ``rich``,
            ``plain`` or ``none``.
        tensorboard: Also write TensorBoard event files (needs ``lego-train[tensorboard]``).
        strategy: See [`Strategy`][lego.train.config.Strategy].
        device: ``auto`` (CUDA when available, else CPU), or a torch device string.
        peak_flops: The accelerator's peak FLOP/s for MFU; 0 measures it once with a short
            matmul probe.
        resume: ``""`` (a fresh run: ``out_dir`` must not hold one), ``auto`` (the run's
            newest complete checkpoint, a fresh start when there is none: the setting for
            a command that both starts and continues a run, e.g. under ``torchrun
            --max-restarts``), ``latest`` (the same as ``auto``) or a checkpoint path.
        overwrite: Replace a run that ``out_dir`` already holds (its checkpoints, metrics
            and TensorBoard files are deleted when training starts). Without it a fresh
            run into a folder that holds one is a [`ConfigError`][lego.protocols.ConfigError]:
            nothing a finished run wrote is lost by running a command twice.
    """

    out_dir: str = "runs/lego"
    max_steps: int = 1000
    time_budget_s: float = 0.0
    grad_accum: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: Precision = "fp32"
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    eval_every: int = 0
    eval_batches: int = 0
    checkpoint_every: int = 0
    keep_last: int = 3
    log_every: int = 1
    on_nan: Literal["skip", "stop"] = "stop"
    progress: Literal["auto", "rich", "plain", "none"] = "auto"
    tensorboard: bool = False
    strategy: Strategy = "auto"
    device: str = "auto"
    peak_flops: float = 0.0
    resume: str = ""
    overwrite: bool = False

    def validate(self) -> None:
        """Check counts and their combinations (e.g. warmup longer than training)."""
        super().validate()
        positive = {"max_steps": self.max_steps, "grad_accum": self.grad_accum}
        positive["log_every"] = self.log_every
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be at least 1, got {value}", key=key)
        for key in ("eval_every", "eval_batches", "checkpoint_every", "keep_last"):
            value = getattr(self, key)
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}", key=key)
        if self.schedule.warmup_steps > self.max_steps:
            raise ConfigError(
                f"warmup ({self.schedule.warmup_steps} steps) is longer than training "
                f"({self.max_steps} steps)",
                key="schedule.warmup_steps",
                hint=f"use at most {self.max_steps} warmup steps (often 1-10% of max_steps)",
            )
        if not (math.isfinite(self.time_budget_s) and self.time_budget_s >= 0):
            raise ConfigError(
                f"time_budget_s must be >= 0 seconds (0: train max_steps), got "
                f"{self.time_budget_s}",
                key="time_budget_s",
            )
        if self.peak_flops < 0:
            raise ConfigError(f"peak_flops must be >= 0, got {self.peak_flops}", key="peak_flops")
        if not self.out_dir:
            raise ConfigError("out_dir must not be empty", key="out_dir")
        check_int(
            "seed", self.seed, minimum=0, maximum=SEED_MAX, hint="use a seed in 0 .. 2**64 - 1"
        )
        if self.overwrite and self.resume:
            raise ConfigError(
                f"overwrite=true replaces the run in out_dir; resume={self.resume!r} continues "
                "one: choose one of them",
                key="overwrite",
                hint="drop overwrite to continue the run, or resume to replace it",
            )
