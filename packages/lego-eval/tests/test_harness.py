"""lego.eval.harness_scoring and lego.eval.harness on a toy causal LM (plain torch).

The toy is one causal self-attention layer with learned positions that honours
``attention_mask`` and ``position_ids``, so right padding (scoring) and left padding
(generation) would show if they leaked into real tokens. Each scored request is checked
against a direct forward pass over that request alone; batch sizes 1, 3 and 8 agree to 1e-6.
The LegoLM tests need lm_eval (the ``harness`` extra) and skip without it.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from lego.eval.harness_scoring import generate_continuations, score_continuations
from lego.generate import generate
from lego.protocols import CompatibilityError, ConfigError, DataError, ModelConfig

EOT = 256


class CharTokenizer:
    """One id per byte, plus ``<|endoftext|>`` = 256."""

    vocab_size = 257

    def __init__(self, specials: dict[str, int] | None = None) -> None:
        self.special_tokens = {"<|endoftext|>": EOT} if specials is None else specials

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class ToyLM(nn.Module):
    """One causal self-attention layer over token + position embeddings."""

    def __init__(self, vocab: int = 257, dim: int = 16, context: int = 48) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab, context_length=context)
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab)

    def forward(
        self,
        ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: object = None,
    ) -> Tensor:
        b, t = ids.shape
        if position_ids is None:
            position_ids = torch.arange(t).expand(b, t)
        x = self.embed(ids) + self.pos(position_ids)  # (B, T, D)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, T, T)
        allowed = torch.ones(t, t, dtype=torch.bool).tril()[None]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, -t:].bool()
        allowed = allowed | torch.eye(t, dtype=torch.bool)[None]  # padding rows stay finite
        h = x + torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v
        return self.head(h)  # (B, T, vocab)


@pytest.fixture(scope="module")
def model() -> ToyLM:
    torch.manual_seed(0)
    toy = ToyLM()
    with torch.no_grad():
        toy.head.weight.mul_(8.0)  # peaked distributions: greedy flags of both values
    return toy.eval()


def direct(
    model: ToyLM, context: list[int], continuation: list[int], limit: int
) -> tuple[float, bool]:
    """One request alone: one unpadded forward, the continuation's log-probs summed."""
    whole = (context + continuation)[-(limit + 1) :]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]]))[0].double()  # (T, vocab)
    logprobs = torch.log_softmax(logits, dim=-1)[-len(continuation) :]
    target = torch.tensor(continuation)
    total = float(logprobs.gather(-1, target[:, None]).sum())
    return total, bool((logprobs.argmax(-1) == target).all())


def random_requests(count: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    return [
        (
            [rng.randrange(257) for _ in range(rng.randint(1, 60))],
            [rng.randrange(257) for _ in range(rng.randint(1, 6))],
        )
        for _ in range(count)
    ]


# ---------------------------------------------------------------------- scoring


def test_scores_equal_one_request_at_a_time(model: ToyLM) -> None:
    requests = random_requests(24, seed=1)
    # a continuation the model would generate greedily: its flag must come out True
    context = [72, 105]
    with torch.no_grad():
        greedy = generate(model, torch.tensor([context]), max_new_tokens=3)[0, 2:].tolist()
    requests.append((context, greedy))
    scores = score_continuations(model, requests, batch_size=5)
    for (context, continuation), (logprob, is_greedy) in zip(requests, scores, strict=True):
        expected, expected_greedy = direct(model, context, continuation, limit=48)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert is_greedy == expected_greedy
    assert scores[-1][1] is True
    assert not all(flag for _, flag in scores)
    # some requests were longer than the context: their contexts were cut from the left
    assert any(len(c) + len(x) > 49 for c, x in requests)


@pytest.mark.parametrize("batch_size", [3, 8])
def test_scores_do_not_depend_on_the_batch_size(model: ToyLM, batch_size: int) -> None:
    requests = random_requests(30, seed=2)
    one = score_continuations(model, requests, batch_size=1)
    many = score_continuations(model, requests, batch_size=batch_size)
    for (a, flag_a), (b, flag_b) in zip(one, many, strict=True):
        # float32 sums of ~50 nats: the padded widths differ, so rounding may (1e-7 relative)
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6)
        assert flag_a == flag_b


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 12), batch_size=st.integers(1, 9))
def test_any_batch_size_gives_the_results_of_batch_size_one(
    seed: int, count: int, batch_size: int
) -> None:
    toy = ToyLM(context=48)
    torch.manual_seed(seed)
    for parameter in toy.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    requests = random_requests(count, seed=seed)
    one = score_continuations(toy.eval(), requests, batch_size=1)
    many = score_continuations(toy, requests, batch_size=batch_size)
    for (a, flag_a), (b, flag_b) in zip(one, many, strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6)
        assert flag_a == flag_b


