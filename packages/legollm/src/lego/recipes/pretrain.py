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

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lego.arch
import lego.data
import lego.tokenize
from lego.data.prepare import prepare
from lego.generate import generate
from lego.protocols import (
    CausalLM,
    CompatibilityError,
    Config,
    ConfigError,
    Tokenizer,
    check_float,
    check_int,
)
from lego.tokenize.interop.resolve import resolve_tokenizer
from lego.train import RunState, SampleCallback, TrainConfig, Trainer
from lego.train.distributed import DistInfo, init_distributed, pick_device

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
        seed: The loader's seed.
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


def default_cache_dir() -> Path:
    """``$LEGO_CACHE_DIR``, else ``~/.cache/lego``."""
    env = os.environ.get("LEGO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lego"


@dataclass(frozen=True)
class PreparedData:
    """A prepared token directory and its tokenizer.

    Attributes:
        path: The directory with ``meta.json``, ``train.bin``, ``val.bin``.
        tokenizer_file: The tokenizer file, or None when unknown.
        tokenizer_spec: What ``data.tokenizer`` named when it is not a file (e.g.
            ``tiktoken:gpt2``), else None.
    """

    path: Path
    tokenizer_file: Path | None
    tokenizer_spec: str | None = None


def prepare_data(spec: DataSpec, *, progress: bool = False) -> PreparedData:
    """Find or build the token data of ``spec`` (training a tokenizer for a corpus).

    Args:
        spec: The data section.
        progress: Show progress while preparing.

    Returns:
        The prepared data.

    Raises:
        ConfigError: A path that does not exist or is not a prepared directory.
    """
    if spec.path:
        path = Path(spec.path)
        if not (path / "meta.json").is_file():
            raise ConfigError(
                "data.path is not a prepared directory (no meta.json)",
                path=path,
                key="data.path",
                hint="run lego-data prepare first, or use data.corpus",
            )
        if not spec.tokenizer:
            return PreparedData(path=path, tokenizer_file=None)
        file = Path(spec.tokenizer)
        if file.is_file():
            return PreparedData(path=path, tokenizer_file=file)
        return PreparedData(path=path, tokenizer_file=None, tokenizer_spec=spec.tokenizer)
    settings = {
        "corpus": spec.corpus,
        "vocab_size": spec.vocab_size,
        "pattern": spec.pattern,
        "val_fraction": spec.val_fraction,
        "tokenizer": "regex_bpe",
        "recipe_version": 1,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(spec.cache_dir).expanduser() if spec.cache_dir else default_cache_dir()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in spec.corpus)[:40]
    folder = root / "train-data" / f"{safe}-{key}"
    tok_file = folder / "tokenizer.json"
    if (folder / "meta.json").is_file() and tok_file.is_file():
        return PreparedData(path=folder, tokenizer_file=tok_file)
    tmp = root / "train-data" / f".tmp-{safe}-{key}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        corpus = lego.data.get_corpus(spec.corpus)
        tokenizer = lego.tokenize.RegexBPETokenizer(pattern=spec.pattern)
        tokenizer.train(
            list(corpus), spec.vocab_size, special_tokens=["<|endoftext|>"], verbose=progress
        )
        tokenizer.save(tmp / "tokenizer.json")
        prepare(
            corpus,
            str(tmp / "tokenizer.json"),
            tmp,
            val_fraction=spec.val_fraction,
            progress=progress,
        )
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PreparedData(path=folder, tokenizer_file=tok_file)


def build_model(spec: ModelSpec, *, vocab_size: int | None) -> lego.arch.DecoderLM:
    """Build the lego-arch model of ``spec``.

    Args:
        spec: The model section.
        vocab_size: The tokenizer's vocabulary size (the default ``vocab_size`` override);
            None leaves the preset's.

    Returns:
        The model, randomly initialized.

    Raises:
        CompatibilityError: An explicit vocab size smaller than the tokenizer's.
    """
    if spec.config is not None:
        config = lego.arch.DecoderConfig.from_dict(dict(spec.config))
        if vocab_size is not None and "vocab_size" not in spec.config:
            config = config.replace(vocab_size=vocab_size)
    else:
        overrides = dict(spec.overrides)
        if vocab_size is not None:
            overrides.setdefault("vocab_size", vocab_size)
        config = lego.arch.resolve_config(spec.preset, **overrides)
    if vocab_size is not None and config.vocab_size < vocab_size:
        raise CompatibilityError(
            f"the model's vocab_size {config.vocab_size} is smaller than the tokenizer's "
            f"{vocab_size}",
            key="model.overrides.vocab_size",
            hint=f"use vocab_size >= {vocab_size}, or leave it out to take the tokenizer's",
        )
    return lego.arch.DecoderLM.from_config(config)


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


def check_fits_context(prompt_tokens: int, max_new_tokens: int, context: int, *, key: str) -> None:
    """Check, before training, that a prompt and its continuation fit the model's context.

    Args:
        prompt_tokens: The prompt's length in tokens.
        max_new_tokens: Tokens to generate after it.
        context: The model's context length.
        key: The setting to name in the error (``sample.max_new_tokens``).

    Raises:
        ConfigError: ``prompt_tokens + max_new_tokens > context``.

    Example:
        >>> check_fits_context(4, 60, 64, key="sample.max_new_tokens")
    """
    if prompt_tokens + max_new_tokens > context:
        raise ConfigError(
            f"a {prompt_tokens}-token prompt plus {key.rsplit('.', 1)[-1]}={max_new_tokens} "
            f"exceeds the model's context of {context} tokens",
            key=key,
            hint=f"use {key} <= {max(context - prompt_tokens, 0)}, a shorter prompt, or a "
            "longer context_length",
        )


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
    """

    config: PretrainConfig
    model: lego.arch.DecoderLM
    tokenizer: Tokenizer | None
    data: PreparedData
    trainer: Trainer
    baseline: float
    loaders: list[Any]

    def run(self) -> PretrainResult:
        """Train (resuming as the config says) and return the result.

        Returns:
            The [`PretrainResult`][lego.recipes.pretrain.PretrainResult].
        """
        trainer = self.trainer
        if not math.isnan(self.baseline):
            trainer.log_record(
                {"step": trainer.state.step, "split": "baseline", "unigram_entropy": self.baseline}
            )
            trainer.message(
                f"unigram entropy of the validation tokens: {self.baseline:.4f} nats/token "
                f"(perplexity {math.exp(self.baseline):.1f}); a model that learns context goes "
                "below it"
            )
        try:
            state = trainer.fit()
        finally:
            for loader in self.loaders:
                loader.close()
        if not math.isnan(self.baseline) and "val_loss" in state.metrics:
            trainer.message(
                f"final val_loss {state.metrics['val_loss']:.4f} vs unigram entropy "
                f"{self.baseline:.4f}"
            )
        return PretrainResult(
            state=state, baseline=self.baseline, out_dir=Path(self.config.out_dir)
        )


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


def build_pretraining(config: PretrainConfig) -> Pretraining:
    """Prepare the data and tokenizer, build the model, the loaders and the Trainer.

    Every rank calls it (under ``torchrun``, rank 0 prepares the data first).

    Args:
        config: The validated recipe config.

    Returns:
        The [`Pretraining`][lego.recipes.pretrain.Pretraining], ready to run.

    Raises:
        ConfigError: A data path that is not prepared, a context longer than the model's.
        CompatibilityError: A model vocabulary smaller than the tokenizer's.
    """
    train = config.train_config()
    device = pick_device(train.device)
    info: DistInfo = init_distributed(device)
    if info.is_main:
        data = prepare_data(config.data, progress=train.progress != "none")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if not info.is_main:
        data = prepare_data(config.data)
    tokenizer, tokenizer_hash = _load_tokenizer(data)
    meta = lego.data.read_meta(data.path)
    torch.manual_seed(train.seed)
    model = build_model(config.model, vocab_size=int(meta.vocab_size))
    context = config.data.context_length or int(model.config.context_length)
    if context > int(model.config.context_length):
        raise ConfigError(
            f"data.context_length {context} exceeds the model's {model.config.context_length}",
            key="data.context_length",
            hint=f"use data.context_length <= {model.config.context_length}",
        )
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
        check_fits_context(
            len(tokenizer.encode(config.sample.prompt)),
            config.sample.max_new_tokens,
            int(model.config.context_length),
            key="sample.max_new_tokens",
        )
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
    trainer = Trainer(
        model=model,
        train_data=loader,
        eval_data=eval_loader,
        config=train,
        callbacks=callbacks,
        tokenizer=tokenizer,
        tokenizer_hash=tokenizer_hash,
    )
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
