r"""Online data for GRPO: prompts, rollouts scored by reward functions, and their evaluation.

- [`encode_prompts()`][lego.align.rollouts.encode_prompts] turns records (``prompt`` plus any
  other columns, e.g. lego-data's ``task_rows()``) into token ids: a chat template's user
  turn and assistant header, or the plain prompt text; a prompt longer than
  ``max_prompt_length`` loses tokens from the left (counted) or is refused.
- [`completion_logprobs()`][lego.align.rollouts.completion_logprobs]: per-token
  log-probabilities of the completion tokens of ``prompt + completion`` rows under
  ``logits / temperature`` (TRL's GRPO scores the distribution it sampled from before the
  top-k / top-p filters), the log-softmax in chunks, with the per-token entropy on request.
- [`GRPOBatchSource`][lego.align.rollouts.GRPOBatchSource]: lego-train's batch source of the
  GRPO trainer. For each *generation* it takes this rank's contiguous share of the
  generation's global prompt list (`PromptShares`),
  samples ``G`` completions of each with lego-generate's ``rollout()`` (one shared prefill
  per prompt, the policy in eval mode; every row from its own seed,
  [`sample_completions()`][lego.align.rollouts.sample_completions]), decodes them, calls
  the reward functions, computes the group advantages, the reference model's log-probs
  (``beta > 0``) and the old policy's (``num_iterations > 1``), and splits the rows into
  ``grad_accum`` micro-batches, handed out ``num_iterations`` times (one optimizer step per
  pass). Its ``state_dict()`` makes resume exact: the prompt position, the generation count
  (every row's sampler is seeded from the run's seed, that count and the row's global
  place: `row_seed()`) and,
  when a checkpoint falls between two iterations of one generation, the generation's
  micro-batches themselves (every rank's, gathered on rank 0 when the generation is made).
- [`evaluate_completions()`][lego.align.rollouts.evaluate_completions]: greedy (or sampled)
  completions of held-out prompts scored by the reward functions: accuracy, mean reward,
  completion lengths. The trainer logs it as ``val_*`` metrics; it is usable alone.

Rows are prompt-major: row ``i * G + j`` is completion ``j`` of prompt ``i``, so a group never
crosses a micro-batch boundary unless ``G`` does not divide the micro-batch, and never a rank.

Under ``torchrun`` the ranks split each generation, not the run: rank ``r`` samples prompts
``[r * local, (r + 1) * local)`` of the generation's global list with the seeds one process
would use for them, and the rewards, group or batch statistics and metrics are gathered over
all ranks rank-major. So ``W`` ranks with ``grad_accum = A`` compute what one process with
``grad_accum = W * A`` computes (the same completions, advantages, micro-batches and weights,
up to float rounding); the data-parallel update sums the gradients.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lego.align.advantages import group_advantages, nanstd
from lego.align.logprobs import HeadInputs, sequence_logprobs
from lego.align.rewards import RewardFunction, RewardFunctions, RewardScores
from lego.align.tokens import resolve_pad_id
from lego.data.example_loader import ExampleLoader
from lego.data.records import Record, RecordSource, load_records, require_field
from lego.generate import LogitsProcessorList, Temperature, TopK, TopP, rollout
from lego.generate.precision import sampling_copy
from lego.generate.rollout import Rollout
from lego.peft import LoraModel
from lego.protocols import (
    CausalLM,
    ConfigError,
    DataError,
    LogitsProcessor,
    Tokenizer,
    check_choice,
    check_float,
    check_int,
)
from lego.protocols.chat import (
    ChatTemplate,
    Message,
    check_messages,
    encode_text,
    special_token_id,
)

if TYPE_CHECKING:
    from lego.align.grpo import GRPOConfig

__all__ = [
    "GRPOPrompt",
    "encode_prompts",
    "stop_and_pad_ids",
    "generation_seed",
    "hashed_seed",
    "row_seed",
    "RowSampler",
    "sample_completions",
    "PromptShares",
    "check_layout",
    "gather_on_rank0",
    "RolloutSettings",
    "RolloutSource",
    "check_context",
    "reward_inputs",
    "gather_rows",
    "length_stats",
    "finite_or_zero",
    "param_device",
    "completion_logprobs",
    "CompletionLogprobs",
    "GRPOBatchSource",
    "CompletionEvaluation",
    "evaluate_completions",
    "STAT_PREFIX",
]

STAT_PREFIX = "stat/"
"""Batch keys holding a generation's metrics (0-dim tensors), e.g. ``"stat/reward"``."""

PromptOverflow = Literal["truncate", "error"]

_SOURCE_VERSION = 2  # 2: prompts sliced from one global order, one sampler seed per row


# -- prompts ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRPOPrompt:
    """One prompt, encoded, with what the reward functions see of its record.

    Attributes:
        ids: The prompt's token ids (the generation prompt: a template's assistant header
            included), at most ``max_prompt_length``.
        prompt: The record's prompt as written (a string or messages), passed to the reward
            functions as ``prompts``.
        columns: The record's other fields except ``completion`` (``answer``, ``task``...),
            passed to the reward functions by keyword.
        line: The record's line (1-based) in its file or list.
        truncated: Whether tokens were cut from the prompt's left.
    """

    ids: tuple[int, ...]
    prompt: Any
    columns: Mapping[str, Any]
    line: int
    truncated: bool = False


def _prompt_ids(
    record: Record,
    value: object,
    tokenizer: Tokenizer,
    template: ChatTemplate | None,
    system_prompt: str | None,
    column: str,
) -> list[int]:
    if template is None:
        if not isinstance(value, str):
            raise DataError(
                f"line {record.line}: template 'none' needs a string {column!r}, got "
                f"{type(value).__name__}",
                path=record.path,
                line=record.line,
                key=column,
                hint="use a chat template (template: chatml or llama3) for messages",
            )
        return encode_text(tokenizer, value)
    messages: list[Message]
    if isinstance(value, str):
        messages = [{"role": "user", "content": value}]
    else:
        where = f"line {record.line}, field {column!r}"
        messages = check_messages(value, where=where)
    if system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return template.encode(tokenizer, messages, add_generation_prompt=True)


