"""FLOPs per token, a matmul peak probe and MFU (model FLOPs utilization).

The model's training FLOPs per token follow the PaLM/Chinchilla accounting: ``6 N`` for the
``N`` non-embedding-lookup parameters (forward 2N, backward 4N) plus ``12 L d T`` for the
attention scores and their weighted sum over a context of ``T`` tokens. The numbers come
from the parameters and the config fields ``n_layers``, ``d_model`` and ``context_length``
when the model's config has them, so any model works (without those fields the attention
term is left out).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

__all__ = ["flops_per_token", "measure_peak_flops", "mfu"]


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def flops_per_token(model: nn.Module, *, context_length: int | None = None) -> float:
    """Training FLOPs per token (forward + backward) of ``model``.

    Args:
        model: The model; its ``config`` may hold ``n_layers``, ``d_model`` and
            ``context_length``.
        context_length: The training sequence length (default: the config's).

    Returns:
        ``6 * N + 12 * n_layers * d_model * T``, with ``N`` the parameters that are not only
        looked up (a separate, untied position or token embedding table is left out; a tied
        one counts once since the output head uses it).
    """
    lookups = 0
    head = getattr(model, "lm_head", None)
    head_weight = getattr(head, "weight", None)
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight is not head_weight:
            lookups += module.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    flops = 6.0 * (total - lookups)
    config = getattr(model, "config", None)
    n_layers = _config_int(config, "n_layers", "n_layer", "num_hidden_layers")
    d_model = _config_int(config, "d_model", "n_embd", "hidden_size")
    length = context_length or _config_int(config, "context_length", "n_positions")
    if n_layers and d_model and length:
        flops += 12.0 * n_layers * d_model * length
    return flops


def measure_peak_flops(
    *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", size: int = 0
) -> float:
    """Measure the matmul throughput of ``device`` in ``dtype`` with a short probe.

    Args:
        dtype: The matmul dtype.
        device: The device.
        size: The square matrix size (0: 2048 on CPU, 8192 on an accelerator).

    Returns:
        The best FLOP/s over a few ``size x size`` matmuls after a warm-up (well under a
        second).
    """
    dev = torch.device(device)
    size = size or (2048 if dev.type == "cpu" else 8192)
    a = torch.randn(size, size, device=dev).to(dtype)
    b = torch.randn(size, size, device=dev).to(dtype)
    torch.mm(a, b)  # warm-up: kernel selection, page faults
    best = float("inf")
    for _ in range(3):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(2):
            torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, (time.perf_counter() - start) / 2)
    return 2.0 * size**3 / max(best, 1e-12)


def mfu(*, flops_per_token: float, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the peak.

    Args:
        flops_per_token: From [`flops_per_token()`][lego.train.flops.flops_per_token].
        tokens_per_second: Measured training throughput (all ranks of one device count once).
        peak_flops: The device's peak FLOP/s.

    Returns:
        A fraction (0.5 is 50%); 0 when the peak is unknown.
    """
    if peak_flops <= 0:
        return 0.0
    return flops_per_token * tokens_per_second / peak_flops
