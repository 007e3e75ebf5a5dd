r"""The PPO trainer: RLHF with a value head, a reward model and lego-train's Trainer.

One *rollout* (Ouyang et al. 2022, "InstructGPT"; Ziegler et al. 2019; TRL's last
``PPOTrainer`` semantics): ``prompts_per_step`` prompts (over all ranks) each get one
sampled completion; the reward model (or any reward function) scores it; every completion
token gets the reward ``r_t = -\beta\,\mathrm{KL}_t`` (k1 or k3 against the reference) plus
the score on its last token; GAE (``gamma``, ``lam``) turns rewards and the value head's
estimates into advantages (whitened) and returns
([`PPOBatchSource`][lego.align.ppo_rollouts.PPOBatchSource]). Then ``num_ppo_epochs``
epochs over the rollout in shuffled minibatches: each optimizer step is one minibatch of
``grad_accum`` micro-batches, whose loss is PPO's clipped policy loss plus ``vf_coef``
times the clipped value loss ([`PPOObjective`][lego.align.ppo.PPOObjective]).

The value head. [`PolicyWithValueHead`][lego.align.ppo.PolicyWithValueHead] adds a scalar
head ``nn.Linear(d_model, 1, bias=False)`` on the policy's last hidden state, read at the
input of the policy's output head (as [`RewardModel`][lego.align.reward.RewardModel] reads
it): the trunk is shared, so the value head trains with the adapter (LoRA / QLoRA) or with
the whole model. It starts as TRL's value model's ``score`` head (``normal(0, 0.02)``), or
as the reward model's score head (``value_init: reward``: TRL's example scripts load the
value model from the reward model). ``save_pretrained`` writes the policy's own directory
(a model or a PEFT adapter) plus ``value_head.safetensors`` (one tensor, ``weight``
``(1, d_model)``) beside it.

The reduction. TRL averages the micro-batch losses of a minibatch (each a token mean over
its own completion tokens): one unit per micro-batch reproduces it, over ranks too.

Metrics under TRL's names: ``objective/kl``, ``objective/entropy``,
``objective/non_score_reward``, ``objective/rlhf_reward``, ``objective/scores`` (per
rollout, exact over all ranks), ``policy/approxkl_avg``, ``policy/clipfrac_avg``,
``loss/policy_avg``, ``loss/value_avg``, ``val/clipfrac_avg``, ``policy/entropy_avg``,
``val/ratio`` (per step), ``val/num_eos_tokens`` and ``completions/*``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lego.align.finetune import FinetuneSettings, prepare_model
from lego.align.grpo import PLAIN
from lego.align.policy_losses import ppo_policy_loss, ppo_value_loss
from lego.align.ppo_rollouts import PPOBatchSource, TokenScorer
from lego.align.reference import check_vocabulary, frozen_reference, vocab_size
from lego.align.reward import RewardModel
from lego.align.rewards import RewardFunction, RewardFunctions
from lego.align.rollouts import (
    STAT_PREFIX,
    CompletionLogprobs,
    check_context,
    completion_logprobs,
    encode_prompts,
    stop_and_pad_ids,
)
from lego.align.run import TrainerRun
from lego.data.records import RecordSource
from lego.peft import LoraModel
from lego.protocols import (
    CompatibilityError,
    ConfigError,
    DataError,
    FolderLock,
    FormatError,
    Tokenizer,
    TrainerCallback,
    check_choice,
    check_float,
    check_int,
)
from lego.protocols.chat import ChatTemplate, get_chat_template
from lego.train import ObjectiveOutput, TrainConfig
from lego.train.checkpoint import load_model_dir, save_model_dir
from lego.train.distributed import init_distributed, pick_device, resolve_strategy

__all__ = [
    "PPOConfig",
    "PPOObjective",
    "PPOTrainer",
    "PolicyWithValueHead",
    "load_reward_model",
    "read_value_head",
    "save_value_head",
    "PPO_KL_ESTIMATORS",
    "VALUE_HEAD_FILE",
]

VALUE_HEAD_FILE = "value_head.safetensors"
"""The value head's file in a saved policy directory (one tensor: ``weight``, ``(1, D)``)."""

PPO_KL_ESTIMATORS = ("k1", "k3")
"""The ``kl_estimator`` values (TRL's PPO offers these two)."""

