"""decode_linears: native and oneDNN-packed linears while generating, restored afterwards."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.generate import GenerationConfig, generate, stream
from lego.generate.linears import DecodeLinears, can_pack, decode_linears, linear_kernels
from lego.generate.native import (
    NativeKernelsUnavailableWarning,
    build,
    native_status,
    prepare_skinny,
)
from lego.protocols import ConfigError
from lego.protocols import native as protocols_native

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


def test_max_rows_raises_the_native_limit() -> None:
    _needs_native()
    model = LinearLM().eval()
    weight = model.down.weight.detach()  # (32, 128): long enough sums to tell the kernels apart
    rows, more = torch.randn(12, 1, 128), torch.randn(17, 1, 128)
    native = prepare_skinny(weight)(rows)
    torch_out = F.linear(rows, weight)
    assert not torch.equal(native, torch_out)  # the two paths are distinguishable here
    with torch.inference_mode(), decode_linears(model) as count:
        assert count.native == 3
        default = model.down(rows)  # 12 rows: above MAX_ROWS, F.linear
    with torch.inference_mode(), decode_linears(model, max_rows=16):
        raised = model.down(rows)  # the kernels, row for row
        above = model.down(more)  # 17 rows: above max_rows, F.linear again
    assert torch.equal(default, torch_out)
    assert torch.equal(raised, native)
    assert torch.equal(above, F.linear(more, weight))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 12 rows are within max_rows: no warning
        with linear_kernels(model, native=True, pack=False, rows=12, max_rows=16) as counts:
            assert counts.native == 3


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


@pytest.mark.parametrize("batch", [1, 2])
def test_native_kernels_give_the_same_greedy_tokens(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_native()
    model = LinearLM().eval()  # fp32, well-separated logits, no KV cache
    # Without a cache each step recomputes the prefix: batch x 3 rows on the first step
    # (native), more than MAX_ROWS later on (F.linear).
    ids = torch.randint(0, 40, (batch, 2), generator=torch.Generator().manual_seed(2))
    calls: list[int] = []
    native_fns: list[Any] = []

    def counting_prepare(*args: Any) -> Any:
        prepared = prepare_skinny(*args)
        native_fns.append(prepared)

        def call(x: Tensor) -> Tensor:
            calls.append(math.prod(x.shape[:-1]))
            return prepared(x)

        return call

    monkeypatch.setattr("lego.generate.linears.prepare_skinny", counting_prepare)
    plain = generate(model, ids, max_new_tokens=12, native_kernels=False)
    assert not calls
    fast = generate(model, ids, max_new_tokens=12)  # native where it applies, by default
    assert torch.equal(plain, fast)
    assert len(native_fns) == 3
    assert calls
    assert max(calls) <= 8
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
    with pytest.raises(ConfigError, match=name):
        GenerationConfig(**{name: "yes"})
    with pytest.raises(ConfigError, match=name):
        GenerationConfig(**{name: 1})


def test_native_kernels_is_on_where_available_by_default() -> None:
    assert GenerationConfig().native_kernels is None  # None: where available, silently
    assert GenerationConfig(native_kernels=True).native_kernels is True
    base = GenerationConfig(native_kernels=False)
    assert GenerationConfig.from_options(base, native_kernels=None).native_kernels is False


# -- the routing is the engine's, for the generation only --------------------------------


class Interrupting(LinearLM):
    """Raises KeyboardInterrupt on the third call (a decode step), as a ^C would."""

    calls = 0

    def forward(self, input_ids: Tensor, /, **kwargs: Any) -> Tensor:
        self.calls += 1
        if self.calls == 3:
            assert "forward" in self.head.__dict__  # routed while generating
            raise KeyboardInterrupt
        return super().forward(input_ids, **kwargs)


def test_the_layers_are_restored_after_an_interrupt() -> None:
    _needs_native()
    model = Interrupting().eval()
    with pytest.raises(KeyboardInterrupt):
        generate(model, torch.ones(1, 3, dtype=torch.long), max_new_tokens=8)
    for layer in (model.up, model.down, model.head):
        assert "forward" not in layer.__dict__


def test_nn_linear_itself_is_never_changed() -> None:
    _needs_native()
    forward = nn.Linear.forward
    model = LinearLM().eval()
    with decode_linears(model) as count:
        assert count.native == 3
        assert nn.Linear.forward is forward
        assert "forward" not in nn.Linear(2, 2).__dict__  # other layers are plain
    assert nn.Linear.forward is forward


def test_a_nested_block_counts_the_layers_and_leaves_them_to_the_outer_one() -> None:
    _needs_native()
    model = LinearLM().eval()
    with decode_linears(model) as outer:
        routed = model.head.__dict__["forward"]
        with decode_linears(model) as inner:
            assert inner == outer == DecodeLinears(native=3)
        assert model.head.__dict__["forward"] is routed  # still routed by the outer block
    assert "forward" not in model.head.__dict__


def test_a_forward_of_someone_else_is_left_alone() -> None:
    _needs_native()
    model = LinearLM().eval()
    own = model.head.forward
    model.head.forward = own  # type: ignore[method-assign]
    with decode_linears(model) as count:
        assert count.native == 2
        assert model.head.__dict__["forward"] is own
    assert model.head.__dict__["forward"] is own


# -- native_kernels=True that cannot be honoured warns, once per reason ------------------


@pytest.fixture
def no_avx512(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A CPU without AVX-512, as far as the kernels know."""
    monkeypatch.setattr(protocols_native, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma"}))
    monkeypatch.setattr(protocols_native, "_loaded", {})
    build._load.cache_clear()
    yield
    monkeypatch.undo()
    build._load.cache_clear()


def _ids(batch: int = 1) -> Tensor:
    return torch.randint(0, 40, (batch, 4), generator=torch.Generator().manual_seed(0))


@pytest.mark.usefixtures("no_avx512", "fresh_warnings")
def test_explicit_native_kernels_warn_once_with_the_reason() -> None:
    model = LinearLM().eval()
    plain = generate(model, _ids(), max_new_tokens=4, native_kernels=False)
    with pytest.warns(NativeKernelsUnavailableWarning, match="this CPU lacks avx512f") as got:
        out = generate(model, _ids(), max_new_tokens=4, native_kernels=True)
    assert torch.equal(out, plain)  # PyTorch's kernels: same tokens
    assert got[0].filename == __file__  # points at the generate() call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, _ids(), max_new_tokens=4, native_kernels=True)  # said once
        generate(model, _ids(), max_new_tokens=4, generation_config=GenerationConfig())


@pytest.mark.usefixtures("no_avx512", "fresh_warnings")
def test_the_default_falls_back_silently(kit: Any) -> None:
    model = LinearLM(vocab=300).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, _ids(), max_new_tokens=4)
        "".join(stream(model, kit.ByteTokenizer(), "ab", max_new_tokens=4))


