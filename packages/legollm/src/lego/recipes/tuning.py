"""What ``legollm finetune`` and ``legollm align`` share: the model, the run, the result.

Every tuning recipe (supervised fine-tuning, DPO, reward models) starts from a model that
exists and ends with a model directory:

- **the model**: ``model:`` is a lego-arch (or transformers) model directory, a lego-train
  checkpoint or a run directory (what ``legollm pipeline`` and ``pretrain`` write), opened
  by [`load_model()`][lego.recipes.loading.load_model] with the checks ``generate`` makes
  (a checkpoint verified against its ``trainer_state.json``, every weight finite); the
  tokenizer is the model directory's or ``tokenizer:``
  ([`load_tuning_model()`][lego.recipes.tuning.load_tuning_model]);
- **special tokens**: ``add_special_tokens:`` adds the tokens a recipe needs and the
  tokenizer lacks (a pad token, ChatML's markers) after its last id
  ([`add_special_tokens()`][lego.recipes.tuning.add_special_tokens]); when the model's
  vocabulary has no room for them it grows, each new embedding and output row starting at
  the mean of the existing ones ([`grow_vocabulary()`][lego.recipes.tuning.grow_vocabulary]);
- **the data**: local JSON Lines files (``data.train``, ``data.eval``) read by lego-align's
  trainers, a bad line naming the file and the line;
- **the run**: ``out_dir`` is checked and locked before the data is read
  ([`build_tuning()`][lego.recipes.tuning.build_tuning]), lego-train's Trainer writes the
  checkpoints and ``metrics.jsonl``; SIGINT / SIGTERM save a checkpoint and ``resume=auto``
  continues;
- **the result** ([`Tuning.run()`][lego.recipes.tuning.Tuning.run]): ``out_dir/model/``,
  the merged model or the LoRA adapter with its base reference (``output: merged |
  adapter``), with the tokenizer and the stop tokens (``generation_config.json``), written
  under a temporary name and renamed; ``out_dir/curves.png``, the loss (and a recipe's
  reward margin and accuracy) over the steps.

The recipes themselves are [`lego.recipes.finetune`][lego.recipes.finetune] and
[`lego.recipes.align`][lego.recipes.align].
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import lego.arch
from lego.arch.loading import empty_model
from lego.peft import LoraModel
from lego.protocols import (
    Config,
    ConfigError,
    FolderLock,
    LegoError,
    Tokenizer,
    TrainerState,
    TrainingError,
    atomic_write_text,
    check_choice,
    read_json,
    remove_stale_temporaries,
    temporary_name,
    write_errors,
)
from lego.protocols.layout import HF_TOKENIZER_FILE, LEGO_TOKENIZER_FILE, MODEL_DIR
from lego.recipes.loading import check_tokenizer, load_model, load_tokenizer
from lego.recipes.report import Curve, plot_curves
from lego.tokenize import RegexBPETokenizer
from lego.tokenize.fingerprint import tokenizer_fingerprint
from lego.train import TrainConfig, Trainer
from lego.train.checkpoint import save_model_dir
from lego.train.distributed import DistInfo, init_distributed, pick_device, raise_together
from lego.train.plot import matplotlib_modules
from lego.train.rundir import check_run_dir, run_lock
from lego.train.state import RunState

__all__ = [
    "CURVES_FILE",
    "Output",
    "DataFiles",
    "TuningConfig",
    "TuningModel",
    "Tuning",
    "TuningResult",
    "add_special_tokens",
    "grow_vocabulary",
    "load_tuning_model",
    "build_tuning",
    "save_tokenizer",
    "write_stop_tokens",
    "export_causal_lm",
    "EvaluationReport",
    "summary",
]

CURVES_FILE = "curves.png"
"""The image of a tuning run's curves, in ``out_dir``."""

Output = Literal["merged", "adapter"]
"""What ``out_dir/model`` holds after a LoRA / QLoRA run: the merged model, or the adapter
(PEFT's layout) with a reference to its base model."""

_DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "auto")
_TRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
_VOCAB_TENSORS = ("token_embedding.weight", "lm_head.weight", "lm_head.bias")
_EXPORT_HINT = (
    "free some disk space (or fix the folder's permissions), then run the same command with "
    "resume=auto: training is finished and only the model directory is written again"
)


@dataclass(frozen=True, kw_only=True)
class DataFiles(Config):
    """The records a tuning run reads: local JSON Lines files.

    Attributes:
        train: The training records (``.jsonl``).
        eval: Held-out records (``.jsonl``); ``""``: the recipe's ``val_fraction`` of
            ``train``, or no evaluation.
    """

    train: str = ""
    eval: str = ""

    def validate(self) -> None:
        """A training file is named."""
        super().validate()
        if not self.train:
            raise ConfigError(
                "data.train is empty",
                key="train",
                hint="give the training records: data: {train: path/to/records.jsonl}",
            )


@dataclass(frozen=True, kw_only=True)
class TuningConfig(TrainConfig):
    """The keys every tuning recipe shares: lego-train's, plus the model, data and result.

    Attributes:
        model: A model directory, a lego-train checkpoint or a run directory (``legollm
            pipeline`` / ``pretrain``).
        data: The [`DataFiles`][lego.recipes.tuning.DataFiles].
        tokenizer: A tokenizer spec (lego-tokenize's resolver), ``""``: the model
            directory's.
        dtype: The parameters' dtype as loaded: ``float32``, ``bfloat16``, ``float16`` or
            ``auto`` (as stored).
        add_special_tokens: Special tokens to add when the tokenizer lacks them (e.g.
            ``["<|pad|>"]``, ChatML's ``<|im_start|>`` / ``<|im_end|>``); the model's
            vocabulary grows when they do not fit.
        output: ``merged`` or ``adapter``: what ``out_dir/model`` holds after a LoRA or
            QLoRA run (full fine-tuning writes the whole model).
        plots: Draw ``out_dir/curves.png`` at the end (needs matplotlib: ``legollm[plot]``).
    """

    model: str
    data: DataFiles
    tokenizer: str = ""
    dtype: str = "float32"
    add_special_tokens: tuple[str, ...] = ()
    output: Output = "merged"
    plots: bool = True

    def validate(self) -> None:
        """lego-train's checks, a model, a known dtype, non-empty special tokens."""
        super().validate()
        if not self.model.strip():
            raise ConfigError(
                "model is empty",
                key="model",
                hint="give a model directory, a checkpoint or a run directory "
                "(e.g. one written by legollm pipeline)",
            )
        check_choice("dtype", self.dtype, _DTYPES)
        for token in self.add_special_tokens:
            if not token:
                raise ConfigError(
                    "add_special_tokens holds an empty string",
                    key="add_special_tokens",
                    hint='e.g. add_special_tokens: ["<|pad|>"]',
                )

    def check_adapter_output(self, section: str, finetune: str) -> None:
        """Refuse ``output: adapter`` when the method trains every weight.

        Args:
            section: The recipe's method section (``"sft"``, ``"dpo"``), for the message.
            finetune: Its ``finetune`` setting (``full``, ``lora`` or ``qlora``).

        Raises:
            ConfigError: ``output: adapter`` with ``finetune: full``.
        """
        if self.output == "adapter" and finetune == "full":
            raise ConfigError(
                f"output: adapter needs {section}.finetune: lora or qlora (full fine-tuning "
                "trains every weight: there is no adapter to write)",
                key="output",
                hint=f"set output: merged, or {section}.finetune: lora",
            )

    def train_config(self) -> TrainConfig:
        """The [`TrainConfig`][lego.train.config.TrainConfig] part."""
        data = {k: v for k, v in self.to_dict().items() if k in _TRAIN_KEYS}
        return TrainConfig.from_dict(data)


# -- the model ----------------------------------------------------------------------------


