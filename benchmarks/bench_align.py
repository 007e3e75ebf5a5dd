"""lego-align: DPO and SFT training steps side by side with TRL (+ PEFT, transformers).

On a Llama-3-shaped model (d_model 1024, 16 / 8 heads, d_ff 4096, vocabulary 128256;
random weights written once by ``lego.arch.to_hf``, read by ``lego.arch.from_hf`` and by
transformers' ``from_pretrained``), fp32 on the CPU, AdamW (same learning rate, no weight
decay) on both sides, ``beta`` 0.1, ``loss_type`` sigmoid, no dropout, no gradient
checkpointing, TRL with ``bf16=False`` and ``precompute_ref_log_probs=False``:

- **DPO, LoRA r=16 (all linear layers)**: ours is ``lego.align.DPOObjective`` with the
  reference as the policy with its adapter disabled; TRL is ``trl.DPOTrainer`` given
  ``peft_config=`` (its reference is then the disabled adapter too: checked). One step is
  the policy's and the reference's forward passes, the sigmoid loss, the backward pass and
  ``AdamW.step``. Both sides start from the same weights and the same adapter (``B`` is
  not zero, so the first loss already compares policy and reference), and their collated
  batches are equal token for token.
- **DPO against TRL's default**: ``trl.DPOTrainer`` given a plain transformers model (no
  ``peft_config``, no ``ref_model``) trains every weight and loads a second, frozen copy of
  the model from its directory as the reference. Our LoRA step and our full-parameter step
  (``reference="copy"``: a frozen deep copy) against it (a full-parameter run holds the
  weights five times over: policy, copy, gradients, two AdamW moments; those rows use a
  shallower model of the same width, the row says which).
- **SFT with packing, LoRA r=16**: ours is ``lego.align.SFTObjective`` on rows packed by
  lego-data's ``pack_examples`` (what ``SFTTrainer(packing=True)`` feeds it); TRL is
  ``trl.SFTTrainer(packing=True)`` (best-fit decreasing, padding-free), both from the same
  prompt / completion records with the completion-only loss, the same sequence length and
  rows per step. Tokens per second counts real (non-padding) positions.

Step time: the two sides in one process, steps alternated ABBA after a warm-up each, the
best step per side (the medians are in the note): on a shared machine the load changes
within a run, and the fastest step is the least disturbed. Peak RSS: each side alone in a
fresh process.

TRL's steps are ``trainer.training_step(model, inputs)`` (its ``compute_loss``, which runs
the policy and the reference, and ``backward``) followed by the AdamW step, on the batch
its own collator makes; ours the objective, ``backward`` and the AdamW step. Quick mode: 2
layers, 64 tokens, 1 pair.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from benchmarks._harness import BenchResult, Row, log, package_version
from lego.align import DPOCollator, SFTDataset
from lego.align import __version__ as align_version
from lego.arch import build, to_hf
from lego.data.packing import PackedCollator, pack_examples
from lego.peft import LoraConfig, apply_lora

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_align_bench.py"

OURS = f"lego-align {align_version}"
TRL = f"trl {package_version('trl')} + peft {package_version('peft')}"
TRL_PLAIN = f"trl {package_version('trl')} + transformers {package_version('transformers')}"

MODEL: dict[str, Any] = {"d_model": 1024, "n_heads": 16, "n_kv_heads": 8, "d_ff": 4096}
VOCAB = 128256
RANK = 16
ALPHA = 32
LR = 1e-5
BETA = 0.1
PAD, EOS = 0, 1
FIRST_WORD = 3  # ids 0-2 are <pad>, <eos>, <unk>

QUICK: dict[str, int] = {
    "layers": 2,  # the LoRA DPO and SFT model
    "full_layers": 2,  # the model of the full-parameter and TRL-default rows
    "seq": 64,
    "pairs": 1,
    "sft_rows": 1,
    "rounds": 1,  # ABBA rounds in one process (each: 2 timed steps per side)
    "steps": 2,  # steps per fresh (memory) process
}
FULL: dict[str, int] = {
    "layers": 24,
    "full_layers": 4,
    "seq": 512,
    "pairs": 1,
    "sft_rows": 2,
    "rounds": 2,
    "steps": 2,
}

_LIVE_MEMORY_ENV = {"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc returns freed memory at once on both sides, so peak RSS tracks live tensors."""


# -- inputs ---------------------------------------------------------------------------------------


