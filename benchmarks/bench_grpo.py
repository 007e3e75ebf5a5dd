"""lego-align: GRPO steps side by side with TRL's ``GRPOTrainer`` (without vLLM), CPU, fp32.

On a Llama-3-shaped model of about 100M parameters (d_model 768, 12 layers, 12 / 4 heads,
d_ff 2048, a 32000-word vocabulary, tied embeddings; random weights written once by
``lego.arch.to_hf``, read by ``lego.arch.from_hf`` and by transformers' ``from_pretrained``),
both sides run GRPO steps on the same prompt (16 words, so no left padding): 8
sampled completions per prompt, exactly 128 new tokens each (the tokenizer's ``<eos>`` is the
zero-logit id among logits spread by a final norm scale of 6, about 1e-7 likely: checked), the same
cheap Python reward function (the share of even-numbered words), ``beta`` 0 (no reference
model), ``loss_type`` dapo, 1 iteration per generation, temperature 1, AdamW with the same
learning rate and no weight decay.

- ours: ``lego.align.GRPOTrainer`` (``template: none``): its ``GRPOBatchSource`` makes the
  generation (lego-generate's ``rollout()``: one shared prefill per prompt, KV-cached
  decoding; rewards; group advantages), then ``GRPOObjective`` (chunked log-probs, the
  clipped loss), ``backward`` and ``AdamW.step``; twice: ``rollout_dtype: float32`` (sampling
  with the fp32 policy itself: like for like with TRL's ``bf16=False``) and
  ``rollout_dtype: auto`` (a bf16 sampling copy of the policy where lego-generate's
  ``probe_bf16()`` finds bf16 faster on this CPU; the update stays fp32);
- TRL: ``trl.GRPOTrainer(use_vllm=False, bf16=False)``: ``_prepare_inputs`` (transformers'
  ``generate``, the reward function, advantages), then ``compute_loss``, ``backward`` and the
  same AdamW step.

Before any time counts, TRL's ``_compute_loss`` scores our first generation on TRL's model:
the loss and the gradient norm must equal ours (the same formula on the same batch); and
every step on both sides must have ``prompts x 8`` completions of exactly 128 tokens.

Step time: the three sides in one process, a warm-up step each, then ABBA rounds; the best
step per side (medians in the note), split into generation and update. Peak RSS: each side
alone in a fresh process. Quick mode: 2 layers, 16 new tokens.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from benchmarks._harness import BenchResult, Row, log, package_version
from benchmarks.bench_align import _LIVE_MEMORY_ENV
from lego.align import __version__ as align_version
from lego.arch import build, to_hf

ROOT = Path(__file__).resolve().parent.parent

OURS = f"lego-align {align_version}"
TRL = (
    f"trl {package_version('trl')} + transformers {package_version('transformers')} "
    "(GRPOTrainer, use_vllm=False)"
)

MODEL: dict[str, Any] = {
    "d_model": 768,
    "n_heads": 12,
    "n_kv_heads": 4,
    "d_ff": 2048,
    "vocab_size": 32000,
    "context_length": 8192,
}
LR = 1e-6
GENERATIONS = 8
PROMPT_WORDS = 16
PAD, EOS = 0, 1
FIRST_WORD = 3  # ids 0-2 are <pad>, <eos>, <unk>
NORM_SCALE = 6.0

SIDES = ("ours", "ours_auto", "trl")
"""Ours sampling in fp32 (the policy itself), ours with ``rollout_dtype: auto``, TRL (fp32)."""

QUICK: dict[str, int] = {"layers": 2, "prompts": 1, "new_tokens": 16, "rounds": 1, "steps": 1}
FULL: dict[str, int] = {"layers": 12, "prompts": 1, "new_tokens": 128, "rounds": 1, "steps": 1}
"""``rounds``: ABBA rounds after the warm-ups (2 timed steps per side each); ``steps``: steps of
each memory process (the first step already allocates AdamW's state: the peak)."""


def make_tokenizer(folder: Path, vocab: int) -> Any:
    """A word-level tokenizer: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2, ``w3`` ... ``w{vocab-1}``.

    All three are special (``"w5<eos>"`` is two tokens); saved in ``folder`` for TRL.
    """
    tokenizers: Any = importlib.import_module("tokenizers")
    transformers: Any = importlib.import_module("transformers")
    words = ["<pad>", "<eos>", "<unk>", *(f"w{i}" for i in range(FIRST_WORD, vocab))]
    backend = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    if tok.encode("w5 w25157<eos>") != [5, 25157, EOS] or tok.eos_token_id != EOS:
        raise RuntimeError("the benchmark tokenizer does not give each word its own id")
    tok.save_pretrained(folder)
    return tok


def write_model(folder: Path, layers: int) -> tuple[Path, float, float]:
    """The random model in transformers' layout; its folder, parameter count and EOS odds.

    Two changes to the random initialisation keep every completion at full length without
    touching either side's sampling: the final norm's scale is ``NORM_SCALE`` (the logits then
    spread with a standard deviation of about 3.5, so a sampled token is not uniform noise)
    and ``<eos>``'s (tied) embedding row is zero (its logit is 0, far below the top ones).
    The returned odds are the largest probability of ``<eos>`` at any position of the
    prompts, one forward pass (about 1e-7: at most a few thousand tokens are sampled per
    step; every step is checked for completions that stopped early anyway).
    """
    torch.manual_seed(0)
    model = build("llama-3.2-1b", **MODEL, n_layers=layers)
    with torch.no_grad():
        model.get_parameter("final_norm.weight").fill_(NORM_SCALE)
        model.get_parameter("token_embedding.weight")[EOS].zero_()
        ids = torch.tensor([[int(w[1:]) for w in p.split()] for p in make_prompts(4)])
        logits: torch.Tensor = model(ids)  # (4, PROMPT_WORDS, vocab)
        eos_odds = float(logits.float().softmax(dim=-1)[..., EOS].max())
    n_params = float(sum(p.numel() for p in model.parameters()))
    path = folder / f"llama-{layers}"
    to_hf(model, path)
    return path, n_params, eos_odds


def make_prompts(count: int) -> list[str]:
    """``count`` prompts of ``PROMPT_WORDS`` random words each (equal lengths: no padding)."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(FIRST_WORD, MODEL["vocab_size"], (count, PROMPT_WORDS), generator=generator)
    return [" ".join(f"w{i}" for i in row.tolist()) for row in ids]


# -- worker processes -----------------------------------------------------------------------------


def worker(settings: dict[str, Any], *, live_memory: bool) -> dict[str, Any]:
    """Run ``_grpo_bench.py`` with ``settings`` in a fresh process; its JSON result."""
    label = "+".join(settings["sides"])
    log(f"  worker {label}{' (memory)' if live_memory else ''}")
    env = {**os.environ, **(_LIVE_MEMORY_ENV if live_memory else {})}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._grpo_bench", json.dumps(settings)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {label} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, side in result["sides"].items():
        for record in side["records"]:
            log(
                f"    {name}: generation {record['generation_s']:.2f} s, update "
                f"{record['update_s']:.2f} s (fwd {record['forward_s']:.2f}, bwd "
                f"{record['backward_s']:.2f}, AdamW {record['optimizer_s']:.2f}), "
                f"{record['completions']:.0f} completions, {record['completion_tokens']:.0f} "
                f"tokens, reward {record['reward']:.3f}"
            )
    if result["facts"]:
        log(f"    {json.dumps(result['facts'])}")
    log(f"    peak {_grown_mib(result):.0f} MiB above imports; load {os.getloadavg()[0]:.2f}")
    return result


def _grown_mib(result: Mapping[str, Any]) -> float:
    return float(result["peak_kib"] - result["before_kib"]) / 1024


def _timed(side: Mapping[str, Any], key: str) -> list[float]:
    """A timer's values without the side's first step (the warm-up: AdamW's state is made)."""
    return [float(r[key]) for r in side["records"][1:]]


def _best_step(side: Mapping[str, Any]) -> dict[str, float]:
    """The side's fastest timed step (all its timers): the least disturbed on a shared machine."""
    records: list[dict[str, float]] = side["records"][1:]
    return min(records, key=lambda r: r["step_s"])


def check_same_work(what: str, result: Mapping[str, Any], *, completions: int, tokens: int) -> None:
    """Every step of every side made ``completions`` completions of ``tokens`` tokens each."""
    for name, side in result["sides"].items():
        for i, record in enumerate(side["records"]):
            if record["completions"] != completions or record["completion_tokens"] != (
                completions * tokens
            ):
                raise RuntimeError(
                    f"{what}: {name} step {i + 1} made {record['completions']:.0f} completions "
                    f"with {record['completion_tokens']:.0f} tokens, not {completions} x {tokens}"
                )
    trainable = {side["trainable"] for side in result["sides"].values()}
    if len(trainable) != 1:
        raise RuntimeError(f"{what}: trainable parameters differ: {trainable}")


def _median(side: Mapping[str, Any], key: str) -> float:
    return statistics.median(_timed(side, key))


# -- the benchmark ---------------------------------------------------------------------------------


def measure(sizes: Mapping[str, int], quick: bool) -> BenchResult:
    """Run the comparison with ``sizes`` (``QUICK`` or ``FULL``) and return the rows."""
    prompts, new_tokens = sizes["prompts"], sizes["new_tokens"]
    completions = prompts * GENERATIONS
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        folder = Path(tmp)
        make_tokenizer(folder / "tokenizer", MODEL["vocab_size"])
        log(f"  writing the model ({sizes['layers']} layers)")
        model, n_params, eos_odds = write_model(folder, sizes["layers"])
        log(f"  largest P(<eos>) at a prompt position: {eos_odds:.2g}")
        label = f"{n_params / 1e6:.0f}M ({sizes['layers']} layers)"
        common: dict[str, Any] = {
            "model": str(model),
            "tokenizer": str(folder / "tokenizer"),
            "vocab": MODEL["vocab_size"],
            "prompts": make_prompts(prompts),
            "generations": GENERATIONS,
            "new_tokens": new_tokens,
            "lr": LR,
        }
        log(f"GRPO on {label}: {prompts} prompt(s) x {GENERATIONS} x {new_tokens} tokens")
        both = worker(
            {**common, "sides": list(SIDES), "rounds": sizes["rounds"], "check": True},
            live_memory=False,
        )
        check_same_work("one process", both, completions=completions, tokens=new_tokens)
        load_after_time = os.getloadavg()
        memory = {
            name: worker({**common, "sides": [name], "steps": sizes["steps"]}, live_memory=True)
            for name in SIDES
        }
        for name, result in memory.items():
            check_same_work(f"{name} alone", result, completions=completions, tokens=new_tokens)
        load_after_memory = os.getloadavg()

    ours, theirs = both["sides"]["ours"], both["sides"]["trl"]
    auto = both["sides"]["ours_auto"]
    best_ours, best_trl, best_auto = _best_step(ours), _best_step(theirs), _best_step(auto)
    dtypes = both["facts"]["rollout_dtypes"]
    probe = both["facts"]["bf16_probe"]
    facts = both["facts"]
    timed = len(_timed(ours, "step_s"))
    what = f"GRPO, {label}, {prompts} prompt(s) x {GENERATIONS} completions x {new_tokens} tokens"
    load = (
        f"load average {load_after_time[0]:.2f} / {load_after_time[1]:.2f} / "
        f"{load_after_time[2]:.2f} (1 / 5 / 15 min) at the end of the timed process"
    )

    def time_row(part: str, key: str, detail: str, side: str = "ours") -> Row:
        mine, best = (auto, best_auto) if side == "ours_auto" else (ours, best_ours)
        return Row(
            what=f"{what}: {part}",
            ours=best[key],
            peer=TRL,
            peer_value=best_trl[key],
            unit="s",
            higher_is_better=False,
            note=f"{detail}; the fastest of {timed} interleaved step(s) per side (medians: ours "
            f"{_median(mine, key):.3g} s, TRL {_median(theirs, key):.3g} s); {load}",
        )

    auto_label = f"rollout_dtype auto (here: sampling in {dtypes['ours_auto']})"

    rows = [
        time_row(
            "whole step (generation + update), fp32 vs fp32",
            "step_s",
            f"{completions * new_tokens} completion tokens per step on both sides; ours "
            "rollout_dtype float32",
        ),
        time_row(
            "generation (rollout, rewards, advantages), fp32 vs fp32",
            "generation_s",
            f"ours lego-generate rollout() "
            f"{completions * new_tokens / best_ours['generation_s']:.0f} tokens/s, TRL "
            f"transformers generate() {completions * new_tokens / best_trl['generation_s']:.0f} "
            "tokens/s",
        ),
        time_row(
            "update (log-probs, loss, backward, AdamW), fp32 vs fp32",
            "update_s",
            f"of it forward + loss: ours {best_ours['forward_s']:.2f} s, TRL "
            f"{best_trl['forward_s']:.2f} s; backward: ours {best_ours['backward_s']:.2f} s, TRL "
            f"{best_trl['backward_s']:.2f} s; AdamW: ours {best_ours['optimizer_s']:.2f} s, TRL "
            f"{best_trl['optimizer_s']:.2f} s",
        ),
        time_row(
            f"whole step, ours {auto_label} vs TRL fp32",
            "step_s",
            f"update in fp32 on both sides (ours {best_auto['update_s']:.3g} s); the sampling "
            "copy is refreshed from the fp32 policy before each generation, the loss's "
            "log-probs are the fp32 policy's",
            "ours_auto",
        ),
        time_row(
            f"generation, ours {auto_label} vs TRL fp32",
            "generation_s",
            f"ours {completions * new_tokens / best_auto['generation_s']:.0f} tokens/s, TRL "
            f"{completions * new_tokens / best_trl['generation_s']:.0f} tokens/s; the bf16 "
            f"probe: 8 x 4096 by 4096 product in {probe['float32_s'] * 1e3:.1f} ms fp32, "
            f"{probe['bfloat16_s'] * 1e3:.1f} ms bf16",
            "ours_auto",
        ),
        Row(
            what=f"{what}: peak RSS while training, above the imports, fp32 vs fp32",
            ours=_grown_mib(memory["ours"]),
            peer=TRL,
            peer_value=_grown_mib(memory["trl"]),
            unit="MiB",
            higher_is_better=False,
            better="smaller",
            worse="larger",
            note=f"each side alone in a fresh process, {sizes['steps']} steps; load average "
            f"{load_after_memory[0]:.2f} at the end",
        ),
        Row(
            what=f"{what}: peak RSS while training, above the imports, ours {auto_label}",
            ours=_grown_mib(memory["ours_auto"]),
            peer=TRL,
            peer_value=_grown_mib(memory["trl"]),
            unit="MiB",
            higher_is_better=False,
            better="smaller",
            worse="larger",
            note="the bf16 sampling copy's weights included; each side alone in a fresh "
            f"process, {sizes['steps']} steps",
        ),
    ]
    share_auto = best_auto["generation_s"] / best_auto["step_s"]
    share_ours = best_ours["generation_s"] / best_ours["step_s"]
    share_trl = best_trl["generation_s"] / best_trl["step_s"]
    notes = [
        "Same work, checked before any time is reported: every step on both sides made "
        f"{completions} completions of exactly {new_tokens} tokens (<eos> has a zero embedding "
        f"row and the logits spread: P(<eos>) <= {eos_odds:.1g} at the prompts' positions); the "
        "same number of trainable "
        f"parameters ({ours['trainable']:,}); TRL's GRPOTrainer._compute_loss on our first "
        f"generation gives our loss ({facts['trl_on_our_batch']['loss']:.3g} vs "
        f"{facts['ours_first']['loss']:.3g}; with equal lengths and beta 0 the dapo loss is "
        "minus the mean advantage, about 0) and our gradient norm "
        f"({facts['trl_on_our_batch']['grad_norm']:.6g} vs {facts['ours_first']['grad_norm']:.6g},"
        " 1e-4).",
        f"Where the time goes (fastest step): generation is {share_ours:.0%} of our fp32 step, "
        f"{share_auto:.0%} of our step with rollout_dtype auto, and {share_trl:.0%} of TRL's. The "
        "update is the same arithmetic on both sides (one forward "
        "and one backward over prompts + completions, the log-softmax of the completion "
        "positions, AdamW over every weight).",
        "Timed step: ours = next() of GRPOTrainer.source (rollout, rewards, advantages), "
        "GRPOObjective, backward, AdamW.step, zero_grad; TRL = trainer._prepare_inputs(rows) "
        "(_generate_and_score_completions), trainer.compute_loss, backward, the same AdamW "
        "step. Neither includes logging or the data loader; the gradient norm taken for the "
        "check is outside the timers.",
        "Peak RSS growth: VmHWM while training (reset after loading) minus VmHWM after the "
        "imports, each side alone in its own process with glibc returning freed memory at "
        "once (MALLOC_TRIM_THRESHOLD_=0, MALLOC_MMAP_THRESHOLD_=131072).",
        f"A shared machine (torch threads {both['threads']}; other benchmarks ran beside this "
        "one): ABBA interleaving keeps the ratios fair, not the absolute times.",
    ]
    return BenchResult(
        name="grpo",
        title=f"GRPO steps: {OURS} side by side with TRL {package_version('trl')}",
        description=(
            f"One GRPO step (generation + update) on a {label} Llama-3-shaped random model, fp32 "
            f"on the CPU: {prompts} prompt(s) x {GENERATIONS} completions x {new_tokens} new "
            "tokens, the same reward function, beta 0, loss_type dapo, 1 iteration; ours "
            "against TRL's GRPOTrainer without vLLM; step time interleaved ABBA in one process, "
            "peak memory each side alone in a fresh process."
        ),
        rows=rows,
        params={
            "torch": torch.__version__,
            "threads": both["threads"],
            "model": {**MODEL, "n_layers": sizes["layers"], "parameters": n_params},
            **sizes,
            "generations": GENERATIONS,
            "prompt_words": PROMPT_WORDS,
            "lr": LR,
            "beta": 0.0,
            "loss_type": "dapo",
            "num_iterations": 1,
            "temperature": 1.0,
            "rollout_dtypes": dtypes,
            "bf16_probe": probe,
            "load_average_after_timing": list(load_after_time),
            "load_average_after_memory": list(load_after_memory),
            "quick": quick,
        },
        notes=notes,
    )


def run(quick: bool) -> BenchResult:
    return measure(QUICK if quick else FULL, quick)
