"""lego-eval: harness log-likelihoods and perplexity against lm-eval's HFLM and HF's recipe.

GPT-2 124M shape with random weights (``lego.arch.build("gpt2")``, seed 0), written once by
``to_hf`` with GPT-2's ``tokenizer.json`` (``../shared/data/hf_gpt2``) and read by both sides,
fp32 on the CPU. Two rows:

- **loglikelihood requests/s** on a local multiple-choice task: 125 questions x 4 choices
  (500 requests; 25 x 4 in the quick run; ``BENCH_EVAL_QUESTIONS`` overrides), passages
  of 60-200 tokens from tiny shakespeare with continuations of 3-12 words, through
  the harness's LM API (``lm.loglikelihood(requests)``), ours
  ``lego.eval.harness.LegoLM`` against lm-eval's ``HFLM`` (``dtype="float32"``) at the
  same batch size. Both sides' log-likelihoods must agree to 1e-4 and their greedy flags
  must be identical.
- **perplexity tokens/s** on the start of tiny shakespeare (4,096 tokens; 2,048 quick;
  ``BENCH_EVAL_TOKENS`` overrides):
  ``lego.eval.text_perplexity(max_length=1024, stride=512)`` against the sliding-window
  loop of the transformers perplexity guide (windows of 1024 tokens every 512, labels -100
  on the context part, ``model(ids, labels=...)``, one window per forward), both encoding
  the text inside the timing. Both perplexities are reported: the windows differ at their
  edges by design (see the notes). Skipped when tiny shakespeare is absent.

Timings alternate ABBA (ours, peer, peer, ours) in one process; the first run of each side
gives the results that are checked (the models are loaded and warm before it).
"""

from __future__ import annotations

import importlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks._eval_inputs import SHAKESPEARE, TOKENIZER, mc_requests, passage_words, write_gpt2
from benchmarks._harness import BenchResult, Row, log, package_version
from lego.arch import from_hf
from lego.eval import __version__, text_perplexity
from lego.eval.harness import LegoLM
from lego.tokenize import RegexBPETokenizer

# lm-eval ships no type information: its two classes are used as Any
Instance: Any = importlib.import_module("lm_eval.api.instance").Instance
HFLM: Any = importlib.import_module("lm_eval.models.huggingface").HFLM

OURS = f"lego-eval {__version__}"
BATCH = 8
WINDOW, STRIDE = 1024, 512


def _abba(
    ours: Callable[[], Any], peer: Callable[[], Any], repeat: int
) -> tuple[float, float, Any, Any]:
    """Time ours, peer, peer, ours, ...: best seconds per call of each, and the first results.

    The first call of each side is timed too (the model is loaded and warm by then; its
    results are what the caller checks for agreement).
    """
    best = {"ours": math.inf, "peer": math.inf}
    first: dict[str, Any] = {}
    for i in range(repeat):
        order = (("ours", ours), ("peer", peer))
        for side, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - start
            log(f"    {side}: {seconds:.2f} s (load {os.getloadavg()[0]:.1f})")
            best[side] = min(best[side], seconds)
            first.setdefault(side, out)
    return best["ours"], best["peer"], first["ours"], first["peer"]


def _instances(pairs: list[tuple[str, str]]) -> list[Any]:
    return [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(pairs)
    ]