@dataclass
class TuningModel:
    """The model a tuning run starts from, with its tokenizer.

    Attributes:
        model: The model (training mode, on the CPU).
        tokenizer: Its tokenizer, with ``add_special_tokens`` added.
        model_dir: The model directory it was read from.
        added: The special tokens added to the tokenizer, with their ids.
        grown_from: The vocabulary size before it grew for the added tokens, or None.
        tokenizer_hash: The tokenizer's fingerprint (a resume with another is refused).
    """

    model: lego.arch.DecoderLM
    tokenizer: Tokenizer
    model_dir: Path
    added: dict[str, int] = field(default_factory=dict)
    grown_from: int | None = None
    tokenizer_hash: str | None = None


def add_special_tokens(
    tokenizer: Tokenizer, tokens: Sequence[str]
) -> tuple[Tokenizer, dict[str, int]]:
    """Add the special tokens a tokenizer lacks, numbered after its last id.

    Ordinary text encodes exactly as before; the new tokens take ids ``vocab_size``,
    ``vocab_size + 1``... in the given order.

    Args:
        tokenizer: A lego-tokenize byte-level BPE tokenizer (``RegexBPETokenizer``: what
            the pipeline trains and what ``tokenizer.json`` files load as).
        tokens: The special tokens wanted (those it has are left as they are).

    Returns:
        ``(tokenizer, added)``: the tokenizer itself when nothing was missing, else a new
        one; ``added`` maps each new token to its id.

    Raises:
        ConfigError: Tokens are missing from a tokenizer of another kind.

    Example:
        >>> tok = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256})
        >>> new, added = add_special_tokens(tok, ["<|endoftext|>", "<|pad|>"])
        >>> added, new.encode("hi") == tok.encode("hi")
        ({'<|pad|>': 257}, True)
    """
    missing = [t for t in dict.fromkeys(tokens) if t not in tokenizer.special_tokens]
    if not missing:
        return tokenizer, {}
    if not isinstance(tokenizer, RegexBPETokenizer):
        raise ConfigError(
            f"cannot add special tokens to a {type(tokenizer).__name__} (missing: "
            + ", ".join(missing)
            + ")",
            key="add_special_tokens",
            hint="use a tokenizer that has them already (tokenizer: ...), or a lego-tokenize "
            "BPE tokenizer (lego-tokenizer.json, tokenizer.json)",
        )
    start = tokenizer.vocab_size
    added = {token: start + i for i, token in enumerate(missing)}
    grown = RegexBPETokenizer.from_ranks(
        tokenizer.mergeable_ranks,
        pattern=tokenizer.pattern,
        special_tokens={**tokenizer.special_tokens, **added},
        name=tokenizer.name,
        engine=tokenizer.engine,
    )
    return grown, added


def grow_vocabulary(model: lego.arch.DecoderLM, vocab_size: int) -> lego.arch.DecoderLM:
    """A copy of ``model`` with a larger vocabulary: new rows start at the mean of the old.

    The token embedding, the output head (and its bias) get ``vocab_size - old`` new rows,
    each the mean of the existing rows (Hewitt, 2021, "Initializing New Word Embeddings
    for Pretrained Language Models": the new tokens start where the model puts an average
    token, so the distribution over the old tokens barely moves). Every other tensor is
    shared with ``model``.

    Args:
        model: A lego-arch ``DecoderLM``.
        vocab_size: The new size (larger than ``model.config.vocab_size``).

    Returns:
        The new model (training mode), on the CPU.

    Raises:
        ConfigError: ``vocab_size`` is not larger than the model's.

    Example:
        >>> small = lego.arch.build("llama-tiny", vocab_size=10)
        >>> grown = grow_vocabulary(small, 12)
        >>> grown.config.vocab_size, bool((grown.lm_head.weight[:10] == small.lm_head.weight).all())
        (12, True)
    """
    old = int(model.config.vocab_size)
    if vocab_size <= old:
        raise ConfigError(
            f"grow_vocabulary: {vocab_size} is not larger than the model's {old} ids",
            key="vocab_size",
        )
    state = model.state_dict()
    for name in _VOCAB_TENSORS:
        tensor = state.get(name)
        if tensor is None or int(tensor.shape[0]) != old:
            continue
        mean = tensor.detach().float().mean(dim=0, keepdim=True).to(tensor.dtype)  # (1, ...)
        extra = mean.expand(vocab_size - old, *tensor.shape[1:])  # (new - old, ...)
        state[name] = torch.cat([tensor.detach(), extra]).contiguous()
    config = dataclasses.replace(model.config, vocab_size=vocab_size)
    grown = empty_model(config, device=torch.device("cpu"))
    grown.load_state_dict(state, strict=True, assign=True)
    grown.tie_weights()
    return grown.train()


