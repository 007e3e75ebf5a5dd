"""Reward models: a scalar ``score`` head on any ``CausalLM``'s last hidden state.

The hook. The ``CausalLM`` contract returns logits only, so the reward model takes the last
hidden state where the model itself uses it: at the input of its **output head**, the
``nn.Linear(d_model, vocab)`` named ``head_name`` (``"lm_head"`` in lego-arch, transformers
and most models). [`RewardModel`][lego.align.reward.RewardModel] replaces that module by the
score head ``nn.Linear(d_model, 1, bias=False)``, so the model's own forward pass (final
norm included) returns one score per position, ``(B, T, 1)``, and the full ``(B, T, vocab)``
logits are never computed; the reward of a sequence is the score at its last real token
(the rightmost position of ``attention_mask``). This is transformers'
``AutoModelForSequenceClassification`` layout (a ``score`` linear on the base model's last
hidden states, read at the last non-padding token), so the two give the same scores.

Saving. [`RewardModel.save_pretrained()`][lego.align.reward.RewardModel.save_pretrained]
writes what transformers' ``AutoModelForSequenceClassification.from_pretrained`` loads for
the lego-arch families: the backbone's own model directory (its ``save_pretrained``, with
the original output head put back for the moment), then ``lm_head.weight`` replaced by
``score.weight`` ``(1, d_model)`` in the safetensors and ``config.json`` turned into the
sequence-classification architecture (``LlamaForSequenceClassification``, ...) with one
label and the ``pad_token_id``. Backbones without transformers names get a plain
safetensors file of the reward model's own state.

Data. Each side of a pair is the prompt and the response up to the response's last trained
token, its end-of-turn (or EOS) token, where the reward is read; template text after it
(ChatML's newline) is left out. Longer sequences lose prompt tokens from the left, never
their end.

Training. [`RewardObjective`][lego.align.reward.RewardObjective] is a lego-train objective:
Bradley-Terry on ``[chosen; rejected]`` rows ([`reward_loss()`][lego.align.losses.reward_loss],
one unit per pair), logging ``accuracy`` and ``margin``;
[`RewardTrainer`][lego.align.reward.RewardTrainer] runs it on lego-data's
``PreferenceDataset`` with lego-train's Trainer;
[`evaluate_rewards()`][lego.align.reward.evaluate_rewards] gives accuracy and mean margin on
held-out pairs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lego.align.losses import reward_loss
from lego.align.run import TrainerRun, describe_pairs, preference_splits
from lego.align.sft import truncate_left
from lego.align.tokens import pair_count, preference_pad_id
from lego.data.encode import TokenizedExample
from lego.data.preference import PreferenceDataset, PreferenceExample
from lego.data.records import RecordSource
from lego.protocols import (
    IGNORE_INDEX,
    CompatibilityError,
    Config,
    ConfigError,
    DataError,
    FolderLock,
    FormatError,
    Tokenizer,
    TrainerCallback,
    atomic_write_text,
    check_choice,
    check_float,
    read_json,
)
from lego.protocols.chat import get_chat_template
from lego.train import ObjectiveOutput, TrainConfig, model_inputs
from lego.train.distributed import init_distributed, pick_device

__all__ = [
    "RewardModel",
    "RewardCollator",
    "RewardObjective",
    "RewardConfig",
    "RewardTrainer",
    "RewardPair",
    "evaluate_rewards",
    "reward_pairs",
    "last_token_index",
]

SCORE = "score.weight"
"""The score head's tensor name in a transformers sequence-classification directory."""

_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_HEAD_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def last_token_index(attention_mask: Tensor | None, length: int) -> Tensor | None:
    """The position of each row's last real token.

    Args:
        attention_mask: ``(B, T)``, 1 for real tokens (right or left padding), or None.
        length: ``T``.

    Returns:
        ``(B,)`` long indices, or None when there is no mask (every row ends at ``T - 1``).

    Example:
        >>> last_token_index(torch.tensor([[1, 1, 0], [0, 1, 1]]), 3)
        tensor([1, 2])
    """
    if attention_mask is None:
        return None
    positions = torch.arange(length, device=attention_mask.device)  # (T,)
    return (positions * attention_mask.ne(0)).argmax(dim=-1)  # (B,)


