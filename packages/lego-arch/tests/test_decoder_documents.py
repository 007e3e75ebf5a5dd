"""DecoderLM with packed rows: ``document_ids`` (and restarting positions) = separate runs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lego.arch import DecoderLM, build, document_positions
from lego.protocols import ConfigError, DataError

EXACT = {"rtol": 1e-6, "atol": 1e-6}
"""Packed against separate runs in fp32: the same products, only summed in another order."""


def _packed(
    model: DecoderLM, lengths: list[list[int]], length: int
) -> tuple[Tensor, Tensor, Tensor, list[list[tuple[int, int, Tensor]]]]:
    """Random documents packed into rows of ``length`` tokens, padded at the end.

    Returns ``input_ids``, ``document_ids`` and ``position_ids`` (each ``(B, length)``) and,
    per row, every document's ``(start, end, ids)``.
    """
    vocab = model.config.vocab_size
    rows, docs, positions, layout = [], [], [], []
    for row_lengths in lengths:
        ids: list[Tensor] = []
        numbers: list[int] = []
        places: list[int] = []
        spans: list[tuple[int, int, Tensor]] = []
        for n, size in enumerate(row_lengths):
            doc = torch.randint(0, vocab, (size,))
            spans.append((len(numbers), len(numbers) + size, doc))
            ids.append(doc)
            numbers += [n] * size
            places += list(range(size))
        pad = length - len(numbers)
        ids.append(torch.randint(0, vocab, (pad,)))
        numbers += [-1] * pad
        places += list(range(pad))
        rows.append(torch.cat(ids))
        docs.append(torch.tensor(numbers))
        positions.append(torch.tensor(places))
        layout.append(spans)
    return torch.stack(rows), torch.stack(docs), torch.stack(positions), layout


@pytest.mark.parametrize("explicit_positions", [True, False], ids=["positions", "derived"])
def test_packed_logits_equal_the_documents_run_alone(tiny: str, explicit_positions: bool) -> None:
    """GPT-2's learned positions and the RoPE families alike restart at every document."""
    model = build(tiny).eval()
    ids, doc_ids, positions, layout = _packed(model, [[5, 2, 4], [9], [3, 3, 3, 2]], 12)
    with torch.no_grad():
        packed = model(
            ids,
            attention_mask=(doc_ids >= 0).long(),
            position_ids=positions if explicit_positions else None,
            document_ids=doc_ids,
        )  # (3, 12, vocab)
        assert torch.isfinite(packed).all()
        for r, spans in enumerate(layout):
            for start, end, doc in spans:
                alone = model(doc[None])  # (1, n, vocab)
                torch.testing.assert_close(packed[r : r + 1, start:end], alone, **EXACT)


def test_without_document_ids_the_documents_see_each_other() -> None:
    """The control: the same packed row without document_ids is not the separate runs."""
    model = build("llama-tiny").eval()
    ids, doc_ids, positions, layout = _packed(model, [[4, 4]], 8)
    with torch.no_grad():
        crossed = model(ids, position_ids=positions)
        kept = model(ids, position_ids=positions, document_ids=doc_ids)
        alone = model(layout[0][1][2][None])
    torch.testing.assert_close(kept[:, 4:], alone, **EXACT)
    assert not torch.allclose(crossed[:, 4:], alone, atol=1e-3)
    torch.testing.assert_close(crossed[:, :4], kept[:, :4], **EXACT)  # the first is alone


@pytest.mark.parametrize("name", ["gpt2-tiny", "qwen3-tiny"])
def test_packed_gradients_equal_the_separate_runs(name: str) -> None:
    model = build(name).train()  # dropout is 0 in the tiny presets: training is deterministic
    ids, doc_ids, positions, layout = _packed(model, [[6, 3], [5, 4]], 10)
    targets = torch.randint(0, model.config.vocab_size, ids.shape)  # (B, T)

    model.zero_grad()
    for r, spans in enumerate(layout):
        for start, end, doc in spans:
            logits = model(doc[None])  # (1, n, vocab)
            loss = torch.nn.functional.cross_entropy(
                logits[0], targets[r, start:end], reduction="sum"
            )
            loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    logits = model(ids, position_ids=positions, document_ids=doc_ids)  # (B, T, vocab)
    labels = targets.masked_fill(doc_ids < 0, -100)  # the padding is not trained
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), reduction="sum", ignore_index=-100
    )
    loss.backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    assert len(got) == len(list(model.parameters()))
    for n, grad in got.items():
        torch.testing.assert_close(grad, expected[n], rtol=1e-5, atol=1e-6, msg=n)