def encode_prompts(
    source: RecordSource,
    tokenizer: Tokenizer,
    *,
    template: ChatTemplate | None,
    max_prompt_length: int,
    overflow: PromptOverflow = "truncate",
    system_prompt: str | None = None,
    column: str = "prompt",
) -> tuple[list[GRPOPrompt], dict[str, int]]:
    """Encode the prompts of records for generation.

    With a chat template the prompt (a string: one user message; or messages) is rendered
    with the assistant header appended (``add_generation_prompt``); with ``template=None``
    the prompt string is encoded as it is (the model continues it).

    Args:
        source: Records (a ``.jsonl`` path or dictionaries), each with ``column``.
        tokenizer: Any tokenizer (holding the template's special tokens).
        template: A chat template, or None for plain text prompts.
        max_prompt_length: The most prompt tokens (>= 1).
        overflow: ``"truncate"``: keep the last ``max_prompt_length`` tokens (counted);
            ``"error"``: refuse a longer prompt.
        system_prompt: A system message for prompts without one (templates only).
        column: The field holding the prompt.

    Returns:
        The prompts and ``{"prompts", "truncated"}``.

    Raises:
        DataError: No records, a record without ``column``, an empty prompt, messages with
            ``template=None``, or (``"error"``) a prompt longer than ``max_prompt_length``,
            naming the line.

    Example:
        >>> class Chars:
        ...     special_tokens = {"<eos>": 0}
        ...     vocab_size = 30
        ...     def encode(self, text): return [ord(c) - 96 for c in text]
        ...     def decode(self, ids): return "".join(chr(i + 96) for i in ids)
        >>> rows = [{"prompt": "abcdef", "answer": "x"}, {"prompt": "ab", "answer": "y"}]
        >>> prompts, counts = encode_prompts(rows, Chars(), template=None, max_prompt_length=4)
        >>> prompts[0].ids, prompts[0].columns, counts
        ((3, 4, 5, 6), {'answer': 'x'}, {'prompts': 2, 'truncated': 1})
    """
    check_int("max_prompt_length", max_prompt_length, minimum=1)
    check_choice("prompt_overflow", overflow, ("truncate", "error"))
    records = load_records(source)
    if not records:
        raise DataError(
            "no prompt records: the data is empty",
            key=column,
            hint='give at least one record with a "prompt" field',
        )
    prompts: list[GRPOPrompt] = []
    truncated = 0
    for record in records:
        value = require_field(record, column, hint=f'give every record a "{column}"')
        ids = _prompt_ids(record, value, tokenizer, template, system_prompt, column)
        if not ids:
            raise DataError(
                f"line {record.line}: the prompt encodes to no tokens",
                path=record.path,
                line=record.line,
                key=column,
                hint="give every record a non-empty prompt",
            )
        cut = len(ids) > max_prompt_length
        if cut:
            if overflow == "error":
                raise DataError(
                    f"line {record.line}: the prompt has {len(ids)} tokens, more than "
                    f"max_prompt_length={max_prompt_length}",
                    path=record.path,
                    line=record.line,
                    key="max_prompt_length",
                    hint="raise max_prompt_length, shorten the prompt, or set "
                    "prompt_overflow: truncate (cut from the left, counted)",
                )
            ids = ids[-max_prompt_length:]
            truncated += 1
        columns = {k: v for k, v in record.data.items() if k not in (column, "completion")}
        prompts.append(
            GRPOPrompt(
                ids=tuple(ids), prompt=value, columns=columns, line=record.line, truncated=cut
            )
        )
    return prompts, {"prompts": len(prompts), "truncated": truncated}


def reward_inputs(prompts: Sequence[GRPOPrompt], n: int) -> tuple[list[Any], dict[str, list[Any]]]:
    """Each prompt and column repeated for its ``n`` completions (prompt-major).

    Args:
        prompts: The prompts of a generation.
        n: Completions per prompt.

    Returns:
        ``(prompts, columns)`` as reward functions receive them: one entry per completion.
    """
    names: dict[str, None] = {}
    for p in prompts:
        names.update(dict.fromkeys(p.columns))
    texts = [p.prompt for p in prompts for _ in range(n)]
    columns = {k: [p.columns.get(k) for p in prompts for _ in range(n)] for k in names}
    return texts, columns


def stop_and_pad_ids(
    tokenizer: Tokenizer,
    *,
    template: ChatTemplate | None,
    eos_token: str = "<|endoftext|>",
    pad_token: str | None = None,
) -> tuple[tuple[int, ...], int]:
    """The ids that finish a completion, and the padding id, for generation and batches.

    A completion stops at the template's end-of-turn token (what a chat model was
    fine-tuned to end with) and at the tokenizer's ``eos_token``; padding must be neither.

    Args:
        tokenizer: Any tokenizer.
        template: The chat template, or None for plain prompts (EOS only).
        eos_token: The end-of-sequence special token.
        pad_token: The padding special token, or None to look for the tokenizer's own.

    Returns:
        ``(stop_ids, pad_id)``: the end-of-turn id first when there is one.

    Raises:
        CompatibilityError: The tokenizer lacks ``eos_token`` or the template's tokens.
        ConfigError: No usable pad token (the message names one to use).

    Example:
        >>> class Tok:
        ...     special_tokens = {"<|endoftext|>": 0, "<|im_end|>": 1, "<|pad|>": 2}
        >>> from lego.protocols.chat import get_chat_template
        >>> stop_and_pad_ids(Tok(), template=get_chat_template("chatml"))
        ((1, 0), 2)
    """
    eos_id = special_token_id(tokenizer, eos_token, needed_by="eos_token")
    stops = [eos_id]
    if template is not None:
        turn = special_token_id(
            tokenizer, template.end_of_turn, needed_by=f"the {template.name} template"
        )
        stops = list(dict.fromkeys([turn, eos_id]))
    return tuple(stops), resolve_pad_id(tokenizer, pad_token, avoid=stops)


# -- log-probabilities ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompletionLogprobs:
    """What [`completion_logprobs()`][lego.align.rollouts.completion_logprobs] returns.

    Attributes:
        logps: ``(B, N)`` log-probability of each completion token, 0 where masked.
        entropy: ``(B, N)`` entropy of each completion token's distribution (detached, 0
            where masked), or None when not asked for.
    """

    logps: Tensor
    entropy: Tensor | None


