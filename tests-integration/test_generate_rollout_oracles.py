"""Oracle tests: lego.generate's rollouts on a lego-arch model against transformers.

A tiny random ``LlamaForCausalLM`` is saved with ``save_pretrained`` and loaded through
``lego.arch.from_hf``; then:

- greedy rollouts (left-padded prompts of different lengths, ``n`` = 1 and 2, cached and
  uncached) give transformers' ``generate(do_sample=False)`` tokens, and their raw
  log-probabilities equal ``log_softmax`` of transformers' ``output_logits`` at the chosen
  tokens (1e-5);
- sampled rollouts with shared prefill: the returned raw and processed log-probabilities
  equal a transformers full forward pass over the finished sequences (``log_softmax(logits)``
  and ``log_softmax(logits / T)``, 1e-5), and the ``n`` shared-prefill samples equal ``n``
  repeated prompts sampled with the same seed.
"""

from __future__ import annotations

import pytest
import torch
from tiny_hf import VOCAB, tiny_llama
from transformers import PreTrainedModel

from lego.arch import DecoderLM, from_hf
from lego.generate import Rollout, rollout

EOS = 0
PROMPTS = [[5, 17, 33, 2, 61], [9, 44], [70, 3, 12]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[DecoderLM, PreTrainedModel]:
    torch.manual_seed(1)
    theirs = tiny_llama(bos_token_id=EOS, eos_token_id=EOS)
    theirs.train(False)
    folder = tmp_path_factory.mktemp("llama")
    theirs.save_pretrained(folder)
    return from_hf(folder), theirs


def _eos_hitting_prompts(theirs: PreTrainedModel) -> list[list[int]]:
    """PROMPTS plus one whose greedy continuation ends with EOS within 10 tokens, if any."""
    for first in range(1, VOCAB):
        ids = torch.tensor([[first, first]])
        out = theirs.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=EOS,
        )
        if EOS in out[0, 2:].tolist():
            return [*PROMPTS, [first, first]]
    return PROMPTS


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("n", [1, 2])
def test_greedy_rollout_equals_transformers_generate(
    pair: tuple[DecoderLM, PreTrainedModel], n: int, use_cache: bool
) -> None:
    ours, theirs = pair
    prompts = _eos_hitting_prompts(theirs)
    out = rollout(
        ours,
        prompts,
        n=n,
        max_new_tokens=10,
        eos_token_id=EOS,
        pad_token_id=EOS,
        use_cache=use_cache,
    )
    with torch.no_grad():
        reference = theirs.generate(
            out.prompt_ids,
            attention_mask=out.prompt_mask,
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=EOS,
            output_logits=True,
            return_dict_in_generate=True,
        )
    p = out.prompt_ids.shape[1]
    hf_ids = reference.sequences[:, p:]  # (B, N)
    hf_logprobs = torch.log_softmax(torch.stack(reference.logits, dim=1).float(), dim=-1)
    hf_chosen = hf_logprobs.gather(-1, hf_ids[..., None]).squeeze(-1)  # (B, N)
    rows = out.prompt_index
    assert torch.equal(out.completion_ids, hf_ids[rows])
    mask = out.completion_mask.bool()
    torch.testing.assert_close(out.logprobs[mask], hf_chosen[rows][mask], rtol=0, atol=1e-5)
    if len(prompts) > len(PROMPTS):  # the EOS prompt really finished with "stop"
        assert out.finish_reasons[-1] == "stop"
        assert out.completions[-1][-1] == EOS
    assert "length" in out.finish_reasons


def _hf_forward_logprobs(theirs: PreTrainedModel, out: Rollout) -> torch.Tensor:
    """transformers' log-softmaxed logits over the finished sequences, at the completions."""
    ids, mask = out.sequences()
    positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = theirs(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    p, n = out.prompt_ids.shape[1], out.completion_ids.shape[1]
    return logits[:, p - 1 : p - 1 + n].float()  # (R, N, V): the logits that chose each token


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_a_transformers_forward(
    pair: tuple[DecoderLM, PreTrainedModel], temperature: float
) -> None:
    ours, theirs = pair
    kwargs = {"n": 4, "max_new_tokens": 8, "temperature": temperature, "seed": 3}
    raw = rollout(ours, PROMPTS, eos_token_id=EOS, **kwargs)  # type: ignore[arg-type]
    processed = rollout(ours, PROMPTS, eos_token_id=EOS, logprobs="processed", **kwargs)  # type: ignore[arg-type]
    assert torch.equal(raw.completion_ids, processed.completion_ids)
    logits = _hf_forward_logprobs(theirs, raw)  # (R, N, V)
    index = raw.completion_ids[..., None]
    mask = raw.completion_mask.bool()
    expected_raw = torch.log_softmax(logits, dim=-1).gather(-1, index).squeeze(-1)
    expected_processed = torch.log_softmax(logits / temperature, dim=-1).gather(-1, index)
    torch.testing.assert_close(raw.logprobs[mask], expected_raw[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(
        processed.logprobs[mask], expected_processed.squeeze(-1)[mask], rtol=0, atol=1e-5
    )


def test_shared_prefill_samples_equal_independent_generations(
    pair: tuple[DecoderLM, PreTrainedModel],
) -> None:
    ours, _ = pair
    kwargs = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 5}
    shared = rollout(ours, PROMPTS, n=3, **kwargs)  # type: ignore[arg-type]
    repeated = rollout(ours, [p for p in PROMPTS for _ in range(3)], n=1, **kwargs)  # type: ignore[arg-type]
    assert torch.equal(shared.completion_ids, repeated.completion_ids)
    torch.testing.assert_close(shared.logprobs, repeated.logprobs, rtol=0, atol=1e-6)
    assert len({tuple(c) for c in shared.completions[:3]}) > 1