class RewardModel(nn.Module):
    """A ``CausalLM`` whose output head is replaced by a scalar score head.

    Args:
        backbone: Any ``CausalLM`` ``nn.Module`` whose output head (``head_name``) is an
            ``nn.Linear(d_model, vocab)`` reading the last hidden state.
        head_name: The output head's module path in ``backbone``.
        pad_token_id: Written into ``config.json`` on saving (transformers reads the reward
            at the last token that is not padding).
        init_std: The score head starts from ``normal(0, init_std)`` (transformers'
            ``initializer_range``).

    Attributes:
        backbone: The model, its head replaced by the score head.
        head_name: As given.
        pad_token_id: As given.

    Raises:
        ConfigError: ``head_name`` names no ``nn.Linear`` of ``backbone``.

    Example:
        >>> class Tiny(nn.Module):  # any model with an nn.Linear output head
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed, self.lm_head = nn.Embedding(10, 4), nn.Linear(4, 10)
        ...     def forward(self, ids, *, attention_mask=None, position_ids=None, kv_cache=None):
        ...         return self.lm_head(self.embed(ids))
        >>> rm = RewardModel(Tiny())
        >>> ids, mask = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
        >>> rm(ids, attention_mask=mask).shape  # one reward per row, read at its last token
        torch.Size([2])
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        head_name: str = "lm_head",
        pad_token_id: int | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        try:
            head = backbone.get_submodule(head_name)
        except AttributeError:
            head = None
        if not isinstance(head, nn.Linear):
            raise ConfigError(
                f"RewardModel: {type(backbone).__name__} has no nn.Linear output head named "
                f"{head_name!r} (found {type(head).__name__})",
                key="head_name",
                hint="pass head_name=<the module path of the linear layer that maps the last "
                "hidden state to the vocabulary>",
            )
        weight = head.weight
        score = nn.Linear(head.in_features, 1, bias=False, dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            score.weight.normal_(0.0, check_float("init_std", init_std, low=0.0))
        self.backbone = backbone
        self.head_name = head_name
        self.pad_token_id = pad_token_id
        _set_submodule(backbone, head_name, score)
        tied = any(p is weight for p in backbone.parameters())
        self._tied = tied
        # The original head, kept outside the module tree (not trained, not in the state
        # dict) to write a complete model directory through the backbone's save_pretrained.
        # An untied head waits on the CPU.
        self._head: tuple[nn.Linear] = (head if tied else head.to("cpu"),)
        if not tied:
            head.requires_grad_(False)

    # -- the model --------------------------------------------------------------------------

    @property
    def score(self) -> nn.Linear:
        """The score head ``nn.Linear(d_model, 1, bias=False)``."""
        module = self.backbone.get_submodule(self.head_name)
        assert isinstance(module, nn.Linear)
        return module

    @property
    def config(self) -> Any:
        """The backbone's configuration."""
        return getattr(self.backbone, "config", None)

    @property
    def activation_checkpointing(self) -> bool:
        """The backbone's activation checkpointing (lego-train's ``activation_checkpointing``)."""
        return bool(getattr(self.backbone, "activation_checkpointing", False))

    @activation_checkpointing.setter
    def activation_checkpointing(self, value: bool) -> None:
        if not hasattr(self.backbone, "activation_checkpointing"):
            raise ConfigError(
                f"{type(self.backbone).__name__} has no activation_checkpointing attribute",
                key="activation_checkpointing",
                hint="set activation_checkpointing: false, or use a lego-arch model",
            )
        self.backbone.activation_checkpointing = value  # type: ignore[assignment,unused-ignore]

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: Any = None,
    ) -> Tensor:
        """The reward of each row: the score at its last real token.

        Args:
            input_ids: ``(B, T)`` token ids.
            attention_mask: ``(B, T)``, 1 for real tokens (right or left padding), or None.
            position_ids: ``(B, T)`` positions (pass them with left padding), or None.
            kv_cache: Not supported (must be None).

        Returns:
            ``(B,)`` rewards, in the score head's dtype.

        Raises:
            ConfigError: A ``kv_cache`` was given.
        """
        if kv_cache is not None:
            raise ConfigError("RewardModel does not decode: pass no kv_cache", key="kv_cache")
        scores: Tensor = self.backbone(
            input_ids, attention_mask=attention_mask, position_ids=position_ids
        )  # (B, T, 1)
        scores = scores.squeeze(-1)  # (B, T)
        last = last_token_index(attention_mask, int(input_ids.shape[1]))
        if last is None:
            return scores[:, -1]  # (B,)
        return scores.gather(1, last[:, None]).squeeze(1)  # (B,)

    @contextmanager
    def _original_head(self) -> Iterator[nn.Linear]:
        """Put the original output head back in place for the duration (the score aside)."""
        score = self.score
        (head,) = self._head
        _set_submodule(self.backbone, self.head_name, head)
        try:
            yield head
        finally:
            _set_submodule(self.backbone, self.head_name, score)

    # -- model directories ------------------------------------------------------------------

    def _hf_named(self) -> bool:
        return callable(getattr(self.backbone, "save_pretrained", None)) and callable(
            getattr(self.backbone, "hf_parameter_name", None)
        )

    def save_pretrained(
        self, path: str | os.PathLike[str], /, *, state_dict: Mapping[str, Tensor] | None = None
    ) -> Path:
        """Write a model directory that transformers' ``AutoModelForSequenceClassification`` loads.

        For a backbone with ``save_pretrained`` and ``hf_parameter_name`` (lego-arch): the
        backbone's directory with ``score.weight`` in place of ``lm_head.weight`` and a
        sequence-classification ``config.json``. Otherwise ``model.safetensors`` holds this
        module's own ``state_dict()`` and ``config.json`` the backbone's config.

        Args:
            path: The directory (created when missing).
            state_dict: Tensors to write instead of the module's own, under its
                ``state_dict()`` names (a consolidated FSDP state, fp32 masters).

        Returns:
            The directory.

        Raises:
            CompatibilityError: The backbone's architecture has no sequence-classification
                counterpart (its ``config.json`` ``architectures`` does not end with
                ``ForCausalLM`` / ``LMHeadModel``).
        """
        folder = Path(path)
        own = dict(state_dict) if state_dict is not None else self.state_dict()
        score_key = f"backbone.{self.head_name}.weight"
        if score_key not in own:
            raise ConfigError(
                f"RewardModel.save_pretrained: the state has no {score_key!r}",
                key="state_dict",
                hint="pass this module's state_dict() (or a full state under its names)",
            )
        if not self._hf_named():
            return _save_plain(folder, own, self.config)
        score = own[score_key].detach().to("cpu").contiguous()  # (1, d_model)
        head_prefix = f"{self.head_name}."
        backbone_state = {
            key[len("backbone.") :]: value
            for key, value in own.items()
            if key.startswith("backbone.") and not key[len("backbone.") :].startswith(head_prefix)
        }
        saver: Callable[..., Any] = getattr(self.backbone, "save_pretrained")  # noqa: B009
        namer: Callable[[str], tuple[str, bool]] = getattr(self.backbone, "hf_parameter_name")  # noqa: B009
        with self._original_head() as head:
            if not self._tied:
                for name, value in head.state_dict().items():
                    backbone_state[head_prefix + name] = value
            hf_head = str(namer(f"{self.head_name}.weight")[0])
            saver(folder, state_dict=backbone_state)
        _to_sequence_classification(folder, score, hf_head, self.pad_token_id)
        return folder

    def load_weights(self, path: str | os.PathLike[str], /) -> None:
        """Load a directory written by ``save_pretrained`` (or by transformers) in place.

        Args:
            path: The directory.

        Raises:
            FormatError: A weights file cannot be read.
            CompatibilityError: Tensors are missing, unexpected or mis-shaped (all listed).
        """
        folder = Path(path)
        tensors = _read_tensors(folder)
        own = self.state_dict()
        if SCORE not in tensors:  # a plain directory: our own names
            _copy_checked(own, tensors, folder)
            return
        namer = getattr(self.backbone, "hf_parameter_name", None)
        if not callable(namer):
            raise CompatibilityError(
                f"{type(self.backbone).__name__} has no transformers names "
                "(hf_parameter_name) to read a transformers directory with",
                path=folder,
                hint="load it into a reward model around a lego-arch model",
            )
        renamed: dict[str, Tensor] = {}
        problems: list[str] = []
        score_key = f"backbone.{self.head_name}.weight"
        for key in own:
            if key == score_key:
                renamed[key] = tensors[SCORE]
                continue
            try:
                hf_name, transposed = namer(key[len("backbone.") :])
            except CompatibilityError as err:
                problems.append(f"{key}: {err.message}")
                continue
            if hf_name not in tensors:
                problems.append(f"missing {hf_name} (for {key})")
                continue
            value = tensors[hf_name]
            renamed[key] = value.T if transposed else value
        if problems:
            raise CompatibilityError(
                "the reward model directory does not fit: " + "; ".join(problems[:20]),
                path=folder,
                hint="load it into a reward model built from the same base model config",
            )
        _copy_checked(own, renamed, folder)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _save_plain(folder: Path, own: Mapping[str, Tensor], config: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in own.items()}
    save_file(tensors, str(folder / _WEIGHTS), metadata={"format": "pt"})
    to_dict = getattr(config, "to_dict", None)
    data = {"reward_model": True, "backbone": to_dict() if callable(to_dict) else {}}
    atomic_write_text(folder / "config.json", json.dumps(data, indent=2) + "\n", what="config")
    return folder


