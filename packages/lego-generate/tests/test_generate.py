"""generate(): greedy against a naive loop, cache paths, padding, finishing, speculative, beams."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lego.generate import GenerationConfig, PromptTruncatedWarning, generate
from lego.protocols import CompatibilityError, ConfigError, DataError


def naive_greedy(model: Any, ids: torch.Tensor, steps: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids)[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


PROMPT = torch.tensor([[3, 1, 4, 1, 5, 9]])


def test_greedy_equals_a_naive_loop(model: Any) -> None:
    expected = naive_greedy(model, PROMPT, 12)
    assert torch.equal(generate(model, PROMPT, max_new_tokens=12), expected)


def test_cached_path_prefills_once_then_single_tokens(model: Any) -> None:
    model.calls.clear()
    generate(model, PROMPT, max_new_tokens=5)
    assert model.calls == [(1, 6), (1, 1), (1, 1), (1, 1), (1, 1)]


def test_uncached_equals_cached(model: Any, plain: Any) -> None:
    cached = generate(model, PROMPT, max_new_tokens=15)
    assert torch.equal(generate(plain, PROMPT, max_new_tokens=15), cached)
    assert torch.equal(generate(model, PROMPT, max_new_tokens=15, use_cache=False), cached)


def test_left_padded_batch_equals_each_row_alone(model: Any) -> None:
    rows = [[7, 8, 9, 10, 11], [2, 3], [5, 6, 7]]
    ids = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 5 - len(row) :] = torch.tensor(row)
        mask[i, 5 - len(row) :] = 1
    for use_cache in (True, False):
        batch = generate(model, ids, attention_mask=mask, max_new_tokens=8, use_cache=use_cache)
        for i, row in enumerate(rows):
            alone = generate(model, torch.tensor([row]), max_new_tokens=8)
            assert torch.equal(batch[i, 5:], alone[0, len(row) :])


def test_rows_finish_on_eos_and_get_pad(model: Any) -> None:
    free = generate(model, PROMPT, max_new_tokens=12)
    eos = int(free[0, 6 + 3])  # the 4th generated token
    out = generate(model, PROMPT, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    first = (free[0, 6:] == eos).nonzero()[0].item()
    assert out.shape[1] == 6 + first + 1  # stops as soon as every row finished
    assert int(out[0, -1]) == eos


def test_one_row_finished_others_continue(model: Any) -> None:
    ids = torch.tensor([[3, 1, 4], [2, 7, 1]])
    free = generate(model, ids, max_new_tokens=10)
    eos = int(free[0, 3])  # row 0 finishes at once
    out = generate(model, ids, max_new_tokens=10, eos_token_id=eos, pad_token_id=39)
    if eos not in free[1, 3:].tolist():
        assert out.shape[1] == 13
        assert out[0, 4:].tolist() == [39] * 9
        assert torch.equal(out[1], free[1])


def test_top_k_1_and_temperature_0_are_greedy(model: Any) -> None:
    greedy = generate(model, PROMPT, max_new_tokens=10)
    assert torch.equal(generate(model, PROMPT, max_new_tokens=10, top_k=1, seed=1), greedy)
    zero = generate(model, PROMPT, max_new_tokens=10, temperature=0.0, do_sample=True)
    assert torch.equal(zero, greedy)


def test_seeded_sampling_reproduces(model: Any) -> None:
    a = generate(model, PROMPT, max_new_tokens=20, temperature=2.0, seed=3)
    b = generate(model, PROMPT, max_new_tokens=20, temperature=2.0, seed=3)
    c = generate(model, PROMPT, max_new_tokens=20, temperature=2.0, seed=4)
    gen = torch.Generator().manual_seed(3)
    d = generate(model, PROMPT, max_new_tokens=20, temperature=2.0, generator=gen)
    assert torch.equal(a, b)
    assert torch.equal(a, d)
    assert not torch.equal(a, c)


def test_logit_bias_bans_a_token(model: Any) -> None:
    greedy = generate(model, PROMPT, max_new_tokens=10)
    banned = int(greedy[0, 6])
    out = generate(model, PROMPT, max_new_tokens=10, logit_bias={banned: float("-inf")})
    assert banned not in out[0, 6:].tolist()


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_speculative_equals_greedy(model: Any, kit: Any, k: int) -> None:
    greedy = generate(model, PROMPT, max_new_tokens=20)
    draft = kit.TinyLM(seed=5).eval()
    spec = generate(model, PROMPT, max_new_tokens=20, draft_model=draft, num_draft_tokens=k)
    assert torch.equal(spec, greedy)
    perfect = generate(model, PROMPT, max_new_tokens=20, draft_model=model, num_draft_tokens=k)
    assert torch.equal(perfect, greedy)


def test_speculative_uncached_equals_greedy(model: Any, plain: Any, kit: Any) -> None:
    greedy = generate(model, PROMPT, max_new_tokens=15)
    spec = generate(plain, PROMPT, max_new_tokens=15, draft_model=kit.PlainLM(kit.TinyLM(seed=2)))
    assert torch.equal(spec, greedy)


def test_speculative_rejects_batches_and_sampling(model: Any) -> None:
    with pytest.raises(ConfigError, match="one row"):
        generate(model, torch.ones(2, 3, dtype=torch.long), max_new_tokens=3, draft_model=model)
    with pytest.raises(ConfigError, match="greedy only"):
        generate(model, PROMPT, max_new_tokens=3, draft_model=model, temperature=0.7)


def test_speculative_needs_the_same_vocabulary(model: Any, kit: Any) -> None:
    other = kit.TinyLM(kit.TinyConfig(vocab_size=30)).eval()
    with pytest.raises(CompatibilityError, match="vocabulary"):
        generate(model, PROMPT, max_new_tokens=3, draft_model=other)


def test_beam_search_cached_equals_uncached(model: Any, plain: Any) -> None:
    ids = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    a = generate(model, ids, attention_mask=mask, max_new_tokens=8, num_beams=3)
    b = generate(plain, ids, attention_mask=mask, max_new_tokens=8, num_beams=3)
    assert a.shape == (2, 12)
    assert torch.equal(a, b)


def test_beam_search_with_eos_pads_shorter_rows(model: Any) -> None:
    out = generate(model, PROMPT, max_new_tokens=10, num_beams=4)
    eos = int(out[0, 8])
    ended = generate(
        model, PROMPT, max_new_tokens=10, num_beams=4, eos_token_id=eos, early_stopping=True
    )
    assert eos in ended[0, 6:].tolist()
    assert ended.shape[1] <= 16


def test_model_mode_is_restored(model: Any) -> None:
    model.train(True)
    generate(model, PROMPT, max_new_tokens=2)
    assert model.training


def test_generation_config_is_a_base(model: Any) -> None:
    config = GenerationConfig(max_new_tokens=4)
    assert generate(model, PROMPT, generation_config=config).shape == (1, 10)
    assert generate(model, PROMPT, generation_config=config, max_new_tokens=2).shape == (1, 8)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"num_beams": 0}, "num_beams must be at least 1"),
        ({"stop_strings": "\n", "max_new_tokens": 3}, "tokenizer"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
    ],
)
def test_bad_settings(model: Any, options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        generate(model, PROMPT, **options)  # type: ignore[arg-type]


def test_empty_prompt(model: Any) -> None:
    with pytest.raises(DataError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=3)


def test_prompt_longer_than_context(model: Any) -> None:
    long = torch.ones(1, 70, dtype=torch.long)
    with pytest.raises(ConfigError, match="longer than the model's context") as err:
        generate(model, long, max_new_tokens=3)
    assert "truncate_prompt=True" in str(err.value)
    with pytest.warns(PromptTruncatedWarning, match="keeping its last 61 tokens"):
        out = generate(model, long, max_new_tokens=3, truncate_prompt=True)
    assert out.shape == (1, 64)


def test_bad_masks(model: Any) -> None:
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(DataError, match="left padding"):
        generate(model, ids, attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]), max_new_tokens=2)
    with pytest.raises(DataError, match="all padding"):
        generate(model, ids, attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]]), max_new_tokens=2)
    with pytest.raises(DataError, match="shape"):
        generate(model, ids, attention_mask=torch.ones(2, 4), max_new_tokens=2)


def test_unknown_option_suggests() -> None:
    with pytest.raises(ConfigError, match="unknown generation option") as err:
        GenerationConfig.from_options(None, top_pp=0.9)
    assert "top_p" in str(err.value)