def completion_logprobs(
    model: CausalLM | nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    position_ids: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 128,
    entropy: bool = False,
) -> CompletionLogprobs:
    r"""Per-token log-probabilities of the completion part of ``prompt + completion`` rows.

    ``\log\mathrm{softmax}(z_{t-1} / \tau)[x_t]`` for every completion token ``x_t`` with
    ``z`` the model's logits and ``\tau`` the sampling temperature (TRL's GRPO divides the
    logits by the temperature before its log-softmax), computed chunk by chunk by
    [`sequence_logprobs()`][lego.align.logprobs.sequence_logprobs] (no full-vocabulary
    float32 tensor). The completion is the last ``N`` columns of the rows.

    Args:
        model: Any ``CausalLM`` (called once, with ``attention_mask`` and ``position_ids``),
            or a function returning logits or ``HeadInputs`` (the logits never built).
        input_ids: ``(B, P + N)`` prompt (left-padded) followed by the completion.
        attention_mask: ``(B, P + N)``, 1 for real tokens.
        completion_mask: ``(B, N)``, 1 for the completion tokens to score.
        position_ids: ``(B, P + N)`` passed to the model, or None.
        temperature: ``\tau > 0``.
        chunk_size: Positions per chunk of the log-softmax.
        entropy: Also return the per-token entropy of ``softmax(z / \tau)`` (no gradient;
            not for a model that returns ``HeadInputs``).

    Returns:
        A [`CompletionLogprobs`][lego.align.rollouts.CompletionLogprobs].

    Raises:
        ConfigError: Mismatched shapes or ``temperature <= 0``.

    Example:
        >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
        >>> out = completion_logprobs(lambda ids, **kw: logits, torch.tensor([[1, 2, 3]]),
        ...                           torch.ones(1, 3), torch.tensor([[1, 1]]), entropy=True)
        >>> out.logps, out.entropy
        (tensor([[-1.3863, -1.3863]]), tensor([[1.3863, 1.3863]]))
    """
    tau = check_float("temperature", temperature, low=0.0, low_open=True)
    if input_ids.dim() != 2 or completion_mask.dim() != 2:
        raise ConfigError(
            f"input_ids {tuple(input_ids.shape)} and completion_mask "
            f"{tuple(completion_mask.shape)} must be (B, P + N) and (B, N)",
            key="completion_mask",
            tensor="completion_mask",
        )
    b, width = int(input_ids.shape[0]), int(input_ids.shape[1])
    n = int(completion_mask.shape[1])
    if int(completion_mask.shape[0]) != b or n >= width:
        raise ConfigError(
            f"completion_mask has shape {tuple(completion_mask.shape)} for input_ids of "
            f"shape {tuple(input_ids.shape)}: expected ({b}, N) with N < {width}",
            key="completion_mask",
            tensor="completion_mask",
        )
    p = width - n
    kept: list[Tensor] = []

    def logits_fn(ids: Tensor, **kwargs: Any) -> Tensor | HeadInputs:
        out = model(ids, **kwargs)  # (B, P + N, V) logits, or the head's inputs
        if isinstance(out, HeadInputs):  # (h W^T + b) / tau = (h / tau) W^T + b / tau
            if tau != 1.0:
                bias = None if out.bias is None else out.bias / tau
                out = HeadInputs(out.hidden / tau, out.weight, bias)
            return out
        if tau != 1.0:
            out = out / tau
        if entropy:
            kept.append(out)
        return out

    full_mask = torch.cat(
        [
            torch.zeros((b, p), dtype=completion_mask.dtype, device=completion_mask.device),
            completion_mask,
        ],
        dim=1,
    )  # (B, P + N)
    lp = sequence_logprobs(
        logits_fn,
        input_ids,
        attention_mask,
        full_mask,
        position_ids=position_ids,
        chunk_size=chunk_size,
    )
    logps = lp.token_logps[:, p:]  # (B, N)
    ent: Tensor | None = None
    if entropy and kept:  # (a model returning HeadInputs has no logits to take it from)
        with torch.no_grad():
            logits = kept[0].detach()
            keep = completion_mask.bool()
            ent = torch.zeros((b, n), dtype=logps.dtype, device=logps.device)
            for start in range(0, n, chunk_size):
                end = min(start + chunk_size, n)
                z = logits[:, p - 1 + start : p - 1 + end].to(logps.dtype)  # (B, c, V)
                log_z = torch.log_softmax(z, dim=-1)
                h = -(log_z.exp() * log_z).sum(dim=-1)  # (B, c)
                ent[:, start:end] = torch.where(keep[:, start:end], h, 0.0)
    return CompletionLogprobs(logps=logps, entropy=ent)


# -- distributed helpers --------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(x: Tensor, device: torch.device) -> Tensor:
    """Concatenate ``x`` (the same shape on every rank) over the ranks, rank-major.

    Args:
        x: ``(R, ...)`` on this rank.
        device: The device the collective runs on.

    Returns:
        ``(world * R, ...)`` on ``x``'s device (``x`` itself in one process).
    """
    _, world = _world()
    if world == 1:
        return x
    moved = x.to(device)
    parts = [torch.empty_like(moved) for _ in range(world)]
    dist.all_gather(parts, moved)
    return torch.cat(parts, dim=0).to(x.device)


def check_context(
    model: nn.Module, prompts: Sequence[GRPOPrompt], max_completion_length: int
) -> None:
    """Refuse, before training, a prompt that cannot be completed inside the model's context.

    Args:
        model: The policy (its ``config.context_length`` is read when it has one).
        prompts: The encoded prompts.
        max_completion_length: New tokens per completion at most.

    Raises:
        ConfigError: The longest prompt plus ``max_completion_length`` exceeds the context
            (naming its line and what to lower).
    """
    context = getattr(getattr(model, "config", None), "context_length", None)
    if not isinstance(context, int) or not prompts:
        return
    longest = max(prompts, key=lambda p: len(p.ids))
    need = len(longest.ids) + max_completion_length
    if need > context:
        raise ConfigError(
            f"the prompt on line {longest.line} ({len(longest.ids)} tokens) plus "
            f"max_completion_length={max_completion_length} needs {need} positions, "
            f"more than the model's context of {context}",
            key="max_prompt_length",
            hint=f"lower max_prompt_length (prompts are cut from the left) or "
            f"max_completion_length so that they add up to at most {context}",
        )


def hashed_seed(*parts: object) -> int:
    """A seed from a hash of ``parts`` (SHA-256: seeds of different parts do not collide).

    Args:
        parts: What the seed stands for (a name, the run's seed, counters).

    Returns:
        A seed in ``[0, 2**63)``.

    Example:
        >>> hashed_seed("x", 0, 1) != hashed_seed("x", 1, 0)
        True
    """
    text = "/".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def generation_seed(seed: int, rank: int, generation: int) -> int:
    """The sampler seed of one batch of a sampled evaluation (a hash: streams do not overlap).

    Args:
        seed: The run's data seed.
        rank: The rank (-1 for the held-out evaluation).
        generation: The generation's (or evaluation batch's) number (0-based).

    Returns:
        A seed in ``[0, 2**63)``.

    Example:
        >>> generation_seed(0, 0, 0) != generation_seed(0, 0, 1)
        True
    """
    return hashed_seed("lego-align-grpo", seed, rank, generation)


def row_seed(seed: int, generation: int, prompt: int, sample: int) -> int:
    """The sampler seed of one completion of a training generation, whatever the ranks.

    The seed depends on the prompt's place in the generation's global prompt list (over all
    ranks), not on the rank that samples it: the union of the ranks' completions is one
    process's.

    Args:
        seed: The run's seed.
        generation: The generation's (GRPO) or rollout's (PPO) number, 0-based.
        prompt: The prompt's index in the generation's global prompt list.
        sample: The completion's index among the prompt's ``n``.

    Returns:
        A seed in ``[0, 2**63)``.

    Example:
        >>> row_seed(0, 0, 1, 0) != row_seed(0, 0, 0, 1)
        True
    """
    return hashed_seed("lego-align-rollout", seed, generation, prompt, sample)


