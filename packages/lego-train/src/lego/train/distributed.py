"""Several processes under ``torchrun``: process groups, DDP and FSDP2 wrapping, reductions.

``torchrun --nproc_per_node N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
[`init_distributed()`][lego.train.distributed.init_distributed] reads them and starts the
process group (gloo on CPU, nccl on CUDA). [`wrap_model()`][lego.train.distributed.wrap_model]
wraps the model in ``DistributedDataParallel`` or shards it with FSDP2's ``fully_shard``
(every element of every ``nn.ModuleList``, i.e. each transformer block, then the root).

Checkpoints under FSDP are *consolidated*: rank 0 gathers the full (unsharded) state of the
model and the optimizer and writes one ordinary model directory, so a checkpoint loads
anywhere (one process, another world size, lego-generate, transformers). The price is
gathering the state on rank 0's CPU memory at each save, fine up to a few billion
parameters.

Elastic restarts (``torchrun --max-restarts N``): when a process dies, the others fail in
their next collective; [`peer_errors()`][lego.train.distributed.peer_errors] turns that
into one [`TrainingError`][lego.protocols.TrainingError] (not a traceback), torchrun
restarts the group and ``resume=auto`` continues from the last complete checkpoint. On
several machines torchrun's shared rendezvous store keeps the addresses of the previous
attempt's processes, so a restarted group cannot connect; set
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` for torchrun (a note on stderr says so when it is
missing).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lego.protocols import ConfigError, TrainingError
from lego.train.config import Strategy

__all__ = [
    "DistInfo",
    "pick_device",
    "init_distributed",
    "resolve_strategy",
    "wrap_model",
    "all_reduce_sum",
    "raise_together",
    "peer_errors",
    "SHARED_STORE_NOTE",
    "no_sync",
    "unwrap",
    "is_fsdp",
    "full_state_dicts",
    "load_full_optimizer_state",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands among the others.

    Attributes:
        rank: This process's global rank.
        local_rank: Its rank on this machine (the CUDA device index).
        world_size: The number of processes.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that logs and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be an integer, got {text!r}", key=name
        ) from None


def pick_device(spec: str) -> torch.device:
    """Resolve a ``device`` setting: ``auto`` picks CUDA, then Apple's MPS, then the CPU.

    Args:
        spec: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is available, else ``mps`` when
            Apple's Metal backend is, else CPU) or a torch device string (``cpu``,
            ``cuda``, ``cuda:1``, ``mps``).

    Returns:
        The device.

    Raises:
        ConfigError: A string torch does not understand, or a CUDA / MPS device that this
            torch build or machine does not have.

    Example:
        >>> pick_device("cpu")
        device(type='cpu')
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _env_int("LOCAL_RANK", 0))
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(
            f"unknown device {spec!r}", key="device", hint="use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build, but no GPU"
        raise ConfigError(
            f"device {spec!r} asks for CUDA, but this torch {torch.__version__} is {build}",
            key="device",
            hint="use device=auto or device=cpu, or install a CUDA build of torch on a GPU machine",
        )
    if device.type == "mps" and not _mps_available():
        raise ConfigError(
            f"device {spec!r} asks for Apple's MPS backend, which is not available here",
            key="device",
            hint="use device=auto or device=cpu",
        )
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def init_distributed(device: torch.device) -> DistInfo:
    """Start the process group when launched by ``torchrun`` with more than one process.

    Args:
        device: The device this process trains on (decides gloo vs nccl).

    Returns:
        This process's [`DistInfo`][lego.train.distributed.DistInfo].
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group(backend=backend, device_id=device)
        else:
            dist.init_process_group(backend=backend)
        if rank == 0 and _restarts_need_fresh_store():
            print(f"note: {SHARED_STORE_NOTE}", file=sys.stderr)
    if dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), local_rank=local, world_size=dist.get_world_size())
    return DistInfo(rank=rank, local_rank=local, world_size=1)


SHARED_STORE_NOTE = (
    "torchrun restarts this job on several machines (--max-restarts), but shares its "
    "rendezvous store between attempts: a restarted group would find the old processes' "
    "addresses there and fail to connect; set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for "
    "torchrun on every machine"
)
"""The note rank 0 prints when an elastic multi-machine job lacks a fresh store per attempt."""


def _restarts_need_fresh_store() -> bool:
    """Several machines, restarts allowed, and the rendezvous store shared between attempts."""
    nodes = _env_int("WORLD_SIZE", 1) > _env_int("LOCAL_WORLD_SIZE", _env_int("WORLD_SIZE", 1))
    restarts = _env_int("TORCHELASTIC_MAX_RESTARTS", 0) > 0
    return nodes and restarts and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


_PEER_LOST = re.compile(
    r"closed by peer|reset by peer|remote worker|Broken pipe|Connection refused|"
    r"NCCL communicator was aborted|NCCL error",
    re.IGNORECASE,
)


@contextlib.contextmanager
def peer_errors() -> Iterator[None]:
    """Turn a collective that failed because another process died into a TrainingError.

    Under ``torchrun --max-restarts`` that is expected: torchrun restarts the group and
    ``resume=auto`` continues from the last complete checkpoint. Outside a process group,
    or for any other error, nothing changes.

    Yields:
        Nothing.

    Raises:
        TrainingError: A collective failed because a peer process is gone.
    """
    try:
        yield
    except RuntimeError as exc:
        lost = isinstance(exc, getattr(dist, "DistNetworkError", ())) or bool(
            _PEER_LOST.search(str(exc))
        )
        if not (lost and dist.is_initialized()):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"rank {dist.get_rank()} stops: another process of the group is gone ({first[:200]})",
            hint="under torchrun --max-restarts N with resume=auto the group restarts and "
            "continues from the last complete checkpoint; otherwise look at the other "
            "process's message and run again with resume=auto",
        ) from exc


def resolve_strategy(strategy: Strategy, info: DistInfo) -> Strategy:
    """Turn ``auto`` into ``ddp`` (several processes) or ``single``.

    Args:
        strategy: The configured strategy.
        info: The process group.

    Returns:
        ``single``, ``ddp`` or ``fsdp``.

    Raises:
        ConfigError: On ``single`` with several processes (``ddp`` and ``fsdp`` in one
            process run unwrapped).
    """
    if strategy == "auto":
        return "ddp" if info.distributed else "single"
    if strategy == "single" and info.distributed:
        raise ConfigError(
            f"strategy 'single' cannot run in {info.world_size} processes",
            key="strategy",
            hint="use strategy: ddp or fsdp under torchrun, or launch one process",
        )
    return strategy


def wrap_model(model: nn.Module, strategy: Strategy, device: torch.device) -> nn.Module:
    """Wrap ``model`` for data parallelism.

    Args:
        model: The model, already on ``device``.
        strategy: ``single`` (returned as is), ``ddp`` or ``fsdp``.
        device: The training device.

    Returns:
        The model to call in the training loop.
    """
    if strategy == "single" or not dist.is_initialized():
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP or ``torch.compile`` wrapper (FSDP2 shards in place).

    Args:
        model: Possibly wrapped model.

    Returns:
        The user's model.
    """
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` was sharded with FSDP2's ``fully_shard``."""
    return type(model).__name__.startswith("FSDP")


@contextlib.contextmanager
def no_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of a micro-batch that is not the last of its step.

    Args:
        model: The wrapped model.
        enabled: Skip synchronization now (False: synchronize as usual).

    Yields:
        Nothing.
    """
    sync_off = getattr(model, "no_sync", None)
    if enabled and callable(sync_off):
        with sync_off():
            yield
        return
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:
        setter(not enabled)
        try:
            yield
        finally:
            setter(True)
        return
    yield


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (a no-op in one process).

    Args:
        values: This process's numbers.
        device: A device the backend can reduce on.

    Returns:
        The sums, in order.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(x) for x in tensor.tolist()]


def raise_together(error: BaseException | None, device: torch.device) -> None:
    """Fail on every process when one failed (collective under ``torchrun``).

    Work that only rank 0 does (checking and locking the run directory, writing a
    checkpoint) must not leave the other ranks waiting in the next collective for ever:
    every rank calls this with its own error, or None; when any rank had one, each rank
    raises (its own error, or a [`ConfigError`][lego.protocols.ConfigError] that points at
    the other rank's message).

    Args:
        error: This rank's error, or None.
        device: A device the backend can reduce on.

    Raises:
        BaseException: ``error``; or ConfigError when only another rank failed.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if error is not None:
            raise error
        return
    with peer_errors():  # a rank that died before it could vote
        (failed,) = all_reduce_sum([0.0 if error is None else 1.0], device)
    if error is not None:
        raise error
    if failed:
        raise ConfigError(
            f"rank {dist.get_rank()} stops: another rank failed (its message is above)",
            hint="fix what that rank reported and run again",
        )


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gather the full model and optimizer state of an FSDP model (collective).

    Args:
        model: The sharded model.
        optimizer: Its optimizer.

    Returns:
        ``(model_state, optimizer_state)`` on CPU, complete on rank 0 (empty elsewhere).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    return dict(model_state), dict(optim_state)


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, optim_state: dict[str, Any]
) -> None:
    """Load a full (consolidated) optimizer state into an FSDP model's optimizer (collective).

    Args:
        model: The sharded model (its weights are already loaded).
        optimizer: Its optimizer.
        optim_state: The full optimizer state in the ``get_optimizer_state_dict`` layout
            (every rank read it from the checkpoint).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)
