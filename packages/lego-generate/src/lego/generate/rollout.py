"""[`rollout()`][lego.generate.rollout]: ``n`` completions per prompt with their log-probabilities.

Online reinforcement learning (GRPO, PPO) samples several completions of every prompt and
needs, for every generated token, its log-probability under the sampling policy, plus how
each completion ended. ``rollout()`` does this on the same decode loop as
[`generate()`][lego.generate.generate] ([`Decoding`][lego.generate.Decoding] on a
[`ModelRunner`][lego.generate.ModelRunner]):

1. the prompts (token-id lists of different lengths, left-padded inside, or a padded
   ``(B, P)`` tensor with its mask) are prefilled **once**, ``B`` rows;
2. each prompt's KV-cache row is copied to its ``n`` rows with the cache's ``copy_rows``, in
   prompt-major order (row ``i * n + j`` is completion ``j`` of prompt ``i``); a model
   without a KV cache runs the repeated rows instead;
3. the ``B * n`` rows decode with independent sampling (one generator, as ``generate()``),
   recording each chosen token's log-probability (float32):
   ``"raw"``, ``log_softmax`` of the model's logits, or ``"processed"``, of the scores after
   the logits processors and warpers (temperature, top-k, top-p...), the distribution the
   token was actually drawn from (TRL's GRPO scores ``logits / temperature``).

The result, a [`Rollout`][lego.generate.Rollout], holds padded tensors ready for a training
step (``completion_ids``, ``completion_mask``, ``logprobs``, ``prompt_index``) and the same
per row as Python lists, with each row's finish reason: ``"stop"`` (an end-of-sequence id or
a stop string; the finishing token is part of the completion) or ``"length"``
(``max_new_tokens`` reached).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lego.generate.config import GenerationConfig
from lego.generate.decoding import Decoding, LogprobMode
from lego.generate.generate import _eval_mode
from lego.generate.linears import linear_kernels
from lego.generate.prompt import prepare_prompt
from lego.generate.runner import has_kv_cache
from lego.generate.stopping import StopStrings
from lego.protocols import (
    CausalLM,
    ConfigError,
    DataError,
    LogitsProcessor,
    Tokenizer,
    check_int,
)

__all__ = ["Rollout", "rollout", "FinishReason"]

FinishReason = Literal["stop", "length"]
"""Why a completion ended: ``"stop"`` (end-of-sequence id or stop string) or ``"length"``."""


@dataclass(frozen=True)
class Rollout:
    """``n`` completions of each of ``B`` prompts (``R = B * n`` rows, prompt-major).

    Row ``r`` is completion ``r % n`` of prompt ``r // n``. ``N`` is the longest completion.

    Attributes:
        n: Completions per prompt.
        prompt_ids: The prompts, left-padded, ``(B, P)`` long.
        prompt_mask: ``(B, P)`` long: 1 for prompt tokens, 0 for left padding.
        prompt_index: ``(R,)`` long: the prompt of each row (``arange(B).repeat_interleave(n)``).
        completion_ids: ``(R, N)`` long: the generated tokens, ``pad_token_id`` after a row's
            end.
        completion_mask: ``(R, N)`` long: 1 for generated tokens (the finishing
            end-of-sequence token included), 0 after.
        logprobs: ``(R, N)`` float32: each generated token's log-probability under the
            ``logprob_mode`` distribution, 0 where ``completion_mask`` is 0.
        finish_reasons: ``R`` reasons, ``"stop"`` or ``"length"``.
        logprob_mode: ``"raw"`` (the model's distribution) or ``"processed"`` (the sampled
            one, after the processors and warpers).
        texts: The decoded completions (end-of-sequence token left out, text cut before a
            stop string) when a tokenizer was given, else None.
    """

    n: int
    prompt_ids: Tensor
    prompt_mask: Tensor
    prompt_index: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    logprobs: Tensor
    finish_reasons: tuple[FinishReason, ...]
    logprob_mode: LogprobMode
    texts: tuple[str, ...] | None = None

    @property
    def num_rows(self) -> int:
        """``R``, the number of completions (``B * n``)."""
        return int(self.completion_ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        """Generated tokens per row, ``(R,)`` long."""
        return self.completion_mask.sum(dim=-1)

    @property
    def completions(self) -> list[list[int]]:
        """Each row's generated ids, without the padding after its end."""
        return [
            ids[:length]
            for ids, length in zip(self.completion_ids.tolist(), self.lengths.tolist(), strict=True)
        ]

    @property
    def token_logprobs(self) -> list[list[float]]:
        """Each row's per-token log-probabilities, aligned with ``completions``."""
        return [
            values[:length]
            for values, length in zip(self.logprobs.tolist(), self.lengths.tolist(), strict=True)
        ]

    def sequences(self) -> tuple[Tensor, Tensor]:
        """Prompt plus completion of every row, for a training forward pass.

        Returns:
            ``(input_ids, attention_mask)``, each ``(R, P + N)`` long: the row's (left-padded)
            prompt followed by its completion; the mask is 0 on the left padding and after
            the completion's end. The completion's logits are those at positions
            ``P - 1 .. P + N - 2``.
        """
        ids = torch.cat([self.prompt_ids[self.prompt_index], self.completion_ids], dim=1)
        mask = torch.cat([self.prompt_mask[self.prompt_index], self.completion_mask], dim=1)
        return ids, mask


