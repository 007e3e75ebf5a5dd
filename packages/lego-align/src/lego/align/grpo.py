r"""The GRPO trainer: group-relative policy optimisation on lego-train's Trainer.

One *generation* (Shao et al. 2024, "DeepSeekMath", §4; TRL's ``GRPOTrainer`` semantics):
``prompts_per_step`` prompts (over all ranks) each get ``G = num_generations`` sampled
completions from lego-generate's ``rollout()`` (one shared prefill per prompt); the reward
functions score them; each completion's advantage is its reward relative to its group
([`group_advantages()`][lego.align.advantages.group_advantages], ``scale_rewards``); the rows
are split into ``grad_accum`` micro-batches and used for ``num_iterations`` optimizer steps
([`GRPOBatchSource`][lego.align.rollouts.GRPOBatchSource]). Each micro-batch's loss is
[`grpo_loss()`][lego.align.policy_losses.grpo_loss] on the policy's per-token log-probs of
``logits / temperature`` ([`GRPOObjective`][lego.align.grpo.GRPOObjective]), against the
old policy's log-probs (computed at generation time when ``num_iterations > 1``, else the
detached current ones: ratio 1) and, with ``beta > 0``, the reference model's (the adapter
disabled for LoRA / QLoRA, else a frozen copy).

The reduction. lego-train divides the step's summed loss by the step's *units*; GRPO's
units are chosen so the result is TRL's normalisation over the whole step, accumulation and
ranks included:

- ``"grpo"``: one unit per completion, each contributing its own token mean;
- ``"bnpo"``: one unit per micro-batch, each contributing its token mean (TRL normalises
  each micro-batch by its own tokens, then averages over accumulation steps and ranks);
- ``"dr_grpo"``: one unit per completion, contributing ``sum / max_completion_length``;
- ``"dapo"`` (TRL's default): one unit per completion token: the step's token sum over
  the step's tokens (TRL's ``num_items_in_batch``).

Metrics under TRL's names: ``reward``, ``reward_std``, ``rewards/<func>/mean`` and
``/std``, ``frac_reward_zero_std``, ``completions/mean_length`` (``min``, ``max``,
``clipped_ratio``: finished by length, ``*_terminated_length``), ``kl`` (``beta > 0``),
``entropy``, ``clip_ratio/*``; the generation's are exact over all ranks, the token ones are
means weighted by the units. With held-out prompts, ``val_accuracy``, ``val_reward``... are
logged every ``eval_every`` steps
([`evaluate_completions()`][lego.align.rollouts.evaluate_completions]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from lego.align.advantages import ADVANTAGE_SCALES
from lego.align.finetune import FinetuneSettings, prepare_model
from lego.align.policy_losses import GRPO_LOSS_TYPES, grpo_loss
from lego.align.reference import check_vocabulary, frozen_reference
from lego.align.rewards import RewardFunction, RewardFunctions
from lego.align.rollouts import (
    STAT_PREFIX,
    GRPOBatchSource,
    GRPOPrompt,
    _eval_metrics,
    check_context,
    completion_logprobs,
    encode_prompts,
    score_prompts,
    stop_and_pad_ids,
)
from lego.align.run import TrainerRun
from lego.data.records import RecordSource
from lego.generate.precision import ROLLOUT_DTYPES
from lego.peft import LoraModel
from lego.protocols import (
    ConfigError,
    DataError,
    FolderLock,
    Tokenizer,
    TrainerCallback,
    TrainerState,
    check_choice,
    check_float,
    check_int,
)
from lego.protocols.chat import ChatTemplate, get_chat_template
from lego.train import ObjectiveOutput, TrainConfig
from lego.train.distributed import (
    all_reduce_sum,
    init_distributed,
    pick_device,
    resolve_strategy,
)

__all__ = ["GRPOConfig", "GRPOObjective", "GRPOTrainer", "GRPOEvaluation"]

PLAIN = "none"
"""The ``template`` value for plain text prompts (no chat template)."""


# -- the objective -------------------------------------------------------------------------------


class GRPOObjective:
    """``grpo_loss`` on rollout micro-batches: a lego-train objective (units per loss type).

    Args:
        loss_type: ``"grpo"``, ``"bnpo"``, ``"dr_grpo"`` or ``"dapo"``.
        beta: KL coefficient (> 0 needs ``ref_logps`` in the batches).
        epsilon: Lower clip.
        epsilon_high: Upper clip (None: ``epsilon``).
        delta: Two-sided clipping cap of the ratio, or None.
        temperature: The sampling temperature (the logits are divided by it).
        max_completion_length: ``L_max`` of ``"dr_grpo"``.
        kl_bias_correction: Multiply the KL term by the ratio (TRL's default).
        chunk_size: Positions per chunk of the log-softmax.
        entropy: Log the completion tokens' mean entropy (``entropy``).

    Raises:
        ConfigError: An unknown ``loss_type`` or ``"dr_grpo"`` without
            ``max_completion_length``.

    Example:
        >>> import torch
        >>> objective = GRPOObjective(loss_type="dapo")
        >>> objective.units({"completion_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])})
        3
    """

    perplexity = False

    def __init__(
        self,
        *,
        loss_type: str = "dapo",
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        delta: float | None = None,
        temperature: float = 1.0,
        max_completion_length: int | None = None,
        kl_bias_correction: bool = True,
        chunk_size: int = 128,
        entropy: bool = True,
    ) -> None:
        check_choice("loss_type", loss_type, GRPO_LOSS_TYPES)
        if loss_type == "dr_grpo" and max_completion_length is None:
            raise ConfigError(
                'loss_type="dr_grpo" needs max_completion_length',
                key="max_completion_length",
            )
        self.loss_type = loss_type
        self.beta = check_float("beta", beta, low=0.0)
        self.epsilon = epsilon
        self.epsilon_high = epsilon_high
        self.delta = delta
        self.temperature = check_float("temperature", temperature, low=0.0, low_open=True)
        self.max_completion_length = max_completion_length
        self.kl_bias_correction = kl_bias_correction
        self.chunk_size = chunk_size
        self.entropy = entropy

    def units(self, batch: Mapping[str, Tensor], /) -> int:
        """The units the micro-batch weighs (see the module's docstring).

        Args:
            batch: A micro-batch with ``completion_mask`` ``(M, N)``.

        Returns:
            ``M`` (``grpo``, ``dr_grpo``), 1 (``bnpo``) or the completion tokens (``dapo``).

        Raises:
            DataError: No ``completion_mask`` in the batch.
        """
        if "completion_mask" not in batch:
            raise DataError(
                f"a GRPO batch needs completion_mask, got keys {sorted(batch)}",
                key="completion_mask",
                hint="use GRPOBatchSource's batches",
            )
        mask = batch["completion_mask"]
        if self.loss_type == "bnpo":
            return 1
        if self.loss_type == "dapo":
            return int(mask.sum())
        return int(mask.shape[0])

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], /) -> ObjectiveOutput:
        """The micro-batch's GRPO loss times its units, with TRL's metrics (times units).

        Args:
            model: The policy (possibly wrapped in DDP).
            batch: ``input_ids``, ``attention_mask``, ``position_ids`` ``(M, P + N)``,
                ``completion_mask`` ``(M, N)``, ``advantages`` ``(M,)``; ``old_logps`` and
                ``ref_logps`` ``(M, N)`` when present; ``stat/<name>`` generation metrics.

        Returns:
            The summed loss, the micro-batch's real tokens and the summed metrics.
        """
        mask = batch["completion_mask"]
        out = completion_logprobs(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            mask,
            position_ids=batch.get("position_ids"),
            temperature=self.temperature,
            chunk_size=self.chunk_size,
            entropy=self.entropy,
        )
        logps = out.logps  # (M, N)
        ref = batch.get("ref_logps") if self.beta > 0 else None
        dapo = self.loss_type == "dapo"
        loss = grpo_loss(
            logps,
            batch.get("old_logps"),
            batch["advantages"],
            mask,
            ref_logps=ref,
            beta=self.beta,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            delta=self.delta,
            loss_type=self.loss_type,
            max_completion_length=self.max_completion_length,
            num_items_in_batch=1.0 if dapo else None,  # the plain token sum: units divide it
            kl_bias_correction=self.kl_bias_correction,
        )
        units = self.units(batch)
        rows = int(mask.shape[0])
        # bnpo: one unit per micro-batch; dapo: already the token sum
        loss_sum = loss.loss * rows if self.loss_type in ("grpo", "dr_grpo") else loss.loss
        metrics: dict[str, Tensor] = {
            name: value.detach().double() * units for name, value in loss.metrics.items()
        }
        if out.entropy is not None:
            m = mask.to(out.entropy.dtype)
            mean = (out.entropy * m).sum() / m.sum().clamp(min=1.0)
            metrics["entropy"] = mean.double() * units
        for key, value in batch.items():
            if key.startswith(STAT_PREFIX):
                metrics[key[len(STAT_PREFIX) :]] = value.double() * units
        return ObjectiveOutput(loss_sum, int(batch["attention_mask"].sum()), metrics)

    def __repr__(self) -> str:
        return f"GRPOObjective(loss_type={self.loss_type!r}, beta={self.beta})"


# -- the config -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOConfig(FinetuneSettings):
    r"""The settings of a GRPO run (besides lego-train's ``TrainConfig``); TRL's names.

    Attributes:
        template: ``"chatml"``, ``"llama3"`` or ``"none"`` (plain prompts continued as text).
        eos_token: The tokenizer's end-of-sequence token (generation stops on it, and on the
            template's end-of-turn token).
        pad_token: The padding special token; None looks for the tokenizer's own.
        system_prompt: A system message for prompts without one.
        num_generations: ``G``, completions per prompt (>= 2: a group needs a baseline).
        prompts_per_step: Prompts per generation over all ranks (each rank takes
            ``prompts_per_step / world_size``); the generation's ``prompts * G`` rows make
            ``grad_accum`` micro-batches per rank.
        max_prompt_length: The most prompt tokens.
        prompt_overflow: ``"truncate"`` (cut from the left, counted) or ``"error"``.
        max_completion_length: The most generated tokens per completion.
        temperature: Sampling temperature (> 0); the training log-probs use it too.
        top_p: Nucleus mass in ``(0, 1]``.
        top_k: Top-k (0: off).
        repetition_penalty: CTRL's penalty (1.0: off).
        loss_type: ``"grpo"``, ``"bnpo"``, ``"dr_grpo"`` or ``"dapo"`` (TRL's default).
        beta: KL coefficient ``\beta >= 0`` (0: no reference model).
        epsilon: Lower clip ``\epsilon > 0``.
        epsilon_high: Upper clip (DAPO's clip-higher, e.g. 0.28), None: ``epsilon``.
        delta: Two-sided clipping cap (> 1) or None.
        kl_bias_correction: Multiply the KL term by the ratio (TRL's
            ``use_bias_correction_kl``).
        num_iterations: Optimizer steps per generation (``\mu``; > 1 uses the old policy's
            log-probs).
        rollout_dtype: The precision completions are sampled in: ``"auto"`` (a bf16 copy of
            an fp32 CPU policy of >= 20M parameters where a one-second probe finds bf16
            faster here, else the policy itself), ``"float32"`` or ``"bfloat16"`` (lego-generate's
            [`sampling_copy()`][lego.generate.precision.sampling_copy]). The copy is refreshed
            from the policy before every generation; the loss's old log-probs always come from
            the fp32 policy's own forward pass (ratio 1 on a generation's first update).
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"``.
        reward_weights: One weight per reward function, or None (all 1).
        reference: ``"auto"``, ``"adapter"`` or ``"copy"``: the KL reference (``beta > 0``
            only).
        chunk_size: Positions per chunk of the log-softmax.
        log_entropy: Log the completion tokens' mean entropy.
        shuffle: Visit the prompts in a seeded random order each epoch.
        seed: The prompt order and sampling seed.
        eval_prompts: Held-out prompts per evaluation (0: all of them).
        eval_greedy: Greedy held-out completions (else sampled with the training settings
            or ``eval_temperature``).
        eval_temperature: Sampling temperature of a sampled evaluation (None: ``temperature``).
        eval_num_generations: Completions per held-out prompt.
        eval_batch_size: Prompts per evaluation ``rollout()`` call.
        eval_on_start: Evaluate before the first step too (the starting accuracy).
        accuracy_reward: The reward function deciding held-out correctness (None: the first).
        accuracy_threshold: Correct when its reward is at least this.
    """

    template: str = "chatml"
    eos_token: str = "<|endoftext|>"
    pad_token: str | None = None
    system_prompt: str | None = None
    num_generations: int = 8
    prompts_per_step: int = 8
    max_prompt_length: int = 512
    prompt_overflow: Literal["truncate", "error"] = "truncate"
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    loss_type: str = "dapo"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    kl_bias_correction: bool = True
    num_iterations: int = 1
    rollout_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    scale_rewards: str = "group"
    reward_weights: tuple[float, ...] | None = None
    reference: Literal["auto", "adapter", "copy"] = "auto"
    chunk_size: int = 128
    log_entropy: bool = True
    shuffle: bool = True
    seed: int = 0
    eval_prompts: int = 0
    eval_greedy: bool = True
    eval_temperature: float | None = None
    eval_num_generations: int = 1
    eval_batch_size: int = 16
    eval_on_start: bool = False
    accuracy_reward: str | None = None
    accuracy_threshold: float = 1.0

    def validate(self) -> None:
        """Check every setting up front (each error names its key)."""
        super().validate()
        check_int(
            "num_generations",
            self.num_generations,
            minimum=2,
            hint="GRPO compares each completion with the others of its prompt: use >= 2",
        )
        for key in (
            "prompts_per_step",
            "max_prompt_length",
            "max_completion_length",
            "num_iterations",
            "chunk_size",
            "eval_num_generations",
            "eval_batch_size",
        ):
            check_int(key, getattr(self, key), minimum=1)
        check_int("top_k", self.top_k, minimum=0, hint="0 turns top-k off")
        check_int("eval_prompts", self.eval_prompts, minimum=0, hint="0 evaluates them all")
        check_float("temperature", self.temperature, low=0.0, low_open=True, hint="e.g. 1.0")
        if self.eval_temperature is not None:
            check_float("eval_temperature", self.eval_temperature, low=0.0, low_open=True)
        check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        check_float("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True)
        check_choice("loss_type", self.loss_type, GRPO_LOSS_TYPES)
        check_choice("scale_rewards", self.scale_rewards, ADVANTAGE_SCALES)
        check_choice("prompt_overflow", self.prompt_overflow, ("truncate", "error"))
        check_choice("rollout_dtype", self.rollout_dtype, ROLLOUT_DTYPES)
        check_float("beta", self.beta, low=0.0, hint="beta is a KL coefficient: 0 or more")
        check_float("epsilon", self.epsilon, low=0.0, low_open=True, hint="e.g. 0.2")
        if self.epsilon_high is not None:
            check_float("epsilon_high", self.epsilon_high, low=0.0, low_open=True, hint="0.28")
        if self.delta is not None:
            check_float("delta", self.delta, low=1.0, low_open=True, hint="e.g. 1 + 2 epsilon")
        check_float("accuracy_threshold", self.accuracy_threshold)
        if self.reward_weights is not None:
            for i, weight in enumerate(self.reward_weights):
                check_float(f"reward_weights[{i}]", weight)
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


# -- evaluation ----------------------------------------------------------------------------------


class GRPOEvaluation:
    """Held-out completions every ``eval_every`` steps, logged as ``val_*`` metrics.

    A lego-train ``TrainerCallback``.

    Each rank scores its share of the prompts (``prompts[rank::world_size]``); the sums are
    reduced over the ranks, so every rank logs the same numbers.

    Args:
        trainer: The GRPO trainer (its policy, tokenizer, rewards and lego-train Trainer).
        prompts: The held-out prompts.
        every: Evaluate every this many steps (and after the last); 0 never.
    """

    def __init__(self, trainer: GRPOTrainer, prompts: Sequence[GRPOPrompt], every: int) -> None:
        self.owner = trainer
        self.prompts = list(prompts)
        self.every = every
        self.last: dict[str, float] = {}

    def evaluate(self) -> dict[str, float]:
        """Score the held-out prompts now.

        Returns:
            ``val_accuracy``, ``val_reward``, ``val_rewards/<name>/mean``,
            ``val_completions/mean_length``, ``val_completions/clipped_ratio``,
            ``val_completions``.
        """
        owner = self.owner
        config = owner.config
        trainer = owner.trainer
        share = self.prompts[trainer.dist.rank :: trainer.dist.world_size]
        result = score_prompts(
            owner.model,
            owner.tokenizer,
            share,
            owner.rewards,
            stop_ids=owner.stop_ids,
            pad_id=owner.pad_id,
            max_new_tokens=config.max_completion_length,
            greedy=config.eval_greedy,
            temperature=config.eval_temperature or config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            n=config.eval_num_generations,
            batch_size=config.eval_batch_size,
            seed=config.seed,
            accuracy_reward=config.accuracy_reward,
            accuracy_threshold=config.accuracy_threshold,
        )
        names = sorted(result.sums)
        totals = all_reduce_sum([result.sums[n] for n in names], trainer.device)
        metrics = _eval_metrics(dict(zip(names, totals, strict=True)), owner.rewards.names)
        self.last = {f"val_{k}": v for k, v in metrics.items()}
        return self.last

    def _run(self, state: TrainerState) -> None:
        metrics = self.evaluate()
        trainer = self.owner.trainer
        trainer.log_record({"step": state.step, "split": "val", **metrics})
        trainer.state.metrics.update(metrics)
        trainer.message(
            f"step {state.step}: val_accuracy {metrics['val_accuracy']:.3f}  "
            f"val_reward {metrics['val_reward']:.3f}"
        )

    def on_train_begin(self, state: TrainerState) -> None:
        """Evaluate before the first step when ``eval_on_start`` is set."""
        if self.owner.config.eval_on_start and state.step == 0:
            self._run(state)

    def on_evaluate(self, state: TrainerState, metrics: Mapping[str, float]) -> None:
        """Nothing (lego-train's own evaluation does not run for GRPO)."""

    def on_save(self, state: TrainerState, path: Path) -> None:
        """Nothing."""

    def on_train_end(self, state: TrainerState) -> None:
        """Nothing."""

    def on_step_end(self, state: TrainerState) -> None:
        """Evaluate every ``every`` steps and after the last."""
        if not self.every:
            return
        last = state.step >= self.owner.trainer.config.max_steps
        if state.step % self.every == 0 or last:
            self._run(state)


# -- the trainer ----------------------------------------------------------------------------------


class GRPOTrainer(TrainerRun):
    """GRPO on lego-train's Trainer: rollouts, rewards, group advantages, the clipped loss.

    Args:
        model: The policy: any ``CausalLM`` (``config.finetune`` adapts it).
        tokenizer: Any tokenizer with ``eos_token``, the template's special tokens and a pad
            token.
        train_data: Prompt records (a ``.jsonl`` path or dictionaries): ``prompt`` (a string
            or messages) and any columns the reward functions read (``answer``...).
        reward_funcs: Reward functions ``f(prompts, completions, **columns)`` (a sequence,
            a name mapping, or ``RewardFunctions``).
        config: The GRPO settings.
        train: lego-train's settings (``grad_accum`` micro-batches per step; ``eval_every``
            schedules the held-out evaluation).
        eval_data: Held-out prompt records, or None.
        reference_model: An explicit frozen reference model (``beta > 0``) instead of
            ``config.reference``; its vocabulary must be the policy's.
        callbacks: More lego-train callbacks.
        tokenizer_hash: Identifies the tokenizer for resume checks.
        console_stream: Where progress lines go.
        lock: The lock of ``train.out_dir`` when the caller holds it.

    Attributes:
        model: The policy being trained (a ``LoraModel`` for LoRA / QLoRA).
        source: The [`GRPOBatchSource`][lego.align.rollouts.GRPOBatchSource].
        objective: The [`GRPOObjective`][lego.align.grpo.GRPOObjective].
        rewards: The reward functions.
        evaluation: The held-out evaluation callback, or None.
        reference_mode: ``"none"`` (``beta == 0``), ``"adapter"``, ``"copy"`` or ``"model"``.
        trainer: The ``lego.train.Trainer``.

    Raises:
        ConfigError: A bad setting, no pad token, a prompt plus ``max_completion_length``
            longer than the model's context, sizes that do not split into micro-batches.
        CompatibilityError: A tokenizer without ``eos_token`` or the template's tokens; a
            reference model of another vocabulary.
        DataError: No prompts, bad records (naming the line).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: Tokenizer,
        train_data: RecordSource,
        reward_funcs: Sequence[RewardFunction] | Mapping[str, RewardFunction] | RewardFunctions,
        config: GRPOConfig,
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
        self.tokenizer = tokenizer
        template = config.chat_template()
        self.stop_ids, self.pad_id = stop_and_pad_ids(
            tokenizer, template=template, eos_token=config.eos_token, pad_token=config.pad_token
        )
        if isinstance(reward_funcs, RewardFunctions):
            if config.reward_weights is not None:
                raise ConfigError(
                    "reward_weights is set, but the reward functions came as RewardFunctions "
                    "(which hold their own weights)",
                    key="reward_weights",
                    hint="pass the functions as a list, or drop reward_weights",
                )
            self.rewards = reward_funcs
        else:
            self.rewards = RewardFunctions(reward_funcs, weights=config.reward_weights)
        if config.accuracy_reward is not None and config.accuracy_reward not in self.rewards.names:
            raise ConfigError(
                f"accuracy_reward {config.accuracy_reward!r} is none of the reward functions "
                f"{list(self.rewards.names)}",
                key="accuracy_reward",
                hint="name one of the reward functions, or leave it unset (the first)",
            )

        def prompts(source: RecordSource) -> tuple[list[GRPOPrompt], dict[str, int]]:
            return encode_prompts(
                source,
                tokenizer,
                template=template,
                max_prompt_length=config.max_prompt_length,
                overflow=config.prompt_overflow,
                system_prompt=config.system_prompt,
            )

        self.train_prompts, train_counts = prompts(train_data)
        counts = {f"train_{k}": v for k, v in train_counts.items()}
        self.eval_prompts: list[GRPOPrompt] | None = None
        if eval_data is not None:
            held, eval_counts = prompts(eval_data)
            if config.eval_prompts:
                held = held[: config.eval_prompts]
                eval_counts["prompts"] = len(held)
            self.eval_prompts = held
            counts.update({f"eval_{k}": v for k, v in eval_counts.items()})
        check_context(
            model,
            self.train_prompts + (self.eval_prompts or []),
            config.max_completion_length,
        )

        device = pick_device(train.device)
        info = init_distributed(device)
        if resolve_strategy(train.strategy, info) == "fsdp" and info.distributed:
            raise ConfigError(
                "GRPO generates its rollouts with the whole policy on every rank; FSDP shards "
                "the weights across the ranks",
                key="strategy",
                hint="use strategy: ddp (or auto) for GRPO",
            )
        self.model = prepare_model(model, config)
        adapter = self.model if isinstance(self.model, LoraModel) else None
        if reference_model is not None:
            check_vocabulary(model, reference_model)
        mode, reference = "none", None
        if config.beta > 0:
            mode, reference = frozen_reference(
                self.model,
                mode=config.reference_mode(),
                reference_model=reference_model,
                adapter=adapter,
                device=device,
                info=info,
                strategy=resolve_strategy(train.strategy, info),
            )
        self.reference_mode = mode

        self.model.to(device)
        self.source = GRPOBatchSource(
            prompts=self.train_prompts,
            policy=self.model,
            tokenizer=tokenizer,
            rewards=self.rewards,
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
        self.objective = GRPOObjective(
            loss_type=config.loss_type,
            beta=config.beta,
            epsilon=config.epsilon,
            epsilon_high=config.epsilon_high,
            delta=config.delta,
            temperature=config.temperature,
            max_completion_length=config.max_completion_length,
            kl_bias_correction=config.kl_bias_correction,
            chunk_size=config.chunk_size,
            entropy=config.log_entropy,
        )
        held_out = f", {len(self.eval_prompts)} held out" if self.eval_prompts else ""
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
            counts=counts,
            message=f"GRPO data: {train_counts['prompts']} prompts ({train_counts['truncated']} "
            f"cut from the left){held_out}; G={config.num_generations}, "
            f"{config.prompts_per_step} prompts per step; loss {config.loss_type}, "
            f"beta {config.beta}, reference: {mode}",
        )
        self.evaluation: GRPOEvaluation | None = None
        if self.eval_prompts:  # after the data report, before the user's callbacks
            self.evaluation = GRPOEvaluation(self, self.eval_prompts, train.eval_every)
            self.trainer.callbacks.insert(1, self.evaluation)

    def evaluate(self) -> dict[str, float]:
        """Score the held-out prompts now (``val_*`` metrics; empty without held-out data)."""
        return {} if self.evaluation is None else self.evaluation.evaluate()
