"""LegoLLM's training library: any causal LM, any batch source, exact resume, torchrun.

- [`Trainer`][lego.train.trainer.Trainer] and its [`TrainConfig`][lego.train.config.TrainConfig]
  ([`OptimConfig`][lego.train.config.OptimConfig],
  [`ScheduleConfig`][lego.train.config.ScheduleConfig]);
- AdamW with no-decay groups ([`build_optimizer()`][lego.train.optim.build_optimizer]) and
  schedules ([`LRSchedule`][lego.train.schedule.LRSchedule]);
- checkpoints ([`CheckpointManager`][lego.train.checkpoint.CheckpointManager]): atomic,
  verified, resumable bit for bit; the run directory's guard
  ([`check_run_dir()`][lego.train.rundir.check_run_dir]: one writer, no run replaced by a
  new one);
- DDP / FSDP2 under ``torchrun`` ([`lego.train.distributed`][lego.train.distributed]);
- FLOPs and MFU ([`flops_per_token()`][lego.train.flops.flops_per_token]), the metrics log and
  its progress line ([`lego.train.monitor`][lego.train.monitor]);
- callbacks ([`SampleCallback`][lego.train.callbacks.SampleCallback]);
- what is minimised: an [`Objective`][lego.train.objective.Objective] (default
  [`TokenObjective`][lego.train.objective.TokenObjective], the next-token cross-entropy), so
  reward-model and preference losses train on the same loop.

lego-train is a library: it trains any model on any batch source and imports no other
brick. Pretraining a lego-arch model on lego-data tokens from a YAML file is a recipe of the
application, ``legollm pretrain`` (``lego.recipes.pretrain``).
"""

from lego.train.__about__ import __version__
from lego.train.callbacks import SampleCallback
from lego.train.checkpoint import CheckpointManager
from lego.train.config import OptimConfig, ScheduleConfig, TrainConfig
from lego.train.flops import flops_per_token, measure_peak_flops, mfu
from lego.train.monitor import read_metrics
from lego.train.objective import (
    Objective,
    ObjectiveOutput,
    TokenObjective,
    model_inputs,
    token_loss,
)
from lego.train.optim import build_optimizer, param_groups
from lego.train.rundir import check_run_dir
from lego.train.schedule import LRSchedule, build_scheduler
from lego.train.state import RunState
from lego.train.trainer import Trainer

__all__ = [
    "__version__",
    "Trainer",
    "TrainConfig",
    "OptimConfig",
    "ScheduleConfig",
    "RunState",
    "CheckpointManager",
    "check_run_dir",
    "SampleCallback",
    "LRSchedule",
    "build_scheduler",
    "build_optimizer",
    "param_groups",
    "flops_per_token",
    "measure_peak_flops",
    "mfu",
    "read_metrics",
    "token_loss",
    "Objective",
    "ObjectiveOutput",
    "TokenObjective",
    "model_inputs",
]
