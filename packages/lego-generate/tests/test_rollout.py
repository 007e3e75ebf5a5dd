from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from lego.generate import GenerationConfig, ModelRunner, Rollout, generate, rollout
from lego.generate.decoding import Decoding
from lego.generate.prompt import prepare_prompt
from lego.protocols import ConfigError, DataError

PROMPTS = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]


def _row_logits(model: Any, prompt: list[int], completion: list[int]) -> Tensor:
    """Log-softmax of a full (uncached, unpadded) forward over one row, at its completion."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits: Tensor = model(ids)[0].float()  # (L, V)
    p = len(prompt)
    return logits[p - 1 : p - 1 + len(completion)]  # (C, V): the logits that chose each token


def _check_against_recomputation(
    model: Any, out: Rollout, prompts: list[list[int]], *, temperature: float = 1.0
) -> None:
    checked = 0
    for row, (ids, values) in enumerate(zip(out.completions, out.token_logprobs, strict=True)):
        prompt = prompts[int(out.prompt_index[row])]
        logits = _row_logits(model, prompt, ids)
        expected = torch.log_softmax(logits / temperature, dim=-1)
        expected = expected.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(values), expected, rtol=0, atol=1e-5)
        checked += len(ids)
    assert checked > 0


def test_shapes_and_prompt_major_order(model: Any) -> None:
    out = rollout(model, PROMPTS, n=4, max_new_tokens=6, temperature=1.0, seed=0)
    assert out.n == 4
    assert out.num_rows == 12
    assert out.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert out.prompt_ids.shape == (3, 4)
    assert out.prompt_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]
    assert out.completion_ids.shape == out.completion_mask.shape == out.logprobs.shape == (12, 6)
    assert out.completion_ids.dtype == out.completion_mask.dtype == torch.long
    assert out.logprobs.dtype == torch.float32
    assert out.finish_reasons == ("length",) * 12
    assert out.logprob_mode == "raw"
    assert out.texts is None
    assert bool((out.logprobs < 0).all())
    assert [len(c) for c in out.completions] == [6] * 12
    ids, mask = out.sequences()
    assert ids.shape == mask.shape == (12, 10)
    assert ids[5].tolist()[-8:] == [5, 6, *out.completions[5]]
    assert mask[5].tolist() == [0, 0] + [1] * 8


def test_prefill_runs_once_per_prompt_and_is_copied(model: Any) -> None:
    rollout(model, PROMPTS, n=4, max_new_tokens=3, temperature=1.0, seed=0)
    assert model.calls[0] == (3, 4)  # one prefill of the 3 distinct prompts
    assert model.calls[1:] == [(12, 1), (12, 1)]  # then decode steps on 12 rows
    prompt_cache, rows_cache = model.caches[1], model.caches[0]
    assert prompt_cache.batch_size == 3
    assert rows_cache.copies == [(list(range(12)), [0] * 4 + [1] * 4 + [2] * 4, 0)]


def test_greedy_n1_equals_generate(model: Any) -> None:
    out = rollout(model, PROMPTS, max_new_tokens=8)
    mask = out.prompt_mask
    reference = generate(model, out.prompt_ids, attention_mask=mask, max_new_tokens=8)
    assert torch.equal(out.completion_ids, reference[:, 4:])
    # a tensor of prompts gives the same
    again = rollout(model, out.prompt_ids, attention_mask=mask, max_new_tokens=8)
    assert torch.equal(again.completion_ids, out.completion_ids)
    torch.testing.assert_close(again.logprobs, out.logprobs, rtol=0, atol=0)


@pytest.mark.parametrize("cached", [True, False])
def test_raw_logprobs_equal_a_full_forward(model: Any, plain: Any, cached: bool) -> None:
    lm = model if cached else plain
    out = rollout(lm, PROMPTS, n=3, max_new_tokens=7, temperature=1.3, top_p=0.9, seed=1)
    _check_against_recomputation(model, out, PROMPTS)


def test_processed_logprobs_are_under_the_tempered_distribution(model: Any) -> None:
    out = rollout(
        model, PROMPTS, n=2, max_new_tokens=6, temperature=0.7, seed=2, logprobs="processed"
    )
    assert out.logprob_mode == "processed"
    _check_against_recomputation(model, out, PROMPTS, temperature=0.7)
    raw = rollout(model, PROMPTS, n=2, max_new_tokens=6, temperature=0.7, seed=2)
    assert torch.equal(raw.completion_ids, out.completion_ids)  # same draws
    assert not torch.allclose(raw.logprobs, out.logprobs)


def test_processed_logprobs_after_top_k_sum_to_one_over_kept_tokens(model: Any) -> None:
    out = rollout(model, [[1, 2]], n=5, max_new_tokens=4, top_k=2, seed=0, logprobs="processed")
    raw = rollout(model, [[1, 2]], n=5, max_new_tokens=4, top_k=2, seed=0)
    # top-k renormalises: the sampled token is at least as likely as under the model
    assert bool((out.logprobs >= raw.logprobs - 1e-6).all())
    assert bool((out.logprobs > raw.logprobs + 1e-4).any())


@pytest.mark.parametrize("cached", [True, False])
def test_shared_prefill_equals_repeated_prompts(model: Any, plain: Any, cached: bool) -> None:
    lm = model if cached else plain
    kwargs: dict[str, Any] = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 0.95}
    shared = rollout(lm, PROMPTS, n=3, seed=7, **kwargs)
    unshared = rollout(lm, PROMPTS, n=3, seed=7, share_prefill=False, **kwargs)
    repeated = rollout(lm, [p for p in PROMPTS for _ in range(3)], n=1, seed=7, **kwargs)
    for other in (unshared, repeated):
        assert torch.equal(shared.completion_ids, other.completion_ids)
        torch.testing.assert_close(shared.logprobs, other.logprobs, rtol=0, atol=1e-6)
    # the rows of one prompt are sampled independently
    assert len({tuple(c) for c in shared.completions[:3]}) > 1


def test_a_cache_without_copy_rows_runs_the_repeated_rows(
    model: Any, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = rollout(model, PROMPTS, n=2, max_new_tokens=4, temperature=1.0, seed=3)
    monkeypatch.delattr(kit.TinyCache, "copy_rows")
    model.calls.clear()
    fallback = rollout(model, PROMPTS, n=2, max_new_tokens=4, temperature=1.0, seed=3)
    assert model.calls[0] == (6, 4)  # the prefill ran on every row
    assert torch.equal(shared.completion_ids, fallback.completion_ids)
    torch.testing.assert_close(shared.logprobs, fallback.logprobs, rtol=0, atol=1e-6)


def test_seeded_sampling_is_reproducible(model: Any) -> None:
    a = rollout(model, PROMPTS, n=4, max_new_tokens=8, temperature=1.0, seed=11)
    b = rollout(model, PROMPTS, n=4, max_new_tokens=8, temperature=1.0, seed=11)
    c = rollout(model, PROMPTS, n=4, max_new_tokens=8, temperature=1.0, seed=12)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    gen = torch.Generator().manual_seed(11)
    d = rollout(model, PROMPTS, n=4, max_new_tokens=8, temperature=1.0, generator=gen)
    assert torch.equal(a.completion_ids, d.completion_ids)


def test_eos_finishes_a_row_with_stop_and_masks_after(model: Any) -> None:
    greedy = rollout(model, PROMPTS, max_new_tokens=8)
    row0 = greedy.completions[0]
    eos = row0[2]
    first = row0.index(eos)
    out = rollout(model, PROMPTS, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    assert out.finish_reasons[0] == "stop"
    assert out.completions[0] == row0[: first + 1]  # the eos token belongs to the completion
    assert int(out.lengths[0]) == first + 1
    assert out.completion_mask[0].tolist() == [1] * (first + 1) + [0] * (
        out.completion_ids.shape[1] - first - 1
    )
    assert bool((out.completion_ids[0, first + 1 :] == 0).all())
    assert bool((out.logprobs[0, first + 1 :] == 0).all())
    torch.testing.assert_close(
        out.logprobs[0, : first + 1], greedy.logprobs[0, : first + 1], rtol=0, atol=0
    )
    for row in range(1, 3):
        ids = greedy.completions[row]
        expected = "stop" if eos in ids else "length"
        assert out.finish_reasons[row] == expected


def test_stop_strings_finish_with_stop_and_cut_the_text(model: Any, kit: Any) -> None:
    tokenizer = kit.ByteTokenizer()
    greedy = rollout(model, PROMPTS, max_new_tokens=8, tokenizer=tokenizer)
    assert greedy.texts is not None
    assert greedy.texts[0] == tokenizer.decode(greedy.completions[0])
    row0 = greedy.completions[0]
    stop_token = row0[3]
    first = row0.index(stop_token)
    stop = tokenizer.decode([stop_token])
    out = rollout(model, PROMPTS, max_new_tokens=8, tokenizer=tokenizer, stop_strings=[stop])
    assert out.finish_reasons[0] == "stop"
    assert out.completions[0] == row0[: first + 1]
    assert out.texts is not None
    assert out.texts[0] == tokenizer.decode(row0[:first])
    assert stop not in out.texts[0]


def test_max_new_tokens_gives_length(model: Any) -> None:
    out = rollout(model, [[3]], n=2, max_new_tokens=5, temperature=1.0, seed=0)
    assert out.finish_reasons == ("length", "length")
    assert out.completion_mask.tolist() == [[1] * 5, [1] * 5]


def test_all_rows_stopping_early_shortens_the_tensors(model: Any) -> None:
    greedy = rollout(model, [[1, 2, 3, 4]], max_new_tokens=8)
    eos = greedy.completions[0][0]
    out = rollout(model, [[1, 2, 3, 4]], n=1, max_new_tokens=8, eos_token_id=eos)
    assert out.completion_ids.shape == (1, 1)
    assert out.finish_reasons == ("stop",)


def test_training_mode_is_restored_and_results_are_trainable(model: Any) -> None:
    model.train()
    out = rollout(model, PROMPTS, n=2, max_new_tokens=3, temperature=1.0, seed=0)
    assert model.training
    ids, mask = out.sequences()
    logits = model(ids, attention_mask=mask)  # (R, P + N, V): not inference tensors
    loss = (logits[:, -1].log_softmax(-1)[:, 0] * out.logprobs[:, -1]).sum()
    loss.backward()
    assert model.head.grad is not None


@pytest.mark.parametrize(
    ("prompts", "kwargs", "error", "key"),
    [
        (PROMPTS, {"n": 0}, ConfigError, "n"),
        (PROMPTS, {"n": 1.5}, ConfigError, "n"),
        (PROMPTS, {"logprobs": "softmax"}, ConfigError, "logprobs"),
        (PROMPTS, {"generation_config": GenerationConfig(num_beams=2)}, ConfigError, "num_beams"),
        (PROMPTS, {"stop_strings": ["x"]}, ConfigError, "stop_strings"),
        (PROMPTS, {"attention_mask": torch.ones(3, 4)}, ConfigError, "attention_mask"),
        (PROMPTS, {"max_new_tokens": 64}, ConfigError, "max_new_tokens"),
        (PROMPTS, {"eos_token_id": 40}, ConfigError, "eos_token_id"),
        ([], {}, DataError, "prompts"),
        ([[1], []], {}, DataError, "prompts"),
        ([[1, "a"]], {}, DataError, "prompts"),
        ([[1, 99]], {}, DataError, "input_ids"),
        (torch.zeros(2, 0, dtype=torch.long), {}, DataError, "input_ids"),
    ],
)
def test_bad_input(
    model: Any, prompts: Any, kwargs: dict[str, Any], error: type[Exception], key: str
) -> None:
    with pytest.raises(error) as info:
        rollout(model, prompts, **kwargs)
    assert getattr(info.value, "key", None) == key or getattr(info.value, "tensor", None) == key


def test_decoding_and_runner_refuse_bad_sharing(model: Any) -> None:
    prompt = prepare_prompt(
        torch.tensor([[1, 2], [1, 2], [3, 4]]), None, context_length=64, max_new_tokens=2
    )
    config = GenerationConfig(max_new_tokens=2)
    with pytest.raises(ConfigError) as info:
        Decoding(
            model=model,
            prompt=prompt,
            config=config,
            processors=config.processors(),
            shared_rows=2,
        )
    assert info.value.key == "shared_rows"
    with pytest.raises(ConfigError) as info:
        Decoding(
            model=model,
            prompt=prompt,
            config=config,
            processors=config.processors(),
            record_logprobs="softmax",  # type: ignore[arg-type]
        )
    assert info.value.key == "record_logprobs"
    runner = ModelRunner(model=model, batch_size=4, max_seq_len=8)
    with pytest.raises(ConfigError) as info:
        runner.prefill_shared(torch.tensor([[1, 2], [3, 4]]), repeats=3)
    assert info.value.key == "repeats"
    logits = runner.prefill_shared(torch.tensor([[1, 2], [3, 4]]), repeats=2)
    assert logits.shape == (2, 2, 40)
    assert runner.length == 2
    with pytest.raises(ConfigError):  # only as the first feed
        runner.prefill_shared(torch.tensor([[1, 2], [3, 4]]), repeats=2)
