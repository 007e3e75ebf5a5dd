"""Oracle tests: lego.generate on lego-arch models against transformers' ``generate``.

Tiny random ``GPT2LMHeadModel``, ``LlamaForCausalLM`` and ``Qwen3ForCausalLM`` are saved with
``save_pretrained`` and loaded through ``lego.arch.from_hf``; then, token for token:

- greedy equals transformers' ``generate(do_sample=False)``, batch 1 and left-padded batches,
  cached and uncached, with repetition penalty and no-repeat n-gram blocking too;
- beam search (4 beams, several length penalties, early_stopping True / False / "never")
  equals transformers' beam search, with an end-of-sequence id that actually finishes beams;
- sampling with top_k=1 equals greedy; speculative decoding equals plain greedy;
- streaming reassembles to the decoded tokens;
- our processors equal transformers' on random scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from tiny_hf import VOCAB, tiny_gpt2, tiny_llama, tiny_qwen3
from transformers import PreTrainedModel
from transformers.generation import logits_process as hf_lp

from lego.arch import DecoderLM, from_hf
from lego.generate import (
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    generate,
    stream,
)

EOS = {"bos_token_id": 0, "eos_token_id": 0}


def _gpt2(seed: int = 0, **overrides: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    return tiny_gpt2(**EOS, **overrides)


def _llama() -> PreTrainedModel:
    torch.manual_seed(1)
    return tiny_llama(**EOS)


def _qwen3() -> PreTrainedModel:
    torch.manual_seed(2)
    return tiny_qwen3(**EOS)


FAMILIES = {"gpt2": _gpt2, "llama": _llama, "qwen3": _qwen3}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DecoderLM, PreTrainedModel]:
    theirs = FAMILIES[request.param]()
    theirs.train(False)
    folder = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(folder)
    ours = from_hf(folder)
    return ours, theirs


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(1, VOCAB, (3, 9), generator=gen)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _hf(
    theirs: PreTrainedModel, ids: torch.Tensor, pad_token_id: int = 0, **kwargs: object
) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = theirs.generate(  # type: ignore[operator]
            ids, pad_token_id=pad_token_id, **kwargs
        )
    return out


def test_greedy_matches_transformers_batch_1(pair: tuple[DecoderLM, PreTrainedModel]) -> None:
    ours, theirs = pair
    ids = torch.randint(1, VOCAB, (1, 7), generator=torch.Generator().manual_seed(3))
    expected = _hf(theirs, ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(generate(ours, ids, max_new_tokens=24), expected)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_matches_transformers_left_padded(
    pair: tuple[DecoderLM, PreTrainedModel], use_cache: bool
) -> None:
    ours, theirs = pair
    ids, mask = _batch()
    expected = _hf(theirs, ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    got = generate(ours, ids, attention_mask=mask, max_new_tokens=16, use_cache=use_cache)
    assert torch.equal(got, expected)


def test_greedy_with_penalties_matches_transformers(
    pair: tuple[DecoderLM, PreTrainedModel],
) -> None:
    ours, theirs = pair
    ids, mask = _batch()
    options = {"repetition_penalty": 1.4, "no_repeat_ngram_size": 2}
    expected = _hf(theirs, ids, attention_mask=mask, max_new_tokens=16, do_sample=False, **options)
    got = generate(ours, ids, attention_mask=mask, max_new_tokens=16, **options)
    assert torch.equal(got, expected)


def _frequent_token(ours: DecoderLM, ids: torch.Tensor, mask: torch.Tensor) -> int:
    """A token greedy decoding emits after a few steps: an eos that really finishes beams."""
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=12)
    generated = out[:, ids.shape[1] + 2 :].flatten().tolist()
    return max(set(generated), key=generated.count)


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 2.0, -0.5])
def test_beam_search_matches_transformers(
    pair: tuple[DecoderLM, PreTrainedModel],
    early_stopping: bool | str,
    length_penalty: float,
) -> None:
    ours, theirs = pair
    ids, mask = _batch()
    eos = _frequent_token(ours, ids, mask)
    options = {
        "max_new_tokens": 14,
        "num_beams": 4,
        "length_penalty": length_penalty,
        "early_stopping": early_stopping,
        "eos_token_id": eos,
    }
    # transformers fills finished beams with ``pad_token_id or eos``: a non-zero pad id
    # keeps that quirk out of the comparison
    pad = 96 if eos != 96 else 95
    expected = _hf(theirs, ids, pad, attention_mask=mask, do_sample=False, **options)
    got = generate(ours, ids, attention_mask=mask, pad_token_id=pad, **options)  # type: ignore[arg-type]
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def test_beam_search_uncached_equals_cached(pair: tuple[DecoderLM, PreTrainedModel]) -> None:
    ours, _ = pair
    ids, mask = _batch()
    cached = generate(ours, ids, attention_mask=mask, max_new_tokens=10, num_beams=3)
    uncached = generate(
        ours, ids, attention_mask=mask, max_new_tokens=10, num_beams=3, use_cache=False
    )
    assert torch.equal(cached, uncached)


def test_greedy_eos_finishes_rows_with_pad(pair: tuple[DecoderLM, PreTrainedModel]) -> None:
    ours, theirs = pair
    ids, mask = _batch()
    eos = _frequent_token(ours, ids, mask)
    expected = _hf(
        theirs, ids, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=eos
    )
    got = generate(
        ours, ids, attention_mask=mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=0
    )
    assert torch.equal(got, expected)


def test_top_k_1_sampling_equals_greedy(pair: tuple[DecoderLM, PreTrainedModel]) -> None:
    ours, _ = pair
    ids, mask = _batch()
    greedy = generate(ours, ids, attention_mask=mask, max_new_tokens=16)
    sampled = generate(ours, ids, attention_mask=mask, max_new_tokens=16, top_k=1, seed=11)
    assert torch.equal(sampled, greedy)


def test_seeded_sampling_is_reproducible(pair: tuple[DecoderLM, PreTrainedModel]) -> None:
    ours, _ = pair
    ids, mask = _batch()
    options = {"max_new_tokens": 16, "temperature": 1.5, "top_p": 0.95, "seed": 5}
    first = generate(ours, ids, attention_mask=mask, **options)  # type: ignore[arg-type]
    second = generate(ours, ids, attention_mask=mask, **options)  # type: ignore[arg-type]
    assert torch.equal(first, second)
    assert not torch.equal(first, generate(ours, ids, attention_mask=mask, max_new_tokens=16))


def test_speculative_equals_greedy(pair: tuple[DecoderLM, PreTrainedModel], tmp_path: Path) -> None:
    ours, _ = pair
    draft_hf = _gpt2(seed=9, n_embd=16, n_layer=1, n_head=2)
    draft_hf.save_pretrained(tmp_path)
    draft = from_hf(tmp_path)
    ids = torch.randint(1, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    greedy = generate(ours, ids, max_new_tokens=30)
    for model in (draft, ours):  # a poor draft (many rejections) and a perfect one
        for k in (1, 3, 5):
            spec = generate(ours, ids, max_new_tokens=30, draft_model=model, num_draft_tokens=k)
            assert torch.equal(spec, greedy)


class _Chars:
    """A tokenizer over bytes: id = byte value (< 97 in these tests), decode joins them."""

    vocab_size = VOCAB
    special_tokens: ClassVar[dict[str, int]] = {}

    def encode(self, text: str) -> list[int]:
        return [b % VOCAB for b in text.encode()]

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_stream_reassembles_to_the_decoded_text(pair: tuple[DecoderLM, PreTrainedModel]) -> None:
    ours, _ = pair
    tokenizer = _Chars()
    ids = [40, 41, 42, 43]
    full = generate(ours, torch.tensor([ids]), max_new_tokens=20)
    pieces = list(stream(ours, tokenizer, ids, max_new_tokens=20))
    assert "".join(pieces) == tokenizer.decode(full[0, 4:].tolist())


def _scores() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 50, generator=gen) * 3
    ids = torch.randint(0, 50, (4, 12), generator=gen)
    ids[:, -3:] = ids[:, 2:5]  # make n-gram repeats happen
    return ids, scores


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (TopP(top_p=0.7), hf_lp.TopPLogitsWarper(top_p=0.7)),
        (TopP(top_p=0.3, min_tokens_to_keep=3), hf_lp.TopPLogitsWarper(0.3, min_tokens_to_keep=3)),
        (MinP(min_p=0.1), hf_lp.MinPLogitsWarper(min_p=0.1)),
        (RepetitionPenalty(penalty=1.5), hf_lp.RepetitionPenaltyLogitsProcessor(penalty=1.5)),
        (RepetitionPenalty(penalty=0.7), hf_lp.RepetitionPenaltyLogitsProcessor(penalty=0.7)),
        (NoRepeatNGram(ngram_size=2), hf_lp.NoRepeatNGramLogitsProcessor(2)),
        (NoRepeatNGram(ngram_size=3), hf_lp.NoRepeatNGramLogitsProcessor(3)),
        (NoRepeatNGram(ngram_size=1), hf_lp.NoRepeatNGramLogitsProcessor(1)),
        (Temperature(temperature=0.6), hf_lp.TemperatureLogitsWarper(0.6)),
        (TopK(top_k=5), hf_lp.TopKLogitsWarper(top_k=5)),
    ],
    ids=repr,
)
def test_processor_equals_transformers(ours: object, theirs: object) -> None:
    ids, scores = _scores()
    expected = theirs(ids, scores.clone())  # type: ignore[operator]
    got = ours(ids, scores.clone())  # type: ignore[operator]
    assert torch.equal(got, expected)
