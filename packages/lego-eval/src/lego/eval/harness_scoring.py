"""The harness model's work on token ids: batched continuation scores and stopped generation.

[`LegoLM`][lego.eval.harness.LegoLM] turns lm-evaluation-harness requests into token ids and
hands them to the two functions here, which need nothing but torch, lego-generate and a
[`CausalLM`][lego.protocols.CausalLM] (no lm_eval):

- [`score_continuations()`][lego.eval.harness_scoring.score_continuations]: for each
  ``(context, continuation)`` pair of ids, the summed log-probability of the continuation
  given the context and whether greedy decoding would have produced it. Requests are sorted
  by length (longest first) and cut into batches of ``batch_size`` rows that are padded on
  the *right*: a real token sits at the same position, sees the same tokens before it and
  is scored from the same logits whatever the batch holds, so the results do not depend on
  the batch size (up to float rounding, far below 1e-6 in float32).
- [`generate_continuations()`][lego.eval.harness_scoring.generate_continuations]: greedy
  (or sampled) continuations on lego-generate, stopped by end-of-sequence ids, stop strings
  and a token budget; prompts are left-padded with an attention mask (lego-generate gives
  every real token the position it has alone), the text is cut before the first stop
  string.

Example:
    A model whose next token is always ``(last + 1) % 10`` gives a continuation that counts
    on a log-probability near 0 and greedy ``True``:

    >>> import torch
    >>> from torch import nn
    >>> from lego.protocols import ModelConfig
    >>> class Counter(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.config = ModelConfig(vocab_size=10, context_length=16)
    ...     def forward(self, ids, *, attention_mask=None, position_ids=None, kv_cache=None):
    ...         return 20.0 * nn.functional.one_hot((ids + 1) % 10, 10).float()
    >>> scores = [(round(lp, 3), greedy) for lp, greedy in score_continuations(
    ...     Counter(), [([1, 2], [3, 4]), ([5], [7])], batch_size=2)]
    >>> scores
    [(0.0, True), (-20.0, False)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lego.generate import generate
from lego.protocols import CausalLM, CompatibilityError, DataError, Tokenizer, check_int

__all__ = ["score_continuations", "generate_continuations", "model_device"]


def model_device(model: CausalLM) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters).

    Args:
        model: Any causal LM.

    Returns:
        Where input ids must go.
    """
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


def _check_ids(ids: Sequence[int], vocab_size: int, what: str) -> list[int]:
    out = [int(i) for i in ids]
    bad = [i for i in out if not 0 <= i < vocab_size]
    if bad:
        raise CompatibilityError(
            f"{what} holds token id {bad[0]}, outside the model's vocabulary of {vocab_size}",
            key=what,
            hint="evaluate with the tokenizer the model was trained with",
        )
    return out


def score_continuations(
    model: CausalLM,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[tuple[float, bool]]:
    """Log-probability of each continuation given its context, batched by length.

    For a request with context ids ``c`` and continuation ids ``x_1 ... x_k`` the score is
    ``sum_i log p(x_i | c, x_<i)`` (natural log, float32 log-softmax) and the flag says
    whether ``argmax p(. | c, x_<i) == x_i`` for every ``i``. When ``c + x`` is longer than
    ``max_length + 1`` tokens the context is cut from the left (the model reads at most
    ``max_length`` tokens: the last one is never an input), as lm-evaluation-harness does.

    Args:
        model: Any causal LM; run in eval mode under ``torch.inference_mode()`` (its
            training flag is restored afterwards).
        requests: ``(context_ids, continuation_ids)`` pairs; the context holds at least
            one id (lm-evaluation-harness puts a BOS or end-of-text id before an empty
            one), the continuation at least one and at most ``max_length``.
        batch_size: Rows per forward pass.
        max_length: The longest input the model reads; None means
            ``model.config.context_length``.

    Returns:
        ``(log_probability, is_greedy)`` per request, in the order given.

    Raises:
        DataError: An empty context or continuation, or a continuation longer than
            ``max_length`` (named by its index).
        CompatibilityError: A token id outside the model's vocabulary.
        ConfigError: ``batch_size`` or ``max_length`` below 1.
    """
    check_int("batch_size", batch_size, minimum=1)
    limit = model.config.context_length if max_length is None else max_length
    check_int("max_length", limit, minimum=1)
    vocab = model.config.vocab_size
    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    for index, (context, continuation) in enumerate(requests):
        ctx = _check_ids(context, vocab, f"requests[{index}] context")
        cont = _check_ids(continuation, vocab, f"requests[{index}] continuation")
        if not ctx or not cont:
            part = "context" if not ctx else "continuation"
            raise DataError(
                f"request {index} has an empty {part}",
                key=f"requests[{index}]",
                hint="an empty context needs a BOS or end-of-text id before the continuation",
            )
        if len(cont) > limit:
            raise DataError(
                f"request {index}'s continuation has {len(cont)} tokens, more than the "
                f"{limit} the model reads at once",
                key=f"requests[{index}]",
                hint="use a shorter continuation or a model with a longer context",
            )
        whole = (ctx + cont)[-(limit + 1) :]
        inputs.append(whole[:-1])  # (n_in,): the last token is predicted, never read
        targets.append(cont)
    # longest first, then by content: the batches are a function of the requests alone
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), inputs[i]))
    device = model_device(model)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(inputs)
    was_training = bool(getattr(model, "training", False))
    if isinstance(model, torch.nn.Module):
        model.train(False)
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                width = len(inputs[chunk[0]])
                ids = torch.zeros((len(chunk), width), dtype=torch.long)  # (B, W), right pad 0
                for row, i in enumerate(chunk):
                    ids[row, : len(inputs[i])] = torch.tensor(inputs[i], dtype=torch.long)
                logits: Tensor = model(ids.to(device))  # (B, W, vocab)
                for row, i in enumerate(chunk):
                    n_in, k = len(inputs[i]), len(targets[i])
                    # (k, vocab): the logits that predict the k continuation tokens
                    logprobs = torch.log_softmax(logits[row, n_in - k : n_in].float(), dim=-1)
                    target = torch.tensor(targets[i], dtype=torch.long, device=logits.device)
                    chosen = logprobs.gather(-1, target[:, None]).squeeze(-1)  # (k,)
                    greedy = bool((logprobs.argmax(dim=-1) == target).all())
                    results[i] = (float(chosen.sum()), greedy)
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train(True)
    return results


