"""decode_linears: native and oneDNN-packed linears while generating, restored afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.generate import generate, stream
from lego.generate.linears import DecodeLinears, can_pack, decode_linears
from lego.generate.native import native_status

needs_onednn = pytest.mark.skipif(
    not can_pack(nn.Linear(2, 2).to(torch.bfloat16)), reason="this torch build has no oneDNN bf16"
)


def _needs_native() -> None:
    status = native_status()
    if not status.available:
        pytest.skip(f"no native kernels here: {status.reason}")


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
    x = torch.randn(3, 5, 32, dtype=torch.bfloat16)  # 15 rows: more than native takes
    expected = model.up(x)
    with torch.inference_mode(), decode_linears(model, native=False, pack=True) as count:
        assert count == DecodeLinears(native=0, packed=3)
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
    with decode_linears(model, native=False, pack=True) as count:
        assert count == DecodeLinears()
    assert "forward" not in model.up.__dict__


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_few_rows_go_native_and_the_rest_to_torch(dtype: torch.dtype) -> None:
    _needs_native()
    model = LinearLM().to(dtype).eval()
    few = torch.randn(2, 1, 32, dtype=dtype)  # a decode step at batch 2
    many = torch.randn(3, 5, 32, dtype=dtype)  # a prefill: 15 rows
    expected_few, expected_many = model.up(few), model.up(many)
    with torch.inference_mode(), decode_linears(model) as count:
        assert count == DecodeLinears(native=3, packed=0)
        got_few, got_many = model.up(few), model.up(many)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(got_few, expected_few, **tolerance)
    assert torch.equal(got_many, expected_many)  # F.linear itself
    assert "forward" not in model.up.__dict__


def test_calls_that_need_gradients_run_f_linear() -> None:
    _needs_native()
    model = LinearLM().eval()
    x = torch.randn(1, 32, requires_grad=True)
    with decode_linears(model) as count:
        assert count.native == 3
        y = model.up(x)
    y.sum().backward()  # a native call would have no graph
    assert x.grad is not None
    assert x.grad.abs().sum() > 0


def test_native_kernels_give_the_same_greedy_tokens() -> None:
    _needs_native()
    model = LinearLM().eval()  # fp32, well-separated logits
    ids = torch.randint(0, 40, (3, 4), generator=torch.Generator().manual_seed(2))
    plain = generate(model, ids, max_new_tokens=12, native_kernels=False)
    fast = generate(model, ids, max_new_tokens=12)  # native by default
    assert torch.equal(plain, fast)
    assert "forward" not in model.head.__dict__


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


@pytest.mark.parametrize("name", ["pack_weights", "native_kernels"])
def test_kernel_switches_must_be_bools(name: str) -> None:
    from lego.generate import GenerationConfig
    from lego.protocols import ConfigError

    with pytest.raises(ConfigError, match=name):
        GenerationConfig(**{name: "yes"})
