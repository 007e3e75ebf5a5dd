"""Packed sequences: ``document_ids`` keeps the documents of a row apart in the attention.

The property every test checks in some form: a row packing several documents (positions
restarting at 0 for each) computes, on every real token, what each document computes when
run alone; padding never reaches a real token and never produces NaN.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from lego.layers import (
    CausalSelfAttention,
    GatedMLP,
    RMSNorm,
    RotaryEmbedding,
    StaticLayerKVCache,
    TransformerBlock,
)
from lego.layers.attention import BACKENDS
from lego.protocols import CompatibilityError, ConfigError, DataError

EXACT = {"rtol": 1e-6, "atol": 1e-6}
"""Packed against separate runs in fp32: the same products, only summed in another order."""

CONFIGS: dict[str, dict[str, Any]] = {
    "gqa-rope": {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "rope": True},
    "mqa-rope": {"d_model": 32, "n_heads": 4, "n_kv_heads": 1, "rope": True},
    "gpt2-fused-bias": {"d_model": 32, "n_heads": 4, "fused_qkv": True, "bias": True},
    "qwen3-qknorm": {"d_model": 24, "n_heads": 4, "n_kv_heads": 2, "head_dim": 10, "rope": True,
                     "qk_norm": True},
    "window": {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "sliding_window": 3, "rope": True},
}  # fmt: skip


def _attention(name: str, backend: str) -> CausalSelfAttention:
    kwargs = dict(CONFIGS[name])
    rope = kwargs.pop("rope", False)
    head_dim = kwargs.get("head_dim") or kwargs["d_model"] // kwargs["n_heads"]
    rotary = RotaryEmbedding(head_dim=head_dim, base=500.0) if rope else None
    attn = CausalSelfAttention.build(**kwargs, rotary=rotary, backend=backend)  # type: ignore[arg-type]
    with torch.no_grad():  # QK-norm scales away from 1, so a wrong norm axis would show
        for norm in (attn.q_norm, attn.k_norm):
            if isinstance(norm, nn.Module):
                for param in norm.parameters():
                    param.uniform_(0.5, 1.5)
    return attn


def _pack(
    documents: list[Tensor], length: int
) -> tuple[Tensor, Tensor, Tensor, list[tuple[int, int]]]:
    """Pack ``(1, T_i, D)`` documents into one ``(1, length, D)`` row, padding at the end.

    Returns the row, its ``document_ids`` and ``position_ids`` (each ``(1, length)``) and
    the ``(start, end)`` span of every document.
    """
    d = documents[0].shape[-1]
    used = sum(doc.shape[1] for doc in documents)
    pad = length - used
    row = torch.cat([*documents, torch.randn(1, pad, d) * 7.0], dim=1)  # (1, length, D)
    ids: list[int] = []
    positions: list[int] = []
    spans: list[tuple[int, int]] = []
    for n, doc in enumerate(documents):
        spans.append((len(ids), len(ids) + doc.shape[1]))
        ids += [n] * doc.shape[1]
        positions += list(range(doc.shape[1]))
    ids += [-1] * pad
    positions += list(range(pad))
    return row, torch.tensor([ids]), torch.tensor([positions]), spans


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_packed_row_equals_the_documents_run_alone(name: str, backend: str) -> None:
    attn = _attention(name, backend)
    d = attn.d_model or 0
    documents = [torch.randn(1, n, d) for n in (5, 1, 4)]
    row, doc_ids, positions, spans = _pack(documents, 13)
    packed = attn(row, position_ids=positions, document_ids=doc_ids)  # (1, 13, D)
    assert torch.isfinite(packed).all()
    for doc, (start, end) in zip(documents, spans, strict=True):
        torch.testing.assert_close(packed[:, start:end], attn(doc), **EXACT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_batch_of_rows_equals_the_documents_run_alone(backend: str) -> None:
    """Two rows, packed differently; one row without padding, one padding-only row."""
    attn = _attention("gqa-rope", backend)
    docs_a = [torch.randn(1, n, 32) for n in (3, 3, 2)]
    docs_b = [torch.randn(1, n, 32) for n in (6,)]
    row_a, ids_a, pos_a, spans_a = _pack(docs_a, 8)
    row_b, ids_b, pos_b, spans_b = _pack(docs_b, 8)
    row_c = torch.randn(1, 8, 32)
    ids_c, pos_c = torch.full((1, 8), -1), torch.arange(8)[None]
    packed = attn(
        torch.cat([row_a, row_b, row_c]),
        position_ids=torch.cat([pos_a, pos_b, pos_c]),
        document_ids=torch.cat([ids_a, ids_b, ids_c]),
    )  # (3, 8, 32)
    assert torch.isfinite(packed).all()
    for r, (docs, spans) in enumerate(((docs_a, spans_a), (docs_b, spans_b))):
        for doc, (start, end) in zip(docs, spans, strict=True):
            torch.testing.assert_close(packed[r : r + 1, start:end], attn(doc), **EXACT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_equal_the_separate_runs(backend: str) -> None:
    attn = _attention("qwen3-qknorm", backend)
    documents = [torch.randn(1, n, 24, requires_grad=True) for n in (4, 3)]
    weights = [torch.randn(1, n, 24) for n in (4, 3)]  # a loss that weighs every output

    separate = sum((attn(doc) * w).sum() for doc, w in zip(documents, weights, strict=True))
    assert isinstance(separate, Tensor)
    expected_inputs = torch.autograd.grad(separate, documents, retain_graph=True)
    expected_params = torch.autograd.grad(separate, list(attn.parameters()))

    leaves = [doc.detach().clone().requires_grad_(True) for doc in documents]
    row, doc_ids, positions, spans = _pack(leaves, 9)
    out = attn(row, position_ids=positions, document_ids=doc_ids)  # (1, 9, 24)
    packed = sum(
        (out[:, s:e] * w).sum() for (s, e), w in zip(spans, weights, strict=True)
    )  # the padding's outputs are not part of the loss
    assert isinstance(packed, Tensor)
    got_inputs = torch.autograd.grad(packed, leaves, retain_graph=True)
    got_params = torch.autograd.grad(packed, list(attn.parameters()))
    for got, expected in zip(got_inputs, expected_inputs, strict=True):
        torch.testing.assert_close(got, expected, **EXACT)
    for got, expected in zip(got_params, expected_params, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_never_reaches_a_real_token_and_stays_finite(backend: str) -> None:
    attn = _attention("gqa-rope", backend)
    documents = [torch.randn(1, n, 32) for n in (3, 2)]
    row, doc_ids, positions, _ = _pack(documents, 9)
    before = attn(row, position_ids=positions, document_ids=doc_ids)
    changed = row.clone()
    changed[:, 5:] = torch.randn(1, 4, 32) * 100.0  # only the padding changes
    after = attn(changed, position_ids=positions, document_ids=doc_ids)
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=0, atol=0)
    assert torch.isfinite(after).all()
    # a padding query attends to its own slot only (the module's convention for padding)
    _, weights = attn.forward_with_weights(changed, position_ids=positions, document_ids=doc_ids)
    pad_rows = weights[0, :, 5:, :]  # (H, 4, 9)
    torch.testing.assert_close(pad_rows, torch.eye(9)[5:].expand_as(pad_rows), rtol=0, atol=0)


def test_weights_stay_inside_each_document() -> None:
    attn = _attention("gqa-rope", "sdpa")
    row, doc_ids, positions, spans = _pack([torch.randn(1, n, 32) for n in (3, 4)], 8)
    _, weights = attn.forward_with_weights(row, position_ids=positions, document_ids=doc_ids)
    assert weights.shape == (1, 4, 8, 8)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 8))
    same = doc_ids[0, :, None] == doc_ids[0, None, :]  # (T, T)
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    allowed = (same & causal & (doc_ids[0] >= 0)[None, :]) | torch.eye(8, dtype=torch.bool)
    assert (weights[..., ~allowed] == 0).all()
    assert (weights[..., allowed] > 0).all()  # every allowed key does get some weight
    assert spans == [(0, 3), (3, 7)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_combined_with_attention_mask(backend: str) -> None:
    """attention_mask removes keys inside a document too (here: document 1 left-padded)."""
    attn = _attention("gqa-rope", backend)
    first = torch.randn(1, 3, 32)
    second = torch.randn(1, 4, 32)  # its first token is padding by attention_mask
    row = torch.cat([first, second], dim=1)  # (1, 7, 32)
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 0, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 0, 0, 1, 2]])
    packed = attn(row, position_ids=positions, attention_mask=mask, document_ids=doc_ids)
    alone = attn(
        second, position_ids=torch.tensor([[0, 0, 1, 2]]), attention_mask=mask[:, 3:]
    )  # the left-padded document run alone
    torch.testing.assert_close(packed[:, :3], attn(first), **EXACT)
    torch.testing.assert_close(packed[:, 4:], alone[:, 1:], **EXACT)
    assert torch.isfinite(packed).all()


def test_document_numbers_need_only_differ() -> None:
    attn = _attention("gqa-rope", "sdpa")
    x = torch.randn(2, 6, 32)
    positions = torch.tensor([0, 1, 2, 0, 1, 2])
    small = attn(x, position_ids=positions, document_ids=torch.tensor([[0, 0, 0, 1, 1, 1]] * 2))
    large = attn(x, position_ids=positions, document_ids=torch.tensor([[7, 7, 7, 3, 3, 3]] * 2))
    torch.testing.assert_close(large, small, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_document_per_row_changes_nothing(backend: str) -> None:
    attn = _attention("window", backend)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(
        attn(x, document_ids=torch.zeros(2, 7, dtype=torch.long)), attn(x), **EXACT
    )


def test_backends_agree(dtype: torch.dtype) -> None:
    sdpa = _attention("gqa-rope", "sdpa").to(dtype)
    math_ = _attention("gqa-rope", "math").to(dtype)
    math_.load_state_dict(sdpa.state_dict())
    row, doc_ids, positions, _ = _pack([torch.randn(1, n, 32) for n in (4, 2, 3)], 11)
    row = row.to(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(
        sdpa(row, position_ids=positions, document_ids=doc_ids),
        math_(row, position_ids=positions, document_ids=doc_ids),
        **tol,
    )


@given(lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4), pad=st.integers(0, 3))
@settings(max_examples=15, deadline=None)
def test_any_packing_equals_the_separate_runs(lengths: list[int], pad: int) -> None:
    torch.manual_seed(2)
    attn = _attention("gqa-rope", "sdpa")
    documents = [torch.randn(1, n, 32) for n in lengths]
    row, doc_ids, positions, spans = _pack(documents, sum(lengths) + pad)
    packed = attn(row, position_ids=positions, document_ids=doc_ids)
    assert torch.isfinite(packed).all()
    for doc, (start, end) in zip(documents, spans, strict=True):
        torch.testing.assert_close(packed[:, start:end], attn(doc), **EXACT)


def test_refused_with_a_cache_that_holds_positions() -> None:
    attn = _attention("gqa-rope", "sdpa")
    cache = StaticLayerKVCache(batch_size=1, max_seq_len=8, n_kv_heads=2, head_dim=8)
    attn(torch.randn(1, 2, 32), kv_cache=cache)
    with pytest.raises(ConfigError, match="kv_cache that holds 2") as info:
        attn(torch.randn(1, 3, 32), kv_cache=cache, document_ids=torch.zeros(1, 3).long())
    assert info.value.key == "document_ids"
    assert cache.seq_len == 2  # refused before anything was appended


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_a_packed_prefill_into_an_empty_cache_caches_each_document(backend: str) -> None:
    torch.manual_seed(0)
    attn = _attention("gqa-rope", backend).eval()
    documents = [torch.randn(1, n, 32) for n in (4, 2, 3)]
    row, doc_ids, positions, spans = _pack(documents, 9)  # no padding
    cache = StaticLayerKVCache(batch_size=1, max_seq_len=16, n_kv_heads=2, head_dim=8)
    with torch.no_grad():
        packed = attn(row, position_ids=positions, kv_cache=cache, document_ids=doc_ids)
    assert cache.seq_len == 9
    for doc, (start, end) in zip(documents, spans, strict=True):
        own = StaticLayerKVCache(batch_size=1, max_seq_len=16, n_kv_heads=2, head_dim=8)
        with torch.no_grad():
            alone = attn(doc, kv_cache=own)
        torch.testing.assert_close(packed[:, start:end], alone, **EXACT)
        torch.testing.assert_close(
            cache.k_cache[:, :, start:end], own.k_cache[:, :, : end - start], **EXACT
        )


@pytest.mark.parametrize(
    "document_ids",
    [torch.zeros(2, 5).long(), torch.zeros(1, 4).long(), torch.zeros(4).long(), torch.zeros(2, 4)],
    ids=["long", "one-row", "1-d", "float"],
)
def test_bad_document_ids_name_the_tensor(document_ids: Tensor) -> None:
    attn = _attention("gqa-rope", "sdpa")
    with pytest.raises(DataError, match=r"\(2, 4\)") as info:
        attn(torch.randn(2, 4, 32), document_ids=document_ids)
    assert info.value.tensor == "document_ids"


# -- the block passes them through ---------------------------------------------------------


def _block(attention: nn.Module, *, checkpointing: bool = False) -> TransformerBlock:
    return TransformerBlock(
        attention=attention,  # type: ignore[arg-type]
        attention_norm=RMSNorm(dim=32),
        feed_forward=GatedMLP.build(d_model=32, d_ff=64),
        ffn_norm=RMSNorm(dim=32),
        activation_checkpointing=checkpointing,
    )


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_block_packed_equals_separate(checkpointing: bool) -> None:
    block = _block(_attention("gqa-rope", "sdpa"), checkpointing=checkpointing).train()
    documents = [torch.randn(1, n, 32) for n in (4, 3)]
    row, doc_ids, positions, spans = _pack(documents, 8)
    row.requires_grad_(True)
    packed = block(row, position_ids=positions, document_ids=doc_ids)  # (1, 8, 32)
    for doc, (start, end) in zip(documents, spans, strict=True):
        torch.testing.assert_close(packed[:, start:end], block(doc), **EXACT)
    # gradients flow to the documents only through their own outputs
    packed[:, :4].sum().backward()
    assert row.grad is not None
    assert (row.grad[:, 4:] == 0).all()
    assert (row.grad[:, :4] != 0).any()


class _NoDocuments(nn.Module):
    """An attention whose forward knows nothing of documents."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 32)

    def forward(
        self,
        x: Tensor,
        /,
        *,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache: Any = None,
    ) -> Tensor:
        return self.proj(x)


def test_block_refuses_document_ids_its_attention_cannot_take() -> None:
    block = _block(_NoDocuments())
    x = torch.randn(1, 4, 32)
    assert block(x).shape == (1, 4, 32)  # without document_ids it runs as before
    with pytest.raises(CompatibilityError, match="_NoDocuments"):
        block(x, document_ids=torch.zeros(1, 4).long())