def load_tuning_model(config: TuningConfig) -> TuningModel:
    """Open ``config.model`` and its tokenizer, add the special tokens, grow if needed.

    Args:
        config: The recipe config.

    Returns:
        The [`TuningModel`][lego.recipes.tuning.TuningModel].

    Raises:
        ConfigError: No model at the path, no tokenizer, special tokens that cannot be added.
        FormatError: A damaged checkpoint, non-finite or integer weights.
        CompatibilityError: A tokenizer that does not fit the model.
    """
    dtype = None if config.dtype == "auto" else config.dtype
    model, model_dir = load_model(config.model, dtype=dtype)
    spec = config.tokenizer or None
    tokenizer = load_tokenizer(spec, model_dir)
    check_tokenizer(tokenizer, model, spec=spec, model_dir=model_dir)
    tokenizer, added = add_special_tokens(tokenizer, config.add_special_tokens)
    grown_from: int | None = None
    if tokenizer.vocab_size > model.config.vocab_size:
        grown_from = int(model.config.vocab_size)
        model = grow_vocabulary(model, tokenizer.vocab_size)
    model.train()
    return TuningModel(
        model=model,
        tokenizer=tokenizer,
        model_dir=model_dir,
        added=added,
        grown_from=grown_from,
        tokenizer_hash=tokenizer_fingerprint(tokenizer),
    )


def _check_source(
    config: TuningConfig,
    source: TuningModel,
    *,
    adapter_possible: bool,
    max_length: tuple[str, int] | None,
) -> None:
    """Checks once the model is known: its context, its place, an adapter's base."""
    if max_length is not None:
        key, length = max_length
        context = int(getattr(source.model.config, "context_length", 0) or 0)
        if context and length > context:
            raise ConfigError(
                f"{key}={length} is longer than the model's context of {context} tokens",
                key=key,
                hint=f"set {key}={context} (or less)",
            )
    out = Path(config.out_dir).resolve()
    where = source.model_dir.resolve()
    if where == out or out in where.parents:
        raise ConfigError(
            "the model to tune lies inside out_dir: the run would write over it",
            path=str(source.model_dir),
            key="out_dir",
            hint="choose another out_dir (a new folder for the tuned model)",
        )
    if adapter_possible and config.output == "adapter" and source.grown_from is not None:
        raise ConfigError(
            f"add_special_tokens grew the vocabulary from {source.grown_from} to "
            f"{source.model.config.vocab_size} ids, so the adapter's base (the grown model) "
            "is not the model directory on disk",
            key="output",
            hint="set output: merged, or use a tokenizer that has the tokens already",
        )


# -- the result ---------------------------------------------------------------------------


def save_tokenizer(tokenizer: Tokenizer, folder: Path) -> None:
    """Write ``lego-tokenizer.json`` (and ``tokenizer.json`` when expressible) into ``folder``.

    Args:
        tokenizer: The tokenizer (``save`` / ``save_hf`` when it has them).
        folder: The model directory.

    Raises:
        OSError: The disk cannot take the files.
    """
    save = getattr(tokenizer, "save", None)
    if callable(save):
        save(folder / LEGO_TOKENIZER_FILE)
        for extra in folder.glob("*.vocab"):
            extra.unlink()  # lego-tokenize's human-readable dump: not part of the model
    save_hf = getattr(tokenizer, "save_hf", None)
    if callable(save_hf):
        try:
            save_hf(folder / HF_TOKENIZER_FILE)
        except OSError:
            raise
        except Exception:  # not every tokenizer has a tokenizer.json form
            (folder / HF_TOKENIZER_FILE).unlink(missing_ok=True)