RewardSource = RewardModel | nn.Module | RewardFunction | str | os.PathLike[str]
"""What ``PPOTrainer`` takes as ``reward_model``."""


# -- the value head -------------------------------------------------------------------------------


def _head_width(head: nn.Module) -> int | None:
    for module in (head, getattr(head, "base_layer", None)):
        width = getattr(module, "in_features", None)
        if isinstance(width, int):
            return width
    return None


class PolicyWithValueHead(nn.Module):
    """A policy with a scalar value head on its last hidden state (a shared trunk).

    Called like the policy it returns logits (a ``CausalLM``); with ``return_values=True``
    it returns ``(logits, values)``, the values ``(B, T)`` read from the input of the
    policy's output head (captured by a forward pre-hook during that call only).

    Args:
        policy: The policy: any ``CausalLM`` module or a lego-peft ``LoraModel``.
        head_name: The output head's module path in the (base) model.
        init_std: The value head starts from ``normal(0, init_std)`` (TRL's value model:
            transformers' ``initializer_range``, 0.02).
        init_weight: ``(1, D)`` starting weights instead (e.g. a reward model's score head).

    Attributes:
        policy: As given.
        value_head: ``nn.Linear(D, 1, bias=False)``.
        head_name: As given.

    Raises:
        ConfigError: ``head_name`` names no module with ``in_features``; ``init_weight`` of
            another width.

    Example:
        >>> class Tiny(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed, self.lm_head = nn.Embedding(10, 4), nn.Linear(4, 10)
        ...     def forward(self, ids, *, attention_mask=None, position_ids=None, kv_cache=None):
        ...         return self.lm_head(self.embed(ids))
        >>> model = PolicyWithValueHead(Tiny())
        >>> logits, values = model(torch.tensor([[1, 2, 3]]), return_values=True)
        >>> logits.shape, values.shape
        (torch.Size([1, 3, 10]), torch.Size([1, 3]))
    """

    def __init__(
        self,
        policy: nn.Module,
        *,
        head_name: str = "lm_head",
        init_std: float = 0.02,
        init_weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        base = policy.model if isinstance(policy, LoraModel) else policy
        try:
            head = base.get_submodule(head_name)
        except AttributeError:
            head = None
        width = _head_width(head) if head is not None else None
        if head is None or width is None:
            raise ConfigError(
                f"PolicyWithValueHead: {type(base).__name__} has no output head named "
                f"{head_name!r} with in_features",
                key="head_name",
                hint="pass head_name=<the module path of the linear layer that maps the last "
                "hidden state to the vocabulary>",
            )
        weight = next(iter(head.parameters()))
        self.policy = policy
        self.head_name = head_name
        self.value_head = nn.Linear(width, 1, bias=False, device=weight.device)
        with torch.no_grad():
            if init_weight is not None:
                if tuple(init_weight.shape) != (1, width):
                    raise ConfigError(
                        f"the value head's starting weight has shape {tuple(init_weight.shape)}, "
                        f"expected (1, {width}) (the policy's hidden size)",
                        key="value_init",
                        hint="use value_init: normal, or a reward model of the policy's width",
                    )
                self.value_head.weight.copy_(init_weight)
            else:
                self.value_head.weight.normal_(0.0, check_float("init_std", init_std, low=0.0))
        self._head: tuple[nn.Module] = (head,)  # outside the module tree: already registered

    @property
    def config(self) -> Any:
        """The policy's configuration."""
        return getattr(self.policy, "config", None)

    @property
    def activation_checkpointing(self) -> bool:
        """The policy's activation checkpointing (lego-train's ``activation_checkpointing``)."""
        return bool(getattr(self.policy, "activation_checkpointing", False))

    @activation_checkpointing.setter
    def activation_checkpointing(self, value: bool) -> None:
        if not hasattr(self.policy, "activation_checkpointing"):
            raise ConfigError(
                f"{type(self.policy).__name__} has no activation_checkpointing attribute",
                key="activation_checkpointing",
                hint="set activation_checkpointing: false, or use a lego-arch model",
            )
        self.policy.activation_checkpointing = value  # type: ignore[assignment,unused-ignore]

    @contextmanager
    def _capture(self) -> Iterator[list[Tensor]]:
        """Record the output head's input (the last hidden state) during the block."""
        seen: list[Tensor] = []

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not seen:
                seen.append(args[0])

        handle = self._head[0].register_forward_pre_hook(hook)
        try:
            yield seen
        finally:
            handle.remove()

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: Any = None,
        return_values: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The policy's logits, and the values when asked.

        Args:
            input_ids: ``(B, T)`` token ids.
            attention_mask: ``(B, T)``, 1 for real tokens, or None.
            position_ids: ``(B, T)``, or None.
            kv_cache: Passed to the policy (decoding; no values then).
            return_values: Also return the values.

        Returns:
            ``(B, T, V)`` logits, or ``(logits, values)`` with values ``(B, T)`` (float32).

        Raises:
            ConfigError: ``return_values`` with a ``kv_cache``.
        """
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "position_ids": position_ids}
        if not return_values:
            if kv_cache is not None:
                kwargs["kv_cache"] = kv_cache
            logits: Tensor = self.policy(input_ids, **kwargs)
            return logits
        if kv_cache is not None:
            raise ConfigError("values are read without a kv_cache", key="kv_cache")
        with self._capture() as seen:
            logits = self.policy(input_ids, **kwargs)
        hidden = seen[0]  # (B, T, D)
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return logits, values.float()  # (B, T, V), (B, T)

    def logps_and_values(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        completion_mask: Tensor,
        *,
        position_ids: Tensor | None = None,
        temperature: float = 1.0,
        chunk_size: int = 128,
    ) -> tuple[Tensor, Tensor]:
        """Per-token log-probabilities and values of the completion part of the rows.

        Token ``t`` of the completion (the last ``N`` columns) gets
        ``log softmax(z / temperature)`` at its token and ``V`` read at the position that
        predicts it (TRL's ``[context_length - 1 : -1]``).

        Args:
            input_ids: ``(B, P + N)`` prompt then completion.
            attention_mask: ``(B, P + N)``.
            completion_mask: ``(B, N)``.
            position_ids: ``(B, P + N)``, or None.
            temperature: The sampling temperature.
            chunk_size: Positions per chunk of the log-softmax.

        Returns:
            ``(logps, values)``, both ``(B, N)``.
        """
        logits, values = self(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            return_values=True,
        )
        n = int(completion_mask.shape[1])
        p = int(input_ids.shape[1]) - n
        out = _logprobs_of(
            logits, input_ids, attention_mask, completion_mask, temperature, chunk_size, False
        )
        return out.logps, values[:, p - 1 : -1]

    # -- saving ---------------------------------------------------------------------------

    def save_pretrained(
        self, path: str | os.PathLike[str], /, *, state_dict: Mapping[str, Tensor] | None = None
    ) -> Path:
        """Write the policy's directory plus ``value_head.safetensors``.

        Args:
            path: The directory (created when missing).
            state_dict: Tensors to write instead of the module's own, under its
                ``state_dict()`` names.

        Returns:
            The directory.
        """
        folder = Path(path)
        own = dict(state_dict) if state_dict is not None else self.state_dict()
        policy_state = {k[len("policy.") :]: v for k, v in own.items() if k.startswith("policy.")}
        save_model_dir(self.policy, folder, state_dict=policy_state)
        save_value_head(own["value_head.weight"], folder)
        return folder

    def load_weights(self, path: str | os.PathLike[str], /) -> None:
        """Load a directory written by ``save_pretrained`` in place.

        Args:
            path: The directory.

        Raises:
            FormatError: The value head's file is missing or cannot be read.
            CompatibilityError: Tensors do not fit.
        """
        folder = Path(path)
        load_model_dir(self.policy, folder)
        self.value_head.weight.data.copy_(read_value_head(folder, self.value_head.in_features))


def _logprobs_of(
    logits: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    temperature: float,
    chunk_size: int,
    entropy: bool,
) -> CompletionLogprobs:
    """``completion_logprobs`` of logits already computed (the forward ran with values)."""
    given = cast(Any, lambda ids, **kwargs: logits)
    return completion_logprobs(
        given,
        input_ids,
        attention_mask,
        completion_mask,
        temperature=temperature,
        chunk_size=chunk_size,
        entropy=entropy,
    )


def save_value_head(weight: Tensor, folder: str | os.PathLike[str]) -> Path:
    """Write ``value_head.safetensors`` (one tensor, ``weight``) into a model directory.

    Args:
        weight: ``(1, D)`` the value head's weight.
        folder: The (existing) model directory.

    Returns:
        The file written.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> save_value_head(torch.ones(1, 4), folder).name
        'value_head.safetensors'
        >>> read_value_head(folder, 4)
        tensor([[1., 1., 1., 1.]])
    """
    file = Path(folder) / VALUE_HEAD_FILE
    tensor = weight.detach().to("cpu").contiguous().clone()
    save_file({"weight": tensor}, str(file), metadata={"format": "pt"})
    return file


def read_value_head(folder: str | os.PathLike[str], width: int) -> Tensor:
    """The value head's weight from a directory that ``PolicyWithValueHead`` saved.

    Args:
        folder: The directory.
        width: The policy's hidden size ``D``.

    Returns:
        ``(1, D)`` weight.

    Raises:
        FormatError: No readable ``value_head.safetensors``.
        CompatibilityError: A weight of another shape.
    """
    file = Path(folder) / VALUE_HEAD_FILE
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise FormatError(
            f"cannot read the value head ({exc})",
            path=file,
            hint="the directory was not written by PolicyWithValueHead, or is damaged",
        ) from exc
    weight = tensors.get("weight")
    if weight is None or tuple(weight.shape) != (1, width):
        got = None if weight is None else tuple(weight.shape)
        raise CompatibilityError(
            f"the value head's weight has shape {got}, expected (1, {width})",
            path=file,
            hint="load it into the policy it was trained with",
        )
    return weight


# -- the objective --------------------------------------------------------------------------------


class PPOObjective:
    """PPO's loss on rollout micro-batches: a lego-train objective (one unit per micro-batch).

    ``loss = ppo_policy_loss(...) + vf_coef * ppo_value_loss(...)`` on the micro-batch's
    completion tokens (each a token mean, as TRL's ``pg_loss + vf_coef * vf_loss``).

    Args:
        cliprange: The policy ratio's clip ``epsilon`` (TRL: 0.2).
        cliprange_value: The value clip (TRL: 0.2).
        vf_coef: The value loss's weight (TRL: 0.1).
        temperature: The sampling temperature (the logits are divided by it).
        chunk_size: Positions per chunk of the log-softmax.
        entropy: Log the completion tokens' mean entropy (``policy/entropy_avg``).

    Example:
        >>> PPOObjective().units({"completion_mask": torch.ones(2, 3)})
        1
    """

    perplexity = False

    def __init__(
        self,
        *,
        cliprange: float = 0.2,
        cliprange_value: float = 0.2,
        vf_coef: float = 0.1,
        temperature: float = 1.0,
        chunk_size: int = 128,
        entropy: bool = True,
    ) -> None:
        self.cliprange = check_float("cliprange", cliprange, low=0.0, low_open=True)
        self.cliprange_value = check_float(
            "cliprange_value", cliprange_value, low=0.0, low_open=True
        )
        self.vf_coef = check_float("vf_coef", vf_coef, low=0.0)
        self.temperature = check_float("temperature", temperature, low=0.0, low_open=True)
        self.chunk_size = chunk_size
        self.entropy = entropy

    def units(self, batch: Mapping[str, Tensor], /) -> int:
        """One unit per micro-batch.

        Args:
            batch: A micro-batch with ``completion_mask``.

        Returns:
            1.

        Raises:
            DataError: No ``completion_mask`` in the batch.
        """
        if "completion_mask" not in batch:
            raise DataError(
                f"a PPO batch needs completion_mask, got keys {sorted(batch)}",
                key="completion_mask",
                hint="use PPOBatchSource's batches",
            )
        return 1

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], /) -> ObjectiveOutput:
        """The micro-batch's PPO loss with TRL's metrics.

        Args:
            model: The ``PolicyWithValueHead`` (possibly wrapped in DDP).
            batch: ``input_ids``, ``attention_mask``, ``position_ids`` ``(M, P + N)``;
                ``completion_mask``, ``old_logps``, ``values``, ``advantages``, ``returns``
                ``(M, N)``; ``stat/<name>`` rollout metrics.

        Returns:
            The loss (one unit), the micro-batch's real tokens and the metrics.

        Raises:
            ConfigError: The model does not return values (not a ``PolicyWithValueHead``).
        """
        ids, mask, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        out = model(
            ids,
            attention_mask=mask,
            position_ids=batch.get("position_ids"),
            return_values=True,
        )
        if not isinstance(out, tuple):
            raise ConfigError(
                f"PPOObjective needs a model returning (logits, values), got {type(out).__name__}",
                key="model",
                hint="wrap the policy in PolicyWithValueHead",
            )
        logits, values = out
        n = int(cmask.shape[1])
        p = int(ids.shape[1]) - n
        lp = _logprobs_of(logits, ids, mask, cmask, self.temperature, self.chunk_size, self.entropy)
        vpred = values[:, p - 1 : -1]  # (M, N): V of the state before each completion token
        policy = ppo_policy_loss(
            lp.logps, batch["old_logps"], batch["advantages"], cmask, cliprange=self.cliprange
        )
        value = ppo_value_loss(
            vpred,
            batch["values"],
            batch["returns"],
            cmask,
            cliprange_value=self.cliprange_value,
        )
        loss = policy.loss + self.vf_coef * value.loss
        metrics: dict[str, Tensor] = {
            "loss/policy_avg": policy.metrics["loss/policy"],
            "policy/clipfrac_avg": policy.metrics["policy/clipfrac"],
            "policy/approxkl_avg": policy.metrics["policy/approxkl"],
            "val/ratio": policy.metrics["val/ratio"],
            "loss/value_avg": value.metrics["loss/value"],
            "val/clipfrac_avg": value.metrics["val/clipfrac"],
        }
        metrics = {k: v.detach().double() for k, v in metrics.items()}
        if lp.entropy is not None:
            m = cmask.to(lp.entropy.dtype)
            metrics["policy/entropy_avg"] = (
                (lp.entropy * m).sum() / m.sum().clamp(min=1.0)
            ).double()
        for key, stat in batch.items():
            if key.startswith(STAT_PREFIX):
                metrics[key[len(STAT_PREFIX) :]] = stat.double()
        return ObjectiveOutput(loss, int(mask.sum()), metrics)

    def __repr__(self) -> str:
        return f"PPOObjective(cliprange={self.cliprange}, vf_coef={self.vf_coef})"


# -- the config -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOConfig(FinetuneSettings):
    r"""The settings of a PPO run (besides lego-train's ``TrainConfig``); TRL's names.

    Attributes:
        template: ``"chatml"``, ``"llama3"`` or ``"none"`` (plain prompts continued as text).
        eos_token: The tokenizer's end-of-sequence token (generation stops on it, and on the
            template's end-of-turn token).
        pad_token: The padding special token; None looks for the tokenizer's own.
        system_prompt: A system message for prompts without one.
        prompts_per_step: Prompts per rollout over all ranks (one completion each; TRL's
            ``batch_size``).
        num_mini_batches: Minibatches per PPO epoch (one optimizer step each).
        num_ppo_epochs: Epochs over each rollout (TRL: 4).
        max_prompt_length: The most prompt tokens.
        prompt_overflow: ``"truncate"`` (cut from the left, counted) or ``"error"``.
        max_completion_length: The most generated tokens (TRL's ``response_length``).
        temperature: Sampling temperature (> 0; TRL: 0.7); the log-probs use it too.
        top_p: Nucleus mass in ``(0, 1]``.
        top_k: Top-k (0: off).
        kl_coef: ``\beta >= 0``, the per-token KL penalty's weight (TRL: 0.05).
        kl_estimator: ``"k1"`` (TRL's default) or ``"k3"``.
        cliprange: The policy ratio's clip (> 0).
        cliprange_value: The value clip (> 0).
        vf_coef: The value loss's weight (>= 0).
        gamma: The discount in ``[0, 1]`` (TRL: 1.0).
        lam: GAE's ``\lambda`` in ``[0, 1]`` (TRL: 0.95).
        whiten_rewards: Whiten the per-token rewards (scale only) before GAE.
        missing_eos_penalty: Subtracted from the score of a completion that did not stop
            (None: off; TRL's option).
        reference: ``"auto"``, ``"adapter"`` or ``"copy"``: the KL reference
            (``kl_coef > 0`` only).
        value_init: ``"normal"`` (TRL's value model's score head: ``normal(0,
            value_init_std)``) or ``"reward"`` (the reward model's score head).
        value_init_std: The normal initialisation's standard deviation.
        head_name: The policy's output head module (the value head reads its input).
        chunk_size: Positions per chunk of the log-softmax.
        log_entropy: Log ``policy/entropy_avg``.
        shuffle: Visit the prompts in a seeded random order each epoch of the data.
        seed: The prompt order, sampling and minibatch seed.
    """

    template: str = "chatml"
    eos_token: str = "<|endoftext|>"
    pad_token: str | None = None
    system_prompt: str | None = None
    prompts_per_step: int = 8
    num_mini_batches: int = 1
    num_ppo_epochs: int = 4
    max_prompt_length: int = 512
    prompt_overflow: Literal["truncate", "error"] = "truncate"
    max_completion_length: int = 53
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = None
    reference: Literal["auto", "adapter", "copy"] = "auto"
    value_init: Literal["normal", "reward"] = "normal"
    value_init_std: float = 0.02
    head_name: str = "lm_head"
    chunk_size: int = 128
    log_entropy: bool = True
    shuffle: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Check every setting up front (each error names its key)."""
        super().validate()
        for key in (
            "prompts_per_step",
            "num_mini_batches",
            "num_ppo_epochs",
            "max_prompt_length",
            "max_completion_length",
            "chunk_size",
        ):
            check_int(key, getattr(self, key), minimum=1)
        check_int("top_k", self.top_k, minimum=0, hint="0 turns top-k off")
        check_float("temperature", self.temperature, low=0.0, low_open=True, hint="e.g. 0.7")
        check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        check_float("kl_coef", self.kl_coef, low=0.0, hint="a KL coefficient: 0 or more")
        check_choice("kl_estimator", self.kl_estimator, PPO_KL_ESTIMATORS)
        check_float("cliprange", self.cliprange, low=0.0, low_open=True, hint="e.g. 0.2")
        check_float("cliprange_value", self.cliprange_value, low=0.0, low_open=True)
        check_float("vf_coef", self.vf_coef, low=0.0, hint="e.g. 0.1")
        check_float("gamma", self.gamma, low=0.0, high=1.0, hint="e.g. 1.0")
        check_float("lam", self.lam, low=0.0, high=1.0, hint="e.g. 0.95")
        check_float("value_init_std", self.value_init_std, low=0.0)
        if self.missing_eos_penalty is not None:
            check_float("missing_eos_penalty", self.missing_eos_penalty, low=0.0)
        check_choice("prompt_overflow", self.prompt_overflow, ("truncate", "error"))
        check_choice("reference", self.reference, ("auto", "adapter", "copy"))
        check_choice("value_init", self.value_init, ("normal", "reward"))
        if self.reference == "adapter" and self.finetune == "full":
            raise ConfigError(
                "reference: adapter needs finetune: lora or qlora (full fine-tuning has no "
                "adapter to disable)",
                key="reference",
                hint="use reference: copy (or auto), or finetune: lora",
            )
        if self.template != PLAIN:
            get_chat_template(self.template)

    def chat_template(self) -> ChatTemplate | None:
        """The chat template, or None for ``template: none``."""
        return None if self.template == PLAIN else get_chat_template(self.template)

    def reference_mode(self) -> Literal["adapter", "copy"]:
        """The reference actually used (``"auto"`` resolved)."""
        if self.reference == "auto":
            return "copy" if self.finetune == "full" else "adapter"
        return self.reference


# -- the reward -----------------------------------------------------------------------------------


def _model_scorer(reward: nn.Module) -> TokenScorer:
    def score(ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        device = next(iter(reward.parameters())).device
        with torch.no_grad():
            out: Tensor = reward(
                ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
            )
        return out

    return score


def load_reward_model(
    path: str | os.PathLike[str], like: nn.Module, *, head_name: str = "lm_head"
) -> RewardModel:
    """A reward model directory (``legollm align reward``'s) around a copy of ``like``.

    The directory must hold a reward model of ``like``'s architecture and size (the usual
    case: both trained from the same base model); its weights replace the copy's.

    Args:
        path: The reward model directory (transformers' sequence-classification layout).
        like: A model of the reward model's architecture (the policy's base, not adapted).
        head_name: The output head the score head replaces.

    Returns:
        The [`RewardModel`][lego.align.reward.RewardModel], frozen and in eval mode.

    Raises:
        ConfigError: The directory does not exist.
        FormatError: Its weights cannot be read.
        CompatibilityError: Its tensors do not fit ``like`` (all listed).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(
            f"the reward model directory {folder} does not exist",
            path=folder,
            key="reward_model",
            hint="train one with `legollm align reward` (its out_dir/model) or fix the path",
        )
    model = RewardModel(copy.deepcopy(like), head_name=head_name)
    model.load_weights(folder)
    return model.requires_grad_(False).eval()


# -- the trainer ----------------------------------------------------------------------------------


class PPOTrainer(TrainerRun):
    """PPO (RLHF) on lego-train's Trainer: rollouts, a reward model, GAE, clipped losses.

    Args:
        model: The policy: any ``CausalLM`` (``config.finetune`` adapts it; a value head is
            added on its last hidden state).
        tokenizer: Any tokenizer with ``eos_token``, the template's special tokens and a pad
            token.
        train_data: Prompt records (a ``.jsonl`` path or dictionaries): ``prompt`` (a string
            or messages) and any columns a reward function reads.
        reward_model: A [`RewardModel`][lego.align.reward.RewardModel] (or any module
            ``(ids, attention_mask=, position_ids=) -> (B,)`` on the policy's vocabulary),
            a reward model directory (loaded around a copy of ``model``, see
            [`load_reward_model()`][lego.align.ppo.load_reward_model]), or a reward function
            ``(prompts, completions, **columns) -> scores``.
        config: The PPO settings.
        train: lego-train's settings (``grad_accum`` micro-batches per optimizer step).
        reference_model: An explicit frozen reference model instead of ``config.reference``.
        callbacks: More lego-train callbacks.
        tokenizer_hash: Identifies the tokenizer for resume checks.
        console_stream: Where progress lines go.
        lock: The lock of ``train.out_dir`` when the caller holds it.

    Attributes:
        model: The [`PolicyWithValueHead`][lego.align.ppo.PolicyWithValueHead] trained.
        policy: The policy inside it (a ``LoraModel`` for LoRA / QLoRA).
        reward: The reward model (a module) or the reward functions.
        source: The [`PPOBatchSource`][lego.align.ppo_rollouts.PPOBatchSource].
        objective: The [`PPOObjective`][lego.align.ppo.PPOObjective].
        reference_mode: ``"none"`` (``kl_coef == 0``), ``"adapter"``, ``"copy"`` or
            ``"model"``.
        trainer: The ``lego.train.Trainer``.

    Raises:
        ConfigError: A bad setting, no reward model (None or a missing directory), no pad
            token, a prompt plus ``max_completion_length`` longer than the context, sizes
            that do not split into minibatches, ``value_init: reward`` without a reward
            model.
        CompatibilityError: A reward or reference model of another vocabulary; a tokenizer
            without ``eos_token`` or the template's tokens.
        DataError: No prompts, bad records (naming the line).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: Tokenizer,
        train_data: RecordSource,
        reward_model: RewardSource | None,
        config: PPOConfig,
        train: TrainConfig,
        reference_model: nn.Module | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        tokenizer_hash: str | None = None,
        console_stream: Any = None,
        lock: FolderLock | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        template = config.chat_template()
        self.stop_ids, self.pad_id = stop_and_pad_ids(
            tokenizer, template=template, eos_token=config.eos_token, pad_token=config.pad_token
        )
        self.train_prompts, counts = encode_prompts(
            train_data,
            tokenizer,
            template=template,
            max_prompt_length=config.max_prompt_length,
            overflow=config.prompt_overflow,
            system_prompt=config.system_prompt,
        )
        check_context(model, self.train_prompts, config.max_completion_length)
        self.reward, scorer, score_weight = self._reward(reward_model, model, config)
        if reference_model is not None:
            check_vocabulary(model, reference_model)

        device = pick_device(train.device)
        info = init_distributed(device)
        if resolve_strategy(train.strategy, info) == "fsdp" and info.distributed:
            raise ConfigError(
                "PPO generates its rollouts with the whole policy on every rank; FSDP shards "
                "the weights across the ranks",
                key="strategy",
                hint="use strategy: ddp (or auto) for PPO",
            )
        policy = prepare_model(model, config)
        adapter = policy if isinstance(policy, LoraModel) else None
        self.model = PolicyWithValueHead(
            policy,
            head_name=config.head_name,
            init_std=config.value_init_std,
            init_weight=score_weight,
        )
        mode, reference = "none", None
        if config.kl_coef > 0:
            mode, reference = frozen_reference(
                policy,
                mode=config.reference_mode(),
                reference_model=reference_model,
                adapter=adapter,
                device=device,
                info=info,
                strategy=resolve_strategy(train.strategy, info),
            )
        self.reference_mode = mode
        self.model.to(device)
        if isinstance(self.reward, nn.Module):
            self.reward.requires_grad_(False).eval().to(device)

        self.source = PPOBatchSource(
            prompts=self.train_prompts,
            model=self.model,
            tokenizer=tokenizer,
            score=scorer,
            config=config,
            grad_accum=train.grad_accum,
            pad_id=self.pad_id,
            stop_ids=self.stop_ids,
            rank=info.rank,
            world_size=info.world_size,
            reference=reference,
            adapter=adapter if mode == "adapter" else None,
            device=device,
        )
        self._loaders.append(self.source.loader)
        self.objective = PPOObjective(
            cliprange=config.cliprange,
            cliprange_value=config.cliprange_value,
            vf_coef=config.vf_coef,
            temperature=config.temperature,
            chunk_size=config.chunk_size,
            entropy=config.log_entropy,
        )
        reward_kind = "reward functions" if isinstance(self.reward, RewardFunctions) else "model"
        steps = config.num_ppo_epochs * config.num_mini_batches
        self._start(
            model=self.model,
            objective=self.objective,
            train_loader=self.source,
            eval_loader=None,
            train=train,
            tokenizer=tokenizer,
            callbacks=callbacks,
            tokenizer_hash=tokenizer_hash,
            console_stream=console_stream,
            lock=lock,
            counts={f"train_{k}": v for k, v in counts.items()},
            message=f"PPO data: {counts['prompts']} prompts ({counts['truncated']} cut from the "
            f"left); {config.prompts_per_step} prompts per rollout, {steps} optimizer steps "
            f"each; reward: {reward_kind}; kl_coef {config.kl_coef} ({config.kl_estimator}), "
            f"reference: {mode}",
        )

    @property
    def policy(self) -> nn.Module:
        """The policy (without its value head)."""
        return self.model.policy

    @staticmethod
    def _reward(
        reward: RewardSource | None, model: nn.Module, config: PPOConfig
    ) -> tuple[nn.Module | RewardFunctions, TokenScorer | RewardFunctions, Tensor | None]:
        """The reward model or functions, how to score with it, the value head's start."""
        if reward is None:
            raise ConfigError(
                "PPO needs a reward model: none was given",
                key="reward_model",
                hint="pass a RewardModel, a reward model directory (`legollm align reward`) "
                "or a reward function (prompts, completions, **columns) -> scores",
            )
        if isinstance(reward, (str, os.PathLike)):
            reward = load_reward_model(reward, model, head_name=config.head_name)
        if isinstance(reward, nn.Module):
            mine, theirs = vocab_size(model), vocab_size(reward)
            if mine is not None and theirs is not None and mine != theirs:
                raise CompatibilityError(
                    f"the reward model's vocabulary ({theirs} ids) differs from the policy's "
                    f"({mine} ids): it would read the policy's token ids as other tokens",
                    key="reward_model",
                    hint="train the reward model from the policy's base model (its tokenizer)",
                )
            weight: Tensor | None = None
            if config.value_init == "reward":
                if not isinstance(reward, RewardModel):
                    raise ConfigError(
                        "value_init: reward needs a RewardModel (its score head)",
                        key="value_init",
                        hint="use value_init: normal",
                    )
                weight = reward.score.weight.detach().clone()
            return reward, _model_scorer(reward), weight
        if not callable(reward):
            raise ConfigError(
                f"reward_model is a {type(reward).__name__}: not a reward model, a directory "
                "or a callable",
                key="reward_model",
                hint="pass a RewardModel, a directory or f(prompts, completions, **columns)",
            )
        if config.value_init == "reward":
            raise ConfigError(
                "value_init: reward needs a reward model, but the reward is a function",
                key="value_init",
                hint="use value_init: normal",
            )
        functions = RewardFunctions([reward])
        return functions, functions, None