def _loglikelihood_row(
    folder: Path, model: Any, tokenizer: RegexBPETokenizer, *, quick: bool, repeat: int
) -> tuple[Row, list[str], dict[str, Any]]:
    words, source = passage_words()
    questions = int(os.environ.get("BENCH_EVAL_QUESTIONS", 25 if quick else 125))
    pairs = mc_requests(words, lambda s: len(tokenizer.encode(s)), questions=questions)
    ours = LegoLM(model, tokenizer, batch_size=BATCH)
    peer = HFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=BATCH)
    context_lengths = [len(tokenizer.encode(c)) for c, _ in pairs[::4]]
    cont_lengths = [len(ours.tok_encode(c + x)) - len(ours.tok_encode(c)) for c, x in pairs]
    log(f"  loglikelihood: {len(pairs)} requests")
    t_ours, t_peer, a, b = _abba(
        lambda: ours.loglikelihood(_instances(pairs)),
        lambda: peer.loglikelihood(_instances(pairs)),
        repeat,
    )
    worst = max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True))
    flags = sum(x[1] != y[1] for x, y in zip(a, b, strict=True))
    if worst > 1e-4 or flags:
        raise RuntimeError(
            f"LegoLM and HFLM disagree: largest log-likelihood difference {worst:.2e}, "
            f"{flags} greedy flags differ"
        )
    picked_same = all(
        max(range(4), key=lambda j: a[q * 4 + j][0]) == max(range(4), key=lambda j: b[q * 4 + j][0])
        for q in range(questions)
    )
    row = Row(
        what=f"loglikelihood, {questions} questions x 4 choices ({len(pairs)} requests), "
        f"batch {BATCH}, fp32 (CPU)",
        ours=len(pairs) / t_ours,
        peer=f"lm-eval {package_version('lm_eval')} HFLM (transformers "
        f"{package_version('transformers')})",
        peer_value=len(pairs) / t_peer,
        unit="requests/s",
    )
    notes = [
        f"Multiple choice: passages from {source}, contexts {min(context_lengths)}-"
        f"{max(context_lengths)} tokens (mean {sum(context_lengths) / len(context_lengths):.0f}),"
        f" continuations {min(cont_lengths)}-{max(cont_lengths)} tokens (mean "
        f"{sum(cont_lengths) / len(cont_lengths):.1f}); both sides agree to {worst:.1e} "
        f"(largest log-likelihood difference), greedy flags identical, the same choice picked "
        f"for every question: {picked_same}.",
    ]
    params = {
        "requests": len(pairs),
        "context_tokens_mean": round(sum(context_lengths) / len(context_lengths), 1),
        "continuation_tokens_mean": round(sum(cont_lengths) / len(cont_lengths), 2),
        "max_abs_logprob_difference": worst,
    }
    return row, notes, params


def hf_guide_perplexity(
    model: Any, tokenizer: Any, text: str, *, max_length: int, stride: int
) -> tuple[float, int, int]:
    """The transformers perplexity guide's sliding-window loop.

    Windows of ``max_length`` tokens start every ``stride`` tokens; in each, the labels of
    the tokens an earlier window already scored are -100, and the model's own loss (the
    mean over the scored labels after its internal shift) is weighted by the guide's count
    of them: the labels that are not -100, minus one for the shift.

    Returns:
        ``(perplexity, tokens scored, tokens the guide counts)``: in every window after the
        first the shift drops a -100 label, not a scored one, so the guide counts one token
        fewer per later window than its loss averages over.
    """
    ids = tokenizer(text, return_tensors="pt").input_ids  # (1, N)
    n = ids.shape[1]
    total, counted, scored, previous_end = 0.0, 0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        new = end - previous_end  # tokens this window scores (the first: all but one)
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, :-new] = -100
        with torch.no_grad():
            loss = model(window, labels=labels).loss
        count = int((labels != -100).sum()) - labels.shape[0]  # the guide's count
        total += float(loss) * count
        counted += count
        scored += int((labels[:, 1:] != -100).sum())  # what the loss averaged over
        previous_end = end
        if end == n:
            break
    return math.exp(total / counted), scored, counted


