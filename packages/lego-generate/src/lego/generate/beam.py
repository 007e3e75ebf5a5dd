"""Beam search with length penalty and early stopping, transformers' semantics exactly.

Every step keeps, per prompt, the ``K = max(2, 1 + n_eos) * num_beams`` best continuations
of all running beams by accumulated log-probability. Those whose new token is an
end-of-sequence id (or that reach the maximum length) are candidates for the finished set,
scored ``sum_logprob / generated_length ** length_penalty`` (``generated_length`` counts the
new tokens, the end-of-sequence one included); only candidates among the top ``num_beams``
may enter it, and the finished set keeps the ``num_beams`` best. The best ``num_beams``
unfinished continuations run on. The search for a prompt ends:

- ``early_stopping=True``: once ``num_beams`` hypotheses are finished;
- ``early_stopping=False``: once the best running beam, scored at the current length,
  cannot beat the worst finished hypothesis (a heuristic);
- ``early_stopping="never"``: as False, but with a positive ``length_penalty`` the running
  beam is scored at the maximum length (the canonical beam search).

The output is the best finished hypothesis of each prompt, padded with ``pad_token_id`` to
the longest one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lego.generate.config import GenerationConfig
from lego.generate.decoding import check_scores
from lego.generate.processor_list import LogitsProcessorList
from lego.generate.prompt import Prompt
from lego.generate.runner import ModelRunner
from lego.protocols import CausalLM, ConfigError

__all__ = ["beam_search"]

_NEG = -1.0e9


def _take(tensor: Tensor, index: Tensor) -> Tensor:
    """Gather beams along dim 1: ``tensor (B, K, ...)``, ``index (B, k)`` -> ``(B, k, ...)``."""
    while index.ndim < tensor.ndim:
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def beam_search(
    model: CausalLM,
    prompt: Prompt,
    config: GenerationConfig,
    processors: LogitsProcessorList,
) -> Tensor:
    """Run beam search over a prompt batch.

    Args:
        model: Any [`CausalLM`][lego.protocols.CausalLM].
        prompt: The validated prompt batch, ``B`` rows of length ``P``.
        config: The settings (``num_beams``, ``length_penalty``, ``early_stopping``,
            ``eos_token_id``, ``pad_token_id``, ``max_new_tokens``, ``use_cache``).
        processors: Applied to the log-probabilities of each step (no sampling warpers).

    Returns:
        The best hypothesis of each prompt, prompt included, ``(B, P + L)`` with ``L`` the
        longest generated length among them; shorter ones are padded with ``pad_token_id``.

    Raises:
        ConfigError: Sampling, stop strings or a draft model were asked for with beams.
    """
    if config.sampling:
        raise ConfigError(
            "beam search here is deterministic: sampling with num_beams > 1 is not supported",
            key="num_beams",
            hint="use num_beams=1 to sample, or drop the sampling arguments",
        )
    if config.stop_string_list:
        raise ConfigError(
            "stop strings are not supported with beam search",
            key="stop_strings",
            hint="use eos_token_id, or num_beams=1",
        )
    nb = config.num_beams
    b, p = prompt.batch_size, prompt.length
    max_length = p + config.max_new_tokens
    device = prompt.input_ids.device
    eos = torch.tensor(config.eos_ids, dtype=torch.long, device=device)
    keep = max(2, 1 + len(config.eos_ids)) * nb
    in_top = torch.zeros(keep, dtype=torch.bool, device=device)  # (K,)
    in_top[:nb] = True
    length_penalty = config.length_penalty
    early = config.early_stopping

    flat_ids = prompt.input_ids.repeat_interleave(nb, dim=0)  # (B * nb, P)
    flat_mask = (
        prompt.attention_mask.repeat_interleave(nb, dim=0)
        if prompt.attention_mask is not None
        else None
    )
    runner = ModelRunner(
        model=model,
        batch_size=b * nb,
        max_seq_len=max_length,
        attention_mask=flat_mask,
        use_cache=config.use_cache,
        device=device,
    )
    running = torch.full((b, nb, max_length), config.fill_id, dtype=torch.long, device=device)
    running[:, :, :p] = flat_ids.view(b, nb, p)
    finished_seqs = running.clone()  # (B, nb, S)
    running_scores = torch.zeros((b, nb), dtype=torch.float32, device=device)
    running_scores[:, 1:] = _NEG  # only the first beam's tokens count at step one
    finished_scores = torch.full((b, nb), _NEG, dtype=torch.float32, device=device)
    is_finished = torch.zeros((b, nb), dtype=torch.bool, device=device)
    finished_lengths = torch.zeros((b, nb), dtype=torch.long, device=device)
    improvable = torch.ones((b, 1), dtype=torch.bool, device=device)
    batch_offset = torch.arange(b, device=device).view(-1, 1) * nb  # (B, 1)

    cur = p
    logits = runner.forward(flat_ids)[:, -1]  # (B * nb, V)
    while True:
        vocab = int(logits.shape[-1])
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B * nb, V)
        log_probs = processors(running.view(b * nb, max_length)[:, :cur], log_probs)
        check_scores(logits, log_probs, step=cur - p)
        totals = (log_probs.view(b, nb, vocab) + running_scores[:, :, None]).view(b, nb * vocab)

        top_scores, top_index = torch.topk(totals, keep, dim=-1)  # (B, K) each
        source = top_index // vocab  # (B, K) the beam each continuation extends
        token = top_index % vocab  # (B, K)
        cand = _take(running, source)  # (B, K, S)
        cand[:, :, cur] = token

        hits = torch.isin(token, eos) if len(config.eos_ids) else torch.zeros_like(in_top[None])
        if cur + 1 >= max_length:
            hits = torch.ones_like(token, dtype=torch.bool)
        hits = hits.expand(b, keep)  # (B, K)

        # the best num_beams unfinished continuations run on
        alive_scores = top_scores + hits.to(torch.float32) * _NEG  # (B, K)
        next_index = torch.topk(alive_scores, nb, dim=-1).indices  # (B, nb)
        running = _take(cand, next_index)  # (B, nb, S)
        running_scores = _take(alive_scores, next_index)  # (B, nb)
        beam_source = _take(source, next_index) + batch_offset  # (B, nb) flat source rows

        # candidates that just finished may enter the finished set
        just_done = hits & in_top[None, :]  # (B, K)
        scored = top_scores / ((cur + 1 - p) ** length_penalty)  # (B, K)
        full = is_finished.all(dim=-1, keepdim=True) & (early is True)  # (B, 1)
        scored = scored + full.to(torch.float32) * _NEG
        scored = scored + (~improvable).to(torch.float32) * _NEG
        scored = scored + (~just_done).to(torch.float32) * _NEG
        merged_seqs = torch.cat([finished_seqs, cand], dim=1)  # (B, nb + K, S)
        merged_scores = torch.cat([finished_scores, scored], dim=1)  # (B, nb + K)
        merged_done = torch.cat([is_finished, just_done], dim=1)  # (B, nb + K)
        cand_lengths = torch.full((b, keep), cur + 1 - p, dtype=torch.long, device=device)
        merged_lengths = torch.cat([finished_lengths, cand_lengths], dim=1)  # (B, nb + K)
        best = torch.topk(merged_scores, nb, dim=-1).indices  # (B, nb)
        finished_seqs = _take(merged_seqs, best)
        finished_scores = _take(merged_scores, best)
        is_finished = _take(merged_done, best)
        finished_lengths = _take(merged_lengths, best)

        cur += 1
        never = early == "never" and length_penalty > 0.0
        hypothetical = max_length - p if never else cur - p
        best_running = running_scores[:, :1] / (hypothetical**length_penalty)  # (B, 1)
        worst_done = torch.where(
            is_finished, finished_scores.min(dim=1, keepdim=True).values, _NEG
        )  # (B, nb)
        improvable = improvable & (best_running > worst_done).any(dim=-1, keepdim=True)

        all_done = bool(is_finished.all()) and early is True
        if not bool(improvable.any()) or all_done or bool(hits.all()):
            break
        runner.reorder(beam_source.view(-1))
        logits = runner.forward(running[:, :, cur - 1].reshape(b * nb, 1))[:, -1]  # (B*nb, V)

    out_len = p + int(finished_lengths[:, 0].max())
    return finished_seqs[:, 0, :out_len]  # (B, P + L)