def write_stop_tokens(
    folder: Path,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    source_dir: Path,
    config_json: bool,
) -> None:
    """Record the stop and pad tokens of a tuned model (transformers' fields).

    ``generation_config.json`` starts from the source model's (when it has one) with
    ``eos_token_id`` and ``pad_token_id`` set; with ``config_json`` the model's
    ``config.json`` gets the same two fields, which ``legollm generate`` stops on.

    Args:
        folder: The model directory being written.
        eos_ids: The ids generation stops on (the template's end of turn and the EOS).
        pad_id: The padding id.
        source_dir: The model directory the run started from.
        config_json: Also set them in ``folder/config.json`` (a full model directory).
    """
    eos: int | list[int] = int(eos_ids[0]) if len(eos_ids) == 1 else [int(i) for i in eos_ids]
    generation: dict[str, Any] = {}
    source = source_dir / "generation_config.json"
    if source.is_file():
        with contextlib.suppress(LegoError):
            found = read_json(source, what="generation config")
            if isinstance(found, dict):
                generation = dict(found)
    generation.update(eos_token_id=eos, pad_token_id=int(pad_id))
    atomic_write_text(
        folder / "generation_config.json",
        json.dumps(generation, indent=2) + "\n",
        what="generation config",
    )
    if config_json:
        file = folder / "config.json"
        data = read_json(file, what="model configuration")
        if isinstance(data, dict):
            data.update(eos_token_id=eos, pad_token_id=int(pad_id))
            atomic_write_text(file, json.dumps(data, indent=2) + "\n", what="model configuration")


def export_causal_lm(
    model: nn.Module,
    folder: Path,
    *,
    output: Output,
    source: TuningModel,
    eos_ids: Sequence[int],
    pad_id: int,
) -> None:
    """Write a tuned causal LM into ``folder``: merged, adapter or the whole model.

    The weights go through lego-train's ``save_model_dir`` (the model's
    ``save_pretrained``; a disk that cannot take them is an ``OSError``).

    Args:
        model: The trained model: a lego-peft ``LoraModel`` or the full model.
        folder: The directory to create.
        output: ``merged`` (the adapter folded into the base; ``merge_and_unload``, so the
            ``LoraModel`` cannot be used afterwards) or ``adapter`` (PEFT's layout plus
            ``base_model.json``, the base's path and SHA-256).
        source: What the run started from (tokenizer, model directory).
        eos_ids: The stop ids for ``generation_config.json``.
        pad_id: The padding id.
    """
    adapter = isinstance(model, LoraModel) and output == "adapter"
    if isinstance(model, LoraModel):
        if adapter:
            save_model_dir(model, folder)
        else:
            merged = model.merge_and_unload()
            save_model_dir(merged, folder)
    else:
        save_model_dir(model, folder)
    save_tokenizer(source.tokenizer, folder)
    write_stop_tokens(
        folder, eos_ids=eos_ids, pad_id=pad_id, source_dir=source.model_dir, config_json=not adapter
    )


def _write_model_directory(out_dir: Path, fill: Callable[[Path], None]) -> Path:
    """``out_dir/model`` from ``fill``, written under a temporary name and renamed."""
    target = out_dir / MODEL_DIR
    staging = temporary_name(target)
    previous: Path | None = None
    try:
        with write_errors(target, what="model directory", error=TrainingError, hint=_EXPORT_HINT):
            staging.mkdir(parents=True)
            fill(staging)
            if os.path.lexists(target):
                previous = temporary_name(target)
                os.replace(target, previous)
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if previous is not None:
            if previous.is_dir() and not previous.is_symlink():
                shutil.rmtree(previous, ignore_errors=True)
            else:
                previous.unlink(missing_ok=True)
    return target


