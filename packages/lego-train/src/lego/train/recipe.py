"""The ``lego-train pretrain`` recipe: model, tokenizer, data and Trainer from one YAML file.

The recipe composes sibling bricks, imported lazily from the ``recipes`` extra
(``pip install "lego-train[recipes]"``): lego-arch builds the model (a preset name plus
overrides, or an explicit ``DecoderConfig`` mapping), lego-data prepares and loads the token
data, lego-tokenize trains the tokenizer. When ``data.corpus`` names a corpus instead of a
prepared directory, the first run trains a RegexBPE tokenizer on it and prepares the token
files, and caches both under ``cache_dir`` (default ``$LEGO_CACHE_DIR`` or ``~/.cache/lego``)
in a folder keyed by a hash of the settings; later runs reuse them.

The YAML holds every [`TrainConfig`][lego.train.config.TrainConfig] key at the top level plus
``model:``, ``data:`` and ``sample:`` sections
([`ModelSpec`][lego.train.recipe.ModelSpec], [`DataSpec`][lego.train.recipe.DataSpec],
[`SampleSpec`][lego.train.recipe.SampleSpec]).
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

from lego.protocols import CompatibilityError, Config, ConfigError, import_optional
from lego.train.config import TrainConfig

__all__ = [
    "ModelSpec",
    "DataSpec",
    "SampleSpec",
    "PretrainConfig",
    "PreparedData",
    "prepare_data",
    "build_model",
    "unigram_entropy",
    "run_pretrain",
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
                key="model.preset",
                hint="e.g. model: {preset: gpt2-tiny, overrides: {n_layers: 4}}",
            )


@dataclass(frozen=True, kw_only=True)
class DataSpec(Config):
    """Where the tokens come from and how they are batched.

    Attributes:
        path: A lego-data prepared directory (``meta.json`` + ``train.bin``/``val.bin``).
        corpus: Or a corpus name/path for lego-data (``python-stdlib``): the tokenizer is
            trained and the data prepared on first use, then cached.
        tokenizer: With ``path``: the tokenizer file to save into checkpoints (optional).
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
        """Exactly one source; positive sizes."""
        super().validate()
        if bool(self.path) == bool(self.corpus):
            raise ConfigError(
                "give exactly one of data.path (a prepared directory) and data.corpus",
                key="data.path",
                hint="e.g. data: {corpus: python-stdlib, vocab_size: 4096}",
            )
        for key in ("batch_size", "vocab_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1", key=f"data.{key}")
        for key in ("eval_batch_size", "context_length"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0", key=f"data.{key}")


@dataclass(frozen=True, kw_only=True)
class SampleSpec(Config):
    """Text samples during training (see [`SampleCallback`][lego.train.callbacks.SampleCallback]).

    Attributes:
        every: Sample every this many steps (0: only at the end; negative: never).
        prompt: The prompt text.
        max_new_tokens: Tokens per sample.
        top_k: Top-k sampling.
        temperature: Sampling temperature.
    """

    every: int = 0
    prompt: str = "def "
    max_new_tokens: int = 48
    top_k: int = 40
    temperature: float = 0.8


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TrainConfig):
    """A ``lego-train pretrain`` config: the Trainer's keys plus the model, data and sample.

    Attributes:
        model: The [`ModelSpec`][lego.train.recipe.ModelSpec].
        data: The [`DataSpec`][lego.train.recipe.DataSpec].
        sample: The [`SampleSpec`][lego.train.recipe.SampleSpec].
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


def _require(module: str, package: str) -> Any:
    """Import a sibling brick of the ``recipes`` extra (a ConfigError names what to install)."""
    return import_optional(
        module, needed_by="the lego-train recipe", install=f'"lego-train[recipes]" ({package})'
    )


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
    """

    path: Path
    tokenizer_file: Path | None