def make_tokenizer(folder: Path) -> Any:
    """A word-level tokenizer over the model's whole vocabulary (``w3`` ... ``w128255``).

    ``<pad>`` is 0, ``<eos>`` 1 and ``<unk>`` 2, all special (so ``"w5<eos>"`` is two
    tokens; no special token is the prefix of a word); saved in ``folder`` for TRL's
    processes.
    """
    tokenizers: Any = importlib.import_module("tokenizers")
    transformers: Any = importlib.import_module("transformers")
    words = ["<pad>", "<eos>", "<unk>", *(f"w{i}" for i in range(FIRST_WORD, VOCAB))]
    backend = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    if tok.encode("w5 w25157 w128255<eos>") != [5, 25157, VOCAB - 1, EOS]:
        raise RuntimeError("the benchmark tokenizer does not give each word its own id")
    tok.save_pretrained(folder)
    return tok


class LegoTokenizer:
    """lego's ``Tokenizer`` protocol over the transformers tokenizer (the same ids)."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    @property
    def vocab_size(self) -> int:
        return VOCAB

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return {"<pad>": PAD, "<eos>": EOS, "<unk>": FIRST_WORD - 1}

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids)))


def _words(generator: torch.Generator, n: int) -> list[int]:
    return torch.randint(FIRST_WORD, VOCAB, (n,), generator=generator).tolist()


def _text(ids: Sequence[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def dpo_data(folder: Path, pairs: int, seq: int) -> tuple[Path, Path]:
    """``pairs`` prompt / chosen / rejected records whose longest row is ``seq`` tokens.

    Returns:
        The records (JSON, for TRL) and our collated batch (safetensors).
    """
    generator = torch.Generator().manual_seed(3)
    records, token_pairs = [], []
    for i in range(pairs):
        longest = seq - 8 * i  # rows of different lengths: padding as in real batches
        prompt = _words(generator, longest * 3 // 8)
        chosen = _words(generator, longest - len(prompt) - 1)  # + EOS
        rejected = _words(generator, (longest - len(prompt)) * 3 // 4)
        records.append(
            {
                "prompt": _text(prompt),
                "chosen": " " + _text(chosen),
                "rejected": " " + _text(rejected),
            }
        )
        token_pairs.append(
            {
                "prompt_ids": prompt,
                "chosen_ids": [*chosen, EOS],
                "rejected_ids": [*rejected, EOS],
                "index": i,
            }
        )
    batch = DPOCollator(pad_id=PAD)(token_pairs)
    if int(batch["input_ids"].shape[1]) != seq:
        raise RuntimeError(f"the DPO batch is {tuple(batch['input_ids'].shape)}, not ({seq} wide)")
    records_path, batch_path = folder / "dpo.json", folder / "dpo.safetensors"
    records_path.write_text(json.dumps(records), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in batch.items() if k != "index"}, str(batch_path))
    return records_path, batch_path


def sft_data(folder: Path, tok: Any, rows: int, seq: int) -> tuple[Path, Path, int]:
    """Prompt / completion records (plain text, EOS appended) and our first packed batch.

    Returns:
        The records (JSON), our batch of ``rows`` packed rows of ``seq`` tokens
        (safetensors: ``input_ids``, ``labels``, ``attention_mask``, ``position_ids``,
        ``document_ids``), and its real tokens.
    """
    generator = torch.Generator().manual_seed(4)
    records = []
    for _ in range(max(8, 6 * rows * seq // 64)):
        total = int(torch.randint(seq // 16, seq // 3, (1,), generator=generator))
        cut = max(1, int(total * float(torch.rand((), generator=generator)) * 0.6))
        ids = _words(generator, total)
        records.append({"prompt": _text(ids[:cut]), "completion": " " + _text(ids[cut:])})
    examples = SFTDataset(
        records, LegoTokenizer(tok), template=None, eos_token="<eos>", max_length=seq
    )
    packed = pack_examples(
        examples, max_length=seq, pad_id=PAD, strategy="best_fit", too_long="error"
    )
    if len(packed) < rows:
        raise RuntimeError(f"only {len(packed)} packed rows, {rows} wanted")
    # The fullest rows (TRL's side takes its fullest too): a training run is mostly full rows.
    fullest = sorted(packed, key=lambda row: -sum(d >= 0 for d in row.document_ids))[:rows]
    batch = PackedCollator()(fullest)
    records_path, batch_path = folder / "sft.json", folder / "sft.safetensors"
    records_path.write_text(json.dumps(records), encoding="utf-8")
    save_file(
        {k: v.contiguous() for k, v in batch.items() if isinstance(v, torch.Tensor)},
        str(batch_path),
    )
    return records_path, batch_path, int(batch["attention_mask"].sum())


def write_model(folder: Path, layers: int) -> tuple[Path, Path, float]:
    """The random model (transformers' layout) and a LoRA adapter for it (PEFT's layout).

    The adapter's ``B`` is small and not zero, so the policy differs from the reference
    from the first step. Returns the model and adapter folders and the parameter count.
    """
    torch.manual_seed(0)
    model = build("llama-3.2-1b", **MODEL, n_layers=layers)
    n_params = float(sum(p.numel() for p in model.parameters()))
    path = folder / f"llama-{layers}"
    to_hf(model, path)
    adapted = apply_lora(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 2e-3)
    adapter = folder / f"adapter-{layers}"
    adapted.save_adapter(adapter)
    return path, adapter, n_params


# -- worker processes -----------------------------------------------------------------------------


def worker(settings: dict[str, Any], *, live_memory: bool) -> dict[str, Any]:
    """Run ``_align_bench.py`` with ``settings`` in a fresh process; its JSON result."""
    label = settings.get("sides") or settings["role"]
    log(f"  worker {label}{' (memory)' if live_memory else ''}")
    env = {**os.environ, **(_LIVE_MEMORY_ENV if live_memory else {})}
    done = subprocess.run(
        [sys.executable, str(WORKER), json.dumps(settings)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {label} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    brief = {
        name: {k: side[k] for k in ("times", "losses", "trainable", "tokens", "facts")}
        for name, side in result.get("sides", {}).items()
    }
    log(f"    {json.dumps(brief) if brief else json.dumps(result)}")
    if "peak_kib" in result:
        log(f"    peak {(result['peak_kib'] - result['before_kib']) / 1024:.0f} MiB above imports")
    return result


def _timed(side: Mapping[str, Any]) -> list[float]:
    """Step times without each run's first step (the warm-up: AdamW's state is made there)."""
    times: list[float] = side["times"]
    return times[1:]


def _grown_mib(result: Mapping[str, Any]) -> float:
    return float(result["peak_kib"] - result["before_kib"]) / 1024


def _close(a: float, b: float, rel: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(1.0, abs(b))


def check_same_steps(
    what: str, ours: Mapping[str, Any], theirs: Mapping[str, Any], *, rel: float = 2e-3
) -> None:
    """Both sides did the same work: trainable parameters, losses and log-probs agree."""
    if ours["trainable"] != theirs["trainable"]:
        raise RuntimeError(
            f"{what}: {ours['trainable']} trainable here, {theirs['trainable']} in TRL"
        )
    steps = min(len(ours["losses"]), len(theirs["losses"]))
    for i in range(steps):
        if not _close(ours["losses"][i], theirs["losses"][i], rel):
            raise RuntimeError(
                f"{what}: step {i + 1} loss {ours['losses'][i]} here, {theirs['losses'][i]} in TRL"
            )
    for key in ("logps/chosen", "logps/rejected"):
        a, b = ours["metrics"][0][key], theirs["metrics"][0][key]
        if not _close(a, b, 1e-4):
            raise RuntimeError(f"{what}: first step {key} {a} here, {b} in TRL")


def _best(side: Mapping[str, Any]) -> float:
    """A side's fastest timed step: the least noisy estimate on a shared machine."""
    return min(_timed(side))


