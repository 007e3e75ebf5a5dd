"""What HF's perplexity guide recipe scores, next to lego.eval.perplexity (docs/bricks/eval.md).

The guide ("Perplexity of fixed-length models", transformers docs) slides a window of
``max_length`` tokens by ``stride``, passes the window with ``labels`` where all but the
last ``trg_len = end_loc - prev_end_loc`` tokens are ``-100``, and accumulates
``outputs.loss * (num_valid_tokens - 1)``. ``hf_guide()`` below is that loop, written
again here (no copy) and instrumented to record which positions each window scores.

The tests pin down, on a tiny random transformers model:

- ``stride == max_length``: the first token of every later window is an unmasked label at
  window position 0, which the model's internal shift never scores: one token per window is
  never scored (and is not counted either);
- ``stride < max_length``: every token after the first is scored exactly once, but each
  later window's loss (a mean over ``trg_len`` tokens) is weighted by ``trg_len - 1``, so the
  result is not the mean NLL of the tokens it scored;
- the last window starts at a multiple of ``stride`` and ends at the text's end, so it is
  shorter than ``max_length`` and its tokens get less context than the window allows;
- our perplexity of the same model equals the exact mean over every token.

Run as a script (``python tests-integration/test_eval_perplexity_hf_guide.py``) it trains a
small character-level GPT-2 (2 layers, width 64, context 64) on tiny shakespeare for 800
steps on the CPU and prints
the table quoted in docs/bricks/eval.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from tiny_hf import VOCAB, tiny_gpt2
from transformers import PreTrainedModel

from lego.eval import perplexity


@dataclass
class GuideRun:
    avg_nll: float
    n_tokens: int  # the count the recipe divides by
    scored: list[int]  # absolute positions whose -ln p entered the sum
    windows: list[tuple[int, int]]  # (begin_loc, end_loc)


def hf_guide(model: PreTrainedModel, ids: torch.Tensor, max_length: int, stride: int) -> GuideRun:
    """The guide's loop on ``ids`` of shape ``(1, N)``, recording the scored positions."""
    seq_len = ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end = 0
    scored: list[int] = []
    windows = []
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        valid = int((target_ids != -100).sum())
        nll_sum += float(loss) * (valid - target_ids.size(0))
        n_tokens += valid - target_ids.size(0)
        # the model shifts labels left by one: window position 0 is never a target
        scored += [begin + j for j in range(1, end - begin) if int(target_ids[0, j]) != -100]
        windows.append((begin, end))
        prev_end = end
        if end == seq_len:
            break
    return GuideRun(nll_sum / n_tokens, n_tokens, scored, windows)


def token_nlls(model: PreTrainedModel, ids: list[int], contexts: list[int]) -> list[float]:
    """``-ln p(x_t)`` for ``t = 1 .. N-1``, each from exactly ``contexts[t-1]`` tokens."""
    out = []
    for t in range(1, len(ids)):
        c = contexts[t - 1]
        with torch.no_grad():
            logits = model(torch.tensor([ids[t - c : t]])).logits[0, -1].double()
        out.append(-float(torch.log_softmax(logits, -1)[ids[t]]))
    return out


class HFCausalLM(torch.nn.Module):
    """A transformers model seen through the ``CausalLM`` contract (logits only)."""

    def __init__(self, model: PreTrainedModel, context_length: int) -> None:
        super().__init__()
        self.model = model
        self.config = type(
            "Config",
            (),
            {
                "vocab_size": model.config.vocab_size,
                "context_length": context_length,
                "to_dict": lambda self: {},
            },
        )()

    def forward(self, ids: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.model(ids).logits  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    torch.manual_seed(3)
    hf = tiny_gpt2()
    hf.train(False)
    return hf


def _ids(n: int) -> list[int]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (n,), generator=gen).tolist()


def test_stride_equal_to_max_length_never_scores_each_windows_first_token(
    model: PreTrainedModel,
) -> None:
    ids = _ids(150)
    run = hf_guide(model, torch.tensor([ids]), max_length=32, stride=32)
    never = sorted(set(range(1, 150)) - set(run.scored))
    assert never == [32, 64, 96, 128]  # the first token of every window after the first
    assert len(run.scored) == len(set(run.scored)) == run.n_tokens == 149 - 4
    ours = perplexity(HFCausalLM(model, 64), ids, max_length=32, stride=32)
    assert ours.num_tokens == 149  # ours scores them, each with one token of context