def prepare_data(spec: DataSpec, *, progress: bool = False) -> PreparedData:
    """Find or build the token data of ``spec`` (training a tokenizer for a corpus).

    Args:
        spec: The data section.
        progress: Show progress while preparing.

    Returns:
        The prepared data.

    Raises:
        ConfigError: When a sibling brick is missing or a path does not exist.
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
        tok = Path(spec.tokenizer) if spec.tokenizer else None
        if tok is not None and not tok.is_file():
            raise ConfigError("tokenizer file not found", path=tok, key="data.tokenizer")
        return PreparedData(path=path, tokenizer_file=tok)
    ldata = _require("lego.data", "lego-data")
    ltok = _require("lego.tokenize", "lego-tokenize")
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
        corpus = ldata.get_corpus(spec.corpus)
        tokenizer = ltok.RegexBPETokenizer(pattern=spec.pattern)
        tokenizer.train(
            list(corpus), spec.vocab_size, special_tokens=["<|endoftext|>"], verbose=progress
        )
        tokenizer.save(tmp / "tokenizer.json")
        _require("lego.data.prepare", "lego-data").prepare(
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


def build_model(spec: ModelSpec, *, vocab_size: int | None) -> Any:
    """Build the lego-arch model of ``spec``.

    Args:
        spec: The model section.
        vocab_size: The tokenizer's vocabulary size (the default ``vocab_size`` override);
            None leaves the preset's.

    Returns:
        A ``lego.arch.DecoderLM``.

    Raises:
        CompatibilityError: When an explicit vocab size is smaller than the tokenizer's.
    """
    arch = _require("lego.arch", "lego-arch")
    if spec.config is not None:
        config = arch.DecoderConfig.from_dict(dict(spec.config))
        if vocab_size is not None and "vocab_size" not in spec.config:
            config = config.replace(vocab_size=vocab_size)
    else:
        overrides = dict(spec.overrides)
        if vocab_size is not None:
            overrides.setdefault("vocab_size", vocab_size)
        config = arch.resolve_config(spec.preset, **overrides)
    if vocab_size is not None and config.vocab_size < vocab_size:
        raise CompatibilityError(
            f"the model's vocab_size {config.vocab_size} is smaller than the tokenizer's "
            f"{vocab_size}",
            key="model.overrides.vocab_size",
            hint=f"use vocab_size >= {vocab_size}, or leave it out to take the tokenizer's",
        )
    return arch.DecoderLM.from_config(config)


def unigram_entropy(tokens: np.ndarray[Any, Any]) -> float:
    """Entropy (nats per token) of the tokens' own unigram distribution.

    A model that ignores context can do no better on these tokens, so a validation loss
    clearly below it means the model learned from context.

    Args:
        tokens: Token ids, shape ``(N,)``.

    Returns:
        ``-sum p log p`` over the token frequencies.
    """
    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


def _discard(text: str) -> None:
    """Drop a sample's text (ranks other than 0)."""


def run_pretrain(config: PretrainConfig) -> Any:
    """Build everything from ``config`` and train.

    Args:
        config: The validated recipe config.

    Returns:
        The final [`RunState`][lego.train.state.RunState].
    """
    import torch

    from lego.train.callbacks import SampleCallback
    from lego.train.distributed import DistInfo, init_distributed, pick_device
    from lego.train.trainer import Trainer

    train = config.train_config()
    device = pick_device(train.device)
    info: DistInfo = init_distributed(device)
    if info.is_main:
        data = prepare_data(config.data, progress=train.progress != "none")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if not info.is_main:
        data = prepare_data(config.data)
    ldata = _require("lego.data", "lego-data")
    tokenizer = None
    tokenizer_hash = None
    if data.tokenizer_file is not None:
        ltok = _require("lego.tokenize", "lego-tokenize")
        tokenizer = ltok.load(data.tokenizer_file)
        tokenizer_hash = hashlib.sha256(data.tokenizer_file.read_bytes()).hexdigest()
    meta = ldata.read_meta(data.path)
    torch.manual_seed(train.seed)
    model = build_model(config.model, vocab_size=int(meta.vocab_size))
    context = config.data.context_length or int(model.config.context_length)
    if context > int(model.config.context_length):
        raise ConfigError(
            f"data.context_length {context} exceeds the model's {model.config.context_length}",
            key="data.context_length",
        )
    train_ds = ldata.TokenDataset(data.path, split="train", context_length=context)
    loader = ldata.TokenLoader(
        train_ds,
        batch_size=config.data.batch_size,
        shuffle=config.data.shuffle,
        seed=config.data.seed,
        rank=info.rank,
        world_size=info.world_size,
        repeat=True,
    )
    eval_loader = None
    baseline: float | None = None
    if train.eval_every and "val" in meta.splits:
        val_ds = ldata.TokenDataset(data.path, split="val", context_length=context)
        eval_loader = ldata.TokenLoader(
            val_ds,
            batch_size=config.data.eval_batch_size or config.data.batch_size,
            shuffle=False,
            rank=info.rank,
            world_size=info.world_size,
            repeat=False,
        )
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
    if baseline is not None:
        trainer.log_record(
            {"step": trainer.state.step, "split": "baseline", "unigram_entropy": baseline}
        )
        trainer.message(
            f"unigram entropy of the validation tokens: {baseline:.4f} nats/token "
            f"(perplexity {math.exp(baseline):.1f}); a model that learns context goes below it"
        )
    try:
        state = trainer.fit()
    finally:
        loader.close()
        if eval_loader is not None:
            eval_loader.close()
    if baseline is not None and "val_loss" in state.metrics:
        trainer.message(
            f"final val_loss {state.metrics['val_loss']:.4f} vs unigram entropy {baseline:.4f}"
        )
    return state
