"""packed_linears: oneDNN-prepacked bf16 linears while generating, restored afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.generate import generate, stream
from lego.generate.packing import can_pack, packed_linears

needs_onednn = pytest.mark.skipif(
    not can_pack(nn.Linear(2, 2).to(torch.bfloat16)), reason="this torch build has no oneDNN bf16"
)


class LinearLM(nn.Module):
    """Embedding, two nn.Linear layers with a GELU between, an nn.Linear head (no cache)."""

    def __init__(self, vocab: int = 40, d: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d, bias=False)
        self.head = nn.Linear(d, vocab)
        with torch.no_grad():
            self.head.weight.mul_(20.0)  # well-separated logits: no near ties in bf16

        class Config:
            vocab_size = vocab
            context_length = 64

            def to_dict(self) -> dict[str, Any]:
                return {"vocab_size": vocab, "context_length": 64}

        self.config = Config()

    def forward(self, input_ids: Tensor, /, **_: Any) -> Tensor:
        x = self.embed(input_ids).cumsum(dim=1)  # (B, T, d): causal by construction
        x = x + self.down(F.gelu(self.up(x)))  # (B, T, d)
        return self.head(x)  # (B, T, vocab)


@needs_onednn
def test_packed_linears_match_and_are_restored() -> None:
    model = LinearLM().to(torch.bfloat16).eval()
    x = torch.randn(3, 5, 32, dtype=torch.bfloat16)
    expected = model.up(x)
    with torch.inference_mode(), packed_linears(model) as count:
        assert count == 3
        assert "forward" in model.up.__dict__
        packed = model.up(x)
    torch.testing.assert_close(packed, expected, atol=0.05, rtol=0.02)
    for layer in (model.up, model.down, model.head):
        assert "forward" not in layer.__dict__  # nn.Linear.forward again
    assert torch.equal(model.up(x), expected)


def test_nothing_is_packed_outside_cpu_bf16() -> None:
    model = LinearLM().eval()  # fp32
    assert not can_pack(model.up)
    assert not can_pack(model.embed)
    with packed_linears(model) as count:
        assert count == 0
    assert "forward" not in model.up.__dict__


@needs_onednn
def test_generation_with_packed_weights_gives_the_same_tokens() -> None:
    model = LinearLM().to(torch.bfloat16).eval()
    ids = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(1))
    plain = generate(model, ids, max_new_tokens=10)
    packed = generate(model, ids, max_new_tokens=10, pack_weights=True)
    assert torch.equal(plain, packed)
    assert "forward" not in model.head.__dict__


@needs_onednn
def test_stream_restores_the_layers_even_when_closed_early(kit: Any) -> None:
    model = LinearLM(vocab=300).to(torch.bfloat16).eval()  # byte ids and specials fit
    tokenizer = kit.ByteTokenizer()
    pieces = stream(model, tokenizer, "ab", max_new_tokens=8, pack_weights=True)
    next(pieces)
    assert "forward" in model.head.__dict__  # packed while the stream runs
    pieces.close()
    assert "forward" not in model.head.__dict__


def test_pack_weights_must_be_a_bool() -> None:
    from lego.generate import GenerationConfig
    from lego.protocols import ConfigError

    with pytest.raises(ConfigError, match="pack_weights"):
        GenerationConfig(pack_weights="yes")  # type: ignore[arg-type]
