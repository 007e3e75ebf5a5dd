"""lego.eval.scoring: the output head applied to chosen positions only, and its fallbacks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lego.eval import perplexity
from lego.eval.harness_scoring import score_continuations
from lego.eval.scoring import OutputHead
from lego.protocols import ConfigError, ModelConfig

VOCAB, DIM, CONTEXT = 23, 8, 32


class HeadLM(nn.Module):
    """Embeddings, one causal mixing layer, then ``lm_head`` (optionally scaled after it)."""

    def __init__(self, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.config = ModelConfig(vocab_size=VOCAB, context_length=CONTEXT)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(CONTEXT, DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.lm_head = nn.Linear(DIM, VOCAB)
        self.scale = scale
        self.calls = 0

    def forward(self, ids: Tensor, **kwargs: Any) -> Tensor:
        self.calls += 1
        t = ids.shape[1]
        x = self.embed(ids) + self.pos(torch.arange(t))[None]  # (B, T, D)
        x = torch.cumsum(torch.tanh(self.mix(x)), dim=1) / torch.arange(1, t + 1)[None, :, None]
        return self.lm_head(x) * self.scale  # (B, T, V)


class OtherName(HeadLM):
    """The same model, its head under another name (no ``lm_head``)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = self.lm_head
        del self.lm_head

    def forward(self, ids: Tensor, **kwargs: Any) -> Tensor:
        t = ids.shape[1]
        x = self.embed(ids) + self.pos(torch.arange(t))[None]
        x = torch.cumsum(torch.tanh(self.mix(x)), dim=1) / torch.arange(1, t + 1)[None, :, None]
        out: Tensor = self.head(x)
        return out


def _rows(model: nn.Module, ids: Tensor, positions: Tensor) -> Tensor:
    with torch.inference_mode():
        return model(ids).reshape(-1, VOCAB)[positions]


def test_the_head_runs_on_the_chosen_positions_only() -> None:
    model = HeadLM().eval()
    head = OutputHead(model)  # type: ignore[arg-type]
    assert head.partial
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([0, 9, 13, 29])
    seen: list[tuple[int, ...]] = []
    hook = model.lm_head.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    with torch.inference_mode():
        rows = head.logits_at(ids, positions)
    hook.remove()
    assert seen == [(3, 0, VOCAB), (4, VOCAB)]  # nothing in the forward, 4 rows after it
    assert torch.allclose(rows, _rows(model, ids, positions), atol=1e-6)


@pytest.mark.parametrize("model", [HeadLM(scale=2.0), OtherName()], ids=["scaled", "no-lm_head"])
def test_models_whose_logits_are_not_the_head_fall_back(model: nn.Module) -> None:
    head = OutputHead(model.eval())  # type: ignore[arg-type]
    assert not head.partial
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([1, 6, 8])
    with torch.inference_mode():
        rows = head.logits_at(ids, positions)
    assert torch.equal(rows, _rows(model, ids, positions))


def test_the_probe_runs_once_per_model() -> None:
    model = HeadLM().eval()
    OutputHead(model)  # type: ignore[arg-type]
    calls = model.calls
    assert calls == 2  # the full probe and the probe with the head skipped
    OutputHead(model)  # type: ignore[arg-type]
    assert model.calls == calls
    model.lm_head = nn.Linear(DIM, VOCAB)  # a new head is probed again
    OutputHead(model)  # type: ignore[arg-type]
    assert model.calls == calls + 2


def test_scores_and_perplexity_equal_the_full_forward() -> None:
    model = HeadLM().eval()
    same = OtherName().eval()  # the same weights (seed 0), the full forward
    same.load_state_dict(
        {
            ("head" + k[7:] if k.startswith("lm_head") else k): v
            for k, v in model.state_dict().items()
        }
    )
    gen = torch.Generator().manual_seed(3)
    requests = [
        (
            torch.randint(0, VOCAB, (n,), generator=gen).tolist(),
            torch.randint(0, VOCAB, (k,), generator=gen).tolist(),
        )
        for n, k in [(1, 1), (5, 3), (12, 7), (30, 4), (2, 9)]
    ]
    ours = score_continuations(model, requests, batch_size=2)  # type: ignore[arg-type]
    full = score_continuations(same, requests, batch_size=2)  # type: ignore[arg-type]
    for (a, flag_a), (b, flag_b) in zip(ours, full, strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6)
        assert flag_a == flag_b
    ids = torch.randint(0, VOCAB, (90,), generator=gen).tolist()
    ppl = perplexity(model, ids, max_length=16, stride=5, batch_size=3)  # type: ignore[arg-type]
    ref = perplexity(same, ids, max_length=16, stride=5, batch_size=3)  # type: ignore[arg-type]
    assert ppl.total_nats == pytest.approx(ref.total_nats, rel=1e-6)
    assert ppl.num_tokens == ref.num_tokens == 89


def test_sharing_contexts_needs_a_kv_cache() -> None:
    with pytest.raises(ConfigError, match="new_kv_cache"):
        score_continuations(HeadLM(), [([1, 2], [3])], share_contexts=True)  # type: ignore[arg-type]
