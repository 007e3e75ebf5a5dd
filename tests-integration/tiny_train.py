"""The tiny training run the lego-train integration suites share (dotted overrides).

A 2-layer, 32-wide model on a 320-token vocabulary and 32-token windows, batch 4, one
warm-up step: small enough for a CPU test, a real run of every stage all the same.
"""

from __future__ import annotations

TINY_RUN = [
    "precision=fp32",  # exact comparisons; `auto` would measure and may pick bf16
    "time_budget_s=0",  # the same: a budget would size the run by measured time
    "schedule.warmup_steps=1",
    "data.vocab_size=320",
    "data.batch_size=4",
    "data.context_length=32",
    "model.overrides.context_length=32",
    "model.overrides.d_model=32",
    "model.overrides.n_layers=2",
    "model.overrides.n_heads=2",
    "model.overrides.d_ff=64",
]
"""Overrides for any recipe or pipeline config: the data and model sizes of the tiny run."""
