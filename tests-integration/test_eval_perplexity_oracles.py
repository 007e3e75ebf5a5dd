"""Oracle tests: lego.eval.perplexity on lego-arch models against independent computations.

Tiny random ``LlamaForCausalLM`` and ``GPT2LMHeadModel`` (tests-integration/tiny_hf.py) are
saved with ``save_pretrained`` and loaded through ``lego.arch.from_hf``. Then:

- every token's ``-ln p`` equals a direct computation with the transformers model: one
  forward pass per token over exactly the context our windows give it (written out here
  by hand), so nothing is scored twice, skipped, or scored with another context;
- the total equals lm-evaluation-harness's ``get_rolling_token_windows`` windows (with its
  end-of-text prefix) scored with the transformers model, for several ``context_len``
  (our ``stride = max_length - context_len + 1``);
- the total is the same for batch sizes 1, 3 and 8 (1e-6).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm_eval.utils import get_rolling_token_windows
from tiny_hf import VOCAB, tiny_gpt2, tiny_llama
from transformers import PreTrainedModel

from lego.arch import DecoderLM, from_hf
from lego.eval import perplexity

N = 150
CONTEXT = 64
EOT = 0


def _ids() -> list[int]:
    gen = torch.Generator().manual_seed(11)
    return torch.randint(1, VOCAB, (N,), generator=gen).tolist()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DecoderLM, PreTrainedModel]:
    torch.manual_seed(5)
    theirs = (tiny_llama if request.param == "llama" else tiny_gpt2)(
        bos_token_id=EOT, eos_token_id=EOT
    )
    theirs.train(False)
    folder: Path = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(folder)
    return from_hf(folder), theirs


def _context(t: int, n: int, max_length: int, stride: int) -> int:
    """Tokens before target ``t`` that the windows feed (by hand, as in the unit tests)."""
    if t <= max_length:
        return t
    j = (t - max_length - 1) // stride + 1
    last = min(max_length + j * stride, n - 1)
    return t - (last - max_length)


def _hf_logprobs(model: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()  # (T, V)
    return torch.log_softmax(logits, -1)


@pytest.mark.parametrize(("max_length", "stride"), [(64, 64), (64, 20), (16, 5), (16, 1)])
def test_every_token_matches_a_direct_computation(
    pair: tuple[DecoderLM, PreTrainedModel], max_length: int, stride: int
) -> None:
    ours, theirs = pair
    ids = _ids()
    result = perplexity(
        ours, ids, max_length=max_length, stride=stride, batch_size=4, return_token_nlls=True
    )
    direct = []
    for t in range(1, N):
        context = _context(t, N, max_length, stride)
        direct.append(-float(_hf_logprobs(theirs, ids[t - context : t])[-1, ids[t]]))
    assert result.num_tokens == N - 1
    assert result.token_nlls is not None
    assert result.token_nlls.tolist() == pytest.approx(direct, abs=2e-5)
    assert result.total_nats == pytest.approx(sum(direct), rel=1e-6)


@pytest.mark.parametrize(("max_seq_len", "context_len"), [(64, 1), (64, 33), (16, 1), (16, 12)])
def test_equals_lm_eval_rolling_windows(
    pair: tuple[DecoderLM, PreTrainedModel], max_seq_len: int, context_len: int
) -> None:
    ours, theirs = pair
    ids = _ids()
    windows = list(get_rolling_token_windows(ids, EOT, max_seq_len, context_len))
    total = 0.0
    scored = 0
    for inputs, predicted in windows:
        logprobs = _hf_logprobs(theirs, inputs)[-len(predicted) :]  # (len(predicted), V)
        total -= float(logprobs.gather(1, torch.tensor(predicted)[:, None]).sum())
        scored += len(predicted)
    result = perplexity(
        ours,
        ids,
        max_length=max_seq_len,
        stride=max_seq_len - context_len + 1,
        prefix_id=EOT,
        batch_size=3,
    )
    assert scored == result.num_tokens == N  # every token, the first one too
    assert result.num_windows == len(windows)
    assert result.total_nats == pytest.approx(total, rel=1e-6)


def test_batch_size_does_not_change_the_result(pair: tuple[DecoderLM, PreTrainedModel]) -> None:
    ours, _ = pair
    ids = _ids()
    totals = [
        perplexity(ours, ids, max_length=16, stride=6, batch_size=b).total_nats for b in (1, 3, 8)
    ]
    assert totals[1] == pytest.approx(totals[0], rel=1e-6, abs=0)
    assert totals[2] == pytest.approx(totals[0], rel=1e-6, abs=0)
