"""``time_budget_s``: the run's length from its measured step times (a fake clock here)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lego.protocols import ConfigError
from lego.train import LRSchedule, TrainConfig, Trainer, read_metrics
from lego.train.budget import SIZING_PATIENCE, SIZING_STEPS, size_to_budget

MakeTrainer = Callable[..., Trainer]
STEP_S = 0.125  # a power of two: the fake clock's differences are exact


def _clock(monkeypatch: pytest.MonkeyPatch, step_s: float = STEP_S) -> None:
    """Every ``time.perf_counter()`` the trainer reads is ``step_s`` after the previous."""
    import lego.train.trainer as trainer_module

    ticks = iter(range(1, 10**9))
    fake = SimpleNamespace(perf_counter=lambda: next(ticks) * step_s)
    monkeypatch.setattr(trainer_module, "time", fake)


def _same_weights(a: Trainer, b: Trainer) -> None:
    left, right = a.model.state_dict(), b.model.state_dict()
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left)


def _rates(run: Path) -> list[float]:
    return [r["lr"] for r in read_metrics(run) if r.get("split") == "train"]


# -- size_to_budget --------------------------------------------------------------------------


def test_the_median_step_time_decides_within_the_bounds() -> None:
    sizing = size_to_budget([0.5, 0.1, 0.1, 0.1, 9.0], budget_s=2.0, max_steps=100, at_least=5)
    assert sizing.step_seconds == 0.1
    assert (sizing.fits, sizing.max_steps) == (20, 20)
    assert "training 20 of the configured 100" in sizing.reason
    plenty = size_to_budget([0.1], budget_s=60, max_steps=100, at_least=5)
    assert (plenty.fits, plenty.max_steps) == (600, 100)
    assert "training the configured 100" in plenty.reason
    short = size_to_budget([0.1], budget_s=0.2, max_steps=100, at_least=5)
    assert (short.fits, short.max_steps) == (2, 5)
    assert "the fewest it may" in short.reason
    free = size_to_budget([0.0], budget_s=1, max_steps=7, at_least=1)
    assert free.max_steps == 7


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (([], 1.0, 10, 1), "no step times"),
        (([0.1], 0.0, 10, 1), "must be > 0"),
        (([0.1], 1.0, 10, 11), "above max_steps"),
    ],
)
def test_size_to_budget_refuses_what_cannot_be_sized(
    args: tuple[list[float], float, int, int], needle: str
) -> None:
    times, budget, most, least = args
    with pytest.raises(ValueError, match=needle):
        size_to_budget(times, budget_s=budget, max_steps=most, at_least=least)


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_a_negative_or_non_finite_budget_is_a_config_error(
    base_config: TrainConfig, value: float
) -> None:
    with pytest.raises(ConfigError, match="time_budget_s must be >= 0") as caught:
        base_config.replace(time_budget_s=value)
    assert caught.value.key == "time_budget_s"


# -- the trainer -----------------------------------------------------------------------------


def test_a_budget_trains_what_fits_exactly_as_that_length_would(
    make_trainer: MakeTrainer, base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the warmup covers the timed steps: the sized run is the plain 20-step run, bit for bit
    config = base_config.replace(
        max_steps=50, log_every=1, schedule={"name": "cosine", "warmup_steps": SIZING_STEPS + 1}
    )
    plain = make_trainer(config.replace(max_steps=20, out_dir=base_config.out_dir + "-plain"))
    plain.fit()
    _clock(monkeypatch)
    sized = make_trainer(config.replace(time_budget_s=20 * STEP_S + STEP_S / 2))
    state = sized.fit()
    assert (state.step, state.max_steps, sized.config.max_steps) == (20, 20, 20)
    assert sized.budget_steps == 20
    assert sized.budget_reason is not None
    assert "20 steps fit; training 20 of the configured 50" in sized.budget_reason
    _same_weights(plain, sized)
    rates = _rates(Path(sized.config.out_dir))
    assert rates == _rates(Path(plain.config.out_dir))
    schedule = LRSchedule(name="cosine", warmup_steps=SIZING_STEPS + 1, max_steps=20, min_ratio=0.1)
    assert rates[-1] == pytest.approx(1e-2 * schedule(19))
    (record,) = [r for r in read_metrics(Path(config.out_dir)) if r.get("split") == "budget"]
    assert record["step"] == SIZING_STEPS + 1  # one untimed step, then the timed ones
    assert record["step_seconds"] == STEP_S
    assert (record["fits"], record["configured_steps"], record["max_steps"]) == (20, 50, 20)
    final = sized.checkpoints.read_state(sized.checkpoints.latest())
    assert (final.budget_steps, final.max_steps, final.step) == (20, 20, 20)


def test_a_large_budget_keeps_max_steps_and_a_tiny_one_keeps_the_warmup(
    make_trainer: MakeTrainer, base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clock(monkeypatch)
    ample = make_trainer(base_config.replace(max_steps=12, time_budget_s=1e6))
    assert ample.fit().step == 12
    assert ample.budget_steps == 12
    warm = {"name": "cosine", "warmup_steps": 9}
    tiny = make_trainer(
        base_config.replace(
            max_steps=30, time_budget_s=0.01, schedule=warm, out_dir=base_config.out_dir + "-t"
        )
    )
    state = tiny.fit()
    assert state.step == 9  # the warmup, though the budget fits none
    assert "the fewest it may" in (tiny.budget_reason or "")


def test_a_run_shorter_than_the_timing_is_not_sized(
    make_trainer: MakeTrainer, base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clock(monkeypatch)
    trainer = make_trainer(base_config.replace(max_steps=SIZING_STEPS, time_budget_s=0.01))
    assert trainer.fit().step == SIZING_STEPS
    assert trainer.budget_steps == 0
    assert trainer.budget_reason is None
    assert not [r for r in read_metrics(Path(trainer.config.out_dir)) if r["split"] == "budget"]


def test_a_resumed_run_keeps_its_length_and_one_stopped_before_sizing_sizes_itself(
    make_trainer: MakeTrainer, base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = base_config.replace(
        max_steps=50, checkpoint_every=3, keep_last=0, time_budget_s=20 * STEP_S
    )
    _clock(monkeypatch)
    whole = make_trainer(config)
    whole.fit()
    assert whole.state.step == 20
    checkpoints = Path(config.out_dir) / "checkpoints"
    # from step 9 (sized at step 6): the length is the checkpoint's, whatever the pace now
    _clock(monkeypatch, step_s=1.0)
    later = make_trainer(
        config.replace(resume=str(checkpoints / "step-00000009"), out_dir=config.out_dir + "-r")
    )
    assert later.config.max_steps == 20
    assert "as the checkpoint it resumes from" in (later.budget_reason or "")
    assert later.fit().step == 20
    _same_weights(whole, later)
    # from step 3 (before sizing): it times its own steps 5-9 and sizes at step 9
    early = whole.checkpoints.read_state(checkpoints / "step-00000003")
    assert (early.budget_steps, early.max_steps) == (0, 50)
    again = make_trainer(
        config.replace(resume=str(checkpoints / "step-00000003"), out_dir=config.out_dir + "-e")
    )
    assert again.fit().step == 9  # 2.5 s fit 2 steps of 1 s: at least the 9 taken
    assert again.budget_steps == 9
    (record,) = [r for r in read_metrics(Path(again.config.out_dir)) if r["split"] == "budget"]
    assert (record["step"], record["step_seconds"], record["fits"]) == (9, 1.0, 2)


def test_the_budget_key_reaches_the_trainer_from_a_mapping(base_config: TrainConfig) -> None:
    data: dict[str, Any] = {**base_config.to_dict(), "time_budget_s": 90}
    assert TrainConfig.from_dict(data).time_budget_s == 90.0


# -- batches that change shape ---------------------------------------------------------------


class _ShapedSource:
    """Batches of the given lengths, in turn; drawing one moves the fake clock.

    A batch of a length not drawn before costs ``8 * STEP_S`` (picking kernels for it),
    one of a length already drawn ``STEP_S``: the trainer's step time is what its batch
    cost, since the clock moves only here.
    """

    def __init__(self, lengths: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
        import lego.train.trainer as trainer_module

        self.lengths = lengths
        self.position = 0
        self.now = 0.0
        self.drawn: set[int] = set()
        monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: self.now))

    def __iter__(self) -> Any:
        while True:
            length = self.lengths[self.position % len(self.lengths)]
            self.position += 1
            self.now += STEP_S if length in self.drawn else 8 * STEP_S
            self.drawn.add(length)
            ids = (torch.arange(4 * (length + 1)).view(4, length + 1) * 5) % 32
            yield {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        self.position = int(state["position"])


def _shaped_trainer(
    tiny: Any, config: TrainConfig, lengths: list[int], monkeypatch: pytest.MonkeyPatch
) -> Trainer:
    torch.manual_seed(0)
    source = _ShapedSource(lengths, monkeypatch)
    return Trainer(model=tiny.TinyLM(), train_data=source, config=config)


def test_steps_that_meet_a_new_batch_shape_are_not_timed(
    tiny: Any, base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # new lengths at steps 1, 2, 3, 5 and 7: steps 4, 6, 8, 9 and 10 are timed, at STEP_S
    lengths = [8, 7, 6, 8, 5, 7, 4, 8, 6, 7] + [8] * 40
    config = base_config.replace(max_steps=50, time_budget_s=30 * STEP_S)
    trainer = _shaped_trainer(tiny, config, lengths, monkeypatch)
    assert trainer.fit().step == 30
    (record,) = [r for r in read_metrics(Path(config.out_dir)) if r["split"] == "budget"]
    assert (record["step"], record["step_seconds"], record["fits"]) == (10, STEP_S, 30)
    # the rule this replaces (time steps 2 to 6 whatever their shapes) gives 8 x STEP_S
    first_five = [8 * STEP_S, 8 * STEP_S, STEP_S, 8 * STEP_S, STEP_S]
    assert size_to_budget(first_five, budget_s=30 * STEP_S, max_steps=50, at_least=2).fits == 3


def test_shapes_that_keep_changing_size_after_the_patience_from_every_step_but_the_first(
    tiny: Any, base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every step a new length: no step is timed by the shape rule
    lengths = [2 + i for i in range(SIZING_PATIENCE + 20)]
    config = base_config.replace(max_steps=SIZING_PATIENCE + 20, time_budget_s=1e6)
    trainer = _shaped_trainer(tiny, config, lengths, monkeypatch)
    assert trainer.fit().step == SIZING_PATIENCE + 20
    (record,) = [r for r in read_metrics(Path(config.out_dir)) if r["split"] == "budget"]
    assert (record["step"], record["step_seconds"]) == (SIZING_PATIENCE, 8 * STEP_S)