def test_activation_checkpointing_keeps_documents_apart() -> None:
    model = build("llama-tiny").train()
    ids, doc_ids, positions, _ = _packed(model, [[5, 5]], 11)
    plain = model(ids, position_ids=positions, document_ids=doc_ids)
    model.activation_checkpointing = True
    checkpointed = model(ids, position_ids=positions, document_ids=doc_ids)
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=0)


def test_hidden_states_and_attention_weights_take_document_ids() -> None:
    model = build("qwen3-tiny").eval()
    ids, doc_ids, positions, _ = _packed(model, [[3, 4]], 8)
    out = model(ids, position_ids=positions, document_ids=doc_ids, output_hidden_states=True)
    torch.testing.assert_close(
        out.logits, model(ids, position_ids=positions, document_ids=doc_ids), rtol=0, atol=0
    )
    maps = model.attention_weights(ids, position_ids=positions, document_ids=doc_ids)
    assert len(maps) == model.config.n_layers
    for weights in maps:  # (1, H, 8, 8): nothing crosses from document 1 into document 0
        assert (weights[..., 3:7, :3] == 0).all()
        assert (weights[..., :7, 7] == 0).all()  # no real token sees the padding
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))


def test_document_positions() -> None:
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, -1, -1], [0, 1, 2, 2, 2, 2, 2], [-1] * 7])
    expected = torch.tensor([[0, 1, 2, 0, 1, 0, 1], [0, 0, 0, 1, 2, 3, 4], list(range(7))])
    got = document_positions(doc_ids)
    assert got.dtype == torch.long
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_document_ids_are_refused_with_a_cache_that_holds_positions() -> None:
    model = build("llama-tiny").eval()
    cache = model.new_kv_cache(1, 8)
    model(torch.zeros(1, 2).long(), kv_cache=cache)
    with pytest.raises(ConfigError, match="holds 2 positions") as info:
        model(torch.zeros(1, 3).long(), kv_cache=cache, document_ids=torch.zeros(1, 3).long())
    assert info.value.key == "document_ids"
    assert cache.seq_len == 2


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_a_packed_prefill_fills_an_empty_cache_like_one_prefill_per_document(
    preset: str,
) -> None:
    """Each document's logits and cached keys / values equal its own prefill's."""
    torch.manual_seed(0)
    model = build(preset).eval()
    lengths = [3, 5, 2]
    docs = [torch.randint(0, model.config.vocab_size, (1, n)) for n in lengths]
    ids = torch.cat(docs, dim=1)  # (1, 10)
    document_ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    packed_cache = model.new_kv_cache(1, 16)
    with torch.no_grad():
        packed = model(ids, kv_cache=packed_cache, document_ids=document_ids)  # (1, 10, V)
    assert packed_cache.seq_len == sum(lengths)
    rows = model.new_kv_cache(len(lengths), 16)
    start = 0
    for i, (doc, n) in enumerate(zip(docs, lengths, strict=True)):
        own = model.new_kv_cache(1, 16)
        with torch.no_grad():
            alone = model(doc, kv_cache=own)  # (1, n, V)
        torch.testing.assert_close(packed[:, start : start + n], alone, rtol=1e-5, atol=1e-5)
        rows.copy_rows(
            packed_cache,
            rows=torch.tensor([i]),
            source_rows=torch.tensor([0]),
            start=0,
            source_start=start,
            length=n,
        )
        for j in range(len(rows)):
            layer, mine = rows[j], own[j]
            torch.testing.assert_close(
                layer.k_cache[i, :, :n], mine.k_cache[0, :, :n], rtol=1e-5, atol=1e-5
            )
            torch.testing.assert_close(
                layer.v_cache[i, :, :n], mine.v_cache[0, :, :n], rtol=1e-5, atol=1e-5
            )
        start += n


@pytest.mark.parametrize(
    "document_ids",
    [torch.zeros(2, 5).long(), torch.zeros(4).long(), torch.zeros(2, 4)],
    ids=["long", "1-d", "float"],
)
def test_bad_document_ids_name_the_tensor(document_ids: Tensor) -> None:
    model = build("gpt2-tiny").eval()
    with pytest.raises(DataError, match=r"\(2, 4\)") as info:
        model(torch.zeros(2, 4).long(), document_ids=document_ids)
    assert info.value.tensor == "document_ids"
