"""The harness model's work on token ids: batched continuation scores and stopped generation.

[`LegoLM`][lego.eval.harness.LegoLM] turns lm-evaluation-harness requests into token ids and
hands them to the two functions here, which need nothing but torch, lego-generate and a
[`CausalLM`][lego.protocols.CausalLM] (no lm_eval):

- [`score_continuations()`][lego.eval.harness_scoring.score_continuations]: for each
  ``(context, continuation)`` pair of ids, the summed log-probability of the continuation
  given the context and whether greedy decoding would have produced it. Batches are padded
  on the *right*: a real token sits at the same position, sees the same tokens before it
  and is scored from the same logits whatever the batch holds, so the results do not
  depend on the batch size (up to float rounding, far below 1e-6 in float32). With a model
  that has a KV cache (``new_kv_cache``), each distinct context is read once (contexts
  sorted by length, ``batch_size`` per forward) and its cache rows are copied to each of
  its continuations, which are then read together after it (the choices of a
  multiple-choice question share their context); otherwise each request is one row
  (requests sorted by length, ``batch_size`` per forward). Either way the output head runs
  on the scored positions only when the model allows it
  ([`OutputHead`][lego.eval.scoring.OutputHead]).
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

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from lego.eval.scoring import OutputHead, position_nll
from lego.generate import generate
from lego.protocols import (
    CausalLM,
    CompatibilityError,
    ConfigError,
    DataError,
    KVCache,
    Tokenizer,
    check_int,
)

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
    share_contexts: bool | None = None,
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
        share_contexts: Read each distinct context once and copy its KV cache to each of
            its continuations (see the module docstring); None means whenever the model
            has ``new_kv_cache`` (a [`CachedCausalLM`][lego.protocols.CachedCausalLM]).

    Returns:
        ``(log_probability, is_greedy)`` per request, in the order given.

    Raises:
        DataError: An empty context or continuation, or a continuation longer than
            ``max_length`` (named by its index).
        CompatibilityError: A token id outside the model's vocabulary.
        ConfigError: ``batch_size`` or ``max_length`` below 1, or ``share_contexts=True``
            for a model without ``new_kv_cache``.
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
    device = model_device(model)
    was_training = bool(getattr(model, "training", False))
    if isinstance(model, torch.nn.Module):
        model.train(False)
    try:
        with torch.inference_mode():
            head = OutputHead(model)
            cache_length = int(model.config.context_length)
            cached = callable(getattr(model, "new_kv_cache", None))
            if share_contexts and not cached:
                raise ConfigError(
                    f"share_contexts=True needs a model with new_kv_cache(); "
                    f"{type(model).__name__} has none",
                    key="share_contexts",
                    hint="leave share_contexts=None (shared when the model has a KV cache)",
                )
            if share_contexts is None:
                share_contexts = cached
            if share_contexts and max(map(len, inputs), default=0) <= cache_length:
                scored = _score_shared(
                    model, head, inputs, targets, batch_size, device, cache_length
                )
            else:
                scored = _score_rows(head, inputs, targets, batch_size, device)
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train(True)
    return [(0.0 - float(nll.sum()), bool(greedy.all())) for nll, greedy in scored]


_Scored = list[tuple[Tensor, Tensor]]
"""Per request: ``-log p`` of each continuation token ``(k,)`` float64 and greedy ``(k,)``."""


def _score_rows(
    head: OutputHead,
    inputs: list[list[int]],
    targets: list[list[int]],
    batch_size: int,
    device: torch.device,
) -> _Scored:
    """One row per request: ``context + continuation[:-1]``, right-padded, longest first."""
    # longest first, then by content: the batches are a function of the requests alone
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), inputs[i]))
    results: _Scored = [(torch.empty(0), torch.empty(0))] * len(inputs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(inputs[chunk[0]])
        ids = torch.zeros((len(chunk), width), dtype=torch.long)  # (B, W), right pad 0
        positions: list[int] = []
        for row, i in enumerate(chunk):
            n_in, k = len(inputs[i]), len(targets[i])
            ids[row, :n_in] = torch.tensor(inputs[i], dtype=torch.long)
            # the logits at n_in - k .. n_in - 1 predict the k continuation tokens
            positions += range(row * width + n_in - k, row * width + n_in)
        logits = head.logits_at(ids.to(device), torch.tensor(positions, device=device))
        target = torch.tensor([t for i in chunk for t in targets[i]], device=logits.device)
        nll, greedy = position_nll(logits[None], torch.arange(len(positions)), target)
        _split(results, chunk, targets, nll, greedy)
    return results


def _score_shared(
    model: CausalLM,
    head: OutputHead,
    inputs: list[list[int]],
    targets: list[list[int]],
    batch_size: int,
    device: torch.device,
    cache_length: int,
) -> _Scored:
    """Each distinct context read once, its KV cache copied to each of its continuations.

    A request's input is ``context + continuation[:-1]``. Stage 1 runs the distinct contexts
    (longest first, ``batch_size`` per forward, right-padded) into a KV cache; the logits
    at a context's last token predict the first token of all its continuations. Stage 2
    copies each context's cache rows to one row per continuation of two or more tokens and
    runs ``continuation[:-1]`` after it, with the positions the tokens have alone and an
    attention mask that hides the context's padding. Continuations are short: a stage-2
    forward takes as many rows as fit in the positions of ``batch_size`` full-length rows
    (at least ``batch_size``), so each context batch usually needs one.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (row_ids, cont) in enumerate(zip(inputs, targets, strict=True)):
        groups.setdefault(tuple(row_ids[: len(row_ids) - len(cont) + 1]), []).append(i)
    contexts = sorted(groups, key=lambda c: (-len(c), c))
    results: _Scored = [(torch.empty(0), torch.empty(0))] * len(inputs)
    chunks = list(_context_batches(contexts, groups, targets, batch_size, cache_length))
    steps = [max(len(targets[i]) - 1 for c in chunk for i in groups[c]) for chunk in chunks]
    # caches are allocated once per row count and reused (a fresh one costs page faults)
    prefill = _CachePool(model, len(contexts[0]) if contexts else 1, device)
    continued = _CachePool(
        model, max((len(c[0]) + s for c, s in zip(chunks, steps, strict=True)), default=1), device
    )
    for n, chunk in enumerate(chunks):
        width = len(chunk[0])
        ids = torch.zeros((len(chunk), width), dtype=torch.long)  # (b, W), right pad 0
        for row, context in enumerate(chunk):
            ids[row, : len(context)] = torch.tensor(context, dtype=torch.long)
        cache = prefill.get(len(chunk))
        last = torch.tensor([r * width + len(c) - 1 for r, c in enumerate(chunk)], device=device)
        first = head.logits_at(ids.to(device), last, kv_cache=cache)  # (b, V)
        members = [(r, i) for r, c in enumerate(chunk) for i in groups[c]]
        first_rows = torch.tensor([r for r, _ in members], device=device)
        first_targets = torch.tensor([targets[i][0] for _, i in members], device=device)
        nll0, greedy0 = position_nll(first[None], first_rows, first_targets)
        rest: dict[int, tuple[Tensor, Tensor]] = {}
        longer = [(r, i) for r, i in members if len(targets[i]) > 1]
        longer.sort(key=lambda m: (-len(targets[m[1]]), targets[m[1]]))
        # short continuations: as many rows per forward as batch_size full-length rows hold
        rows = max(batch_size, batch_size * cache_length // (width + max(1, steps[n])))
        for lo in range(0, len(longer), rows):
            part = longer[lo : lo + rows]
            copy = continued.get(len(part))
            rest.update(_continue(head, cache, copy, chunk, part, targets, width, device))
        for j, (_, i) in enumerate(members):
            nll, greedy = nll0[j : j + 1], greedy0[j : j + 1]
            if i in rest:
                nll = torch.cat([nll, rest[i][0]])
                greedy = torch.cat([greedy, rest[i][1]])
            results[i] = (nll, greedy)
    return results


def _context_batches(
    contexts: list[tuple[int, ...]],
    groups: dict[tuple[int, ...], list[int]],
    targets: list[list[int]],
    batch_size: int,
    cache_length: int,
) -> Iterator[list[tuple[int, ...]]]:
    """Consecutive runs of ``batch_size`` contexts (fewer where the cache would not fit).

    A stage-2 cache holds the batch's widest context and then the longest continuation,
    at most ``cache_length`` positions: a context whose continuations would not fit after
    the batch's first (widest) context starts a new batch.
    """
    chunk: list[tuple[int, ...]] = []
    for context in contexts:
        steps = max(len(targets[i]) - 1 for i in groups[context])
        if chunk and (len(chunk) == batch_size or len(chunk[0]) + steps > cache_length):
            yield chunk
            chunk = []
        chunk.append(context)
    if chunk:
        yield chunk


class _CachePool:
    """One KV cache per row count, of ``length`` positions, reset before each use."""

    def __init__(self, model: CausalLM, length: int, device: torch.device) -> None:
        self.model, self.length, self.device = model, length, device
        self.caches: dict[int, KVCache] = {}

    def get(self, rows: int) -> KVCache:
        cache = self.caches.get(rows)
        if cache is None:
            make = self.model.new_kv_cache  # type: ignore[attr-defined]
            cache = self.caches[rows] = make(rows, self.length, device=self.device)
        cache.reset()
        return cache


def _continue(
    head: OutputHead,
    cache: KVCache,
    copy: KVCache,
    chunk: list[tuple[int, ...]],
    part: list[tuple[int, int]],
    targets: list[list[int]],
    width: int,
    device: torch.device,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Stage 2 of ``_score_shared`` for ``(context row, request)`` pairs ``part``."""
    steps = len(targets[part[0][1]]) - 1  # the longest continuation[:-1] of the part
    rows = len(part)
    ids = torch.zeros((rows, steps), dtype=torch.long)  # (R, S), right pad 0
    mask = torch.ones((rows, width + steps), dtype=torch.long)  # (R, W + S)
    positions = torch.zeros((rows, steps), dtype=torch.long)  # (R, S)
    picked: list[int] = []
    for r, (owner, i) in enumerate(part):
        n, cont = len(chunk[owner]), targets[i]
        ids[r, : len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
        mask[r, n:width] = 0  # the context's right padding
        # the pads after a short continuation repeat its last position (never past it)
        positions[r] = torch.arange(n, n + steps).clamp(max=n + len(cont) - 2)
        picked += range(r * steps, r * steps + len(cont) - 1)
    owners = torch.tensor([owner for owner, _ in part], device=device)
    copy.copy_rows(cache, rows=torch.arange(rows, device=device), source_rows=owners)
    logits = head.logits_at(
        ids.to(device),
        torch.tensor(picked, device=device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        kv_cache=copy,
    )  # (M, V)
    target = torch.tensor([t for _, i in part for t in targets[i][1:]], device=logits.device)
    nll, greedy = position_nll(logits[None], torch.arange(len(picked)), target)
    out: dict[int, tuple[Tensor, Tensor]] = {}
    at = 0
    for _, i in part:
        k = len(targets[i]) - 1
        out[i] = (nll[at : at + k], greedy[at : at + k])
        at += k
    return out


def _split(
    results: _Scored, chunk: list[int], targets: list[list[int]], nll: Tensor, greedy: Tensor
) -> None:
    at = 0
    for i in chunk:
        k = len(targets[i])
        results[i] = (nll[at : at + k], greedy[at : at + k])
        at += k


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