def _timing(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> str:
    """How the step times were taken, with both medians."""
    a, b = _timed(ours), _timed(theirs)
    return (
        f"best of {len(a)} steps per side, interleaved ABBA in one process after 1 warm-up "
        f"each (medians: ours {statistics.median(a):.3g} s, TRL {statistics.median(b):.3g} s)"
    )


# -- the benchmark ---------------------------------------------------------------------------------


def measure(sizes: Mapping[str, int], quick: bool) -> BenchResult:
    """Run every section with ``sizes`` (``QUICK`` or ``FULL``) and return the rows."""
    rows: list[Row] = []
    notes: list[str] = []
    seq, pairs, rounds, steps = sizes["seq"], sizes["pairs"], sizes["rounds"], sizes["steps"]
    with tempfile.TemporaryDirectory(prefix="bench-align-") as tmp:
        folder = Path(tmp)
        tok = make_tokenizer(folder / "tokenizer")
        log(f"  writing the models ({sizes['layers']} and {sizes['full_layers']} layers)")
        big, big_adapter, big_params = write_model(folder, sizes["layers"])
        if sizes["full_layers"] == sizes["layers"]:
            small, small_adapter, small_params = big, big_adapter, big_params
        else:
            small, small_adapter, small_params = write_model(folder, sizes["full_layers"])
        big_label = f"{big_params / 1e9:.2f}B ({sizes['layers']} layers)"
        small_label = f"{small_params / 1e9:.2f}B ({sizes['full_layers']} layers)"
        dpo_records, dpo_batch = dpo_data(folder, pairs, seq)
        sft_records, sft_batch, sft_tokens = sft_data(folder, tok, sizes["sft_rows"], seq)
        common = {"tokenizer": str(folder / "tokenizer"), "lr": LR, "beta": BETA, "seq": seq}
        dpo = {**common, "records": str(dpo_records), "batch": str(dpo_batch)}
        big_dpo = {**dpo, "model": str(big), "adapter": str(big_adapter)}
        small_dpo = {**dpo, "model": str(small), "adapter": str(small_adapter)}

        # What TRL takes as the reference for each way of passing a model.
        facts = worker({**small_dpo, "role": "trl-reference"}, live_memory=False)["facts"]
        notes.append(
            "TRL's reference, read from the trainer it builds (small model): "
            f"DPOTrainer(peft_config=LoraConfig) -> ref_model {facts['peft_config']['ref_model']}, "
            f"adapters {facts['peft_config']['adapters']} (reference = the base model, adapter "
            "disabled, like ours); DPOTrainer(model=PeftModel) -> ref_model "
            f"{facts['peft_model']['ref_model']}, adapters {facts['peft_model']['adapters']} "
            "(a frozen copy of the adapter named 'ref' is the reference, not the disabled "
            f"adapter); DPOTrainer(model=plain model) -> ref_model "
            f"{facts['plain_model']['ref_model']} (a second copy loaded from the model's "
            "directory): that is TRL's default. DPOConfig's defaults are also "
            f"gradient_checkpointing={facts['plain_model']['gradient_checkpointing_default']}, "
            f"bf16={facts['plain_model']['bf16_default']} (bf16 unless fp16) and "
            f"learning_rate={facts['plain_model']['learning_rate_default']}; here both sides run "
            f"fp32, without checkpointing, lr {LR}."
        )

        # -- DPO, LoRA: ours vs TRL + PEFT (disabled adapter on both sides)
        log(f"DPO LoRA r={RANK} on {big_label}, {pairs} pair(s) x {seq} tokens")
        memory = {
            name: worker({**big_dpo, "role": "dpo", "sides": [name], "steps": 2}, live_memory=True)
            for name in ("ours-lora", "trl-peft")
        }
        check_same_steps(
            "DPO LoRA (separate processes)",
            memory["ours-lora"]["sides"]["ours-lora"],
            memory["trl-peft"]["sides"]["trl-peft"],
        )
        both = worker(
            {**big_dpo, "role": "dpo", "sides": ["ours-lora", "trl-peft"], "rounds": rounds},
            live_memory=False,
        )
        ours_lora, trl_peft = both["sides"]["ours-lora"], both["sides"]["trl-peft"]
        check_same_steps("DPO LoRA (one process)", ours_lora, trl_peft)
        if _close(ours_lora["losses"][0], math.log(2), 1e-6):
            raise RuntimeError("DPO LoRA: the first loss is log 2: the adapter was not loaded")
        what = f"DPO LoRA r={RANK}, {big_label}, {pairs} pair(s) x {seq} tokens"
        rows.append(
            Row(
                what=f"{what}: training step (policy + reference fwd, bwd, AdamW)",
                ours=_best(ours_lora),
                peer=f"{TRL} (peft_config: reference = disabled adapter)",
                peer_value=_best(trl_peft),
                unit="s",
                higher_is_better=False,
                note=f"{ours_lora['trainable']:,} trainable parameters; "
                f"{_timing(ours_lora, trl_peft)}; same losses each step (first "
                f"{ours_lora['losses'][0]:.4f})",
            )
        )
        rows.append(
            Row(
                what=f"{what}: peak RSS while training, above the imports",
                ours=_grown_mib(memory["ours-lora"]),
                peer=f"{TRL} (peft_config: reference = disabled adapter)",
                peer_value=_grown_mib(memory["trl-peft"]),
                unit="MiB",
                higher_is_better=False,
                better="smaller",
                worse="larger",
                note="each side alone in a fresh process, 2 steps",
            )
        )

        # -- DPO against TRL's default, and full-parameter DPO (frozen copy on both sides)
        log(f"DPO vs TRL's default and full-parameter DPO on {small_label}")
        alone = {
            name: worker(
                {**small_dpo, "role": "dpo", "sides": [name], "steps": steps}, live_memory=True
            )
            for name in ("ours-lora", "trl-default", "ours-full")
        }
        check_same_steps(
            "full-parameter DPO (separate processes)",
            alone["ours-full"]["sides"]["ours-full"],
            alone["trl-default"]["sides"]["trl-default"],
        )
        full = worker(
            {**small_dpo, "role": "dpo", "sides": ["ours-full", "trl-default"], "rounds": rounds},
            live_memory=False,
        )
        ours_full, trl_full = full["sides"]["ours-full"], full["sides"]["trl-default"]
        check_same_steps("full-parameter DPO (one process)", ours_full, trl_full)
        if not _close(ours_full["losses"][0], math.log(2), 1e-5):
            raise RuntimeError(
                f"full-parameter DPO: first loss {ours_full['losses'][0]}, not log 2"
            )
        versus = worker(
            {**small_dpo, "role": "dpo", "sides": ["ours-lora", "trl-default"], "rounds": rounds},
            live_memory=False,
        )
        ours_small, trl_small = versus["sides"]["ours-lora"], versus["sides"]["trl-default"]
        default_facts = trl_full["facts"]
        if default_facts["ref_model"] == "NoneType" or default_facts["ref_shares_weights"]:
            raise RuntimeError(f"TRL's default reference is not a separate model: {default_facts}")
        trl_default = (
            f"{TRL_PLAIN} (default: all weights trained, reference = a 2nd copy from the directory)"
        )
        small_what = f"{small_label}, {pairs} pair(s) x {seq} tokens"
        rows += [
            Row(
                what=f"DPO, ours LoRA r={RANK} vs TRL's default, {small_what}: training step",
                ours=_best(ours_small),
                peer=trl_default,
                peer_value=_best(trl_small),
                unit="s",
                higher_is_better=False,
                note=f"{_timing(ours_small, trl_small)}; TRL trains "
                f"{trl_small['trainable']:,} parameters, ours {ours_small['trainable']:,}",
            ),
            Row(
                what=f"DPO, ours LoRA r={RANK} vs TRL's default, {small_what}: peak RSS while "
                "training, above the imports",
                ours=_grown_mib(alone["ours-lora"]),
                peer=trl_default,
                peer_value=_grown_mib(alone["trl-default"]),
                unit="MiB",
                higher_is_better=False,
                better="smaller",
                worse="larger",
                note=f"each side alone in a fresh process, {steps} steps",
            ),
            Row(
                what=f"DPO, full parameters, {small_what}: training step",
                ours=_best(ours_full),
                peer=f"{TRL_PLAIN} (reference = a frozen copy)",
                peer_value=_best(trl_full),
                unit="s",
                higher_is_better=False,
                note=f"ours: reference = a frozen deep copy; {_timing(ours_full, trl_full)}; same "
                "losses each step",
            ),
            Row(
                what=f"DPO, full parameters, {small_what}: peak RSS while training, above the "
                "imports",
                ours=_grown_mib(alone["ours-full"]),
                peer=f"{TRL_PLAIN} (reference = a frozen copy)",
                peer_value=_grown_mib(alone["trl-default"]),
                unit="MiB",
                higher_is_better=False,
                better="smaller",
                worse="larger",
                note=f"each side alone in a fresh process, {steps} steps",
            ),
        ]

        # -- SFT with packing
        rows_per_step = sizes["sft_rows"]
        log(f"SFT LoRA r={RANK} with packing on {big_label}, {rows_per_step} x {seq} tokens")
        sft = worker(
            {
                **common,
                "model": str(big),
                "adapter": str(big_adapter),
                "records": str(sft_records),
                "batch": str(sft_batch),
                "rows": rows_per_step,
                "role": "sft",
                "sides": ["ours", "trl"],
                "rounds": rounds,
            },
            live_memory=False,
        )
        ours_sft, trl_sft = sft["sides"]["ours"], sft["sides"]["trl"]
        if ours_sft["trainable"] != trl_sft["trainable"]:
            raise RuntimeError(
                f"SFT: {ours_sft['trainable']} trainable here, {trl_sft['trainable']} in TRL"
            )
        apart = bool(ours_sft["facts"]["documents_apart"])
        on_ours = trl_sft["facts"]["loss_on_our_batch"]["apart" if apart else "across"]
        if not _close(ours_sft["losses"][0], on_ours, 1e-4):
            raise RuntimeError(
                f"SFT: first loss {ours_sft['losses'][0]} here, TRL's model gives {on_ours} on "
                "the same packed batch"
            )
        if sft_tokens != ours_sft["tokens"]:
            raise RuntimeError("SFT: the worker's batch is not the one written")
        ours_tps = ours_sft["tokens"] / _best(ours_sft)
        trl_tps = trl_sft["tokens"] / _best(trl_sft)
        rows.append(
            Row(
                what=f"SFT LoRA r={RANK} with packing, {big_label}, {rows_per_step} row(s) x "
                f"{seq} tokens: training throughput (fwd + bwd + AdamW)",
                ours=ours_tps,
                peer=f"{TRL} (SFTTrainer, packing=True)",
                peer_value=trl_tps,
                unit="tokens/s",
                note=f"real tokens per step: ours {ours_sft['tokens']}, TRL "
                f"{trl_sft['tokens']} ({trl_sft['facts']['documents']} documents, padding-free "
                f"{trl_sft['facts']['batch_shape']}); {_timing(ours_sft, trl_sft)}; first loss "
                f"{ours_sft['losses'][0]:.4f} here = TRL's model on our batch {on_ours:.4f}",
            )
        )
        if apart:
            notes.append(
                "SFT packing keeps documents apart on both sides: ours passes document_ids to "
                "the lego-arch model (a block-diagonal causal mask), transformers builds one "
                "from TRL's restarting position_ids. Rows differ in layout: ours are "
                f"{rows_per_step} padded row(s) of {seq}, TRL flattens its rows into one "
                f"padding-free row. TRL's first loss on its own batch: {trl_sft['losses'][0]:.4f}."
            )
        else:
            notes.append(
                "SFT packing differs in one respect: this lego-arch model takes no document_ids, "
                "so our packed rows attend across their documents (cross_document_attention: "
                "true; positions restart, labels stay inside documents), while transformers "
                "builds a block-diagonal mask from TRL's restarting position_ids (documents kept "
                f"apart). TRL's first loss on its own batch: {trl_sft['losses'][0]:.4f}."
            )

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    notes += [
        "Same work on both sides, checked before any time is reported: equal trainable "
        "parameters; DPO batches equal token for token, the same loss at every step and the "
        "same first-step log-probabilities (1e-4); SFT: TRL's model gives our loss on our "
        "packed batch.",
        "Timed step: ours = DPOObjective / SFTObjective (policy and, for DPO, reference "
        "forward, loss), backward, AdamW.step, zero_grad; TRL = trainer.training_step(model, "
        "inputs) (compute_loss with the policy and reference forward, backward) + the same "
        "AdamW step. Neither includes data loading or logging.",
        "Peak RSS growth: VmHWM while training (reset after loading) minus VmHWM after the "
        "imports, each side in its own process with glibc returning freed memory at once "
        "(MALLOC_TRIM_THRESHOLD_=0, MALLOC_MMAP_THRESHOLD_=131072).",
        f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (a shared "
        "machine; ABBA interleaving keeps the ratios fair, not the absolute times).",
    ]
    return BenchResult(
        name="align",
        title=f"Alignment steps: {OURS} side by side with TRL {package_version('trl')}",
        description=(
            "DPO (LoRA r=16 with the disabled adapter as reference; TRL's default; full "
            "parameters with a frozen copy) and packed SFT training steps on Llama-3-shaped "
            "random weights, fp32 on the CPU, the same batch and optimizer on both sides: step "
            "time interleaved, peak memory each side in a fresh process."
        ),
        rows=rows,
        params={
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": {**MODEL, "vocab": VOCAB},
            **sizes,
            "rank": RANK,
            "alpha": ALPHA,
            "lr": LR,
            "beta": BETA,
            "quick": quick,
        },
        notes=notes,
    )


def run(quick: bool) -> BenchResult:
    return measure(QUICK if quick else FULL, quick)