def test_smaller_stride_scores_each_token_once_but_weights_windows_wrongly(
    model: PreTrainedModel,
) -> None:
    ids = _ids(150)
    run = hf_guide(model, torch.tensor([ids]), max_length=32, stride=12)
    assert run.scored == list(range(1, 150))  # nothing twice, nothing skipped...
    later = len(run.windows) - 1
    assert run.n_tokens == 149 - later  # ...but it divides by one token less per window
    # the exact mean of the -ln p it summed (same contexts: t - begin of its window)
    begins = {}
    prev_end = 0
    for begin, end in run.windows:
        for t in range(max(prev_end, begin + 1), end):
            begins[t] = begin
        prev_end = end
    exact = token_nlls(model, ids, [t - begins[t] for t in range(1, 150)])
    # (a random model's -ln p are all near ln 97, so the bias is small here, far above
    # float rounding all the same; docs/bricks/eval.md measures it on a trained model)
    assert abs(run.avg_nll - sum(exact) / 149) > 1e-5
    # the recipe's number is each window's mean loss times (trg_len - 1), over the counts
    weighted = 0.0
    prev_end = 0
    for begin, end in run.windows:
        part = [exact[t - 1] for t in range(max(prev_end, begin + 1), end)]
        # window 0: a mean over end - 1 targets, weighted by end - 1 (right); later windows:
        # a mean over trg_len targets, weighted by trg_len - 1
        weighted += sum(part) / len(part) * (len(part) if begin == 0 else len(part) - 1)
        prev_end = end
    assert run.avg_nll == pytest.approx(weighted / run.n_tokens, rel=1e-6)
    # its last window is shorter than max_length: less context than the window allows
    last_begin, last_end = run.windows[-1]
    assert last_end - last_begin < 32


def test_ours_is_the_exact_mean(model: PreTrainedModel) -> None:
    ids = _ids(150)
    ours = perplexity(HFCausalLM(model, 64), ids, max_length=32, stride=12, return_token_nlls=True)
    contexts = []
    for t in range(1, 150):  # every target: the L tokens before its window's last target
        if t <= 32:
            contexts.append(t)
        else:
            last = min(32 + ((t - 33) // 12 + 1) * 12, 149)
            contexts.append(t - (last - 32))
    exact = token_nlls(model, ids, contexts)
    assert ours.mean_nll == pytest.approx(sum(exact) / 149, rel=1e-6)
    assert min(contexts[32:]) == 32 - 12 + 1  # at least L - stride + 1 tokens of context


def main() -> None:  # pragma: no cover - the measurement quoted in the docs
    """Train a small character GPT-2 on tiny shakespeare, then measure both ways."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "shared" / "data" / "input.txt").read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text])
    split = int(0.9 * len(data))
    train, val = data[:split], data[split : split + 8_000].tolist()
    torch.manual_seed(0)
    context = 64
    hf = tiny_gpt2(vocab_size=len(chars), n_positions=context, n_embd=64, n_layer=2, n_head=4)
    opt = torch.optim.AdamW(hf.parameters(), lr=3e-3)
    hf.train(True)
    for step in range(800):
        starts = torch.randint(0, len(train) - context - 1, (16,))
        batch = torch.stack([train[s : s + context + 1] for s in starts])  # (16, 65)
        # every one of the 64 positions predicts its next token (labels=inputs would leave
        # the last position untrained)
        logits = hf(batch[:, :-1]).logits  # (16, 64, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f}")
    hf.train(False)
    ours_model = HFCausalLM(hf, context)
    n_bytes = len("".join(chars[i] for i in val).encode())
    print("| recipe | max_length | stride | tokens scored | tokens counted | mean NLL | ppl |")
    for stride in (context, 32, 16):
        run = hf_guide(hf, torch.tensor([val]), context, stride)
        print(
            f"| HF guide | {context} | {stride} | {len(run.scored)} | {run.n_tokens} "
            f"| {run.avg_nll:.5f} | {math.exp(run.avg_nll):.4f} |"
        )
        ours = perplexity(ours_model, val, max_length=context, stride=stride, num_bytes=n_bytes)
        print(
            f"| lego.eval | {context} | {stride} | {ours.num_tokens} | {ours.num_tokens} "
            f"| {ours.mean_nll:.5f} | {ours.perplexity:.4f} (bpb {ours.bits_per_byte:.4f}) |"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
