r"""PPO's online data: one completion per prompt, scored, turned into per-token advantages.

[`PPOBatchSource`][lego.align.ppo_rollouts.PPOBatchSource] is lego-train's batch source of
the PPO trainer. For each *rollout* it takes this rank's ``prompts_per_step / world_size``
prompts (its contiguous share of the rollout's global prompt list,
`PromptShares`), samples one completion of each with
lego-generate's ``rollout()`` (the policy in eval mode, every row from its own seed:
[`sample_completions()`][lego.align.rollouts.sample_completions]), and, with no gradient:

1. runs the policy with its value head once over ``prompt + completion``: the completion
   tokens' log-probabilities under ``logits / temperature`` (``old_logps``) and the values
   ``V_t`` (read at the position that predicts token ``t``, as the log-probability);
2. the reference's log-probabilities (the adapter disabled, or a frozen copy);
3. the score ``s`` of each completion: the reward model at the completion's last token,
   or a reward function on the decoded text (minus ``missing_eos_penalty`` for a completion
   that ran out of length without stopping);
4. [`ppo_rewards()`][lego.align.policy_losses.ppo_rewards]:
   ``r_t = -\beta\,\mathrm{KL}_t + [t = t_{end}]\,s`` (optionally
   [`whiten()`][lego.align.advantages.whiten]\ ed without moving the mean);
5. [`gae()`][lego.align.advantages.gae] (``gamma``, ``lam``): advantages and returns;
   the advantages whitened over the rollout's completion tokens of all ranks
   ([`whiten_global()`][lego.align.ppo_rollouts.whiten_global]; TRL whitens each rank's).

The rollout's rows are then handed out ``num_ppo_epochs`` times, each epoch in a new seeded
order, as ``num_mini_batches`` minibatches of ``grad_accum`` micro-batches: lego-train's
Trainer takes ``grad_accum`` micro-batches per optimizer step, so a rollout serves
``num_ppo_epochs * num_mini_batches`` steps. The order is stratified: the rows fall in
``grad_accum`` blocks of ``num_mini_batches`` micro-batches' worth of consecutive rows;
each epoch every block shuffles its rows (seeded per block, epoch and rollout) and deals
them out as one micro-batch of each minibatch, the blocks in order.
``state_dict()`` makes resume exact: the prompt position, the rollout count (each row's
sampler and each block's order are seeded from the run's seed, the count and the row's or
block's global place), and, when a checkpoint falls inside a rollout, the rollout's rows
themselves (every rank's, gathered on rank 0).

Under ``torchrun`` rank ``r`` rolls out prompts ``[r * local, (r + 1) * local)`` of the
rollout's global list with the seeds one process uses for them, whitening and metrics are
over all ranks, and a rank's minibatch ``m`` is its blocks' share of one process's: ``W``
ranks with ``grad_accum = A`` compute what one process with ``grad_accum = W * A`` computes
(the same completions, advantages, micro-batches and weights, up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lego.align.advantages import gae, whiten
from lego.align.policy_losses import ppo_rewards
from lego.align.rewards import RewardFunctions
from lego.align.rollouts import (
    STAT_PREFIX,
    GRPOPrompt,
    RolloutSource,
    check_layout,
    finite_or_zero,
    gather_on_rank0,
    gather_rows,
    hashed_seed,
    length_stats,
    reward_inputs,
)
from lego.generate.rollout import Rollout
from lego.peft import LoraModel
from lego.protocols import ConfigError, DataError, Tokenizer, TrainingError
from lego.train.distributed import all_reduce_sum

if TYPE_CHECKING:
    from lego.align.ppo import PolicyWithValueHead, PPOConfig

__all__ = ["PPOBatchSource", "TokenScorer", "order_seed", "whiten_global"]

_SOURCE_VERSION = 2  # 2: prompts sliced from one global order, per-row seeds, stratified order

TokenScorer = Callable[[Tensor, Tensor, Tensor], Tensor]
"""A reward model as a function ``(input_ids, attention_mask, position_ids) -> (B,) scores``."""

ROW_KEYS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "completion_mask",
    "old_logps",
    "ref_logps",
    "values",
    "advantages",
    "returns",
    "scores",
)
"""The per-row tensors of a rollout (what a micro-batch selects rows of)."""


def order_seed(seed: int, block: int, rollout_index: int, epoch: int) -> int:
    """The seed of one block's row order in one PPO epoch (the same whatever the ranks).

    Args:
        seed: The run's seed.
        block: The block's global number (rows ``[block * S, (block + 1) * S)`` of the
            rollout's global rows, ``S = num_mini_batches * rows per micro-batch``).
        rollout_index: The rollout's number (0-based).
        epoch: The PPO epoch within the rollout (0-based).

    Returns:
        A seed in ``[0, 2**63)``.

    Example:
        >>> order_seed(0, 0, 0, 0) != order_seed(0, 0, 0, 1)
        True
    """
    return hashed_seed("lego-align-ppo-order", seed, block, rollout_index, epoch)


def whiten_global(
    x: Tensor, mask: Tensor, device: torch.device, *, shift_mean: bool = True, eps: float = 1e-8
) -> Tensor:
    r"""[`whiten()`][lego.align.advantages.whiten] over the masked positions of all ranks.

    The mean and the unbiased variance come from sums reduced over the ranks (two
    all-reduces), so every rank standardises with the statistics of the whole batch, as one
    process holding every rank's rows does; in one process this is ``whiten()``.

    Args:
        x: ``(B, T)`` this rank's values.
        mask: ``(B, T)`` the positions that count.
        device: Where the collectives run.
        shift_mean: Subtract the mean (True) or keep it.
        eps: Added to the variance.

    Returns:
        ``(B, T)`` whitened ``x``, 0 outside ``mask``.

    Raises:
        ConfigError: Fewer than two positions masked in over all ranks.

    Example:
        >>> x = torch.tensor([[1.0, 3.0, 9.0]])
        >>> whiten_global(x, torch.tensor([[1, 1, 0]]), torch.device("cpu"))
        tensor([[-0.7071,  0.7071,  0.0000]])
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return whiten(x, mask, shift_mean=shift_mean, eps=eps)
    keep = mask.bool()
    m = keep.to(torch.float64)
    values = x.double()
    total, count = all_reduce_sum([float((values * m).sum()), float(m.sum())], device)
    if count < 2:
        raise ConfigError(
            f"whiten needs at least 2 positions in mask over all ranks, got {int(count)}",
            key="mask",
            tensor="mask",
            hint="whiten over a batch with more than one real token",
        )
    mean = total / count
    (square,) = all_reduce_sum([float((((values - mean) ** 2) * m).sum())], device)
    variance = square / count * (count / (count - 1))
    out = (values - mean) / math.sqrt(variance + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(keep, out, torch.zeros_like(out)).to(x.dtype)


class PPOBatchSource(RolloutSource):
    """PPO's training batches: one rollout reused for ``num_ppo_epochs`` epochs of minibatches.

    A lego-protocols ``BatchSource``: iterating yields micro-batches forever. Each holds, for
    its ``M`` rows, ``input_ids``, ``attention_mask``, ``position_ids`` ``(M, P + N)``,
    ``completion_mask``, ``old_logps``, ``ref_logps``, ``values``, ``advantages`` (whitened),
    ``returns`` ``(M, N)``, ``scores`` ``(M,)`` and the rollout's metrics under
    ``stat/<name>`` (0-dim, the same in every micro-batch of the rollout and on every rank).

    Args:
        prompts: All training prompts (every rank takes its share).
        model: The policy with its value head (unwrapped: not the DDP module).
        tokenizer: Decodes the completions for reward functions.
        score: The reward: a ``TokenScorer`` (a reward model on token
            ids) or ``RewardFunctions`` (on the decoded text).
        config: The PPO settings.
        grad_accum: Micro-batches per optimizer step (lego-train's ``grad_accum``).
        pad_id: The padding id.
        stop_ids: The ids that finish a completion.
        rank: This process's rank.
        world_size: The number of ranks.
        reference: The frozen reference model (``reference: copy``), or None.
        adapter: The policy's ``LoraModel`` disabled for the reference, or None.
        device: Where the collectives run.

    Attributes:
        shares: The `PromptShares` (every rank walks
            the same seeded prompt order and takes its slice); ``loader`` its
            ``ExampleLoader``.
        rollouts: Rollouts made so far.
        position: Micro-batches of the current rollout handed out.
        rows: The current rollout's per-row tensors (on the CPU), or empty.
        stats: The current rollout's metrics.
        last_prompts: The last rollout's prompts; ``last_rollout`` its ``Rollout``.

    Raises:
        ConfigError: ``prompts_per_step`` not divisible by the world size, or this rank's
            rows not divisible by ``num_mini_batches * grad_accum``.
        DataError: Fewer prompts than one rollout needs.
    """

    def __init__(
        self,
        *,
        prompts: Sequence[GRPOPrompt],
        model: PolicyWithValueHead,
        tokenizer: Tokenizer,
        score: TokenScorer | RewardFunctions,
        config: PPOConfig,
        grad_accum: int,
        pad_id: int,
        stop_ids: Sequence[int],
        rank: int = 0,
        world_size: int = 1,
        reference: nn.Module | None = None,
        adapter: LoraModel | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(
            prompts=prompts,
            tokenizer=tokenizer,
            config=config,
            grad_accum=grad_accum,
            pad_id=pad_id,
            stop_ids=stop_ids,
            rank=rank,
            world_size=world_size,
            reference=reference,
            adapter=adapter,
            device=device,
            unit="rollout",
        )
        local = self.shares.local
        parts = config.num_mini_batches * grad_accum
        if local % parts:
            self.close()
            raise ConfigError(
                f"each rank rolls out {local} prompts per step, which do not split into "
                f"num_mini_batches={config.num_mini_batches} x grad_accum={grad_accum} equal "
                "micro-batches",
                key="prompts_per_step",
                hint="make prompts_per_step / ranks a multiple of num_mini_batches * grad_accum",
            )
        self.model = model
        self.score = score
        self.config = config
        self.local = local
        self.rollouts = 0
        self.rows: dict[str, Tensor] = {}
        self.stats: dict[str, float] = {}
        self._all_rows: dict[str, dict[str, Tensor]] | None = None
        self._orders: dict[int, Tensor] = {}

    @property
    def per_rollout(self) -> int:
        """Micro-batches per rollout: ``num_ppo_epochs * num_mini_batches * grad_accum``."""
        return self.config.num_ppo_epochs * self.config.num_mini_batches * self.grad_accum

    @property
    def micro_size(self) -> int:
        """Rows per micro-batch."""
        return self.local // (self.config.num_mini_batches * self.grad_accum)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        """Yield micro-batches forever (a new rollout whenever the last one is used up)."""
        while True:
            if not self.rows or self.position >= self.per_rollout:
                self._rollout()
            batch = self.micro_batch(self.position)
            self.position += 1
            yield batch

    # -- the order of the rows ------------------------------------------------------------

    def order(self, epoch: int) -> Tensor:
        """The current rollout's row order in PPO epoch ``epoch`` (stratified, seeded).

        This rank's rows form ``grad_accum`` blocks of ``S = num_mini_batches * micro_size``
        consecutive rows; block ``a`` (global number ``first / S + a``) permutes its rows
        with `order_seed()` and deals them out in
        ``num_mini_batches`` parts: part ``m`` is micro-batch ``a`` of minibatch ``m``. A
        rank's minibatch ``m`` is thus its blocks' part of one process's minibatch ``m``
        (which has ``world_size`` times the blocks), micro-batch for micro-batch.

        Args:
            epoch: 0-based, below ``num_ppo_epochs``.

        Returns:
            ``(R,)`` long row indices (minibatch-major).
        """
        if epoch not in self._orders:
            m, size = self.config.num_mini_batches, self.micro_size
            block = m * size
            first = self.shares.first // block
            perms = torch.empty((self.grad_accum, block), dtype=torch.long)  # (A, S)
            for a in range(self.grad_accum):
                generator = torch.Generator()
                generator.manual_seed(
                    order_seed(self.config.seed, first + a, self.rollouts - 1, epoch)
                )
                perms[a] = a * block + torch.randperm(block, generator=generator)
            parts = perms.view(self.grad_accum, m, size)  # (A, M, micro): block a, part m
            self._orders[epoch] = parts.transpose(0, 1).reshape(-1)  # (R,) minibatch-major
        return self._orders[epoch]

    def micro_batch(self, position: int) -> dict[str, Tensor]:
        """The ``position``-th micro-batch of the current rollout.

        Args:
            position: ``0 <= position < per_rollout``.

        Returns:
            The micro-batch (see the class docstring).
        """
        per_epoch = self.config.num_mini_batches * self.grad_accum
        epoch, within = divmod(position, per_epoch)
        start = within * self.micro_size  # minibatch m, micro-batch a: (m * grad_accum + a)
        rows = self.order(epoch)[start : start + self.micro_size]
        batch = {key: self.rows[key].index_select(0, rows) for key in ROW_KEYS}
        for name, value in self.stats.items():
            batch[STAT_PREFIX + name] = torch.tensor(value, dtype=torch.float32)
        return batch

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position: prompts, rollout count, and the unfinished rollout's rows.

        Returns:
            ``{"version", "prompts", "rollouts", "position", "rows", "world_size"}`` (tensors,
            ints and strings: loads with ``torch.load(weights_only=True)``); ``rows`` maps
            ``"rank<r>"`` to rank ``r``'s rollout (its metrics as ``stat/<name>`` 0-dim
            tensors) when a rollout is partly used.
        """
        unfinished = bool(self.rows) and 0 < self.position < self.per_rollout
        saved: dict[str, dict[str, Tensor]] = {}
        if unfinished:
            if self._all_rows is not None:
                saved = self._all_rows
            else:
                saved = {f"rank{self.rank}": self._packed()}
        return {
            "version": _SOURCE_VERSION,
            "prompts": self.shares.state_dict(),
            "rollouts": self.rollouts,
            "position": self.position if unfinished else 0,
            "rows": saved,
            "world_size": self.world_size,
        }

    def _packed(self) -> dict[str, Tensor]:
        packed = dict(self.rows)
        for name, value in self.stats.items():
            packed[STAT_PREFIX + name] = torch.tensor(value, dtype=torch.float64)
        return packed

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        """Continue from a saved position (see ``state_dict``).

        Args:
            state: From ``state_dict()`` (rank 0's, which holds every rank's rows).

        Raises:
            DataError: A state from another layout (version, world size, sizes) or without
                this rank's unfinished rollout.
        """
        check_layout(state, name="PPO", version=_SOURCE_VERSION, world_size=self.world_size)
        self.shares.load_state_dict(state["prompts"])
        self.rollouts = int(state["rollouts"])
        self.position = int(state["position"])
        self.rows, self.stats, self._orders, self._all_rows = {}, {}, {}, None
        if self.position == 0:
            return
        saved = state.get("rows") or {}
        mine = saved.get(f"rank{self.rank}")
        if mine is None:
            raise DataError(
                f"the PPO data position has no saved rollout for rank {self.rank}",
                key="data.pt",
                hint="resume with the same number of ranks, or start a fresh run",
            )
        rows = int(mine["input_ids"].shape[0])
        if rows != self.local or self.position > self.per_rollout:
            raise DataError(
                f"the saved rollout has {rows} rows at position {self.position}, but this run "
                f"rolls out {self.local} rows per rank and hands out {self.per_rollout} "
                "micro-batches per rollout",
                key="grad_accum",
                hint="resume with the run's prompts_per_step, num_ppo_epochs, "
                "num_mini_batches and grad_accum",
            )
        self._unpack(mine)
        if self.world_size > 1:
            self._all_rows = {k: dict(v) for k, v in saved.items()}

    def _unpack(self, packed: Mapping[str, Tensor]) -> None:
        self.rows = {k: v for k, v in packed.items() if not k.startswith(STAT_PREFIX)}
        self.stats = {
            k[len(STAT_PREFIX) :]: float(v) for k, v in packed.items() if k.startswith(STAT_PREFIX)
        }

    # -- one rollout ----------------------------------------------------------------------

    def _scores(self, prompts: list[GRPOPrompt], out: Rollout, ids: Tensor, mask: Tensor) -> Tensor:
        """``(R,)`` one score per completion (a reward model, or reward functions)."""
        if isinstance(self.score, RewardFunctions):
            assert out.texts is not None
            texts, columns = reward_inputs(prompts, 1)
            result = self.score(texts, list(out.texts), **columns)
            missing = torch.isnan(result.total)
            if bool(missing.any()):
                row = int(torch.nonzero(missing)[0, 0])
                raise TrainingError(
                    f"the reward function {self.score.names[0]!r} returned None for row {row} "
                    f"(prompt on line {prompts[row].line}, completion "
                    f"{out.texts[row][:60]!r}): PPO needs a score for every completion",
                    key=self.score.names[0],
                    hint="return a float for every completion",
                )
            return result.total.to(torch.float32)
        positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
        scores = self.score(ids, mask, positions).detach().float().cpu()
        if tuple(scores.shape) != (ids.shape[0],) or not bool(torch.isfinite(scores).all()):
            raise TrainingError(
                f"the reward model returned scores of shape {tuple(scores.shape)} (finite: "
                f"{bool(torch.isfinite(scores).all())}) for {ids.shape[0]} completions",
                key="reward_model",
                hint="give a reward model that returns one finite score per row",
            )
        return scores

    def _rollout(self) -> None:
        config = self.config
        prompts = self.shares.next()
        was_training = self.model.training
        self.model.eval()
        try:
            out = self._sample(self.model.policy, prompts, n=1, count=self.rollouts)
            ids, mask = out.sequences()  # (R, P + N)
            positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
            cmask = out.completion_mask  # (R, N)
            with torch.no_grad():
                old_logps, values = self.model.logps_and_values(
                    ids,
                    mask,
                    cmask,
                    position_ids=positions,
                    temperature=config.temperature,
                    chunk_size=config.chunk_size,
                )
                ref_logps = self._reference_logps(self.model.policy, ids, mask, cmask, positions)
                if ref_logps is None:  # kl_coef 0: no reference, no KL
                    ref_logps = old_logps
                scores = self._scores(prompts, out, ids, mask)
        finally:
            self.model.train(was_training)
        self.last_prompts, self.last_rollout = prompts, out

        stopped = torch.tensor([r == "stop" for r in out.finish_reasons], dtype=torch.bool)
        old_logps, ref_logps, values = old_logps.cpu(), ref_logps.cpu(), values.cpu()
        cmask = cmask.cpu()
        if config.missing_eos_penalty is not None:  # TRL's optional penalty
            scores = scores - config.missing_eos_penalty * (~stopped).to(scores.dtype)
        per_token = ppo_rewards(
            scores,
            old_logps,
            ref_logps,
            cmask,
            kl_coef=config.kl_coef,
            kind=config.kl_estimator,
        )
        rewards = per_token.rewards  # (R, N)
        if config.whiten_rewards:
            rewards = whiten_global(rewards, cmask, self.device, shift_mean=False)
        advantages, returns = gae(rewards, values, cmask, gamma=config.gamma, lam=config.lam)
        advantages = whiten_global(advantages, cmask, self.device)

        # The rollout's metrics, exact over all ranks (TRL's names).
        keep = cmask.to(torch.float64)
        kl_rows = gather_rows((per_token.kl.double() * keep).sum(-1), self.device)
        non_score = gather_rows(
            (-config.kl_coef * per_token.kl.double() * keep).sum(-1), self.device
        )
        all_scores = gather_rows(scores.double(), self.device)
        entropy = gather_rows((-old_logps.double() * keep).sum(-1), self.device)
        lengths = gather_rows(out.lengths.cpu(), self.device)
        all_stopped = gather_rows(stopped, self.device)
        stats = {
            "objective/kl": finite_or_zero(kl_rows.mean()),
            "objective/entropy": finite_or_zero(entropy.mean()),
            "objective/non_score_reward": finite_or_zero(non_score.mean()),
            "objective/rlhf_reward": finite_or_zero((all_scores + non_score).mean()),
            "objective/scores": finite_or_zero(all_scores.mean()),
            "val/num_eos_tokens": float(all_stopped.sum()),
        }
        stats.update(length_stats(lengths, all_stopped))
        self.rows = {
            "input_ids": ids.cpu(),
            "attention_mask": mask.cpu(),
            "position_ids": positions.cpu(),
            "completion_mask": cmask,
            "old_logps": old_logps.float(),
            "ref_logps": ref_logps.float(),
            "values": torch.where(cmask.bool(), values, 0.0).float(),
            "advantages": advantages.float(),
            "returns": returns.float(),
            "scores": scores.float(),
        }
        self.rows = {k: v.detach().contiguous() for k, v in self.rows.items()}
        self.stats = stats
        self.position = 0
        self.rollouts += 1
        self._orders = {}
        self._all_rows = None
        if self.world_size > 1 and self.per_rollout > self.grad_accum:
            self._gather_rows_on_rank0()

    def _gather_rows_on_rank0(self) -> None:
        """Rank 0 keeps every rank's rollout (its checkpoint resumes them all)."""
        self._all_rows = gather_on_rank0(self._packed(), self.rank, self.world_size)