def _perplexity_row(
    folder: Path, model: Any, tokenizer: RegexBPETokenizer, *, quick: bool, repeat: int
) -> tuple[Row, list[str], dict[str, Any]]:
    want = int(os.environ.get("BENCH_EVAL_TOKENS", 2048 if quick else 4096))
    full = SHAKESPEARE.read_text(encoding="utf-8")
    cut = len(full)
    ids = tokenizer.encode(full[: want * 5])
    cut = len(tokenizer.decode(ids[:want]))
    text = full[:cut]
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf_model.train(False)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    if hf_tok(text).input_ids != tokenizer.encode(text):
        raise RuntimeError("GPT-2's tokenizer gives other ids in transformers and lego")

    def ours() -> Any:
        return text_perplexity(
            model, tokenizer, text, max_length=WINDOW, stride=STRIDE, batch_size=BATCH
        )

    def peer() -> tuple[float, int, int]:
        return hf_guide_perplexity(hf_model, hf_tok, text, max_length=WINDOW, stride=STRIDE)

    log(f"  perplexity: {len(tokenizer.encode(text))} tokens")
    t_ours, t_peer, ours_result, (peer_ppl, peer_tokens, peer_counted) = _abba(ours, peer, repeat)
    n = ours_result.num_tokens
    if peer_tokens != n:
        raise RuntimeError(f"the two sides scored {n} and {peer_tokens} tokens")
    gap = ours_result.perplexity / peer_ppl - 1
    row = Row(
        what=f"perplexity, {n + 1:,} tokens of tiny shakespeare, windows of {WINDOW} every "
        f"{STRIDE}, fp32 (CPU)",
        ours=n / t_ours,
        peer=f"transformers {package_version('transformers')} (perplexity guide's loop)",
        peer_value=n / t_peer,
        unit="tokens/s",
        note=f"perplexity {ours_result.perplexity:.3f} vs {peer_ppl:.3f}",
    )
    notes = [
        f"Perplexity: both sides score the same {n:,} tokens (all but the first); ours "
        f"{ours_result.perplexity:.4f}, the guide's loop {peer_ppl:.4f} ({gap:+.4%}). The "
        f"windows differ at their edges by design: ours feeds every later window the "
        f"{WINDOW} tokens before its last target (each target sees {WINDOW - STRIDE + 1}-"
        f"{WINDOW} tokens of context, the first window scores {WINDOW} targets); the guide's "
        f"windows start every {STRIDE} tokens and feed {WINDOW} tokens ending at the last "
        f"target (each target sees {WINDOW - STRIDE}-{WINDOW - 1} tokens, its first window "
        f"scores {WINDOW - 1}). The guide's loop also weights each window's mean loss by "
        f"one token fewer than it averages over after the first window (it counts "
        f"{peer_counted:,} tokens for the {peer_tokens:,} it scores). Ours runs up to "
        f"{BATCH} windows per forward ({ours_result.num_windows} windows in all); the "
        "guide one.",
    ]
    params = {
        "perplexity_tokens": n + 1,
        "ours_perplexity": ours_result.perplexity,
        "peer_perplexity": peer_ppl,
        "windows": ours_result.num_windows,
    }
    return row, notes, params


def run(quick: bool) -> BenchResult:
    repeat = 2
    if not TOKENIZER.is_file():
        raise RuntimeError(f"GPT-2's tokenizer.json is missing: {TOKENIZER}")
    load_before = os.getloadavg()
    result = BenchResult(
        name="eval",
        title="lego-eval: harness log-likelihoods vs lm-eval's HFLM, perplexity vs the HF "
        "guide's loop (GPT-2 124M, fp32, CPU)",
        description=(
            "GPT-2 124M shape, random weights (seed 0) written once by lego.arch's to_hf with "
            "GPT-2's tokenizer.json and read by both sides (lego.arch.from_hf; transformers' "
            f"from_pretrained inside HFLM and for the guide's loop); batch {BATCH}; best of "
            f"{repeat} ABBA-interleaved runs per side (ours, peer, peer, ours); the first "
            "run's results are checked to agree."
        ),
        params={"batch_size": BATCH, "repeat": repeat, "quick": quick},
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_gpt2(folder)
        model = from_hf(folder, dtype=torch.float32)
        model.train(False)
        tokenizer = RegexBPETokenizer.from_hf(TOKENIZER)
        row, notes, params = _loglikelihood_row(
            folder, model, tokenizer, quick=quick, repeat=repeat
        )
        result.rows.append(row)
        result.notes += notes
        result.params.update(params)
        if SHAKESPEARE.is_file():
            row, notes, params = _perplexity_row(
                folder, model, tokenizer, quick=quick, repeat=repeat
            )
            result.rows.append(row)
            result.notes += notes
            result.params.update(params)
        else:
            result.notes.append(f"Perplexity row skipped: {SHAKESPEARE} is absent.")
    load_after = os.getloadavg()
    result.notes.append(
        f"Load average (1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/"
        f"{load_before[2]:.1f} before the run and {load_after[0]:.1f}/{load_after[1]:.1f}/"
        f"{load_after[2]:.1f} after it, on {os.cpu_count()} cores shared with other jobs: "
        "the ratios are side by side, absolute numbers are noisy."
    )
    result.params["threads"] = torch.get_num_threads()
    return result