def _shard_files(folder: Path) -> tuple[list[str], dict[str, Any] | None]:
    index = folder / _INDEX
    if index.is_file():
        data = read_json(index, what="safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise FormatError("the safetensors index has no weight_map", path=index)
        return sorted(set(weight_map.values())), data
    if not (folder / _WEIGHTS).is_file():
        raise FormatError(
            f"the directory has neither {_WEIGHTS} nor {_INDEX}",
            path=folder,
            hint="pass a directory written by save_pretrained",
        )
    return [_WEIGHTS], None


def _load(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise FormatError(f"cannot read the weights ({exc})", path=file) from exc


def _read_tensors(folder: Path) -> dict[str, Tensor]:
    files, _ = _shard_files(folder)
    tensors: dict[str, Tensor] = {}
    for name in files:
        tensors.update(_load(folder / name))
    return tensors


def _copy_checked(own: Mapping[str, Tensor], tensors: Mapping[str, Tensor], where: Path) -> None:
    problems = [f"missing {n}" for n in own if n not in tensors]
    problems += [
        f"{n}: file {list(t.shape)}, model {list(own[n].shape)}"
        for n, t in tensors.items()
        if n in own and t.shape != own[n].shape
    ]
    if SCORE not in tensors:
        problems += [f"unexpected {n}" for n in tensors if n not in own]
    if problems:
        raise CompatibilityError(
            "the weights do not fit the reward model: " + "; ".join(problems[:20]),
            path=where,
            hint="load them into a reward model built from the same config",
        )
    with torch.no_grad():
        for name, target in own.items():
            target.copy_(tensors[name])


def _to_sequence_classification(
    folder: Path, score: Tensor, hf_head: str, pad_token_id: int | None
) -> None:
    """Turn a causal-LM directory into a sequence-classification one, in place."""
    config_path = folder / "config.json"
    config = read_json(config_path, what="model config")
    architectures = config.get("architectures") or []
    renamed = []
    for name in architectures:
        suffix = next((s for s in _HEAD_SUFFIXES if str(name).endswith(s)), None)
        if suffix is None:
            raise CompatibilityError(
                f"the architecture {name!r} has no sequence-classification counterpart",
                path=config_path,
                key="architectures",
                hint="use a backbone whose architecture ends with ForCausalLM or LMHeadModel",
            )
        renamed.append(str(name)[: -len(suffix)] + "ForSequenceClassification")
    if not renamed:
        raise CompatibilityError(
            "config.json names no architecture", path=config_path, key="architectures"
        )
    files, index = _shard_files(folder)
    weight_map: dict[str, str] = dict(index["weight_map"]) if index is not None else {}
    target = weight_map.get(hf_head, files[-1]) if index is not None else files[0]
    tensors = _load(folder / target)
    removed = tensors.pop(hf_head, None)
    tensors[SCORE] = score.to(next(iter(tensors.values())).dtype) if tensors else score
    tmp = folder / f".{target}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / target)
    if index is not None:
        weight_map.pop(hf_head, None)
        weight_map[SCORE] = target
        metadata = dict(index.get("metadata") or {})
        if "total_size" in metadata:
            delta = tensors[SCORE].numel() * tensors[SCORE].element_size()
            if removed is not None:
                delta -= removed.numel() * removed.element_size()
            metadata["total_size"] = int(metadata["total_size"]) + delta
        data = {**index, "metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(folder / _INDEX, json.dumps(data, indent=2) + "\n", what="index")
    config["architectures"] = renamed
    config["id2label"] = {"0": "LABEL_0"}
    config["label2id"] = {"LABEL_0": 0}
    if pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    atomic_write_text(config_path, json.dumps(config, indent=2) + "\n", what="model config")


# -- batches and the objective ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RewardPair:
    """A preference pair as whole token sequences (the reward is read at the last token).

    Attributes:
        chosen: Prompt + chosen response ids (with its end token).
        rejected: Prompt + rejected response ids.
        margin: How much better the chosen one is (Llama 2's margin), or None.
    """

    chosen: list[int]
    rejected: list[int]
    margin: float | None = None


def _full_sequence(example: TokenizedExample, side: str, line: int | None) -> list[int]:
    """The token sequence of a trained example, up to and including its last trained token.

    The reward is read at the last token: the response's end-of-turn (or EOS) token, the
    last one trained. Template text after it (ChatML's newline) is left out.
    """
    last = max((t for t, label in enumerate(example.labels) if label != IGNORE_INDEX), default=-1)
    if last < 0:
        where = f"line {line}" if line is not None else "an example"
        raise DataError(
            f"{where}: the {side} sequence has no trained token, so its end is unknown",
            line=line,
            key=side,
            hint="build the pairs with lego-data's PreferenceDataset (responses trained)",
        )
    return [*example.input_ids[: last + 1], example.labels[last]]


class RewardCollator:
    """Stack pairs as ``[chosen; rejected]`` rows, right-padded (TRL's reward layout).

    Args:
        pad_id: The padding id (not the EOS / end-of-turn id the sequences end with).
        pad_to_multiple_of: Round the length up to a multiple of this, or None.

    Example:
        >>> RewardCollator(pad_id=0)([RewardPair([5, 6, 2], [5, 2])])["input_ids"]
        tensor([[5, 6, 2],
                [5, 2, 0]])
    """

    def __init__(self, *, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, pairs: Sequence[RewardPair]) -> dict[str, Tensor]:
        """Collate pairs.

        Args:
            pairs: The pairs.

        Returns:
            ``input_ids``, ``attention_mask``, ``position_ids`` ``(2P, L)`` long (chosen
            rows first), and ``margin`` ``(P,)`` float when every pair has one.

        Raises:
            DataError: No pairs, or an empty sequence.
        """
        if not pairs:
            raise DataError("cannot collate an empty batch of pairs")
        rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        if any(not row for row in rows):
            raise DataError("a preference pair has an empty sequence")
        length = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0) * attention_mask
        batch = {
            "input_ids": input_ids,  # (2P, L)
            "attention_mask": attention_mask,  # (2P, L)
            "position_ids": position_ids,  # (2P, L)
        }
        margins = [p.margin for p in pairs]
        if all(m is not None for m in margins):
            batch["margin"] = torch.tensor(margins, dtype=torch.float32)  # (P,)
        return batch


class RewardObjective:
    """Bradley-Terry on ``[chosen; rejected]`` rows: a lego-train objective, one unit per pair.

    The loss of a step is [`reward_loss()`][lego.align.losses.reward_loss] over all its
    pairs (the mean over pairs, plus reward centering when asked). Metrics (means per pair):
    ``accuracy`` (chosen scored higher) and ``margin`` (chosen minus rejected reward).

    Args:
        center_rewards_coefficient: Reward centering's ``c`` (Eisenstein et al. 2023), or
            None.
        use_margin: Subtract the batch's ``margin`` (when present) inside the sigmoid.
    """

    perplexity = False

    def __init__(
        self, *, center_rewards_coefficient: float | None = None, use_margin: bool = True
    ) -> None:
        if center_rewards_coefficient is not None:
            check_float("center_rewards_coefficient", center_rewards_coefficient, low=0.0)
        self.center_rewards_coefficient = center_rewards_coefficient
        self.use_margin = use_margin

    def units(self, batch: Mapping[str, Tensor], /) -> int:
        """The pairs of the batch (half its rows).

        Args:
            batch: ``input_ids`` ``(2P, L)``.

        Returns:
            ``P``.

        Raises:
            DataError: An odd number of rows.
        """
        return pair_count(batch, what="reward", collator="RewardCollator")

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], /) -> ObjectiveOutput:
        """Score both halves and sum the Bradley-Terry loss over the pairs.

        Args:
            model: A [`RewardModel`][lego.align.reward.RewardModel] (possibly wrapped):
                ``(2P, L)`` ids to ``(2P,)`` rewards.
            batch: From [`RewardCollator`][lego.align.reward.RewardCollator].

        Returns:
            The summed loss, the batch's real tokens, and summed ``accuracy`` / ``margin``.
        """
        rewards: Tensor = model(batch["input_ids"], **model_inputs(batch))  # (2P,)
        chosen, rejected = rewards.float().chunk(2)  # (P,), (P,)
        margin = batch.get("margin") if self.use_margin else None
        out = reward_loss(
            chosen,
            rejected,
            margin=margin,
            center_rewards_coefficient=self.center_rewards_coefficient,
        )
        mask = batch.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        metrics = {
            "accuracy": (chosen > rejected).float().sum().detach(),
            "margin": (chosen - rejected).sum().detach(),
        }
        return ObjectiveOutput(out.losses.sum(), tokens, metrics)

    def __repr__(self) -> str:
        return f"RewardObjective(center_rewards_coefficient={self.center_rewards_coefficient})"


