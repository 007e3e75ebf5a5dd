"""The DPO trainer (and every ``loss_type`` of ``dpo_loss``) on lego-train's Trainer.

Data: lego-data's ``PreferenceDataset`` (``prompt``, ``chosen``, ``rejected``; strings or
messages, a chat template), turned into TRL's pairs of token ids
([`dpo_pairs()`][lego.align.dpo.dpo_pairs]): the prompt, and each response up to its
end-of-turn token (its last trained token). A pair longer than ``max_length`` loses prompt
tokens from the left, the same number on both sides (counted); a response that does not fit
beside one prompt token drops the pair (counted) or is refused; identical chosen and
rejected responses are skipped (counted) or refused. Batches are TRL's ``[chosen;
rejected]`` layout ([`build_preference_batch()`][lego.align.logprobs.build_preference_batch]).

The reference model (``reference``):

- ``"adapter"`` (LoRA / QLoRA): the trained model itself with its adapter disabled
  (lego-peft's ``LoraModel.disabled()``), so no second copy is in memory;
- ``"copy"`` (full fine-tuning): a frozen copy of the model as it was given;
- ``"precomputed"``: the reference log-probabilities of every pair are computed once, before
  training, with the model as given (its adapter disabled), and cached on disk in
  ``reference_cache_dir`` under a key made of the data's hash (every pair's token ids) and
  the reference model's identity (its config, tensor shapes and a fingerprint of its
  weights). The cache file is checked (key, sizes, finite values) before use and rebuilt when
  it does not match; under ``torchrun`` rank 0 writes it and every rank reads it.
- ``"auto"``: ``"adapter"`` for LoRA / QLoRA, ``"copy"`` for full fine-tuning;
- or an explicit ``reference_model`` (its vocabulary must be the policy's).

The step's loss is ``dpo_loss`` averaged over every pair of the step
([`DPOObjective`][lego.align.dpo.DPOObjective], one unit per pair), so accumulation and
ranks give the big batch's gradient (except for the loss types whose value depends on the
whole batch: ``aot``, ``aot_unpaired``, and the ``sft`` / ``rpo_alpha`` NLL term, which are
computed per micro-batch). Metrics are TRL's (``rewards/chosen``, ``rewards/accuracies``,
``rewards/margins``, ``logps/chosen``...), means per pair; after an evaluation
``val_rewards/accuracies`` is the held-out preference accuracy. Checkpoints, exact resume
after a kill and ``torchrun`` are lego-train's: the reference never changes during a run
(copied, disabled or cached before the Trainer loads a checkpoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from lego.align.finetune import FinetuneSettings, prepare_model
from lego.align.logprobs import build_preference_batch, sequence_logprobs
from lego.align.losses import DPO_LOSS_TYPES, dpo_loss
from lego.align.reference import check_vocabulary, frozen_reference
from lego.align.run import TrainerRun, describe_pairs, preference_splits
from lego.align.tokens import pair_count, preference_pad_id
from lego.data.encode import TokenizedExample
from lego.data.example_loader import ExampleLoader
from lego.data.preference import PreferenceDataset, PreferenceExample
from lego.data.records import RecordSource
from lego.peft import LoraModel
from lego.protocols import (
    IGNORE_INDEX,
    ConfigError,
    DataError,
    FolderLock,
    Tokenizer,
    TrainerCallback,
    check_choice,
    check_float,
)
from lego.protocols.chat import get_chat_template
from lego.train import ObjectiveOutput, TrainConfig
from lego.train.checkpoint import model_signature
from lego.train.distributed import init_distributed, pick_device, resolve_strategy

__all__ = [
    "DPOConfig",
    "DPOCollator",
    "DPOObjective",
    "DPOTrainer",
    "ReferenceCache",
    "dpo_pairs",
    "precompute_reference_logps",
    "reference_fingerprint",
]

ReferenceMode = Literal["auto", "adapter", "copy", "precomputed"]

_CACHE_FORMAT = "lego-align-reference-logps"
_CACHE_VERSION = "1"


# -- data -----------------------------------------------------------------------------------------


def _sides(example: TokenizedExample, side: str, line: int) -> tuple[list[int], list[int]]:
    """``(prompt, response)`` ids of one side: the response ends at its last trained token."""
    trained = [t for t, label in enumerate(example.labels) if label != IGNORE_INDEX]
    if not trained:
        raise DataError(f"line {line}: the {side} response has no trained token", line=line)
    first, last = trained[0], trained[-1]
    sequence = [*example.input_ids[: last + 1], example.labels[last]]
    return sequence[: first + 1], sequence[first + 1 :]


def dpo_pairs(
    dataset: PreferenceDataset,
    *,
    max_length: int | None,
    on_overflow: str = "drop",
    identical: str = "skip",
    path: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """TRL's tokenized pairs from a preference dataset, fitted to ``max_length``, with counts.

    Args:
        dataset: lego-data's ``PreferenceDataset`` (built without ``max_length``).
        max_length: The longest row (prompt + the longer response), or None.
        on_overflow: ``"drop"`` or ``"error"`` for a response that does not fit beside one
            prompt token.
        identical: ``"skip"`` or ``"error"`` for identical chosen and rejected responses.
        path: The records' file, for error messages.

    Returns:
        The pairs (``prompt_ids``, ``chosen_ids``, ``rejected_ids`` and ``index``, their
        position in the list) and ``{"pairs", "truncated", "dropped", "identical"}``.

    Raises:
        DataError: A pair whose two sides render different prompts, or (with ``"error"``) a
            pair that does not fit or is identical, naming the line; no pair left.
    """
    check_choice("on_overflow", on_overflow, ("drop", "error"))
    check_choice("identical_pairs", identical, ("skip", "error"))
    pairs: list[dict[str, Any]] = []
    counts = {"pairs": 0, "truncated": 0, "dropped": 0, "identical": 0}
    for example, line in zip(dataset.examples, dataset.lines, strict=True):
        assert isinstance(example, PreferenceExample)
        prompt, chosen = _sides(example.chosen, "chosen", line)
        rejected_prompt, rejected = _sides(example.rejected, "rejected", line)
        if prompt != rejected_prompt:
            raise DataError(
                f"line {line}: the chosen and rejected sides render different prompts",
                path=path,
                line=line,
                key="prompt",
                hint="give both responses the same prompt",
            )
        if chosen == rejected:
            if identical == "error":
                raise DataError(
                    f"line {line}: the chosen and rejected responses are identical",
                    path=path,
                    line=line,
                    key="rejected",
                    hint="fix the pair, or set identical_pairs: skip (counted)",
                )
            counts["identical"] += 1
            continue
        longest = max(len(chosen), len(rejected))
        if max_length is not None and len(prompt) + longest > max_length:
            room = max_length - longest
            if room < 1:
                if on_overflow == "error":
                    raise DataError(
                        f"line {line}: a response of {longest} tokens does not fit "
                        f"max_length={max_length} beside one prompt token",
                        path=path,
                        line=line,
                        key="max_length",
                        hint="raise max_length or set on_overflow: drop",
                    )
                counts["dropped"] += 1
                continue
            prompt = prompt[-room:]  # the prompt's end stays, next to the responses
            counts["truncated"] += 1
        pairs.append(
            {
                "prompt_ids": prompt,
                "chosen_ids": chosen,
                "rejected_ids": rejected,
                "index": len(pairs),
            }
        )
    counts["pairs"] = len(pairs)
    if not pairs:
        raise DataError(
            f"no preference pair is left to train on ({counts})",
            hint="check the records, raise max_length",
        )
    return pairs, counts


class DPOCollator:
    """``[chosen; rejected]`` batches of TRL's layout, with the pairs' cached reference values.

    Args:
        pad_id: The padding id.
        reference: ``(chosen, rejected)`` reference log-probabilities of every pair
            (``(N,)`` each, by ``index``), or None.
        pad_to_multiple_of: Round the length up to a multiple of this, or None.
    """

    def __init__(
        self,
        *,
        pad_id: int,
        reference: tuple[Tensor, Tensor] | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.pad_id = pad_id
        self.reference = reference
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, pairs: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """Collate pairs.

        Args:
            pairs: From [`dpo_pairs()`][lego.align.dpo.dpo_pairs].

        Returns:
            ``input_ids``, ``attention_mask``, ``completion_mask``, ``position_ids`` (each
            ``(2P, L)`` long), ``index`` ``(P,)``, and with cached reference values
            ``ref_chosen`` / ``ref_rejected`` ``(P,)``.
        """
        batch = build_preference_batch(
            pairs, pad_id=self.pad_id, eos_id=None, pad_to_multiple_of=self.pad_to_multiple_of
        )
        index = torch.tensor([int(p["index"]) for p in pairs], dtype=torch.long)  # (P,)
        out = {
            "input_ids": batch.input_ids,  # (2P, L)
            "attention_mask": batch.attention_mask,
            "completion_mask": batch.completion_mask,
            "position_ids": batch.position_ids,
            "index": index,
        }
        if self.reference is not None:
            out["ref_chosen"] = self.reference[0][index]  # (P,)
            out["ref_rejected"] = self.reference[1][index]
        return out


# -- the objective ---------------------------------------------------------------------------------


class DPOObjective:
    """``dpo_loss`` on ``[chosen; rejected]`` batches: a lego-train objective, one unit per pair.

    Args:
        loss_type: One ``dpo_loss`` loss type or several (weighted by ``loss_weights``).
        beta: beta > 0.
        label_smoothing: epsilon (cDPO, robust DPO, EXO).
        loss_weights: Weights of several loss types, or None.
        rpo_alpha: RPO's NLL weight, or None.
        reference: A frozen reference model, or None.
        adapter: The policy's ``LoraModel`` whose adapter is disabled for the reference
            pass, or None.
        chunk_size: Positions per chunk of the log-softmax.

    Raises:
        ConfigError: No reference source (give ``reference``, ``adapter``, or batches with
            ``ref_chosen`` / ``ref_rejected``), checked per batch.
    """

    perplexity = False

    def __init__(
        self,
        *,
        loss_type: str | Sequence[str] = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        loss_weights: Sequence[float] | None = None,
        rpo_alpha: float | None = None,
        reference: nn.Module | None = None,
        adapter: LoraModel | None = None,
        chunk_size: int = 128,
    ) -> None:
        self.loss_type = loss_type
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.loss_weights = loss_weights
        self.rpo_alpha = rpo_alpha
        self.reference = reference
        self.adapter = adapter
        self.chunk_size = chunk_size

    def units(self, batch: Mapping[str, Tensor], /) -> int:
        """The pairs of the batch.

        Args:
            batch: ``input_ids`` ``(2P, L)``.

        Returns:
            ``P``.

        Raises:
            DataError: An odd number of rows.
        """
        return pair_count(batch, what="DPO", collator="DPOCollator")

    def _reference(self, model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        if "ref_chosen" in batch and "ref_rejected" in batch:
            return batch["ref_chosen"], batch["ref_rejected"]
        args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        position_ids = batch.get("position_ids")
        with torch.no_grad():
            if self.reference is not None:
                lp = sequence_logprobs(
                    self.reference, *args, position_ids=position_ids, chunk_size=self.chunk_size
                )
            elif self.adapter is not None:
                with self.adapter.disabled():
                    lp = sequence_logprobs(
                        model, *args, position_ids=position_ids, chunk_size=self.chunk_size
                    )
            else:
                raise ConfigError(
                    "DPOObjective has no reference: no reference model, no adapter to "
                    "disable, and the batch carries no ref_chosen / ref_rejected",
                    key="reference",
                    hint="pass reference=, adapter=, or precomputed reference values",
                )
        chosen, rejected = lp.chunk()
        return chosen.sum, rejected.sum

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], /) -> ObjectiveOutput:
        """The summed DPO loss over the batch's pairs, with TRL's metrics (summed).

        Args:
            model: The policy (possibly wrapped).
            batch: From [`DPOCollator`][lego.align.dpo.DPOCollator].

        Returns:
            The summed loss, the batch's real tokens and the summed metrics.
        """
        ref_chosen, ref_rejected = self._reference(model, batch)
        policy = sequence_logprobs(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["completion_mask"],
            position_ids=batch.get("position_ids"),
            chunk_size=self.chunk_size,
        )
        chosen, rejected = policy.chunk()
        out = dpo_loss(
            chosen.sum,
            rejected.sum,
            ref_chosen.to(chosen.sum.dtype),
            ref_rejected.to(rejected.sum.dtype),
            loss_type=self.loss_type,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            loss_weights=self.loss_weights,
            chosen_lengths=chosen.count,
            rejected_lengths=rejected.count,
            rpo_alpha=self.rpo_alpha,
        )
        pairs = int(chosen.sum.shape[0])
        metrics = {name: value.detach() * pairs for name, value in out.metrics.items()}
        tokens = int(batch["attention_mask"].sum())
        return ObjectiveOutput(out.losses.sum(), tokens, metrics)

    def __repr__(self) -> str:
        return f"DPOObjective(loss_type={self.loss_type!r}, beta={self.beta})"


# -- precomputed reference log-probabilities ----------------------------------------------


def reference_fingerprint(model: nn.Module, *, skip: str | None = None) -> str:
    """A short identity of a model: its config, tensor shapes and a sample of its weights.

    Args:
        model: The reference model.
        skip: Leave out the tensors whose name contains this (``"lora_"``: the adapter of
            a model whose reference is its base).

    Returns:
        A SHA-256 hex digest; another config, shape or (almost surely) other weights give
        another digest.
    """
    signature = model_signature(model)
    if skip is not None:
        shapes = signature.get("shapes") or {}
        signature["shapes"] = {k: v for k, v in shapes.items() if skip not in k}
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if skip is not None and skip in name:
                continue
            sample = tensor.detach().flatten()[:256].to("cpu", torch.float64)
            digest.update(name.encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def _data_hash(pairs: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        row = [pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"]]
        digest.update(json.dumps(row, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


class ReferenceCache:
    """Reference log-probabilities on disk, keyed by the data's hash and the reference model.

    One safetensors file per key, ``reference-logps-<key[:16]>.safetensors``, holding
    ``chosen`` and ``rejected`` ``(N,)`` float64 and, in its metadata, the format, the full
    key and ``N``. Written to a temporary name and renamed.

    Args:
        directory: The cache folder (created when written).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(pairs: Sequence[Mapping[str, Any]], reference_id: str, settings: str = "") -> str:
        """The cache key of a data set for one reference model.

        Args:
            pairs: The pairs (their token ids, in order).
            reference_id: The reference model's identity
                ([`reference_fingerprint()`][lego.align.dpo.reference_fingerprint]).
            settings: Anything else the values depend on (e.g. ``chunk_size``).

        Returns:
            A SHA-256 hex digest.
        """
        text = f"{_data_hash(pairs)}:{reference_id}:{settings}"
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> Path:
        """The file of a key."""
        return self.directory / f"reference-logps-{key[:16]}.safetensors"

    def load(self, key: str, size: int) -> tuple[Tensor, Tensor] | None:
        """The cached values of a key, or None when absent or not valid.

        Args:
            key: From [`key()`][lego.align.dpo.ReferenceCache.key].
            size: The number of pairs ``N``.

        Returns:
            ``(chosen, rejected)``, ``(N,)`` float64 each, or None (missing, another key,
            wrong sizes, non-finite values, or a damaged file).
        """
        file = self.path(key)
        if not file.is_file():
            return None
        try:
            with safe_open(str(file), framework="pt") as handle:
                meta = handle.metadata() or {}
                if (
                    meta.get("format") != _CACHE_FORMAT
                    or meta.get("key") != key
                    or meta.get("pairs") != str(size)
                ):
                    return None
                chosen = handle.get_tensor("chosen")
                rejected = handle.get_tensor("rejected")
        except (SafetensorError, OSError, KeyError):
            return None
        for values in (chosen, rejected):
            if tuple(values.shape) != (size,) or not bool(torch.isfinite(values).all()):
                return None
        return chosen, rejected

    def save(self, key: str, chosen: Tensor, rejected: Tensor) -> Path:
        """Write the values of a key (atomically).

        Args:
            key: The key.
            chosen: ``(N,)`` reference log-probabilities of the chosen responses.
            rejected: ``(N,)`` of the rejected ones.

        Returns:
            The file.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        file = self.path(key)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        metadata = {
            "format": _CACHE_FORMAT,
            "version": _CACHE_VERSION,
            "key": key,
            "pairs": str(int(chosen.shape[0])),
        }
        tensors = {
            "chosen": chosen.detach().to("cpu", torch.float64).contiguous(),
            "rejected": rejected.detach().to("cpu", torch.float64).contiguous(),
        }
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
        return file


@torch.no_grad()
def precompute_reference_logps(
    model: nn.Module,
    pairs: Sequence[Mapping[str, Any]],
    *,
    pad_id: int,
    batch_size: int = 8,
    chunk_size: int = 128,
    adapter: LoraModel | None = None,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Sequence log-probabilities of every pair under the reference model, in order.

    Args:
        model: The reference model (the policy before training).
        pairs: From [`dpo_pairs()`][lego.align.dpo.dpo_pairs].
        pad_id: The padding id.
        batch_size: Pairs per forward pass.
        chunk_size: Positions per chunk of the log-softmax.
        adapter: A ``LoraModel`` to disable while computing (the reference is its base).
        device: Where to run (None: the model's parameters' device).

    Returns:
        ``(chosen, rejected)``, ``(N,)`` float64 each.
    """
    if device is None:
        device = next(model.parameters()).device
    collate = DPOCollator(pad_id=pad_id)
    chosen = torch.zeros(len(pairs), dtype=torch.float64)
    rejected = torch.zeros(len(pairs), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(pairs), batch_size):
            group = pairs[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(group).items()}
            args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
            if adapter is not None:
                with adapter.disabled():
                    lp = sequence_logprobs(
                        model, *args, position_ids=batch["position_ids"], chunk_size=chunk_size
                    )
            else:
                lp = sequence_logprobs(
                    model, *args, position_ids=batch["position_ids"], chunk_size=chunk_size
                )
            c, r = lp.chunk()
            index = batch["index"].to("cpu")
            chosen[index] = c.sum.double().cpu()
            rejected[index] = r.sum.double().cpu()
    finally:
        model.train(was_training)
    return chosen, rejected