def test_max_length_cuts_the_context_from_the_left(model: ToyLM) -> None:
    context, continuation = list(range(1, 30)), [40, 41]
    (short,) = score_continuations(model, [(context, continuation)], max_length=10)
    (cut,) = score_continuations(model, [(context[-9:], continuation)], max_length=48)
    assert short[0] == pytest.approx(cut[0], abs=1e-6)


def test_scoring_restores_training_mode() -> None:
    toy = ToyLM().train()
    score_continuations(toy, [([1, 2], [3])])
    assert toy.training


@pytest.mark.parametrize(
    ("requests", "error", "words"),
    [
        ([([1], [])], DataError, "empty continuation"),
        ([([], [1])], DataError, "empty context"),
        ([([1], list(range(49)))], DataError, "more than the 48"),
        ([([1, 900], [2])], CompatibilityError, "outside the model's vocabulary"),
    ],
)
def test_bad_requests(
    model: ToyLM, requests: list[tuple[list[int], list[int]]], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        score_continuations(model, requests)


# ---------------------------------------------------------------------- generation


def test_generation_equals_one_prompt_at_a_time_and_stops(model: ToyLM) -> None:
    tokenizer = CharTokenizer()
    rng = random.Random(3)
    prompts = [[rng.randrange(32, 127) for _ in range(rng.randint(1, 20))] for _ in range(9)]
    alone, alone_ids = [], []
    for prompt in prompts:
        out = generate(model, torch.tensor([prompt]), max_new_tokens=6)[0, len(prompt) :]
        alone_ids.append(out.tolist())
        alone.append(tokenizer.decode(out.tolist()))
    for batch_size in (1, 3, 8):
        texts = generate_continuations(
            model, tokenizer, prompts, max_new_tokens=6, batch_size=batch_size
        )
        assert texts == alone
    # a stop string taken from one of the texts cuts it there (and is not returned)
    full = alone[0]
    stop = full[2:4]
    (cut,) = generate_continuations(model, tokenizer, prompts[:1], max_new_tokens=6, stop=[stop])
    assert cut == full[: full.find(stop)]
    # an end-of-sequence id: the generated text ends before it
    ids = alone_ids[0]
    (until_eos,) = generate_continuations(
        model, tokenizer, prompts[:1], max_new_tokens=6, eos_token_ids=[ids[2]]
    )
    assert until_eos == tokenizer.decode(ids[: ids.index(ids[2])])


def test_generation_refuses_an_empty_prompt(model: ToyLM) -> None:
    with pytest.raises(DataError, match="prompt 1 is empty"):
        generate_continuations(model, CharTokenizer(), [[1], []], max_new_tokens=2)


# ---------------------------------------------------------------------- LegoLM


def test_lm_eval_is_optional() -> None:
    """``import lego.eval`` never imports lm_eval; without it the harness says what to install."""
    code = (
        "import sys\n"
        "import lego.eval, lego.eval.harness_scoring, lego.eval.tasks\n"
        "assert 'lm_eval' not in sys.modules, 'lego.eval imported lm_eval'\n"
        "sys.modules['lm_eval'] = None  # as if it were not installed\n"
        "from lego.protocols import ConfigError\n"
        "try:\n"
        "    import lego.eval.harness\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "lego-eval[harness]"' in done.stdout


@pytest.fixture(scope="module")
def harness() -> Any:
    pytest.importorskip("lm_eval")
    import lego.eval.harness

    return lego.eval.harness


def instance(kind: str, arguments: tuple[Any, ...]) -> Any:
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=arguments, idx=0)


def test_registered_as_lego(harness: Any) -> None:
    from lm_eval.api.registry import get_model

    assert get_model("lego") is harness.LegoLM


def test_loglikelihood_splits_text_as_the_harness_does(harness: Any, model: ToyLM) -> None:
    tokenizer = CharTokenizer()
    lm = harness.LegoLM(model, tokenizer, batch_size=2)
    requests = [
        ("Question: 2+2=", "4"),
        ("The sky is ", "blue"),  # the trailing space moves to the continuation
        ("", "hello"),  # an empty context reads the end-of-text id first
    ]
    results = lm.loglikelihood([instance("loglikelihood", r) for r in requests])
    pairs = [
        (tokenizer.encode("Question: 2+2="), tokenizer.encode("4")),
        (tokenizer.encode("The sky is"), tokenizer.encode(" blue")),
        ([EOT], tokenizer.encode("hello")),
    ]
    for (logprob, greedy), (context, continuation) in zip(results, pairs, strict=True):
        expected, expected_greedy = direct(model, context, continuation, limit=48)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == expected_greedy


def test_rolling_scores_every_token_once(harness: Any, model: ToyLM) -> None:
    tokenizer = CharTokenizer()
    short, long = "a short text", "a longer text that needs several windows of the model. " * 3
    for max_length, text in ((48, short), (16, long)):
        lm = harness.LegoLM(model, tokenizer, batch_size=3, max_length=max_length)
        (total,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", (text,))])
        ids = [EOT, *tokenizer.encode(text)]
        # token i (after the prefix) is read with the tokens before it, at most max_length
        expected = 0.0
        windows = 0
        start = 0
        while start < len(ids) - 1:
            stop = min(start + max_length, len(ids) - 1)
            left = max(0, stop - max_length)
            inputs = ids[left:stop]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([inputs]))[0].double(), -1)
            for j in range(start, stop):
                expected += float(logprobs[j - left, ids[j + 1]])
            windows += 1
            start = stop
        assert total == pytest.approx(expected, abs=1e-3)
        assert (windows > 1) == (text == long)
    # and the batch size changes nothing
    texts = [short, long, long[:40]]
    runs = [
        harness.LegoLM(model, tokenizer, batch_size=b, max_length=16).loglikelihood_rolling(
            [instance("loglikelihood_rolling", (t,)) for t in texts]
        )
        for b in (1, 3, 8)
    ]
    for other in runs[1:]:
        assert other == pytest.approx(runs[0], rel=1e-6, abs=1e-6)