@torch.no_grad()
def evaluate_rewards(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], *, device: torch.device | None = None
) -> dict[str, float]:
    """Accuracy and mean margin of a reward model on held-out pairs.

    Args:
        model: A [`RewardModel`][lego.align.reward.RewardModel] (set to eval mode for the
            duration).
        batches: ``[chosen; rejected]`` batches (``RewardCollator``'s).
        device: Where to move the batches (None: the model's parameters' device).

    Returns:
        ``{"accuracy", "margin", "loss", "pairs"}``: the share of pairs whose chosen side
        scores higher, the mean chosen-minus-rejected reward, the mean Bradley-Terry loss,
        and the number of pairs.

    Raises:
        DataError: No pairs.
    """
    if device is None:
        device = next(model.parameters()).device
    objective = RewardObjective()
    was_training = model.training
    model.eval()
    pairs, totals = 0, {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
    try:
        for raw in batches:
            batch = {k: v.to(device) for k, v in raw.items()}
            out = objective(model, batch)
            pairs += objective.units(batch)
            totals["loss"] += float(out.loss_sum)
            for name in ("accuracy", "margin"):
                totals[name] += float(out.metrics[name])
    finally:
        model.train(was_training)
    if pairs == 0:
        raise DataError("no pairs to evaluate the reward model on", hint="give held-out pairs")
    return {**{k: v / pairs for k, v in totals.items()}, "pairs": float(pairs)}


# -- the trainer --------------------------------------------------------------------------------

IdenticalPairs = Literal["skip", "error"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig(Config):
    """The settings of a reward-model run (besides lego-train's ``TrainConfig``).

    Attributes:
        template: ``"chatml"``, ``"llama3"`` or ``"alpaca"`` (lego-data's
            ``PreferenceDataset`` formats).
        eos_token: With ``"alpaca"``: the end token after each response.
        pad_token: The padding special token; None looks for the tokenizer's own.
        head_name: The backbone's output head, replaced by the score head.
        max_length: The longest sequence (tokens); longer ones lose prompt tokens from the
            left (counted), never their end.
        on_overflow: ``"drop"`` (counted) or ``"error"`` for a response that does not fit.
        identical_pairs: ``"skip"`` (counted) or ``"error"`` for a pair whose chosen and
            rejected sequences are the same.
        center_rewards_coefficient: Reward centering (Eisenstein et al. 2023), or None.
        system_prompt: A system message for prompts without one.
        batch_size: Pairs per micro-batch and rank.
        eval_batch_size: Pairs per evaluation batch (0: ``batch_size``).
        val_fraction: Held-out share of the training records when no evaluation data is
            given (0: none).
        shuffle: Shuffle the pairs each epoch.
        seed: The data seed.
    """

    template: str = "chatml"
    eos_token: str = "<|endoftext|>"
    pad_token: str | None = None
    head_name: str = "lm_head"
    max_length: int = 1024
    on_overflow: Literal["drop", "error"] = "drop"
    identical_pairs: IdenticalPairs = "skip"
    center_rewards_coefficient: float | None = None
    system_prompt: str | None = None
    batch_size: int = 8
    eval_batch_size: int = 0
    val_fraction: float = 0.0
    shuffle: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Check sizes and names."""
        super().validate()
        if self.max_length < 2:
            raise ConfigError("max_length must be at least 2", key="max_length")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1", key="batch_size")
        if self.eval_batch_size < 0:
            raise ConfigError("eval_batch_size must be >= 0", key="eval_batch_size")
        if self.template.lower() != "alpaca":
            get_chat_template(self.template)
        if self.center_rewards_coefficient is not None:
            check_float("center_rewards_coefficient", self.center_rewards_coefficient, low=0.0)


def reward_pairs(
    dataset: PreferenceDataset,
    *,
    max_length: int,
    on_overflow: str,
    identical: str,
    path: str | None = None,
) -> tuple[list[RewardPair], dict[str, int]]:
    """Whole sequences of a preference dataset, fitted to ``max_length``, with counts.

    Args:
        dataset: lego-data's ``PreferenceDataset`` (built without ``max_length``).
        max_length: The longest sequence in tokens.
        on_overflow: ``"drop"`` or ``"error"`` for a response that does not fit.
        identical: ``"skip"`` or ``"error"`` for identical chosen and rejected sequences.
        path: The records' file, for error messages.

    Returns:
        The pairs and ``{"pairs", "truncated", "dropped", "identical"}``.

    Raises:
        DataError: A pair that does not fit or is identical, with ``"error"`` (naming the
            line).
    """
    check_choice("on_overflow", on_overflow, ("drop", "error"))
    check_choice("identical_pairs", identical, ("skip", "error"))
    pairs: list[RewardPair] = []
    counts = {"pairs": 0, "truncated": 0, "dropped": 0, "identical": 0}
    for example, line in zip(dataset.examples, dataset.lines, strict=True):
        assert isinstance(example, PreferenceExample)
        sides = {}
        cut = False
        for side in ("chosen", "rejected"):
            tokenized: TokenizedExample = getattr(example, side)
            # max_length counts tokens; the example's positions are one fewer
            fitted = truncate_left(tokenized, max_length - 1)
            if fitted is None:
                break
            cut = cut or fitted is not tokenized
            sides[side] = _full_sequence(fitted, side, line)
        if len(sides) < 2:
            if on_overflow == "error":
                raise DataError(
                    f"line {line}: a response does not fit max_length={max_length}",
                    path=path,
                    line=line,
                    key="max_length",
                    hint="raise max_length or set on_overflow: drop",
                )
            counts["dropped"] += 1
            continue
        if sides["chosen"] == sides["rejected"]:
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
        counts["truncated"] += int(cut)
        pairs.append(RewardPair(sides["chosen"], sides["rejected"]))
    counts["pairs"] = len(pairs)
    if not pairs:
        raise DataError(
            f"no preference pair is left to train on ({counts})",
            hint="check the records, raise max_length",
        )
    return pairs, counts


class RewardTrainer(TrainerRun):
    """Trains a reward model on preference pairs with lego-train's Trainer.

    Args:
        model: A ``CausalLM`` (wrapped into a [`RewardModel`][lego.align.reward.RewardModel]
            here) or a ``RewardModel``.
        tokenizer: Any tokenizer with the template's special tokens and a pad token.
        train_data: Preference records (``prompt``, ``chosen``, ``rejected``; strings or
            messages): a ``.jsonl`` path or dictionaries.
        config: The reward settings.
        train: lego-train's settings.
        eval_data: Held-out records, or None (the ``val_fraction`` split, or none).
        callbacks: More lego-train callbacks.
        tokenizer_hash: Identifies the tokenizer for resume checks.
        console_stream: Where progress lines go.
        lock: The lock of ``train.out_dir`` when the caller holds it (a recipe locks the
            run before it reads the data); None: ``fit()`` takes it.

    Attributes:
        model: The ``RewardModel``.
        pad_id: The padding id.
        train_pairs: The training pairs; ``eval_pairs`` the held-out ones (or None).
        trainer: The ``lego.train.Trainer`` (evaluation logs ``val_accuracy``,
            ``val_margin``).

    Raises:
        ConfigError: No pad token, a bad setting.
        DataError: Bad records, no pair left.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: Tokenizer,
        train_data: RecordSource,
        config: RewardConfig,
        train: TrainConfig,
        eval_data: RecordSource | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        tokenizer_hash: str | None = None,
        console_stream: Any = None,
        lock: FolderLock | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        template = config.template
        chat = None if template.lower() == "alpaca" else get_chat_template(template)
        self.pad_id = preference_pad_id(
            tokenizer, chat, eos_token=config.eos_token, pad_token=config.pad_token
        )
        self.train_pairs, self.eval_pairs, report = preference_splits(
            train_data,
            eval_data,
            tokenizer=tokenizer,
            config=config,
            make_pairs=lambda dataset, path: reward_pairs(
                dataset,
                max_length=config.max_length,
                on_overflow=config.on_overflow,
                identical=config.identical_pairs,
                path=path,
            ),
        )

        if isinstance(model, RewardModel):
            self.model = model
            if self.model.pad_token_id is None:
                self.model.pad_token_id = self.pad_id
        else:
            self.model = RewardModel(model, head_name=config.head_name, pad_token_id=self.pad_id)
        info = init_distributed(pick_device(train.device))
        collate = RewardCollator(pad_id=self.pad_id)
        train_loader = self._loader(
            self.train_pairs,
            batch_size=config.batch_size,
            collate_fn=collate,
            train=True,
            shuffle=config.shuffle,
            seed=config.seed,
            info=info,
        )
        eval_loader = None
        if self.eval_pairs is not None:
            eval_loader = self._loader(
                self.eval_pairs,
                batch_size=config.eval_batch_size or config.batch_size,
                collate_fn=collate,
                train=False,
                shuffle=config.shuffle,
                seed=config.seed,
                info=info,
            )
        self._start(
            model=self.model,
            objective=RewardObjective(center_rewards_coefficient=config.center_rewards_coefficient),
            train_loader=train_loader,
            eval_loader=eval_loader,
            train=train,
            tokenizer=tokenizer,
            callbacks=callbacks,
            tokenizer_hash=tokenizer_hash,
            console_stream=console_stream,
            lock=lock,
            counts=report,
            message="reward data: " + describe_pairs(report),
        )

    def evaluate(self) -> dict[str, float]:
        """Accuracy and mean margin on the held-out pairs.

        Returns:
            ``{"accuracy", "margin", "loss", "pairs"}`` (see
            [`evaluate_rewards()`][lego.align.reward.evaluate_rewards]).

        Raises:
            ConfigError: No held-out pairs (give ``eval_data`` or ``val_fraction``).
        """
        if self.eval_pairs is None:
            raise ConfigError(
                "no held-out pairs to evaluate on",
                key="eval_data",
                hint="give eval_data, or val_fraction > 0",
            )
        collate = RewardCollator(pad_id=self.pad_id)
        size = self.config.eval_batch_size or self.config.batch_size
        batches = (
            collate(self.eval_pairs[i : i + size]) for i in range(0, len(self.eval_pairs), size)
        )
        return evaluate_rewards(self.model, batches)