def _cut(text: str, stop: Sequence[str]) -> str:
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(found)] if found else text


def generate_continuations(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    eos_token_ids: Sequence[int] = (),
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
) -> list[str]:
    """Generate a continuation of each prompt, cut at the first stop string.

    Prompts are sorted by length (longest first) and generated ``batch_size`` at a time,
    left-padded with an attention mask. A row ends at an end-of-sequence id, when one of
    ``stop`` appears in its text, or after ``max_new_tokens`` tokens; the returned text is
    the decoded tokens before the first end-of-sequence id, cut before the first stop
    string (which is not included).

    Args:
        model: Any causal LM.
        tokenizer: Decodes the new tokens (and checks the stop strings).
        prompts: Prompt ids, at least one each; each must leave room for
            ``max_new_tokens`` in the model's context.
        max_new_tokens: The most tokens generated per prompt.
        stop: Stop strings (empty strings are ignored).
        eos_token_ids: Ids that end a row (not part of the text).
        batch_size: Prompts per generation.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature (sampling only).
        top_p: Nucleus mass (sampling only).
        top_k: Top-k cut (sampling only).
        seed: Seeds sampling.

    Returns:
        The continuation text per prompt, in the order given.

    Raises:
        DataError: An empty prompt.
        ConfigError: Bad settings (from lego-generate), e.g. a prompt that leaves no room.
    """
    check_int("batch_size", batch_size, minimum=1)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    vocab = model.config.vocab_size
    rows = [_check_ids(p, vocab, f"prompts[{i}]") for i, p in enumerate(prompts)]
    for index, row in enumerate(rows):
        if not row:
            raise DataError(f"prompt {index} is empty", key=f"prompts[{index}]")
    stops = [s for s in stop if s]
    eos = [int(i) for i in eos_token_ids]
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), rows[i]))
    device = model_device(model)
    texts = [""] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(rows[chunk[0]])
        ids = torch.zeros((len(chunk), width), dtype=torch.long)  # (B, P), left pad
        mask = torch.zeros((len(chunk), width), dtype=torch.long)  # (B, P), 1 = real
        for r, i in enumerate(chunk):
            n = len(rows[i])
            ids[r, width - n :] = torch.tensor(rows[i], dtype=torch.long)
            mask[r, width - n :] = 1
        out = generate(
            model,
            ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=top_k if do_sample else None,
            seed=seed if do_sample else None,
            eos_token_id=eos or None,
            stop_strings=stops or None,
            tokenizer=tokenizer if stops else None,
        )
        new = out[:, width:].tolist()  # (B, n) generated ids
        for r, i in enumerate(chunk):
            tokens: list[int] = new[r]
            ends = [j for j, t in enumerate(tokens) if t in eos]
            texts[i] = _cut(tokenizer.decode(tokens[: ends[0]] if ends else tokens), stops)
    return texts
