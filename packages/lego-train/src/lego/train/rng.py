"""Random-number-generator states: python, numpy, torch (CPU) and every CUDA device.

The states are plain tensors, numbers and lists, so they save with ``torch.save`` and load
with ``torch.load(weights_only=True)``; restoring them makes dropout and any sampling after a
resume draw exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from lego.protocols import FormatError

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA).

    Args:
        seed: The seed.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Return every generator's state as ``torch.load(weights_only=True)``-safe data.

    Returns:
        ``{"python": [...], "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]}``.
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc,unused-ignore]
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any], *, path: str | None = None) -> None:
    """Restore the states from [`capture_rng_state()`][lego.train.rng.capture_rng_state].

    Args:
        state: The captured states.
        path: The file they came from, quoted in errors.

    Raises:
        FormatError: When a state is missing or malformed.
    """
    try:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss"]))
        npy = state["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (npy["kind"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached"]))
        )
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda", [])
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise FormatError(
            f"the saved random-number-generator states are malformed ({exc})",
            path=path,
            hint="the checkpoint is damaged; resume from an earlier one",
        ) from exc