# -- the trainer ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPOConfig(FinetuneSettings):
    """The settings of a DPO run (besides lego-train's ``TrainConfig``).

    Attributes:
        template: ``"chatml"``, ``"llama3"`` or ``"alpaca"`` (``PreferenceDataset``).
        eos_token: With ``"alpaca"``: the end token after each response.
        pad_token: The padding special token; None looks for the tokenizer's own.
        max_length: The longest row (prompt + the longer response), tokens.
        on_overflow: ``"drop"`` (counted) or ``"error"`` for a response that does not fit.
        identical_pairs: ``"skip"`` (counted) or ``"error"``.
        system_prompt: A system message for prompts without one.
        loss_type: A ``dpo_loss`` loss type, or several (``loss_weights``).
        beta: beta > 0.
        label_smoothing: epsilon for cDPO / robust DPO / EXO.
        loss_weights: Weights of several loss types.
        rpo_alpha: RPO's NLL weight.
        reference: ``"auto"``, ``"adapter"``, ``"copy"`` or ``"precomputed"`` (see the
            module's docstring).
        reference_cache_dir: Where precomputed reference values are cached ("" :
            ``<out_dir>/reference-logps``).
        chunk_size: Positions per chunk of the log-softmax.
        batch_size: Pairs per micro-batch and rank.
        eval_batch_size: Pairs per evaluation batch (0: ``batch_size``).
        val_fraction: Held-out share of the training records when no evaluation data is
            given.
        shuffle: Shuffle the pairs each epoch.
        seed: The data seed.
    """

    template: str = "chatml"
    eos_token: str = "<|endoftext|>"
    pad_token: str | None = None
    max_length: int = 1024
    on_overflow: Literal["drop", "error"] = "drop"
    identical_pairs: Literal["skip", "error"] = "skip"
    system_prompt: str | None = None
    loss_type: tuple[str, ...] | str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_weights: tuple[float, ...] | None = None
    rpo_alpha: float | None = None
    reference: ReferenceMode = "auto"
    reference_cache_dir: str = ""
    chunk_size: int = 128
    batch_size: int = 8
    eval_batch_size: int = 0
    val_fraction: float = 0.0
    shuffle: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Check beta, the loss types, the reference mode and sizes."""
        super().validate()
        check_float("beta", self.beta, low=0.0, low_open=True, hint="beta must be > 0")
        types = (self.loss_type,) if isinstance(self.loss_type, str) else self.loss_type
        for name in types:
            check_choice("loss_type", name, DPO_LOSS_TYPES)
        if self.reference == "adapter" and self.finetune == "full":
            raise ConfigError(
                "reference: adapter needs finetune: lora or qlora (full fine-tuning has no "
                "adapter to disable)",
                key="reference",
                hint="use reference: copy or precomputed, or finetune: lora",
            )
        if self.max_length < 2:
            raise ConfigError("max_length must be at least 2", key="max_length")
        for key in ("batch_size", "chunk_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1", key=key)
        if self.eval_batch_size < 0:
            raise ConfigError("eval_batch_size must be >= 0", key="eval_batch_size")
        if self.template.lower() != "alpaca":
            get_chat_template(self.template)

    def reference_mode(self) -> Literal["adapter", "copy", "precomputed"]:
        """The reference actually used (``"auto"`` resolved)."""
        if self.reference == "auto":
            return "copy" if self.finetune == "full" else "adapter"
        return self.reference


class DPOTrainer(TrainerRun):
    """Preference optimisation (DPO and its loss types) on lego-train's Trainer.

    Args:
        model: The policy: any ``CausalLM`` (``config.finetune`` adapts it).
        tokenizer: Any tokenizer with the template's special tokens and a pad token.
        train_data: Preference records (a ``.jsonl`` path or dictionaries).
        config: The DPO settings.
        train: lego-train's settings.
        eval_data: Held-out records, or None (the ``val_fraction`` split, or none).
        reference_model: An explicit frozen reference model (instead of ``config.reference``);
            its vocabulary must be the policy's.
        callbacks: More lego-train callbacks.
        tokenizer_hash: Identifies the tokenizer for resume checks.
        console_stream: Where progress lines go.
        lock: The lock of ``train.out_dir`` when the caller holds it (a recipe locks the
            run before it reads the data); None: ``fit()`` takes it.

    Attributes:
        model: The policy being trained (a ``LoraModel`` for LoRA / QLoRA).
        reference_mode: ``"adapter"``, ``"copy"``, ``"precomputed"`` or ``"model"``.
        train_pairs: The training pairs; ``eval_pairs`` the held-out ones (or None).
        cache_file: The precomputed reference file, or None.
        trainer: The ``lego.train.Trainer``.

    Raises:
        ConfigError: A bad setting, no pad token.
        CompatibilityError: A reference model whose vocabulary differs from the policy's.
        DataError: Bad records, no pair left.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: Tokenizer,
        train_data: RecordSource,
        config: DPOConfig,
        train: TrainConfig,
        eval_data: RecordSource | None = None,
        reference_model: nn.Module | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        tokenizer_hash: str | None = None,
        console_stream: Any = None,
        lock: FolderLock | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        chat = None if config.template.lower() == "alpaca" else get_chat_template(config.template)
        self.pad_id = preference_pad_id(
            tokenizer, chat, eos_token=config.eos_token, pad_token=config.pad_token
        )
        if reference_model is not None:
            check_vocabulary(model, reference_model)
        self.train_pairs, self.eval_pairs, report = preference_splits(
            train_data,
            eval_data,
            tokenizer=tokenizer,
            config=config,
            make_pairs=lambda dataset, path: dpo_pairs(
                dataset,
                max_length=config.max_length,
                on_overflow=config.on_overflow,
                identical=config.identical_pairs,
                path=path,
            ),
        )

        device = pick_device(train.device)
        info = init_distributed(device)
        self.model = prepare_model(model, config)
        adapter = self.model if isinstance(self.model, LoraModel) else None
        mode, reference = frozen_reference(
            self.model,
            mode=config.reference_mode(),
            reference_model=reference_model,
            adapter=adapter,
            device=device,
            info=info,
            strategy=resolve_strategy(train.strategy, info),
            alternatives="reference: copy or precomputed",
        )
        self.reference_mode = mode

        self.cache_file: Path | None = None
        train_reference: tuple[Tensor, Tensor] | None = None
        eval_reference: tuple[Tensor, Tensor] | None = None
        if mode == "precomputed":
            cache_dir = config.reference_cache_dir or os.path.join(train.out_dir, "reference-logps")
            self.model.to(device)
            identity = reference_fingerprint(
                self.model, skip="lora_" if adapter is not None else None
            )
            train_reference = self._cached(
                ReferenceCache(cache_dir), self.train_pairs, identity, adapter, device, info
            )
            if self.eval_pairs is not None:
                eval_reference = self._cached(
                    ReferenceCache(cache_dir), self.eval_pairs, identity, adapter, device, info
                )

        def loader(
            items: list[dict[str, Any]],
            size: int,
            training: bool,
            cached: tuple[Tensor, Tensor] | None,
        ) -> ExampleLoader[Any, Any]:
            return self._loader(
                items,
                batch_size=size,
                collate_fn=DPOCollator(pad_id=self.pad_id, reference=cached),
                train=training,
                shuffle=config.shuffle,
                seed=config.seed,
                info=info,
            )

        train_loader = loader(self.train_pairs, config.batch_size, True, train_reference)
        eval_loader = None
        if self.eval_pairs is not None:
            size = config.eval_batch_size or config.batch_size
            eval_loader = loader(self.eval_pairs, size, False, eval_reference)
        self.objective = DPOObjective(
            loss_type=config.loss_type,
            beta=config.beta,
            label_smoothing=config.label_smoothing,
            loss_weights=config.loss_weights,
            rpo_alpha=config.rpo_alpha,
            reference=reference,
            adapter=adapter if mode == "adapter" else None,
            chunk_size=config.chunk_size,
        )
        self._start(
            model=self.model,
            objective=self.objective,
            train_loader=train_loader,
            eval_loader=eval_loader,
            train=train,
            tokenizer=tokenizer,
            callbacks=callbacks,
            tokenizer_hash=tokenizer_hash,
            console_stream=console_stream,
            lock=lock,
            counts=report,
            message=f"DPO data: {describe_pairs(report)}; reference: {mode}",
        )

    def _cached(
        self,
        cache: ReferenceCache,
        pairs: list[dict[str, Any]],
        identity: str,
        adapter: LoraModel | None,
        device: torch.device,
        info: Any,
    ) -> tuple[Tensor, Tensor]:
        key = cache.key(pairs, identity, settings=f"chunk_size={self.config.chunk_size}")
        found = cache.load(key, len(pairs)) if info.rank == 0 else None
        if info.rank == 0 and found is None:
            values = precompute_reference_logps(
                self.model,
                pairs,
                pad_id=self.pad_id,
                batch_size=self.config.eval_batch_size or self.config.batch_size,
                chunk_size=self.config.chunk_size,
                adapter=adapter,
                device=device,
            )
            self.cache_file = cache.save(key, *values)
        if dist.is_initialized():
            dist.barrier()
        loaded = cache.load(key, len(pairs))
        if loaded is None:
            raise DataError(
                "the precomputed reference log-probabilities could not be read back",
                path=cache.path(key),
                hint="check the cache folder (reference_cache_dir) is shared by every rank",
            )
        self.cache_file = cache.path(key)
        return loaded
