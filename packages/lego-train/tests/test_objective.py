"""The Objective hook: any loss on the Trainer's loop, exact under accumulation, logged."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as fn

from lego.protocols import DataError
from lego.train import Objective, ObjectiveOutput, TokenObjective, TrainConfig, model_inputs


class RowObjective:
    """One unit per row: each row's mean cross-entropy (not the token-weighted mean)."""

    perplexity = False

    def units(self, batch: Mapping[str, Tensor], /) -> int:
        return int(batch["input_ids"].shape[0])

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], /) -> ObjectiveOutput:
        logits = model(batch["input_ids"], **model_inputs(batch))  # (B, T, V)
        per_token = fn.cross_entropy(
            logits.float().transpose(1, 2), batch["labels"], reduction="none", ignore_index=-100
        )  # (B, T)
        trained = (batch["labels"] != -100).sum(dim=1).clamp(min=1)  # (B,)
        per_row = per_token.sum(dim=1) / trained  # (B,)
        metrics = {
            "square": (per_row.detach() ** 2).sum(),  # logged as the mean square per row
            "rows": per_row.new_tensor(float(per_row.numel())),  # mean per row: exactly 1
        }
        return ObjectiveOutput(per_row.sum(), batch["input_ids"].numel(), metrics)


def test_protocol() -> None:
    assert isinstance(RowObjective(), Objective)
    assert isinstance(TokenObjective(), Objective)


def test_accumulation_equals_the_big_batch(make_trainer: Any, base_config: TrainConfig) -> None:
    # grad_accum 2 x batch 2 and one batch of 4 see the same rows: each micro-batch's sum
    # is divided by the step's 4 rows, so both give the same weights.
    big = make_trainer(
        dataclasses.replace(base_config, out_dir=base_config.out_dir + "-big", max_steps=3),
        batch=4,
        objective=RowObjective(),
        ignore=3,
    )
    big.fit()
    small = make_trainer(
        dataclasses.replace(base_config, grad_accum=2, max_steps=3),
        batch=2,
        objective=RowObjective(),
        ignore=3,
    )
    small.fit()
    for a, b in zip(big.model.parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert big.state.metrics["loss"] == pytest.approx(small.state.metrics["loss"], rel=1e-5)
    # every row counted once per unit: the metric "rows" averages to exactly 1
    assert small.state.metrics["rows"] == pytest.approx(1.0)
    # tokens are the objective's (all positions), not the trained labels
    assert small.state.tokens_seen == 3 * 4 * 8


def test_the_objective_replaces_the_token_mean(
    make_trainer: Any, base_config: TrainConfig, tiny: Any
) -> None:
    # Rows with different numbers of trained labels: the mean per row differs from the
    # mean per token, and the Trainer reports the objective's.
    source = tiny.ListSource(tiny.make_tokens(), batch_size=4, context=8)
    batch = next(iter(source))
    for row in range(4):
        batch["labels"][row, : 2 * row] = -100
    torch.manual_seed(0)
    model = tiny.TinyLM()
    expected_rows = RowObjective()(model, batch).loss_sum.item() / 4
    expected_tokens = TokenObjective()(model, batch).loss_sum.item() / (8 * 4 - 12)
    assert expected_rows != pytest.approx(expected_tokens, rel=1e-3)

    class Fixed(tiny.ListSource):  # type: ignore[misc]
        def _batch(self, index: int) -> dict[str, Tensor]:
            return {k: v.clone() for k, v in batch.items()}

    def trainer(objective: Objective | None, name: str) -> Any:
        torch.manual_seed(0)
        return make_trainer(
            dataclasses.replace(base_config, out_dir=base_config.out_dir + name),
            model=tiny.TinyLM(),
            objective=objective,
        )

    rows, tokens = trainer(RowObjective(), "-rows"), trainer(None, "-tokens")
    for t in (rows, tokens):
        t.train_data = Fixed(tiny.make_tokens(), batch_size=4, context=8)
    a, b = rows.train_step(), tokens.train_step()
    assert a["loss"] == pytest.approx(expected_rows, rel=1e-5)
    assert b["loss"] == pytest.approx(expected_tokens, rel=1e-5)
    assert "rows" in a
    assert "rows" not in b


def test_metrics_are_logged_and_evaluated(
    make_trainer: Any, base_config: TrainConfig, tiny: Any
) -> None:
    config = dataclasses.replace(base_config, max_steps=2, eval_every=2)
    eval_source = tiny.ListSource(tiny.make_tokens(seed=1), batch_size=4, context=8)
    trainer = make_trainer(config, objective=RowObjective(), eval_data=eval_source)
    state = trainer.fit()
    assert "val_ppl" not in state.metrics  # perplexity = False
    assert state.metrics["val_rows"] == pytest.approx(1.0)
    assert state.metrics["val_tokens"] == eval_source.n_batches * 4 * 8
    text = (trainer.run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert len(train) == 2
    assert all("square" in r for r in train)
    assert len(val) == 1
    assert "val_square" in val[0]


def test_default_evaluation_keeps_perplexity(
    make_trainer: Any, base_config: TrainConfig, tiny: Any
) -> None:
    config = dataclasses.replace(base_config, max_steps=2, eval_every=2)
    eval_source = tiny.ListSource(tiny.make_tokens(seed=1), batch_size=4, context=8)
    metrics = make_trainer(config, eval_data=eval_source).fit().metrics
    assert metrics["val_ppl"] == pytest.approx(torch.tensor(metrics["val_loss"]).exp().item())


class NoUnits(RowObjective):
    def units(self, batch: Mapping[str, Tensor], /) -> int:
        return 0


def test_a_step_without_units_is_a_data_error(make_trainer: Any, base_config: TrainConfig) -> None:
    with pytest.raises(DataError, match="nothing to train on"):
        make_trainer(base_config, objective=NoUnits()).train_step()


def test_token_objective_needs_labels() -> None:
    with pytest.raises(DataError, match="input_ids and labels"):
        TokenObjective().units({"input_ids": torch.zeros(1, 2, dtype=torch.long)})
