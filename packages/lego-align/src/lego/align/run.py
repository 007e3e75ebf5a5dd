"""What the trainers of lego-align share: loaders, lego-train's Trainer, the data report.

[`SFTTrainer`][lego.align.sft.SFTTrainer], [`RewardTrainer`][lego.align.reward.RewardTrainer]
and [`DPOTrainer`][lego.align.dpo.DPOTrainer] each turn records into examples their own way,
then do the same things: wrap the examples in lego-data's ``ExampleLoader`` (this rank's
share, shuffled with the run's seed, repeated for training), hand them and an objective to
lego-train's ``Trainer``, log the data counts into ``metrics.jsonl`` when training starts,
and stop the loaders' threads when ``fit()`` ends. [`TrainerRun`][lego.align.run.TrainerRun]
is that common part; [`preference_splits()`][lego.align.run.preference_splits] reads the
training and held-out pairs of the two preference trainers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from torch import nn

from lego.data.example_loader import ExampleLoader
from lego.data.preference import PreferenceDataset
from lego.data.records import RecordSource, SplitName
from lego.protocols import BatchSource, FolderLock, Tokenizer, TrainerCallback, TrainerState
from lego.train import Objective, TrainConfig, Trainer
from lego.train.distributed import DistInfo
from lego.train.state import RunState

__all__ = ["TrainerRun", "preference_splits", "describe_pairs"]

Item = TypeVar("Item")


class DataReport:
    """Logs the data counts into ``metrics.jsonl`` (split ``data``) when training starts."""

    def __init__(self, trainer: Trainer, counts: Mapping[str, int]) -> None:
        self.trainer = trainer
        self.counts = dict(counts)

    def on_train_begin(self, state: TrainerState) -> None:
        self.trainer.log_record({"step": state.step, "split": "data", **self.counts})

    def on_step_end(self, state: TrainerState) -> None:
        return None

    def on_evaluate(self, state: TrainerState, metrics: Mapping[str, float]) -> None:
        return None

    def on_save(self, state: TrainerState, path: Path) -> None:
        return None

    def on_train_end(self, state: TrainerState) -> None:
        return None


class TrainerRun:
    """The part every lego-align trainer shares; subclasses build the data and the objective.

    Attributes:
        trainer: lego-train's ``Trainer`` (set by ``_start``).
    """

    trainer: Trainer

    def __init__(self) -> None:
        self._loaders: list[ExampleLoader[Any, Any]] = []

    def _loader(
        self,
        items: Sequence[Any],
        *,
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any],
        train: bool,
        shuffle: bool,
        seed: int,
        info: DistInfo,
    ) -> ExampleLoader[Any, Any]:
        """This rank's loader over ``items``: shuffled and repeated for training only."""
        loader: ExampleLoader[Any, Any] = ExampleLoader(
            items,
            batch_size=batch_size,
            collate_fn=collate_fn,
            shuffle=shuffle and train,
            seed=seed,
            rank=info.rank,
            world_size=info.world_size,
            repeat=train,
        )
        self._loaders.append(loader)
        return loader

    def _start(
        self,
        *,
        model: nn.Module,
        objective: Objective,
        train_loader: BatchSource[Any],
        eval_loader: BatchSource[Any] | None,
        train: TrainConfig,
        tokenizer: Tokenizer,
        callbacks: Sequence[TrainerCallback],
        tokenizer_hash: str | None,
        console_stream: Any,
        lock: FolderLock | None,
        counts: Mapping[str, int],
        message: str,
    ) -> None:
        """Build lego-train's ``Trainer``; log ``counts`` at the start; print ``message``.

        ``train_loader`` is any lego-train batch source: an ``ExampleLoader`` of records, or
        the GRPO / PPO rollout sources that generate their batches.
        """
        self.trainer = Trainer(
            model=model,
            train_data=train_loader,
            eval_data=eval_loader,
            config=train,
            callbacks=[*callbacks],
            tokenizer=tokenizer,
            tokenizer_hash=tokenizer_hash,
            console_stream=console_stream,
            lock=lock,
            objective=objective,
        )
        self.trainer.callbacks.insert(0, DataReport(self.trainer, counts))
        self.trainer.message(message)

    def fit(self) -> RunState:
        """Train (lego-train's ``Trainer.fit``); the loaders are closed at the end.

        Returns:
            The final run state (its ``metrics`` hold the objective's last metrics).
        """
        try:
            return self.trainer.fit()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the loaders' background threads."""
        for loader in self._loaders:
            loader.close()


class PreferenceSettings(Protocol):
    """The fields of ``DPOConfig`` and ``RewardConfig`` that reading pairs needs."""

    @property
    def template(self) -> str: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def eos_token(self) -> str | None: ...
    @property
    def system_prompt(self) -> str | None: ...


def preference_splits(
    train_data: RecordSource,
    eval_data: RecordSource | None,
    *,
    tokenizer: Tokenizer,
    config: PreferenceSettings,
    make_pairs: Callable[[PreferenceDataset, str | None], tuple[list[Item], dict[str, int]]],
) -> tuple[list[Item], list[Item] | None, dict[str, int]]:
    """The training and held-out pairs of a preference trainer, with their counts.

    The held-out pairs are ``eval_data`` (all of it) when given, else the ``val_fraction``
    split of ``train_data`` when positive, else None.

    Args:
        train_data: Preference records (a ``.jsonl`` path or dictionaries).
        eval_data: Held-out records, or None.
        tokenizer: Encodes the records.
        config: The template, split and EOS settings.
        make_pairs: Turns a ``PreferenceDataset`` (and its file's path, for messages) into
            pairs and their counts (``dpo_pairs`` or ``reward_pairs`` with the trainer's
            settings).

    Returns:
        ``(train_pairs, eval_pairs, counts)``, the counts prefixed ``train_`` / ``eval_``.
    """

    def read(source: RecordSource, split: SplitName) -> tuple[list[Item], dict[str, int]]:
        dataset = PreferenceDataset(
            source,
            tokenizer,
            template=config.template,
            split=split,
            val_fraction=config.val_fraction if eval_data is None else 0.0,
            seed=config.seed,
            eos_token=config.eos_token,
            system_prompt=config.system_prompt,
        )
        path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        return make_pairs(dataset, path)

    train_pairs, train_counts = read(train_data, "train")
    counts = {f"train_{k}": v for k, v in train_counts.items()}
    eval_pairs: list[Item] | None = None
    if eval_data is not None or config.val_fraction > 0:
        source = eval_data if eval_data is not None else train_data
        eval_pairs, eval_counts = read(source, "all" if eval_data is not None else "val")
        counts.update({f"eval_{k}": v for k, v in eval_counts.items()})
    return train_pairs, eval_pairs, counts


def describe_pairs(counts: Mapping[str, int]) -> str:
    """One line on the pairs that [`preference_splits()`][lego.align.run.preference_splits] read.

    Args:
        counts: ``train_pairs``, ``train_truncated``, ``train_dropped``,
            ``train_identical`` (and the same with ``eval_``).

    Returns:
        E.g. ``"train 10 pairs (1 prompts truncated from the left, 0 dropped as too long,
        2 identical skipped)"``.
    """
    return "; ".join(
        f"{name} {counts[f'{name}_pairs']} pairs ({counts[f'{name}_truncated']} prompts "
        f"truncated from the left, {counts[f'{name}_dropped']} dropped as too long, "
        f"{counts[f'{name}_identical']} identical skipped)"
        for name in ("train", "eval")
        if f"{name}_pairs" in counts
    )
