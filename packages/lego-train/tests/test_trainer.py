from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as fn

from lego.protocols import ConfigError, DataError, TrainingError
from lego.train import (
    TrainConfig,
    Trainer,
    read_metrics,
)

MakeTrainer = Callable[..., Trainer]


def test_accumulation_equals_the_big_batch(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    big = make_trainer(
        base_config.replace(max_steps=3, out_dir=base_config.out_dir + "a"), batch=4, ignore=3
    )
    big.fit()
    small = make_trainer(
        base_config.replace(max_steps=3, grad_accum=2, out_dir=base_config.out_dir + "b"),
        batch=2,
        ignore=3,
    )
    small.fit()
    pairs = zip(big.model.state_dict().items(), small.model.state_dict().values(), strict=True)
    for (name, a), b in pairs:
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert big.state.tokens_seen == small.state.tokens_seen > 0


def test_loss_decreases_and_metrics_are_logged(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    eval_source = tiny.ListSource(tiny.make_tokens(n=400, seed=1), batch_size=4, context=8)
    config = base_config.replace(max_steps=20, eval_every=10)
    trainer = make_trainer(config, eval_data=eval_source)
    first = trainer.evaluate()["val_loss"]
    state = trainer.fit()
    assert state.metrics["val_loss"] < first
    assert state.metrics["val_ppl"] == pytest.approx(math.exp(state.metrics["val_loss"]))
    records = read_metrics(config.out_dir)
    assert [r["step"] for r in records if r["split"] == "val"] == [10, 20]
    assert len([r for r in records if r["split"] == "train"]) == 20
    # evaluation is repeatable: the source is rewound each time
    assert trainer.evaluate()["val_loss"] == pytest.approx(state.metrics["val_loss"])


class NaNModel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, bad_steps: set[int]) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.bad = bad_steps

    @property
    def config(self) -> Any:
        return self.inner.config

    def forward(self, ids: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls += 1
        out = self.inner(ids)
        return out * float("nan") if self.calls in self.bad else out


def test_nan_skip_leaves_weights_and_stop_names_the_step(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    model = NaNModel(tiny.TinyLM(), {3})
    trainer = make_trainer(base_config.replace(on_nan="skip", max_steps=4), model=model)
    state = trainer.fit()
    assert state.skipped_steps == 1
    assert state.step == 4

    model = NaNModel(tiny.TinyLM(), {3})
    config = base_config.replace(
        on_nan="stop", checkpoint_every=1, out_dir=base_config.out_dir + "2"
    )
    trainer = make_trainer(config, model=model)
    with pytest.raises(TrainingError, match="step 3") as info:
        trainer.fit()
    assert "step-00000002" in str(info.value)
    assert (Path(config.out_dir) / "checkpoints" / "latest").read_text().strip() == "step-00000002"


class OOMModel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def config(self) -> Any:
        return self.inner.config

    def forward(self, ids: torch.Tensor, **kw: Any) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")


def test_out_of_memory_suggests_a_batch_that_fits(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    trainer = make_trainer(base_config.replace(grad_accum=2), model=OOMModel(tiny.TinyLM()))
    with pytest.raises(TrainingError, match="batch_size 2 with grad_accum 4"):
        trainer.fit()


class AuxLM(torch.nn.Module):
    """TinyLM plus an MoE-like auxiliary loss on its head."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def config(self) -> Any:
        return self.inner.config

    @property
    def aux_loss(self) -> torch.Tensor:
        return 0.5 * self.inner.head.weight.square().mean()

    def forward(self, ids: torch.Tensor, **kw: Any) -> torch.Tensor:
        return self.inner(ids)  # (B, T, V)


def test_aux_loss_is_added_to_the_objective(tiny: Any, base_config: TrainConfig) -> None:
    torch.manual_seed(0)
    model = AuxLM(tiny.TinyLM())
    source = tiny.ListSource(tiny.make_tokens(), batch_size=4, context=8, ignore_every=3)
    batch = next(iter(tiny.ListSource(tiny.make_tokens(), batch_size=4, context=8, ignore_every=3)))
    reference = AuxLM(tiny.TinyLM())
    reference.load_state_dict(model.state_dict())
    logits = reference(batch["input_ids"])
    loss = fn.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
    (loss + reference.aux_loss).backward()  # type: ignore[no-untyped-call]

    trainer = Trainer(model=model, train_data=source, config=base_config)
    captured: dict[str, torch.Tensor] = {}

    def capture() -> float:
        for name, p in model.named_parameters():
            assert p.grad is not None
            captured[name] = p.grad.clone()
        return 0.0

    trainer._optimizer_step = capture  # type: ignore[method-assign]
    trainer._train_step()
    for name, p in reference.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(captured[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_activation_checkpointing_needs_the_attribute(tiny: Any, base_config: TrainConfig) -> None:
    source = tiny.ListSource(tiny.make_tokens(), batch_size=4, context=8)
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        Trainer(
            model=tiny.TinyLM(),
            train_data=source,
            config=base_config.replace(activation_checkpointing=True),
        )


def test_tensorboard_missing_is_a_config_error(tiny: Any, base_config: TrainConfig) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed; the missing-package path cannot be exercised")
    source = tiny.ListSource(tiny.make_tokens(), batch_size=4, context=8)
    with pytest.raises(ConfigError, match=r"lego-train\[tensorboard\]"):  # before training
        Trainer(
            model=tiny.TinyLM(), train_data=source, config=base_config.replace(tensorboard=True)
        )


def test_empty_batch_source_is_a_data_error(tiny: Any, base_config: TrainConfig) -> None:

    source = tiny.ListSource(tiny.make_tokens(n=20), batch_size=4, context=8)
    trainer = Trainer(model=tiny.TinyLM(), train_data=source, config=base_config)
    with pytest.raises(DataError, match="no batches"):
        trainer.fit()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_trains_like_eager(
    make_trainer: MakeTrainer, base_config: TrainConfig
) -> None:
    eager = make_trainer(base_config.replace(max_steps=3, out_dir=base_config.out_dir + "e"))
    eager.fit()
    compiled = make_trainer(base_config.replace(max_steps=3, compile=True))
    assert compiled.forward_model is not compiled.model  # the compiled wrapper
    compiled.fit()
    losses = [read_metrics(t.config.out_dir) for t in (eager, compiled)]
    for a, b in zip(*losses, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    # checkpoints hold the user's module names, not the compiled wrapper's
    state = json.loads(
        (
            Path(base_config.out_dir) / "checkpoints" / "step-00000003" / "trainer_state.json"
        ).read_text()
    )
    assert not any(name.startswith("_orig_mod") for name in state["model"]["shapes"])