# -- the run ------------------------------------------------------------------------------


def trainer_inputs(
    config: TuningConfig,
    source: TuningModel,
    train: TrainConfig,
    lock: FolderLock | None,
    report: EvaluationReport,
) -> dict[str, Any]:
    """The keyword arguments every lego-align trainer takes from a recipe.

    Args:
        config: The recipe config (its ``data`` files).
        source: The loaded model and tokenizer.
        train: lego-train's settings.
        lock: The run's lock, held by the recipe.
        report: The recipe's evaluation callback.

    Returns:
        ``model``, ``tokenizer``, ``train_data``, ``eval_data``, ``train``,
        ``tokenizer_hash``, ``lock`` and ``callbacks``: add the method's ``config``.
    """
    return {
        "model": source.model,
        "tokenizer": source.tokenizer,
        "train_data": config.data.train,
        "eval_data": config.data.eval or None,
        "train": train,
        "tokenizer_hash": source.tokenizer_hash,
        "lock": lock,
        "callbacks": [report],
    }


def record_base_model(model: object, source: TuningModel) -> None:
    """Record the base model's folder in a LoRA model (written into every adapter checkpoint).

    Args:
        model: The trainer's model (nothing happens unless it is a ``LoraModel``).
        source: Where the run started.
    """
    if isinstance(model, LoraModel):
        model.base_model_name_or_path = str(source.model_dir.resolve())