def test_generate_until_stops_and_groups_settings(harness: Any, model: ToyLM) -> None:
    tokenizer = CharTokenizer()
    lm = harness.LegoLM(model, tokenizer, batch_size=3)
    prompts = ["12+7=", "sort 3 1 2 =", "x"]
    free = lm.generate_until(
        [instance("generate_until", (p, {"until": [], "max_gen_toks": 5})) for p in prompts]
    )
    alone = generate_continuations(
        model,
        tokenizer,
        [tokenizer.encode(p) for p in prompts],
        max_new_tokens=5,
        eos_token_ids=[EOT],
    )
    assert free == alone
    stop = free[0][1:3]
    mixed = lm.generate_until(
        [
            instance("generate_until", (prompts[0], {"until": [stop], "max_gen_toks": 5})),
            instance("generate_until", (prompts[1], {"until": [], "max_gen_toks": 2})),
        ]
    )
    assert mixed[0] == free[0][: free[0].find(stop)]
    assert mixed[1] == alone[1][: len(mixed[1])]
    assert 1 <= len(mixed[1]) <= 2
    with pytest.raises(ConfigError, match="num_beams"):
        lm.generate_until([instance("generate_until", ("x", {"until": [], "num_beams": 2}))])
    with pytest.raises(ConfigError, match="leaves no room"):
        lm.generate_until([instance("generate_until", ("x", {"until": [], "max_gen_toks": 48}))])