class RowSampler:
    r"""A logits processor that samples every row from its own generator (Gumbel-max).

    ``\arg\max_v (s_v - \log E_v)`` with ``E_v \sim \mathrm{Exp}(1)`` drawn from the row's
    own generator is a sample of ``softmax(s)`` (the Gumbel-max trick), so a row's tokens
    depend on its seed alone, never on the other rows of the batch: decode with greedy
    argmax over the scores this returns. The warpers (temperature, top-k, top-p) apply
    first, after the engine's penalties.

    Args:
        seeds: One seed per row (prompt-major, as ``rollout()`` lays the rows out).
        temperature: Sampling temperature (> 0).
        top_k: Top-k (0: off).
        top_p: Nucleus mass in ``(0, 1]``.
        device: Where the generators draw (the model's device).

    Raises:
        ConfigError: Called on a batch of another number of rows.

    Example:
        >>> sampler = RowSampler([1, 2], temperature=1.0)
        >>> scores = sampler(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 5))
        >>> scores.shape, bool(torch.isfinite(scores).all())
        (torch.Size([2, 5]), True)
    """

    def __init__(
        self,
        seeds: Sequence[int],
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        device: torch.device | None = None,
    ) -> None:
        self.generators: list[torch.Generator] = []
        for s in seeds:
            generator = torch.Generator(device=device if device is not None else "cpu")
            generator.manual_seed(s)
            self.generators.append(generator)
        warpers: list[LogitsProcessor] = []
        if temperature != 1.0:
            warpers.append(Temperature(temperature=temperature))
        if top_k:
            warpers.append(TopK(top_k=top_k))
        if top_p < 1.0:
            warpers.append(TopP(top_p=top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """The warped scores plus each row's Gumbel noise, ``(B, V)``; argmax samples."""
        if int(scores.shape[0]) != len(self.generators):
            raise ConfigError(
                f"RowSampler has {len(self.generators)} row seeds, got a batch of "
                f"{int(scores.shape[0])} rows",
                key="seeds",
                hint="give one seed per row (prompts x n)",
            )
        scores = self.warpers(input_ids, scores.float())  # (B, V)
        noise = torch.empty_like(scores)  # (B, V)
        for row, generator in enumerate(self.generators):
            noise[row].exponential_(generator=generator)
        tiny = torch.finfo(noise.dtype).tiny
        return scores - noise.clamp_min_(tiny).log_()  # -log(Exp(1)) is Gumbel(0, 1)


def sample_completions(
    policy: nn.Module,
    prompts: Sequence[GRPOPrompt],
    *,
    n: int,
    seed: int,
    generation: int,
    first: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    stop_ids: Sequence[int],
    pad_id: int,
    tokenizer: Tokenizer,
    repetition_penalty: float = 1.0,
) -> Rollout:
    """``n`` sampled completions of each prompt, each row from its own ``row_seed``.

    One ``rollout()`` call (one shared prefill per prompt, raw log-probs); the row of
    completion ``j`` of prompt ``i`` samples with
    `row_seed(seed, generation, first + i, j)` through a
    [`RowSampler`][lego.align.rollouts.RowSampler], so splitting the prompts over ranks
    (each rank passing its share and the share's ``first`` global index) gives the rows that
    one process sampling them all gives.

    Args:
        policy: The policy (put in eval mode by ``rollout()``).
        prompts: This rank's prompts.
        n: Completions per prompt.
        seed: The run's seed.
        generation: The generation's (or rollout's) number.
        first: The global index of ``prompts[0]`` in the generation's prompt list.
        max_new_tokens: The longest completion.
        temperature: Sampling temperature (> 0).
        top_p: Nucleus mass.
        top_k: Top-k (0: off).
        stop_ids: Ids that finish a completion.
        pad_id: The padding id.
        tokenizer: Decodes the completions (``Rollout.texts``).
        repetition_penalty: CTRL's penalty (1.0: off).

    Returns:
        The ``Rollout`` (prompt-major rows).
    """
    seeds = [
        row_seed(seed, generation, first + i, j) for i in range(len(prompts)) for j in range(n)
    ]
    sampler = RowSampler(
        seeds, temperature=temperature, top_k=top_k, top_p=top_p, device=param_device(policy)
    )
    return rollout(
        policy,  # type: ignore[arg-type]
        [list(p.ids) for p in prompts],
        n=n,
        logprobs="raw",
        max_new_tokens=max_new_tokens,
        do_sample=False,  # the sampler's noise is in the scores: argmax draws the sample
        repetition_penalty=repetition_penalty,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        tokenizer=tokenizer,
        logits_processor=[sampler],
    )


class PromptShares:
    """Each step's prompts over all ranks in one seeded order; this rank takes its slice.

    The step's ``per_step`` prompts come from one lego-data ``ExampleLoader`` that every rank
    runs alike (seeded, shuffled per epoch); rank ``r`` takes the contiguous slice
    ``[r * local, (r + 1) * local)`` with ``local = per_step / world_size``. The ranks'
    slices, concatenated rank-major, are the list one process takes, so global prompt
    indices (``first + i``) and rank-major gathers are the same whatever the world size.

    Args:
        prompts: All training prompts (the same list on every rank).
        per_step: Prompts per step over all ranks (``prompts_per_step``).
        rank: This process's rank.
        world_size: The number of ranks.
        shuffle: Visit the prompts in a seeded random order each epoch.
        seed: The order's seed.
        unit: What one step of prompts feeds, for messages (``"step"``, ``"rollout"``).

    Attributes:
        loader: The ``ExampleLoader`` of global steps (its state is the prompt position).
        local: Prompts per step on this rank.
        first: The global index of this rank's first prompt in a step.

    Raises:
        ConfigError: ``per_step`` not divisible by the world size.
        DataError: Fewer prompts than one step needs.

    Example:
        >>> shares = PromptShares(list("abcdefgh"), per_step=4, rank=1, world_size=2,
        ...                       shuffle=False, seed=0)
        >>> shares.next(), shares.first
        (['c', 'd'], 2)
        >>> shares.close()
    """

    def __init__(
        self,
        prompts: Sequence[Any],
        *,
        per_step: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        unit: str = "step",
    ) -> None:
        if per_step % world_size:
            raise ConfigError(
                f"prompts_per_step={per_step} does not split over {world_size} ranks",
                key="prompts_per_step",
                hint=f"use a multiple of {world_size}",
            )
        if len(prompts) < per_step:
            raise DataError(
                f"{len(prompts)} training prompts cannot fill one {unit} of "
                f"prompts_per_step={per_step}",
                key="prompts_per_step",
                hint="lower prompts_per_step or give more prompts",
            )
        self.local = per_step // world_size
        self.first = rank * self.local
        self.loader: ExampleLoader[Any, list[Any]] = ExampleLoader(
            list(prompts),
            batch_size=per_step,
            collate_fn=list,
            shuffle=shuffle,
            seed=seed,
            repeat=True,
            drop_last=True,
        )
        self._iter: Iterator[list[Any]] | None = None

    def next(self) -> list[Any]:
        """This rank's prompts of the next step."""
        if self._iter is None:
            self._iter = iter(self.loader)
        return next(self._iter)[self.first : self.first + self.local]

    def state_dict(self) -> dict[str, Any]:
        """The loader's position."""
        return self.loader.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        """Continue from ``state_dict()``'s position."""
        self.loader.load_state_dict(dict(state))
        self._iter = None

    def close(self) -> None:
        """Stop the loader's thread."""
        self.loader.close()


def check_layout(state: Mapping[str, Any], *, name: str, version: int, world_size: int) -> None:
    """Refuse a saved data position of another format version or number of ranks.

    Args:
        state: A batch source's saved state (``version``, ``world_size``).
        name: The source, for the message (``"GRPO"``, ``"PPO"``).
        version: This code's format version.
        world_size: This run's number of ranks.

    Raises:
        DataError: The state was saved by another layout.
    """
    if state.get("version") != version or state.get("world_size") != world_size:
        raise DataError(
            f"the {name} data position was saved by another layout (version "
            f"{state.get('version')}, {state.get('world_size')} ranks; this run: version "
            f"{version}, {world_size} ranks)",
            key="data.pt",
            hint="resume with the same number of ranks, or start a fresh run",
        )


def gather_on_rank0(value: Any, rank: int, world_size: int) -> dict[str, Any] | None:
    """Every rank's ``value`` on rank 0, as ``{"rank<r>": value}`` (None on the others).

    Args:
        value: This rank's picklable value (a rollout's tensors).
        rank: This process's rank.
        world_size: The number of ranks (a collective: every rank calls it).

    Returns:
        The values by rank on rank 0, else None.
    """
    gathered: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    if gathered is None:
        return None
    return {f"rank{r}": v for r, v in enumerate(gathered)}


# -- the batch source -----------------------------------------------------------------------------


def length_stats(lengths: Tensor, stopped: Tensor) -> dict[str, float]:
    """TRL's ``completions/*`` metrics from completion lengths and finish flags.

    Args:
        lengths: ``(R,)`` completion lengths in tokens.
        stopped: ``(R,)`` bool: the completion ended on a stop token (not on the length cap).

    Returns:
        ``completions/mean_length``, ``min_length``, ``max_length``, ``clipped_ratio`` and
        the same three for the terminated completions.
    """
    lengths = lengths.double()
    terminated = lengths[stopped]
    if terminated.numel() == 0:
        terminated = torch.zeros(1, dtype=torch.float64)  # as TRL: no finished completion
    return {
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float((~stopped).double().mean()),
        "completions/mean_terminated_length": float(terminated.mean()),
        "completions/min_terminated_length": float(terminated.min()),
        "completions/max_terminated_length": float(terminated.max()),
    }


class RolloutSettings(Protocol):
    """The settings a [`RolloutSource`][lego.align.rollouts.RolloutSource] reads.

    ``GRPOConfig`` and ``PPOConfig`` have them all.
    """

    @property
    def prompts_per_step(self) -> int:
        """Prompts per step over all ranks."""

    @property
    def shuffle(self) -> bool:
        """Visit the prompts in a seeded random order each epoch."""

    @property
    def seed(self) -> int:
        """The prompt order's and the sampler's seed."""

    @property
    def max_completion_length(self) -> int:
        """The most generated tokens per completion."""

    @property
    def temperature(self) -> float:
        """The sampling temperature (the log-probs use it too)."""

    @property
    def top_p(self) -> float:
        """Nucleus mass."""

    @property
    def top_k(self) -> int:
        """Top-k (0: off)."""

    @property
    def chunk_size(self) -> int:
        """Positions per chunk of the log-softmax."""


class RolloutSource:
    """What GRPO's and PPO's batch sources share: prompts, sampling, the reference, the state.

    Holds the run's settings, this rank's `PromptShares`,
    and samples completions with one seed per row
    ([`sample_completions()`][lego.align.rollouts.sample_completions]); the reference's
    per-token log-probs come from the frozen copy or the disabled adapter.

    Args:
        prompts: All training prompts (every rank gets the same list and takes its share).
        tokenizer: Decodes the completions.
        config: The run's settings.
        grad_accum: Micro-batches per optimizer step (lego-train's ``grad_accum``).
        pad_id: The padding id.
        stop_ids: The ids that finish a completion.
        rank: This process's rank.
        world_size: The number of ranks.
        reference: The frozen reference model, or None.
        adapter: The policy's ``LoraModel`` disabled for the reference, or None.
        device: Where the collectives run (the Trainer's device).
        unit: What one step of prompts feeds, for messages (``"step"``, ``"rollout"``).

    Raises:
        ConfigError: ``prompts_per_step`` not divisible by the world size.
        DataError: Fewer prompts than one step needs.
    """

    def __init__(
        self,
        *,
        prompts: Sequence[GRPOPrompt],
        tokenizer: Tokenizer,
        config: RolloutSettings,
        grad_accum: int,
        pad_id: int,
        stop_ids: Sequence[int],
        rank: int = 0,
        world_size: int = 1,
        reference: nn.Module | None = None,
        adapter: LoraModel | None = None,
        device: torch.device | None = None,
        unit: str = "step",
    ) -> None:
        check_int("grad_accum", grad_accum, minimum=1)
        self.shares = PromptShares(
            prompts,
            per_step=config.prompts_per_step,
            rank=rank,
            world_size=world_size,
            shuffle=config.shuffle,
            seed=config.seed,
            unit=unit,
        )
        self.settings = config
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.grad_accum = grad_accum
        self.pad_id = pad_id
        self.stop_ids = tuple(stop_ids)
        self.rank = rank
        self.world_size = world_size
        self.reference = reference
        self.adapter = adapter
        self.device = device if device is not None else torch.device("cpu")
        self.loader = self.shares.loader
        self.position = 0
        self.last_prompts: list[GRPOPrompt] = []
        self.last_rollout: Rollout | None = None

    def close(self) -> None:
        """Stop the prompt loader's thread."""
        self.shares.close()

    def _sample(
        self,
        policy: nn.Module,
        prompts: Sequence[GRPOPrompt],
        *,
        n: int,
        count: int,
        repetition_penalty: float = 1.0,
    ) -> Rollout:
        """``n`` completions of this rank's ``prompts`` of generation (rollout) ``count``."""
        config = self.settings
        return sample_completions(
            policy,
            prompts,
            n=n,
            seed=config.seed,
            generation=count,
            first=self.shares.first,
            max_new_tokens=config.max_completion_length,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            repetition_penalty=repetition_penalty,
            stop_ids=self.stop_ids,
            pad_id=self.pad_id,
            tokenizer=self.tokenizer,
        )

    def _reference_logps(
        self, policy: nn.Module, ids: Tensor, mask: Tensor, cmask: Tensor, positions: Tensor
    ) -> Tensor | None:
        """The reference's per-token log-probs ``(B, N)``, or None without a reference."""
        kwargs: dict[str, Any] = {
            "position_ids": positions,
            "temperature": self.settings.temperature,
            "chunk_size": self.settings.chunk_size,
        }
        if self.reference is not None:
            return completion_logprobs(self.reference, ids, mask, cmask, **kwargs).logps
        if self.adapter is not None:
            with self.adapter.disabled():
                return completion_logprobs(policy, ids, mask, cmask, **kwargs).logps
        return None


class GRPOBatchSource(RolloutSource):
    """GRPO's training batches: rollouts, rewards and advantages, reused ``num_iterations`` times.

    A lego-protocols ``BatchSource``: iterating yields micro-batches forever; the Trainer takes
    ``grad_accum`` of them per optimizer step, so one generation serves ``num_iterations``
    steps. Each micro-batch holds ``input_ids``, ``attention_mask`` and ``position_ids``
    ``(M, P + N)``, ``completion_mask`` ``(M, N)``, ``advantages`` ``(M,)``, ``old_logps``
    ``(M, N)`` when ``num_iterations > 1``, ``ref_logps`` ``(M, N)`` when ``beta > 0``, and the
    generation's metrics under ``stat/<name>`` (0-dim, the same in every micro-batch of the
    generation and on every rank).

    Args:
        prompts: All training prompts (every rank gets the same list and takes its share).
        policy: The model being trained (unwrapped: not the DDP module).
        tokenizer: Decodes the completions.
        rewards: The reward functions.
        config: The GRPO settings.
        grad_accum: Micro-batches per optimizer step (lego-train's ``grad_accum``).
        pad_id: Fills the prompts' left padding and the completions' right padding.
        stop_ids: The ids that finish a completion.
        rank: This process's rank; ``world_size`` the number of ranks.
        world_size: The number of ranks.
        reference: The frozen reference model (``beta > 0``, ``reference: copy``), or None.
        adapter: The policy's ``LoraModel`` whose adapter is disabled for the reference
            (``reference: adapter``), or None.
        device: Where the collectives run (the Trainer's device).

    Attributes:
        shares: The `PromptShares`: every rank walks the
            same seeded prompt order and takes ``prompts_per_step / world_size`` of each
            generation's prompts; ``loader`` is its lego-data ``ExampleLoader``.
        generation: Generations made so far (the rows' sampler seeds are
            `row_seed(seed, generation, prompt, j)`).
        position: Micro-batches of the current generation handed out.
        buffer: The current generation's ``grad_accum`` micro-batches (on the CPU).
        last_prompts: The prompts of the last generation; ``last_rollout`` its
            ``Rollout`` and ``last_scores`` its ``RewardScores`` (for inspection).

    Raises:
        ConfigError: ``prompts_per_step`` not divisible by the world size, or this rank's
            rows not divisible by ``grad_accum``.
        DataError: Fewer prompts than one step needs.
    """

    def __init__(
        self,
        *,
        prompts: Sequence[GRPOPrompt],
        policy: nn.Module,
        tokenizer: Tokenizer,
        rewards: RewardFunctions,
        config: GRPOConfig,
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
        )
        local = self.shares.local
        rows = local * config.num_generations
        if rows % grad_accum:
            self.close()
            raise ConfigError(
                f"each rank generates {local} prompts x {config.num_generations} completions "
                f"= {rows} rows per step, which do not split into grad_accum={grad_accum} "
                "equal micro-batches",
                key="grad_accum",
                hint="choose prompts_per_step, num_generations and grad_accum so that "
                "prompts_per_step / ranks * num_generations is a multiple of grad_accum",
            )
        self.policy = policy
        self.rewards = rewards
        self.config = config
        # The sampling copy (bf16 where it decodes faster: config.rollout_dtype), or None.
        self.sampler = sampling_copy(policy, config.rollout_dtype)
        self.generation = 0
        self.buffer: list[dict[str, Tensor]] = []
        self._all_buffers: dict[str, list[dict[str, Tensor]]] | None = None
        self.last_scores: RewardScores | None = None

    @property
    def per_generation(self) -> int:
        """Micro-batches handed out per generation: ``grad_accum * num_iterations``."""
        return self.grad_accum * self.config.num_iterations

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        """Yield micro-batches forever (a new generation whenever the last one is used up)."""
        while True:
            if not self.buffer or self.position >= self.per_generation:
                self._generate()
            batch = self.buffer[self.position % self.grad_accum]
            self.position += 1
            yield batch

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position: prompts, generation count, and the unfinished generation's batches.

        Returns:
            ``{"version", "prompts", "generation", "position", "buffers"}`` (tensors, ints and
            strings: loads with ``torch.load(weights_only=True)``); ``buffers`` maps
            ``"rank<r>"`` to rank ``r``'s micro-batches when a generation is partly used.
        """
        unfinished = bool(self.buffer) and 0 < self.position < self.per_generation
        buffers: dict[str, list[dict[str, Tensor]]] = {}
        if unfinished:
            if self._all_buffers is not None:
                buffers = self._all_buffers
            else:
                buffers = {f"rank{self.rank}": self.buffer}
        return {
            "version": _SOURCE_VERSION,
            "prompts": self.shares.state_dict(),
            "generation": self.generation,
            "position": self.position if unfinished else 0,
            "buffers": buffers,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        """Continue from a saved position (see ``state_dict``).

        Args:
            state: From ``state_dict()`` (rank 0's, which holds every rank's buffer).

        Raises:
            DataError: A state from another layout (version, world size) or without this
                rank's unfinished generation.
        """
        check_layout(state, name="GRPO", version=_SOURCE_VERSION, world_size=self.world_size)
        self.shares.load_state_dict(state["prompts"])
        self.generation = int(state["generation"])
        self.position = int(state["position"])
        buffers = state.get("buffers") or {}
        self.buffer = []
        self._all_buffers = None
        if self.position > 0:
            mine = buffers.get(f"rank{self.rank}")
            if mine is None:
                raise DataError(
                    f"the GRPO data position has no saved generation for rank {self.rank}",
                    key="data.pt",
                    hint="resume with the same number of ranks, or start a fresh run",
                )
            if len(mine) != self.grad_accum or self.position > self.per_generation:
                raise DataError(
                    f"the saved generation has {len(mine)} micro-batches at position "
                    f"{self.position}, but this run uses grad_accum={self.grad_accum} and "
                    f"num_iterations={self.config.num_iterations}",
                    key="grad_accum",
                    hint="resume with the run's grad_accum and num_iterations",
                )
            self.buffer = [dict(b) for b in mine]
            if self.world_size > 1:
                self._all_buffers = {k: [dict(b) for b in v] for k, v in buffers.items()}

    # -- one generation -------------------------------------------------------------------

    def _generate(self) -> None:
        config = self.config
        g = config.num_generations
        prompts = self.shares.next()
        out = self._sample(
            self.policy if self.sampler is None else self.sampler.refresh(),
            prompts,
            n=g,
            count=self.generation,
            repetition_penalty=config.repetition_penalty,
        )
        assert out.texts is not None
        texts, columns = reward_inputs(prompts, g)
        scores = self.rewards(texts, list(out.texts), **columns)
        self.last_prompts, self.last_rollout, self.last_scores = prompts, out, scores

        # Every statistic over all ranks: a group lives on one rank, the batch's std does not.
        table = gather_rows(scores.per_function, self.device)  # (R_all, F)
        weights = torch.tensor(self.rewards.weights, dtype=torch.float32)
        total = (table * weights).nansum(dim=1)
        total[torch.isnan(table).all(dim=1)] = float("nan")
        adv = group_advantages(total, g, scale=config.scale_rewards)
        rows = out.num_rows
        mine = slice(self.rank * rows, (self.rank + 1) * rows)
        advantages = adv.advantages[mine].to(torch.float32)  # (R,)
        lengths = gather_rows(out.lengths.cpu(), self.device)
        stopped = gather_rows(
            torch.tensor([r == "stop" for r in out.finish_reasons], dtype=torch.bool), self.device
        )
        stats: dict[str, float] = {}
        for column, name in enumerate(self.rewards.names):
            stats[f"rewards/{name}/mean"] = finite_or_zero(torch.nanmean(table[:, column]))
            stats[f"rewards/{name}/std"] = finite_or_zero(nanstd(table[:, column]))
        stats["reward"] = finite_or_zero(adv.metrics["reward"])
        stats["reward_std"] = finite_or_zero(adv.metrics["reward_std"])
        stats["frac_reward_zero_std"] = float(adv.metrics["frac_reward_zero_std"])
        stats.update(length_stats(lengths, stopped))

        ids, mask = out.sequences()  # (R, P + N)
        positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
        completion_mask = out.completion_mask  # (R, N)
        size = rows // self.grad_accum
        batches: list[dict[str, Tensor]] = []
        for start in range(0, rows, size):
            part = slice(start, start + size)
            batch = {
                "input_ids": ids[part],
                "attention_mask": mask[part],
                "position_ids": positions[part],
                "completion_mask": completion_mask[part],
                "advantages": advantages[part].to(ids.device),
            }
            batch.update(self._extra_logps(batch))
            batch = {k: v.detach().cpu().contiguous() for k, v in batch.items()}
            for name, value in stats.items():
                batch[STAT_PREFIX + name] = torch.tensor(value, dtype=torch.float32)
            batches.append(batch)
        self.buffer = batches
        self.position = 0
        self.generation += 1
        self._all_buffers = None
        if config.num_iterations > 1 and self.world_size > 1:
            self._gather_buffers()

    def _extra_logps(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The old policy's and the reference's per-token log-probs of one micro-batch."""
        config = self.config
        extra: dict[str, Tensor] = {}
        args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        kwargs: dict[str, Any] = {
            "position_ids": batch["position_ids"],
            "temperature": config.temperature,
            "chunk_size": config.chunk_size,
        }
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad():
                if config.num_iterations > 1:
                    extra["old_logps"] = completion_logprobs(self.policy, *args, **kwargs).logps
                if config.beta > 0:
                    ref = self._reference_logps(self.policy, *args, batch["position_ids"])
                    if ref is None:
                        raise ConfigError(
                            f"beta={config.beta} needs a reference model, and there is none",
                            key="reference",
                            hint="use reference: copy (full fine-tuning) or adapter (LoRA)",
                        )
                    extra["ref_logps"] = ref
        finally:
            self.policy.train(was_training)
        return extra

    def _gather_buffers(self) -> None:
        """Rank 0 keeps every rank's micro-batches (its checkpoint resumes them all)."""
        self._all_buffers = gather_on_rank0(self.buffer, self.rank, self.world_size)


def finite_or_zero(value: Tensor) -> float:
    """A 0-dim tensor as a float; NaN (nothing scored) becomes 0 so metrics stay finite.

    Args:
        value: A 0-dim tensor.

    Returns:
        Its value, or 0.0 when it is not finite.
    """
    out = float(value)
    return out if math.isfinite(out) else 0.0


def param_device(model: object) -> torch.device:
    """The first parameter's device (the CPU for a model without parameters).

    Args:
        model: Any object; only an ``nn.Module``'s parameters are looked at.

    Returns:
        The device.
    """
    if isinstance(model, nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


# -- evaluation -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompletionEvaluation:
    """What [`evaluate_completions()`][lego.align.rollouts.evaluate_completions] returns.

    Attributes:
        metrics: ``accuracy`` (the fraction of completions whose accuracy function scored at
            least the threshold), ``reward`` (mean weighted reward), ``rewards/<name>/mean``
            per function, ``completions/mean_length`` and ``completions/clipped_ratio``
            (finished by length), ``completions`` (how many).
        completions: The decoded completions, prompt-major (``n`` per prompt).
        rewards: ``(R,)`` the weighted reward of each completion (NaN: nothing scored it).
        sums: The additive totals behind ``metrics`` (for reductions over ranks).
    """

    metrics: Mapping[str, float]
    completions: tuple[str, ...]
    rewards: Tensor
    sums: Mapping[str, float]


def _eval_metrics(sums: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    count = max(sums["completions"], 1.0)
    metrics = {
        "accuracy": sums["correct"] / max(sums["accuracy_scored"], 1.0),
        "reward": sums["reward_sum"] / max(sums["reward_scored"], 1.0),
        "completions/mean_length": sums["length_sum"] / count,
        "completions/clipped_ratio": sums["clipped"] / count,
        "completions": sums["completions"],
    }
    for name in names:
        metrics[f"rewards/{name}/mean"] = sums[f"{name}/sum"] / max(sums[f"{name}/scored"], 1.0)
    return metrics


def score_prompts(
    model: CausalLM | nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[GRPOPrompt],
    rewards: RewardFunctions,
    *,
    stop_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    n: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    accuracy_reward: str | None = None,
    accuracy_threshold: float = 1.0,
) -> CompletionEvaluation:
    """[`evaluate_completions()`][lego.align.rollouts.evaluate_completions] on encoded prompts.

    Args:
        model: The policy.
        tokenizer: Decodes the completions.
        prompts: From [`encode_prompts()`][lego.align.rollouts.encode_prompts].
        rewards: The reward functions.
        stop_ids: Ids that finish a completion.
        pad_id: The padding id.
        max_new_tokens: The longest completion.
        greedy: Greedy decoding (else sampled with ``temperature``, ``top_p``, ``top_k``).
        temperature: Sampling temperature.
        top_p: Nucleus mass.
        top_k: Top-k (0: off).
        n: Completions per prompt.
        batch_size: Prompts per ``rollout()`` call.
        seed: The sampling seed (each batch seeded from it).
        accuracy_reward: The reward function whose score decides correctness (None: the
            first).
        accuracy_threshold: A completion is correct when that score is at least this.

    Returns:
        The [`CompletionEvaluation`][lego.align.rollouts.CompletionEvaluation].

    Raises:
        ConfigError: An unknown ``accuracy_reward``, bad sizes.
    """
    check_int("n", n, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    names = rewards.names
    which = names[0] if accuracy_reward is None else accuracy_reward
    if which not in names:
        raise ConfigError(
            f"accuracy_reward {which!r} is none of the reward functions {list(names)}",
            key="accuracy_reward",
            hint="name one of the reward functions (None: the first)",
        )
    column = names.index(which)
    sums: dict[str, float] = {
        "correct": 0.0,
        "accuracy_scored": 0.0,
        "reward_sum": 0.0,
        "reward_scored": 0.0,
        "length_sum": 0.0,
        "clipped": 0.0,
        "completions": 0.0,
    }
    for name in names:
        sums[f"{name}/sum"] = 0.0
        sums[f"{name}/scored"] = 0.0
    texts_out: list[str] = []
    totals: list[Tensor] = []
    for number, start in enumerate(range(0, len(prompts), batch_size)):
        group = prompts[start : start + batch_size]
        generator = None
        if not greedy:
            generator = torch.Generator(device=param_device(model))
            generator.manual_seed(generation_seed(seed, -1, number))
        out = rollout(
            model,  # type: ignore[arg-type]
            [list(p.ids) for p in group],
            n=n,
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None if greedy or not top_k else top_k,
            eos_token_id=list(stop_ids),
            pad_token_id=pad_id,
            tokenizer=tokenizer,
            generator=generator,
        )
        assert out.texts is not None
        texts, columns = reward_inputs(group, n)
        scores = rewards(texts, list(out.texts), **columns)
        table = scores.per_function
        scored = ~torch.isnan(table[:, column])
        sums["correct"] += float((table[:, column][scored] >= accuracy_threshold).sum())
        sums["accuracy_scored"] += float(scored.sum())
        valid = ~torch.isnan(scores.total)
        sums["reward_sum"] += float(scores.total[valid].sum())
        sums["reward_scored"] += float(valid.sum())
        for f, name in enumerate(names):
            ok = ~torch.isnan(table[:, f])
            sums[f"{name}/sum"] += float(table[:, f][ok].sum())
            sums[f"{name}/scored"] += float(ok.sum())
        sums["length_sum"] += float(out.lengths.sum())
        sums["clipped"] += float(sum(r == "length" for r in out.finish_reasons))
        sums["completions"] += float(out.num_rows)
        texts_out.extend(out.texts)
        totals.append(scores.total)
    return CompletionEvaluation(
        metrics=_eval_metrics(sums, names),
        completions=tuple(texts_out),
        rewards=torch.cat(totals) if totals else torch.zeros(0),
        sums=sums,
    )


def evaluate_completions(
    model: CausalLM | nn.Module,
    tokenizer: Tokenizer,
    rows: RecordSource,
    reward_funcs: Sequence[RewardFunction] | Mapping[str, RewardFunction] | RewardFunctions,
    *,
    template: ChatTemplate | None,
    max_new_tokens: int,
    stop_ids: Sequence[int] | None = None,
    pad_id: int | None = None,
    eos_token: str = "<|endoftext|>",
    pad_token: str | None = None,
    max_prompt_length: int = 512,
    system_prompt: str | None = None,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    n: int = 1,
    limit: int = 0,
    batch_size: int = 16,
    seed: int = 0,
    accuracy_reward: str | None = None,
    accuracy_threshold: float = 1.0,
    reward_weights: Sequence[float] | None = None,
) -> CompletionEvaluation:
    """Held-out accuracy and reward of a model's completions (greedy by default).

    Each prompt (rendered as [`encode_prompts()`][lego.align.rollouts.encode_prompts] does,
    cut from the left to ``max_prompt_length``) gets ``n`` completions from lego-generate's
    ``rollout()``; the reward functions score them with the records' other columns.

    Args:
        model: Any ``CausalLM`` (put in eval mode for the call).
        tokenizer: Encodes the prompts and decodes the completions.
        rows: Records with ``prompt`` (and e.g. ``answer``): a ``.jsonl`` path or dictionaries.
        reward_funcs: Reward functions (a sequence, a name mapping, or ``RewardFunctions``).
        template: The chat template, or None for plain prompts.
        max_new_tokens: The longest completion.
        stop_ids: Ids that finish a completion; None: the template's end-of-turn and
            ``eos_token`` ([`stop_and_pad_ids()`][lego.align.rollouts.stop_and_pad_ids]).
        pad_id: The padding id; None: ``pad_token`` or the tokenizer's own.
        eos_token: The end-of-sequence token (when ``stop_ids`` is None).
        pad_token: The padding token (when ``pad_id`` is None).
        max_prompt_length: The most prompt tokens.
        system_prompt: A system message for prompts without one.
        greedy: Greedy decoding, else sampling with ``temperature``, ``top_p``, ``top_k``.
        temperature: Sampling temperature.
        top_p: Nucleus mass.
        top_k: Top-k (0: off).
        n: Completions per prompt.
        limit: Evaluate the first ``limit`` records only (0: all).
        batch_size: Prompts per ``rollout()`` call.
        seed: The sampling seed.
        accuracy_reward: The function deciding correctness (None: the first).
        accuracy_threshold: Correct when its score is at least this (1.0: an exact answer).
        reward_weights: Weights of the functions (when not given as ``RewardFunctions``).

    Returns:
        A [`CompletionEvaluation`][lego.align.rollouts.CompletionEvaluation].

    Raises:
        DataError: No records or bad records (naming the line).
        ConfigError: Bad settings, an unknown ``accuracy_reward``, no pad token.
        CompatibilityError: The tokenizer lacks ``eos_token`` or the template's tokens.
        TrainingError: A reward function raised (naming it).

    Example:
        >>> from torch import nn
        >>> from lego.protocols import ModelConfig
        >>> class Always(nn.Module):  # writes "c" (id 4), then EOS (id 0)
        ...     config = ModelConfig(vocab_size=5, context_length=16)
        ...     def forward(self, ids, *, attention_mask=None, position_ids=None, kv_cache=None):
        ...         logits = torch.full((*ids.shape, 5), -9.0)
        ...         logits[..., 4] = 0.0
        ...         logits[..., 0] = torch.where(ids == 4, 1.0, -9.0)
        ...         return logits
        >>> class Tok:
        ...     special_tokens = {"<|endoftext|>": 0, "<|pad|>": 1}
        ...     vocab_size = 5
        ...     def encode(self, text): return [2 + "abc".index(c) for c in text]
        ...     def decode(self, ids): return "".join("abc"[i - 2] for i in ids if i >= 2)
        >>> def says_c(prompts, completions, answer, **columns):
        ...     return [float(c == a) for c, a in zip(completions, answer)]
        >>> out = evaluate_completions(Always(), Tok(), [{"prompt": "ab", "answer": "c"}],
        ...                            [says_c], template=None, max_new_tokens=4)
        >>> out.completions, out.metrics["accuracy"]
        (('c',), 1.0)
    """
    check_int("limit", limit, minimum=0)
    if stop_ids is None or pad_id is None:
        stops, pad = stop_and_pad_ids(
            tokenizer, template=template, eos_token=eos_token, pad_token=pad_token
        )
        stop_ids = stops if stop_ids is None else stop_ids
        pad_id = pad if pad_id is None else pad_id
    functions = (
        reward_funcs
        if isinstance(reward_funcs, RewardFunctions)
        else RewardFunctions(reward_funcs, weights=reward_weights)
    )
    prompts, _ = encode_prompts(
        rows,
        tokenizer,
        template=template,
        max_prompt_length=max_prompt_length,
        system_prompt=system_prompt,
    )
    if limit:
        prompts = prompts[:limit]
    return score_prompts(
        model,
        tokenizer,
        prompts,
        functions,
        stop_ids=stop_ids,
        pad_id=pad_id,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        n=n,
        batch_size=batch_size,
        seed=seed,
        accuracy_reward=accuracy_reward,
        accuracy_threshold=accuracy_threshold,
    )
