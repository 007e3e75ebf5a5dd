"""``legollm pretrain``: model, tokenizer, data and Trainer from one YAML file.

The recipe composes the bricks: lego-arch builds the model (a preset name plus overrides,
or an explicit ``DecoderConfig`` mapping), lego-tokenize trains the tokenizer, lego-data
prepares and loads the token data, lego-train trains, lego-generate draws the samples. When
``data.corpus`` names a corpus instead of a prepared directory, the first run trains a
RegexBPE tokenizer on it and prepares the token files, and caches both under ``cache_dir``
(default ``$LEGO_CACHE_DIR`` or ``~/.cache/lego``) in a folder keyed by a hash of the
settings; later runs reuse them.

The YAML holds every [`TrainConfig`][lego.train.config.TrainConfig] key at the top level plus
``model:``, ``data:`` and ``sample:`` sections
([`ModelSpec`][lego.recipes.pretrain.ModelSpec], [`DataSpec`][lego.recipes.pretrain.DataSpec],
[`SampleSpec`][lego.recipes.pretrain.SampleSpec]).

Two steps, so that a caller can check what comes after training before it starts:
[`build_pretraining()`][lego.recipes.pretrain.build_pretraining] prepares everything (data,
tokenizer, model, loaders, Trainer) and
[`Pretraining.run()`][lego.recipes.pretrain.Pretraining.run] trains;
[`run_pretrain()`][lego.recipes.pretrain.run_pretrain] does both.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lego.arch
import lego.data
from lego.generate import generate
from lego.protocols import (
    CausalLM,
    Config,
    ConfigError,
    FolderLock,
    Tokenizer,
    TrainerState,
    check_float,
    check_int,
)
from lego.recipes.datacache import PreparedData, default_cache_dir, prepare_data
from lego.recipes.preflight import (
    allocation_error,
    check_data_tokenizer,
    check_fits_context,
    check_fits_memory,
    early_model_config,
    model_config,
)
from lego.tokenize.interop.resolve import resolve_tokenizer
from lego.train import RunState, SampleCallback, TrainConfig, Trainer
from lego.train.config import SEED_MAX
from lego.train.distributed import DistInfo, init_distributed, pick_device, raise_together
from lego.train.rundir import check_run_dir, run_lock

__all__ = [
    "ModelSpec",
    "DataSpec",
    "SampleSpec",
    "PretrainConfig",
    "PreparedData",
    "Pretraining",
    "PretrainResult",
    "prepare_data",
    "build_model",
    "unigram_entropy",
    "build_pretraining",
    "run_pretrain",
    "check_fits_context",
    "default_cache_dir",
]


@dataclass(frozen=True, kw_only=True)
class ModelSpec(Config):
    """Which model to train.

    Attributes:
        preset: A lego-arch preset name (``gpt2-tiny``, ``gpt2``, ``llama-tiny``...).
        overrides: DecoderConfig fields to change on the preset (``vocab_size`` defaults to
            the tokenizer's).
        config: An explicit ``DecoderConfig`` mapping (instead of ``preset``).
    """

    preset: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None

    def validate(self) -> None:
        """Exactly one of ``preset`` and ``config``."""
        super().validate()
        if bool(self.preset) == (self.config is not None):
            raise ConfigError(
                "give exactly one of model.preset and model.config",
                key="preset",
                hint="e.g. model: {preset: gpt2-tiny, overrides: {n_layers: 4}}",
            )


@dataclass(frozen=True, kw_only=True)
class DataSpec(Config):
    """Where the tokens come from and how they are batched.

    Attributes:
        path: A lego-data prepared directory (``meta.json`` + ``train.bin``/``val.bin``).
        corpus: Or a corpus name/path for lego-data (``python-stdlib``): the tokenizer is
            trained and the data prepared on first use, then cached.
        tokenizer: With ``path``: the tokenizer (a file or any tokenizer spec of
            ``lego.tokenize.resolve_tokenizer``) to save into checkpoints (optional).
        vocab_size: The size of the tokenizer trained for ``corpus``.
        pattern: Its split pattern (``gpt4``, ``gpt2``).
        val_fraction: The validation share of the corpus.
        batch_size: Rows per micro-batch on each rank.
        eval_batch_size: Rows per evaluation batch (0: ``batch_size``).
        context_length: Tokens per row (0: the model's context length).
        shuffle: Visit training windows in a seeded random order.
        seed: The loader's seed (``0 .. 2**64 - 1``).
        cache_dir: Where prepared corpora are cached (``""``: ``$LEGO_CACHE_DIR`` or
            ``~/.cache/lego``).
    """

    path: str = ""
    corpus: str = ""
    tokenizer: str = ""
    vocab_size: int = 4096
    pattern: str = "gpt4"
    val_fraction: float = 0.05
    batch_size: int = 8
    eval_batch_size: int = 0
    context_length: int = 0
    shuffle: bool = True
    seed: int = 0
    cache_dir: str = ""

    def validate(self) -> None:
        """Exactly one source; positive sizes; a validation share in ``[0, 1)``."""
        super().validate()
        if bool(self.path) == bool(self.corpus):
            raise ConfigError(
                "give exactly one of data.path (a prepared directory) and data.corpus",
                key="path",
                hint="e.g. data: {corpus: python-stdlib, vocab_size: 4096}",
            )
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("vocab_size", self.vocab_size, minimum=1)
        check_int("eval_batch_size", self.eval_batch_size, minimum=0)
        check_int("context_length", self.context_length, minimum=0)
        check_int("seed", self.seed, minimum=0, maximum=SEED_MAX)
        check_float("val_fraction", self.val_fraction, low=0.0, high=1.0, high_open=True)


@dataclass(frozen=True, kw_only=True)
class SampleSpec(Config):
    """Text samples during training (see [`SampleCallback`][lego.train.callbacks.SampleCallback]).

    Attributes:
        every: Sample every this many steps (0: only at the end; negative: never).
        prompt: The prompt text.
        max_new_tokens: Tokens per sample.
        top_k: Top-k sampling (0: the whole vocabulary).
        temperature: Sampling temperature (0: greedy).
    """

    every: int = 0
    prompt: str = "def "
    max_new_tokens: int = 48
    top_k: int = 40
    temperature: float = 0.8

    def validate(self) -> None:
        """Positive sizes, a non-negative temperature, a prompt when sampling."""
        super().validate()
        check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        check_int("top_k", self.top_k, minimum=0)
        check_float("temperature", self.temperature, low=0.0)
        if self.every >= 0 and not self.prompt:
            raise ConfigError(
                "sample.prompt is empty", key="prompt", hint="give a prompt, or every: -1"
            )


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TrainConfig):
    """A ``legollm pretrain`` config: the Trainer's keys plus the model, data and sample.

    Attributes:
        model: The [`ModelSpec`][lego.recipes.pretrain.ModelSpec].
        data: The [`DataSpec`][lego.recipes.pretrain.DataSpec].
        sample: The [`SampleSpec`][lego.recipes.pretrain.SampleSpec].
    """

    model: ModelSpec
    data: DataSpec
    sample: SampleSpec = field(default_factory=SampleSpec)

    def train_config(self) -> TrainConfig:
        """The [`TrainConfig`][lego.train.config.TrainConfig] part."""
        data = self.to_dict()
        for key in ("model", "data", "sample"):
            data.pop(key)
        return TrainConfig.from_dict(data)


def build_model(
    spec: ModelSpec, *, vocab_size: int | None, device: torch.device | None = None
) -> lego.arch.DecoderLM:
    """Build the lego-arch model of ``spec``.

    Args:
        spec: The model section.
        vocab_size: The tokenizer's vocabulary size (the default ``vocab_size`` override);
            None leaves the preset's.
        device: Where the training will run, for the message when the model cannot be
            allocated (default: the CPU, where the model is built).

    Returns:
        The model, randomly initialized.

    Raises:
        CompatibilityError: An explicit vocab size smaller than the tokenizer's.
        ConfigError: The model cannot be allocated (with the memory it needs).
    """
    config = model_config(spec, vocab_size=vocab_size)
    try:
        return lego.arch.DecoderLM.from_config(config)
    except (RuntimeError, MemoryError) as exc:
        error = allocation_error(exc, config, device=torch.device("cpu"))
        if error is None:
            raise
        raise error from None


def unigram_entropy(tokens: np.ndarray[Any, Any]) -> float:
    """Entropy (nats per token) of the tokens' own unigram distribution.

    A model that ignores context can do no better on these tokens, so a validation loss
    clearly below it means the model learned from context.

    Args:
        tokens: Token ids, shape ``(N,)``.

    Returns:
        ``-sum p log p`` over the token frequencies.

    Example:
        >>> round(unigram_entropy(np.array([0, 1, 0, 1])), 4)  # two equally likely tokens
        0.6931
    """
    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


class _BaselineRecord:
    """Logs the unigram baseline once training has opened its run (after any overwrite).

    A [`TrainerCallback`][lego.protocols.TrainerCallback] (structurally).
    """

    def __init__(self, trainer: Trainer, baseline: float) -> None:
        self.trainer = trainer
        self.baseline = baseline

    def on_train_begin(self, state: TrainerState) -> None:
        record = {"step": state.step, "split": "baseline", "unigram_entropy": self.baseline}
        self.trainer.log_record(record)
        self.trainer.message(
            f"unigram entropy of the validation tokens: {self.baseline:.4f} nats/token "
            f"(perplexity {math.exp(self.baseline):.1f}); a model that learns context goes "
            "below it"
        )

    def on_step_end(self, state: TrainerState) -> None:
        """Nothing to do after a step."""

    def on_evaluate(self, state: TrainerState, metrics: Mapping[str, float]) -> None:
        """Nothing to do at evaluations."""

    def on_save(self, state: TrainerState, path: Path) -> None:
        """Nothing to do at saves."""

    def on_train_end(self, state: TrainerState) -> None:
        """Nothing to do at the end."""


def _discard(text: str) -> None:
    """Drop a sample's text (ranks other than 0)."""


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run produced, handed to the next stage.

    Attributes:
        state: The trainer's final [`RunState`][lego.train.state.RunState].
        baseline: The unigram entropy of the validation tokens (nats/token; NaN without
            validation data), computed by the recipe and passed on, never read back.
        out_dir: The run directory.
    """

    state: RunState
    baseline: float
    out_dir: Path


@dataclass
class Pretraining:
    """Everything a pretraining run needs, built and checked, not yet trained.

    Attributes:
        config: The recipe config.
        model: The model to train (a ``lego.arch.DecoderLM``).
        tokenizer: Its tokenizer, when the data has one.
        data: The prepared data.
        trainer: The Trainer, ready to ``fit``.
        baseline: The unigram entropy of the validation tokens, NaN without them.
        loaders: The batch sources to close after training.
        lock: The lock on ``out_dir`` this object took (released by ``run()`` or
            ``close()``), or None (another rank, or the caller holds the lock).
    """

    config: PretrainConfig
    model: lego.arch.DecoderLM
    tokenizer: Tokenizer | None
    data: PreparedData
    trainer: Trainer
    baseline: float
    loaders: list[Any]
    lock: FolderLock | None = None

    def run(self) -> PretrainResult:
        """Train (resuming as the config says) and return the result.

        Returns:
            The [`PretrainResult`][lego.recipes.pretrain.PretrainResult]; its
            ``state.stop_signal`` is set when SIGINT or SIGTERM stopped the run after a
            checkpoint.
        """
        trainer = self.trainer
        if not math.isnan(self.baseline):
            trainer.callbacks.append(_BaselineRecord(trainer, self.baseline))
        try:
            state = trainer.fit()
        finally:
            self.close()
        if not math.isnan(self.baseline) and "val_loss" in state.metrics:
            trainer.message(
                f"final val_loss {state.metrics['val_loss']:.4f} vs unigram entropy "
                f"{self.baseline:.4f}"
            )
        return PretrainResult(
            state=state, baseline=self.baseline, out_dir=Path(self.config.out_dir)
        )

    def close(self) -> None:
        """Close the batch sources and release the lock on ``out_dir`` (idempotent)."""
        for loader in self.loaders:
            loader.close()
        self.trainer.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _load_tokenizer(data: PreparedData) -> tuple[Tokenizer | None, str | None]:
    """The data's tokenizer and its hash (SHA-256 of the file), if it has one."""
    if data.tokenizer_file is not None:
        tokenizer: Tokenizer = resolve_tokenizer(str(data.tokenizer_file))
        digest = hashlib.sha256(data.tokenizer_file.read_bytes()).hexdigest()
        return tokenizer, digest
    if data.tokenizer_spec is not None:
        return resolve_tokenizer(data.tokenizer_spec), None
    return None, None


def _sampler(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    top_k: int,
    temperature: float,
    seed: int,
) -> torch.Tensor:
    """Samples during training with lego-generate's KV-cached engine."""
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if temperature > 0:
        options.update(temperature=temperature, top_k=top_k or None, seed=seed)
    if not isinstance(model, CausalLM):
        raise TypeError(f"samples need a CausalLM, got {type(model).__name__}")
    out: torch.Tensor = generate(model, input_ids, **options)
    return out


def build_pretraining(
    config: PretrainConfig,
    *,
    lock: FolderLock | None = None,
    check_later: Callable[[lego.arch.DecoderConfig, Tokenizer | None], None] | None = None,
) -> Pretraining:
    """Check everything, prepare the data and tokenizer, build the model and the Trainer.

    Every rank calls it (under ``torchrun``, rank 0 prepares the data first). Before any
    long work (training a tokenizer, preparing data) it checks the whole configuration
    ([`lego.recipes.preflight`][lego.recipes.preflight]), ``out_dir``
    ([`check_run_dir()`][lego.train.rundir.check_run_dir]) and locks it, so a bad setting
    or a second writer fails in seconds.

    Args:
        config: The validated recipe config.
        lock: The lock on ``out_dir`` when the caller holds it (the pipeline); None takes
            it here (on rank 0), held by the returned object until it runs or closes.
        check_later: Called with the model config and the tokenizer once both are known,
            before the Trainer is built: a later stage's own checks (the pipeline's
            report).

    Returns:
        The [`Pretraining`][lego.recipes.pretrain.Pretraining], ready to run.

    Raises:
        ConfigError: A bad setting, a data path that is not prepared, an ``out_dir`` that
            holds another run or is written by another process, a model that cannot fit
            the device.
        CompatibilityError: A model vocabulary smaller than the tokenizer's, a tokenizer
            other than the data's.
    """
    train = config.train_config()
    device = pick_device(train.device)
    info: DistInfo = init_distributed(device)
    early = early_model_config(config)
    context = config.data.context_length or int(early.context_length)
    shards = info.world_size if train.strategy == "fsdp" else 1
    check_fits_memory(
        early,
        device=device,
        batch_size=config.data.batch_size,
        context=context,
        precision=train.precision,
        shards=shards,
    )
    if train.tensorboard:
        from lego.train.monitor import TensorBoardWriter

        TensorBoardWriter.check_available()
    owned: FolderLock | None = None
    created = not Path(train.out_dir).exists()
    problem: BaseException | None = None
    if info.is_main:
        try:
            check_run_dir(train)
            if lock is None:
                owned = run_lock(train.out_dir).acquire()
        except ConfigError as exc:
            problem = exc
    raise_together(problem, device)
    try:
        built = _build(config, train, info, device, lock=lock or owned, check_later=check_later)
    except BaseException:
        if owned is not None:
            owned.release()
            if created:  # a run that failed its checks leaves no empty out_dir behind
                with contextlib.suppress(OSError):
                    Path(train.out_dir).rmdir()
        raise
    built.lock = owned
    return built


def _build(
    config: PretrainConfig,
    train: TrainConfig,
    info: DistInfo,
    device: torch.device,
    *,
    lock: FolderLock | None,
    check_later: Callable[[lego.arch.DecoderConfig, Tokenizer | None], None] | None,
) -> Pretraining:
    """The data, tokenizer, model, loaders and Trainer, once the config passed its checks."""
    data: PreparedData | None = None
    problem: BaseException | None = None
    if info.is_main:
        try:
            data = prepare_data(config.data, progress=train.progress != "none")
        except Exception as exc:  # the other ranks wait for the data: tell them
            problem = exc
    raise_together(problem, device)
    if data is None:
        data = prepare_data(config.data)
    tokenizer, tokenizer_hash = _load_tokenizer(data)
    meta = lego.data.read_meta(data.path)
    if tokenizer is not None:
        check_data_tokenizer(meta, tokenizer, file=data.tokenizer_file)
    torch.manual_seed(train.seed)
    final = model_config(config.model, vocab_size=int(meta.vocab_size))
    context = config.data.context_length or int(final.context_length)
    shards = info.world_size if train.strategy == "fsdp" else 1
    check_fits_memory(
        final,
        device=device,
        batch_size=config.data.batch_size,
        context=context,
        precision=train.precision,
        shards=shards,
    )
    if tokenizer is not None and config.sample.every >= 0:
        check_fits_context(
            len(tokenizer.encode(config.sample.prompt)),
            config.sample.max_new_tokens,
            int(final.context_length),
            key="sample.max_new_tokens",
        )
    if check_later is not None:
        check_later(final, tokenizer)
    model = build_model(config.model, vocab_size=int(meta.vocab_size), device=device)
    train_ds = lego.data.TokenDataset(data.path, split="train", context_length=context)
    loader = lego.data.TokenLoader(
        train_ds,
        batch_size=config.data.batch_size,
        shuffle=config.data.shuffle,
        seed=config.data.seed,
        rank=info.rank,
        world_size=info.world_size,
        repeat=True,
    )
    loaders: list[Any] = [loader]
    eval_loader = None
    baseline = math.nan
    if train.eval_every and "val" in meta.splits:
        val_ds = lego.data.TokenDataset(data.path, split="val", context_length=context)
        eval_loader = lego.data.TokenLoader(
            val_ds,
            batch_size=config.data.eval_batch_size or config.data.batch_size,
            shuffle=False,
            rank=info.rank,
            world_size=info.world_size,
            repeat=False,
        )
        loaders.append(eval_loader)
        baseline = unigram_entropy(np.asarray(val_ds.tokens))
    callbacks = []
    if tokenizer is not None and config.sample.every >= 0:
        # Every rank samples (an FSDP forward is collective); rank 0 prints.
        callbacks.append(
            SampleCallback(
                model=model,
                prompt_ids=tokenizer.encode(config.sample.prompt),
                decode=tokenizer.decode,
                every=config.sample.every,
                max_new_tokens=config.sample.max_new_tokens,
                top_k=config.sample.top_k,
                temperature=config.sample.temperature,
                seed=train.seed,
                emit=print if info.is_main else _discard,
                sampler=_sampler,
            )
        )
    try:
        trainer = Trainer(
            model=model,
            train_data=loader,
            eval_data=eval_loader,
            config=train,
            callbacks=callbacks,
            tokenizer=tokenizer,
            tokenizer_hash=tokenizer_hash,
            lock=lock,
        )
    except BaseException:
        for each in loaders:
            each.close()
        raise
    return Pretraining(
        config=config,
        model=model,
        tokenizer=tokenizer,
        data=data,
        trainer=trainer,
        baseline=baseline,
        loaders=loaders,
    )


def run_pretrain(config: PretrainConfig) -> PretrainResult:
    """Build everything from ``config`` and train.

    Args:
        config: The validated recipe config.

    Returns:
        The [`PretrainResult`][lego.recipes.pretrain.PretrainResult].
    """
    return build_pretraining(config).run()