def test_a_tokenizer_without_prefix_token(harness: Any, model: ToyLM) -> None:
    lm = harness.LegoLM(model, CharTokenizer(specials={}))
    with pytest.raises(CompatibilityError, match="BOS or end-of-text"):
        lm.loglikelihood([instance("loglikelihood", ("", "hello"))])
    # given explicitly, it works
    lm = harness.LegoLM(model, CharTokenizer(specials={}), prefix_token_id=10)
    ((logprob, _),) = lm.loglikelihood([instance("loglikelihood", ("", "hello"))])
    assert logprob == pytest.approx(direct(model, [10], list(b"hello"), 48)[0], abs=1e-4)


def test_built_from_a_directory_through_a_loader(
    harness: Any, model: ToyLM, tmp_path: Path
) -> None:
    seen: list[str] = []

    def loader(path: str) -> tuple[ToyLM, CharTokenizer]:
        seen.append(path)
        return model, CharTokenizer()

    lm = harness.LegoLM(pretrained=tmp_path, loader=loader, batch_size="3")
    assert seen == [str(tmp_path)]
    assert lm.batch_size == 3
    assert lm.max_length == 48
    with pytest.raises(ConfigError, match="needs a loader"):
        harness.LegoLM(pretrained=tmp_path)
    with pytest.raises(ConfigError, match="batch_size"):
        harness.LegoLM(model, CharTokenizer(), batch_size="auto")
    # lm-eval's string arguments, with the application's loader set beforehand
    harness.set_default_loader(loader)
    try:
        lm = harness.LegoLM.create_from_arg_string(
            f"pretrained={tmp_path},max_length=20", {"batch_size": 5, "device": None}
        )
    finally:
        harness.set_default_loader(None)
    assert seen[-1] == str(tmp_path)
    assert lm.batch_size == 5
    assert lm.max_length == 20
    with pytest.raises(ConfigError, match="needs a loader"):
        harness.LegoLM(pretrained=tmp_path)


def test_run_harness_on_the_offline_tasks(harness: Any, model: ToyLM) -> None:
    def run(batch_size: int) -> dict[str, Any]:
        return dict(
            harness.run_harness(
                model,
                CharTokenizer(),
                tasks=["lego_arithmetic_mc", "lego_arithmetic_exact", "lego_stdlib_ppl"],
                batch_size=batch_size,
                limit=8,
                log_samples=True,
                bootstrap_iters=0,
            )
        )

    one, eight = run(1), run(8)
    results = one["results"]
    assert 0.0 <= results["lego_arithmetic_mc"]["acc,none"] <= 1.0
    assert results["lego_stdlib_ppl"]["bits_per_byte,none"] > 0.0
    assert one["n-samples"]["lego_arithmetic_mc"]["effective"] == 8
    for task in ("lego_arithmetic_mc", "lego_stdlib_ppl"):
        ours = [s["resps"] for s in one["samples"][task]]
        theirs = [s["resps"] for s in eight["samples"][task]]
        flat_ours = [
            float(r[0][0] if isinstance(r[0], (list, tuple)) else r[0]) for x in ours for r in x
        ]
        flat_theirs = [
            float(r[0][0] if isinstance(r[0], (list, tuple)) else r[0]) for x in theirs for r in x
        ]
        assert flat_ours == pytest.approx(flat_theirs, rel=1e-6, abs=1e-6)
    assert [s["resps"] for s in one["samples"]["lego_arithmetic_exact"]] == [
        s["resps"] for s in eight["samples"]["lego_arithmetic_exact"]
    ]
    table = harness.results_table(one)
    assert "lego_arithmetic_mc" in table
    assert "acc" in table


def test_run_harness_refuses_unknown_tasks(harness: Any, model: ToyLM, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lego_arithmetic_mc"):  # the closest name
        harness.run_harness(model, CharTokenizer(), tasks=["lego_arithmetic_m"])
    with pytest.raises(ConfigError, match="not a folder"):
        harness.run_harness(
            model, CharTokenizer(), tasks=["lego_arithmetic_mc"], include_path=tmp_path / "x"
        )