@pytest.mark.usefixtures("no_avx512", "fresh_warnings")
def test_stream_warns_too(kit: Any) -> None:
    model = LinearLM(vocab=300).eval()
    with pytest.warns(NativeKernelsUnavailableWarning, match="avx512f"):
        "".join(stream(model, kit.ByteTokenizer(), "ab", max_new_tokens=4, native_kernels=True))


@pytest.mark.usefixtures("fresh_warnings")
def test_a_model_the_kernels_cannot_take_warns() -> None:
    model = LinearLM().double().eval()
    with pytest.warns(NativeKernelsUnavailableWarning, match=r"torch\.float64 on cpu"):
        generate(model, _ids(), max_new_tokens=2, native_kernels=True)


@pytest.mark.usefixtures("fresh_warnings")
def test_too_many_rows_per_step_warn(model: Any) -> None:
    with pytest.warns(NativeKernelsUnavailableWarning, match="12 rows"):
        generate(model, _ids(12), max_new_tokens=2, native_kernels=True)
    with pytest.warns(NativeKernelsUnavailableWarning, match="24 rows"):
        generate(model, _ids(3), max_new_tokens=2, num_beams=8, native_kernels=True)
    with pytest.warns(NativeKernelsUnavailableWarning, match="10 rows"):  # 2 x (4 prompt + 1)
        generate(model, _ids(2), max_new_tokens=2, use_cache=False, native_kernels=True)
    with pytest.warns(NativeKernelsUnavailableWarning, match="the model has no nn.Linear"):
        generate(model, _ids(2), max_new_tokens=2, native_kernels=True)  # 2 rows: fine


@pytest.mark.usefixtures("fresh_warnings")
def test_a_model_that_is_not_a_module_warns() -> None:
    with (
        pytest.warns(NativeKernelsUnavailableWarning, match="not a torch.nn.Module"),
        linear_kernels(object(), native=True, pack=False, rows=1) as count,
    ):
        assert count == DecodeLinears()


def test_the_default_never_builds_for_a_model_it_cannot_help(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unexpected() -> None:
        raise AssertionError("native_status() was called")

    monkeypatch.setattr("lego.generate.linears.native_status", unexpected)
    generate(LinearLM().double().eval(), _ids(), max_new_tokens=2)  # float64: nothing to route
    generate(LinearLM().eval(), _ids(12), max_new_tokens=2)  # 12 rows per step
    generate(LinearLM().eval(), _ids(), max_new_tokens=2, native_kernels=False)