def _prompt_batch(
    prompts: Tensor | Sequence[Sequence[int]],
    attention_mask: Tensor | None,
    pad_id: int,
    device: torch.device,
) -> tuple[Tensor, Tensor | None]:
    """Turn token-id lists into a left-padded ``(B, P)`` tensor and mask; pass tensors on.

    Raises:
        DataError: No prompts, an empty prompt, or ids that are not ints.
        ConfigError: An ``attention_mask`` with token-id lists (the padding is made here).
    """
    # ``device`` is where token-id lists go; a tensor of prompts stays where it is.
    if isinstance(prompts, Tensor):
        return prompts, attention_mask
    given: object = prompts
    rows = [list(row) for row in prompts] if isinstance(given, Sequence) else None
    if not rows:
        raise DataError(
            "rollout() needs at least one prompt",
            tensor="prompts",
            hint="pass a list of token-id lists or a (B, P) tensor",
        )
    if attention_mask is not None:
        raise ConfigError(
            "attention_mask goes with a (B, P) tensor of prompts; token-id lists are padded "
            "by rollout() itself",
            key="attention_mask",
            hint="drop attention_mask, or pass the prompts as a padded tensor",
        )
    for number, row in enumerate(rows):
        if not row:
            raise DataError(
                f"prompt {number} is empty",
                tensor="prompts",
                hint="give every prompt at least one token (e.g. the tokenizer's BOS id)",
            )
        if any(isinstance(i, bool) or not isinstance(i, int) for i in row):
            raise DataError(
                f"prompt {number} holds something other than int token ids",
                tensor="prompts",
                hint="encode texts with the tokenizer first",
            )
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for number, row in enumerate(rows):
        ids[number, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[number, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def rollout(
    model: CausalLM,
    prompts: Tensor | Sequence[Sequence[int]],
    *,
    n: int = 1,
    attention_mask: Tensor | None = None,
    logprobs: LogprobMode = "raw",
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    logit_bias: Mapping[int, float] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: str | Sequence[str] | None = None,
    tokenizer: Tokenizer | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    logits_processor: Sequence[LogitsProcessor] = (),
    use_cache: bool | None = None,
    compile: bool | None = None,
    native_kernels: bool | None = None,
    pack_weights: bool | None = None,
    share_prefill: bool = True,
    device: torch.device | str | None = None,
    generation_config: GenerationConfig | None = None,
) -> Rollout:
    """Sample ``n`` completions of every prompt, with per-token log-probs and finish reasons.

    The sampling settings are [`generate()`][lego.generate.generate]'s (through
    [`GenerationConfig`][lego.generate.GenerationConfig]); beam search and draft models are
    not rollouts. Greedy with ``n=1`` gives exactly ``generate()``'s tokens. With a ``seed``
    (or ``generator``) the result is reproducible, and sharing the prefill does not change
    it: the ``n`` rows of a prompt get the tokens that ``n`` repeated copies of the prompt
    get from the same generator.

    Args:
        model: Any [`CausalLM`][lego.protocols.CausalLM] (put in eval mode for the call); on
            its KV cache when it has one, else by recomputation.
        prompts: Token-id lists (any lengths: left-padded here with ``pad_token_id``), or a
            left-padded ``(B, P)`` tensor with ``attention_mask``.
        n: Completions per prompt (at least 1).
        attention_mask: ``(B, P)`` for a tensor of prompts: 1 real, 0 left padding.
        logprobs: ``"raw"``: log-probabilities under the model's distribution
            (``log_softmax(logits)``); ``"processed"``: under the distribution sampled from
            (after the penalties, ``logits_processor`` and warpers such as temperature and
            top-p).
        max_new_tokens: Tokens to generate at most per completion.
        do_sample: Force sampling (True) or greedy decoding (False).
        temperature: Sampling temperature (0: greedy).
        top_k: Sample among the ``top_k`` most likely tokens.
        top_p: Nucleus mass in ``(0, 1]``.
        min_p: Relative probability floor in ``[0, 1]``.
        repetition_penalty: CTRL's penalty on tokens already present.
        presence_penalty: Subtracted from the logits of tokens already present.
        frequency_penalty: Subtracted per occurrence of a token.
        no_repeat_ngram_size: Never repeat an n-gram of this size.
        logit_bias: Token id to a bias added to its logit.
        eos_token_id: Id(s) that finish a completion (finish reason ``"stop"``).
        pad_token_id: Written after a completion's end (default: the first eos id, else 0).
        stop_strings: Texts that finish a completion (needs ``tokenizer``).
        tokenizer: Decodes the completions into ``Rollout.texts`` and watches stop strings.
        seed: Seed for reproducible sampling.
        generator: A ``torch.Generator`` for sampling (instead of ``seed``).
        logits_processor: Extra processors (transformers-compatible signature).
        use_cache: Decode on the model's KV cache (False: recompute the prefix each step).
        compile: ``torch.compile`` the decode step.
        native_kernels: The native CPU decode kernels (see ``generate()``).
        pack_weights: oneDNN-reordered bf16 weights for the prefill (see ``generate()``).
        share_prefill: Prefill each prompt once and copy its cache rows to its ``n`` rows
            (False: prefill the ``B * n`` repeated rows; the same tokens, more work).
        device: Where the prompt tensor goes for token-id lists (default: the model's
            first parameter's device, else the CPU).
        generation_config: A config to start from; the keyword arguments given here that
            are not None replace its fields.

    Returns:
        The [`Rollout`][lego.generate.Rollout], ``R = B * n`` rows in prompt-major order.

    Raises:
        ConfigError: ``n`` below 1, an unknown ``logprobs`` mode, beam search, invalid
            sampling settings, stop strings without a tokenizer, a prompt that does not fit
            the context.
        DataError: No prompts, an empty or malformed prompt, ids outside the vocabulary.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lego.protocols import ModelConfig
        >>> class Bigram(nn.Module):  # the next token depends on the last one only
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.config = ModelConfig(vocab_size=10, context_length=32)
        ...         self.table = nn.Embedding(10, 10)
        ...     def forward(self, ids, *, attention_mask=None, position_ids=None, kv_cache=None):
        ...         return self.table(ids)  # (B, T, vocab_size)
        >>> _ = torch.manual_seed(0)
        >>> out = rollout(Bigram(), [[1, 2, 3], [4]], n=3, max_new_tokens=5, temperature=1.0,
        ...               seed=0, eos_token_id=9)
        >>> out.completion_ids.shape[0], out.prompt_index.tolist()
        (6, [0, 0, 0, 1, 1, 1])
        >>> bool((out.logprobs <= 0).all()), out.logprobs.dtype
        (True, torch.float32)
        >>> set(out.finish_reasons) <= {"stop", "length"}
        True
    """
    check_int("n", n, minimum=1, owner="rollout()")
    if logprobs not in ("raw", "processed"):
        raise ConfigError(
            f"rollout(): logprobs must be 'raw' or 'processed', got {logprobs!r}",
            key="logprobs",
            hint="'raw': under the model's distribution; 'processed': under the sampled one",
        )
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        "no_repeat_ngram_size": no_repeat_ngram_size,
        "logit_bias": logit_bias,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "stop_strings": stop_strings,
        "seed": seed,
        "use_cache": use_cache,
        "compile": compile,
        "native_kernels": native_kernels,
        "pack_weights": pack_weights,
    }
    config = GenerationConfig.from_options(generation_config, **options)
    if config.num_beams != 1:
        raise ConfigError(
            f"rollout() samples completions; it does not run beam search (num_beams="
            f"{config.num_beams})",
            key="num_beams",
            hint="use generate(num_beams=...) for beam search",
        )
    config.check_vocabulary(model.config.vocab_size)
    stop = None
    if config.stop_string_list:
        if tokenizer is None:
            raise ConfigError(
                "stop_strings need a tokenizer to decode the generated tokens",
                key="stop_strings",
                hint="pass tokenizer=... to rollout()",
            )
        stop = StopStrings(tokenizer=tokenizer, stop_strings=config.stop_string_list)
    ids, mask = _prompt_batch(prompts, attention_mask, config.fill_id, _device(model, device))
    prompt = prepare_prompt(
        ids,
        mask,
        context_length=model.config.context_length,
        max_new_tokens=config.max_new_tokens,
        vocab_size=model.config.vocab_size,
    )
    b, p = prompt.batch_size, prompt.length
    prompt_mask = (
        prompt.attention_mask
        if prompt.attention_mask is not None
        else torch.ones((b, p), dtype=torch.long, device=prompt.input_ids.device)
    )
    expanded = prepare_prompt(
        prompt.input_ids.repeat_interleave(n, dim=0),
        prompt_mask.repeat_interleave(n, dim=0),
        context_length=model.config.context_length,
        max_new_tokens=config.max_new_tokens,
    )
    if generator is None and config.seed is not None and config.sampling:
        generator = torch.Generator(device=prompt.input_ids.device)
        generator.manual_seed(config.seed)
    was_training = _eval_mode(model)
    try:
        rows = b * n if config.use_cache and has_kv_cache(model) else b * n * (p + 1)
        routing = linear_kernels(
            model, native=config.native_kernels, pack=config.pack_weights, rows=rows
        )
        with torch.inference_mode(), routing:
            run = Decoding(
                model=model,
                prompt=expanded,
                config=config,
                processors=config.processors(logits_processor),
                generator=generator,
                stop=stop,
                record_logprobs=logprobs,
                shared_rows=n if share_prefill else 1,
            )
            for _ in run:
                pass
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train(True)
    return _result(run, prompt.input_ids, prompt_mask, n, logprobs, config, tokenizer, stop)


def _device(model: CausalLM, device: torch.device | str | None) -> torch.device:
    """``device`` when given, else the model's first parameter's device, else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


def _result(
    run: Decoding,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    n: int,
    mode: LogprobMode,
    config: GenerationConfig,
    tokenizer: Tokenizer | None,
    stop: StopStrings | None,
) -> Rollout:
    """Assemble the [`Rollout`][lego.generate.Rollout] of a finished run."""
    assert run.logprobs is not None
    p = run.prompt_length
    steps = run.length - p
    completion_ids = run.tokens[:, p : run.length].clone()  # (R, N)
    lengths = run.finish_lengths.clamp_max(steps)  # (R,)
    positions = torch.arange(steps, device=completion_ids.device)  # (N,)
    completion_mask = (positions[None, :] < lengths[:, None]).long()  # (R, N)
    logprobs = run.logprobs[:, :steps].masked_fill(completion_mask == 0, 0.0).clone()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, config.fill_id)
    reasons: tuple[FinishReason, ...] = tuple(
        "stop" if done else "length" for done in run.finished.tolist()
    )
    texts = None
    if tokenizer is not None:
        eos = set(config.eos_ids)
        decoded = []
        for ids, length in zip(completion_ids.tolist(), lengths.tolist(), strict=True):
            kept = ids[:length]
            if kept and kept[-1] in eos:
                kept = kept[:-1]
            text = tokenizer.decode(kept)
            decoded.append(stop.cut(text) if stop is not None else text)
        texts = tuple(decoded)
    b = int(prompt_ids.shape[0])
    return Rollout(
        n=n,
        prompt_ids=prompt_ids.clone(),
        prompt_mask=prompt_mask.clone(),
        prompt_index=torch.arange(b, device=prompt_ids.device).repeat_interleave(n),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=logprobs,
        finish_reasons=reasons,
        logprob_mode=mode,
        texts=texts,
    )
