"""lego-eval's shared-context scoring on lego-arch models: the same scores as one row each.

``score_continuations`` reads each distinct context once into a KV cache and copies it to
each continuation (``share_contexts``, on for any model with ``new_kv_cache``), and applies
the output head to the scored positions only. On small random GPT-2 (learned positions)
and Llama (RoPE, grouped-query attention) shapes from lego-arch, with contexts shared by
1-4 continuations, one-token continuations, contexts cut from the left and batches whose
caches would overflow the context length, the scores equal a direct forward of each
request alone and the one-row-per-request path, at batch sizes 1, 3 and 8; the perplexity
with the head on the scored positions only equals the full forward's.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import lego.arch
from lego.eval import perplexity
from lego.eval.harness_scoring import score_continuations
from lego.eval.scoring import OutputHead

CONTEXT, VOCAB = 96, 300
SHAPES = {
    "gpt2": {"n_layers": 2, "d_model": 64, "n_heads": 4},
    "llama-3.2-1b": {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 128},
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def model(request: pytest.FixtureRequest) -> Any:
    torch.manual_seed(0)
    built = lego.arch.build(
        request.param, context_length=CONTEXT, vocab_size=VOCAB, **SHAPES[request.param]
    )
    with torch.no_grad():  # weights large enough that the scores differ visibly
        for parameter in built.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, 0.2)
    return built.eval()


def _requests() -> list[tuple[list[int], list[int]]]:
    rng = random.Random(0)
    out: list[tuple[list[int], list[int]]] = []
    for _ in range(14):
        context = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 90))]
        for _ in range(rng.randint(1, 4)):
            out.append((context, [rng.randrange(VOCAB) for _ in range(rng.randint(1, 30))]))
    out.append(([5] * 95, [1, 2, 3]))  # cut from the left
    out.append(([7] * 3, [rng.randrange(VOCAB) for _ in range(90)]))  # overflows a batch
    out.append(([7] * 3, [4]))  # the same context, one token
    return out


def _alone(model: Any, requests: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    out = []
    with torch.inference_mode():
        for context, continuation in requests:
            whole = (context + continuation)[-(CONTEXT + 1) :]
            logits = model(torch.tensor(whole[:-1])[None])[0, -len(continuation) :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            target = torch.tensor(continuation)
            chosen = logprobs.gather(-1, target[:, None]).sum()
            out.append((float(chosen), bool((logprobs.argmax(-1) == target).all())))
    return out


def test_shared_contexts_score_as_each_request_alone(model: Any) -> None:
    requests = _requests()
    expected = _alone(model, requests)
    assert OutputHead(model).partial
    runs = {
        (share, b): score_continuations(model, requests, batch_size=b, share_contexts=share)
        for share in (True, False)
        for b in (1, 3, 8)
    }
    for run in runs.values():
        for (logprob, greedy), (want, want_greedy) in zip(run, expected, strict=True):
            assert logprob == pytest.approx(want, rel=1e-6, abs=1e-4)
            assert greedy == want_greedy
    for key in runs:  # batch size and path change only float rounding
        for (a, flag_a), (b, flag_b) in zip(runs[key], runs[(True, 1)], strict=True):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-5)
            assert flag_a == flag_b
    assert len({round(lp, 2) for lp, _ in expected}) > len(expected) // 2  # not constants
    # the default shares contexts for a model with a KV cache
    assert score_continuations(model, requests, batch_size=8) == runs[(True, 8)]


class _FullForward(nn.Module):
    """The model behind a wrapper without ``lm_head``: logits at every position."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, ids: Tensor, **kwargs: Any) -> Tensor:
        out: Tensor = self.inner(ids, **kwargs)
        return out


def test_perplexity_on_scored_positions_equals_the_full_forward(model: Any) -> None:
    ids = torch.randint(0, VOCAB, (400,), generator=torch.Generator().manual_seed(1)).tolist()
    full = _FullForward(model)
    assert not OutputHead(full).partial
    for stride, batch in ((48, 3), (96, 2), (17, 8)):
        ours = perplexity(model, ids, max_length=CONTEXT, stride=stride, batch_size=batch)
        ref = perplexity(full, ids, max_length=CONTEXT, stride=stride, batch_size=batch)
        assert ours.num_tokens == ref.num_tokens == 399
        assert ours.total_nats == pytest.approx(ref.total_nats, rel=1e-6)