class EvaluationReport:
    """Evaluates before the first step and prints a recipe's metrics after each evaluation.

    A [`TrainerCallback`][lego.protocols.TrainerCallback] (structurally).

    A fresh run (step 0) with evaluation data and ``eval_every`` is evaluated once before
    it trains, logged as the ``val`` record of step 0: the curves then start where the
    model started (DPO's preference accuracy at 0, the policy being its reference). After
    every evaluation the chosen metrics are printed (lego-train prints ``val_loss``).

    Args:
        keys: The validation metrics to print (``"val_rewards/accuracies"``...).

    Attributes:
        trainer: The lego-train ``Trainer``, set once it exists.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        self.trainer: Trainer | None = None

    def on_train_begin(self, state: TrainerState) -> None:
        """Evaluate a fresh run before its first step."""
        trainer = self.trainer
        if trainer is None or state.step != 0 or not trainer.config.eval_every:
            return
        metrics = trainer.evaluate()
        if metrics:
            trainer.log_record({"step": 0, "split": "val", **metrics})
            self._say(0, metrics, ("val_loss", *self.keys))

    def on_evaluate(self, state: TrainerState, metrics: Mapping[str, float]) -> None:
        """Print the chosen metrics."""
        self._say(state.step, metrics, self.keys)

    def on_step_end(self, state: TrainerState) -> None:
        """Nothing to do after a step."""

    def on_save(self, state: TrainerState, path: Path) -> None:
        """Nothing to do at saves."""

    def on_train_end(self, state: TrainerState) -> None:
        """Nothing to do at the end."""

    def _say(self, step: int, metrics: Mapping[str, float], keys: Sequence[str]) -> None:
        parts = [f"{key} {metrics[key]:.4f}" for key in keys if key in metrics]
        if parts and self.trainer is not None:
            self.trainer.message(f"step {step}: " + "  ".join(parts))


@dataclass(frozen=True)
class TuningResult:
    """What a tuning run produced.

    Attributes:
        state: The trainer's final state (``stop_signal`` set when SIGINT / SIGTERM
            stopped it after a checkpoint).
        out_dir: The run directory.
        finished: Whether ``max_steps`` were reached (then the model directory is written).
        model_dir: ``out_dir/model`` once finished (None before, and on ranks other than 0).
        curves: ``out_dir/curves.png`` once finished with ``plots: true``, else None.
    """

    state: RunState
    out_dir: Path
    finished: bool
    model_dir: Path | None = None
    curves: Path | None = None


@dataclass
class Tuning:
    """A tuning run, built and checked, not yet trained.

    Attributes:
        config: The recipe config.
        source: The model it starts from.
        trainer: The lego-align trainer (``SFTTrainer``, ``DPOTrainer``, ``RewardTrainer``).
        export: Writes the tuned model into a new folder.
        curves: The panels of ``curves.png``.
        info: This process's place under ``torchrun``.
        lock: The lock on ``out_dir`` (rank 0), released by ``run()`` or ``close()``.
        echo: Where the recipe's own lines go.
    """

    config: TuningConfig
    source: TuningModel
    trainer: Any
    export: Callable[[Path], None]
    curves: tuple[Curve, ...]
    info: DistInfo
    lock: FolderLock | None = None
    echo: Callable[[str], None] = print

    def run(self) -> TuningResult:
        """Train (or continue), then write ``out_dir/model`` and ``curves.png``.

        With ``overwrite=true`` (and no checkpoint to resume) the ``model/`` and
        ``curves.png`` of the run being replaced are deleted when training starts, with its
        checkpoints and metrics.

        Returns:
            The [`TuningResult`][lego.recipes.tuning.TuningResult]; not ``finished`` when
            a signal stopped training (a checkpoint was saved: ``resume=auto``
            continues).

        Raises:
            TrainingError: Training failed, or the disk cannot take the checkpoint or the
                model directory (nothing half-written is left; ``resume=auto`` continues).
            ConfigError: The curves cannot be drawn or written.
        """
        out = Path(self.config.out_dir)
        try:
            inner = getattr(self.trainer, "trainer", None)
            fresh = getattr(inner, "resumed_from", None) is None
            if self.info.is_main and self.config.overwrite and fresh:
                _remove_results(out)  # they belong to the run that overwrite=true replaces
            state: RunState = self.trainer.fit()
            if state.stop_signal is not None or state.step < state.max_steps:
                return TuningResult(state=state, out_dir=out, finished=False)
            model_dir: Path | None = None
            curves: Path | None = None
            if self.info.is_main:
                model_dir = _write_model_directory(out, self.export)
                self.echo(f"wrote {model_dir} ({self._what()})")
                if self.config.plots:
                    curves = plot_curves(out, out / CURVES_FILE, self.curves)
                    self.echo(f"wrote {curves}")
            return TuningResult(
                state=state, out_dir=out, finished=True, model_dir=model_dir, curves=curves
            )
        finally:
            self.close()

    def _what(self) -> str:
        model = getattr(self.trainer, "model", None)
        if isinstance(model, LoraModel) or self.config.output == "adapter":
            if self.config.output == "adapter":
                return f"the LoRA adapter; its base: {self.source.model_dir}"
            return "the base model with the LoRA adapter merged in"
        return "the whole model"

    def close(self) -> None:
        """Release the lock on ``out_dir`` (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _remove_results(out: Path) -> None:
    """Delete ``out/model`` and ``out/curves.png`` of a run that ``overwrite=true`` replaces."""
    model = out / MODEL_DIR
    if model.is_dir() and not model.is_symlink():
        shutil.rmtree(model)
    elif os.path.lexists(model):
        model.unlink()
    (out / CURVES_FILE).unlink(missing_ok=True)


def _echo_to(progress: str) -> Callable[[str], None]:
    def echo(text: str) -> None:
        if progress != "none":
            print(text, file=sys.stderr, flush=True)

    return echo


def _check_files(config: TuningConfig) -> None:
    """The data files exist (before anything is locked or read)."""
    for key, value in (("data.train", config.data.train), ("data.eval", config.data.eval)):
        if value and not Path(value).is_file():
            what = "is a folder" if Path(value).is_dir() else "does not exist"
            raise ConfigError(
                f"{key} {what}",
                path=value,
                key=key,
                hint="give a .jsonl file of records (one JSON object per line)",
            )


MakeTrainer = Callable[
    [TuningModel, TrainConfig, FolderLock | None], tuple[Any, Callable[[Path], None]]
]
"""Builds a recipe's trainer (under the caller's lock) and its export function."""


def build_tuning(
    config: TuningConfig,
    make: MakeTrainer,
    *,
    curves: Sequence[Curve],
    adapter_possible: bool = True,
    max_length: tuple[str, int] | None = None,
) -> Tuning:
    """Check everything, lock ``out_dir``, load the model and build the recipe's trainer.

    Before any long work (reading the model and the data, precomputing a reference): the
    config (already validated), matplotlib when ``plots``, the data files,
    ``out_dir`` (lego-train's [`check_run_dir()`][lego.train.rundir.check_run_dir]: a run
    there needs ``resume=auto`` or ``overwrite=true``) and its lock (a second writer is
    refused). A build that fails releases the lock and removes the ``out_dir`` it created
    when it is still empty.

    Args:
        config: The validated recipe config.
        make: Builds the trainer from the model, lego-train's config and the lock.
        curves: The panels of ``curves.png``.
        adapter_possible: Whether the recipe can write an adapter (``output: adapter``).
        max_length: ``(key, value)`` of the recipe's longest row, checked against the
            model's context before any record is read.

    Returns:
        The [`Tuning`][lego.recipes.tuning.Tuning], ready to run.

    Raises:
        ConfigError: A bad setting, a missing file, an ``out_dir`` that holds another run or
            is written by another process or cannot be written.
        DataError: A bad record (file and line).
        CompatibilityError: A tokenizer that does not fit the model.
        FormatError: A damaged model directory or checkpoint.
    """
    train = config.train_config()
    device = pick_device(train.device)
    info = init_distributed(device)
    if config.plots:
        try:
            matplotlib_modules("the run's curves (plots: true)", install='"legollm[plot]"')
        except ConfigError as exc:
            raise ConfigError(
                exc.message,
                key="plots",
                hint=(f"{exc.hint}, or set plots: false" if exc.hint else "set plots: false"),
            ) from None
    _check_files(config)
    out = Path(train.out_dir)
    created = not out.exists()
    owned: FolderLock | None = None
    problem: BaseException | None = None
    if info.is_main:
        try:
            check_run_dir(train)
            owned = run_lock(out).acquire()
            remove_stale_temporaries(out)
        except ConfigError as exc:
            problem = exc
    raise_together(problem, device)
    try:
        source = load_tuning_model(config)
        _check_source(config, source, adapter_possible=adapter_possible, max_length=max_length)
        trainer, export = make(source, train, owned)
    except BaseException:
        if owned is not None:
            owned.release()
            if created:  # a run that failed its checks leaves no empty out_dir behind
                with contextlib.suppress(OSError):
                    out.rmdir()
        raise
    return Tuning(
        config=config,
        source=source,
        trainer=trainer,
        export=export,
        curves=tuple(curves),
        info=info,
        lock=owned,
        echo=_echo_to(train.progress) if info.is_main else (lambda text: None),
    )


def summary(state: RunState, keys: Mapping[str, str]) -> str:
    """One line with the run's step and chosen metrics (those it has).

    Args:
        state: The final state.
        keys: Metric key -> the name printed.

    Returns:
        E.g. ``"step 60/60, loss 0.4121, val_rewards/accuracies 0.9375"``.

    Example:
        >>> state = RunState(max_steps=2, step=2, metrics={"loss": 0.5})
        >>> summary(state, {"loss": "loss", "val_loss": "val_loss"})
        'step 2/2, loss 0.5000'
    """
    parts = [f"step {state.step}/{state.max_steps}"]
    for key, name in keys.items():
        if key in state.metrics:
            parts.append(f"{name} {state.metrics[key]:.4f}")
    return ", ".join(parts)
