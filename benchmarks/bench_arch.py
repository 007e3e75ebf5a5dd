"""lego-arch: our models and HF loading side by side with transformers, same weights.

Two sections:

- forward throughput: lego's GPT-2 124M and a Llama-3.2-1B-shaped model against
  transformers' ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` holding the same weights (random
  init, written once by ``to_hf``, then read by ``from_hf`` and by transformers'
  ``from_pretrained``), fp32 on the CPU, ``no_grad``, batch 1 and 8 at sequence 256,
  tokens/s (higher is better). Both sides run scaled-dot-product attention.
- loading: wall time and peak resident memory of ``lego.arch.from_hf`` against
  ``transformers.AutoModelForCausalLM.from_pretrained`` on the same directory, each in a
  fresh subprocess (peak RSS: Linux's ``VmHWM``, else ``resource.getrusage``'s
  ``ru_maxrss``; the row reports the growth of the peak during the load, above the
  interpreter with its library imported). Both loaders map the safetensors files lazily, so
  a second pair of rows measures up to the logits of a first forward, which reads every
  weight.

Quick mode shrinks the Llama-shaped model to two layers and the sequences to 64 tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from benchmarks._harness import (
    BenchResult,
    Row,
    compare,
    log,
    package_version,
    per_second,
)
from lego.arch import DecoderLM, __version__, build, from_hf, to_hf

OURS = f"lego-arch {__version__}"
PEER = f"transformers {package_version('transformers')}"

_LOAD_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    side, path = sys.argv[1], sys.argv[2]
    import torch
    if side == "ours":
        from lego.arch import from_hf
        load = lambda: from_hf(path)
    else:
        from transformers import AutoModelForCausalLM
        load = lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    def peak_kib():
        # VmHWM: this process's own peak RSS. ru_maxrss would do, but Linux carries it over
        # from the parent across fork + exec, so a child of a big process starts "high".
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    before = peak_kib()
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    after = peak_kib()
    # Weights a loader maps lazily are read at the first forward: measure up to its logits.
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.no_grad():
        model(ids)
    first = time.perf_counter() - start
    used = peak_kib()
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"seconds": seconds, "before_kib": before, "after_kib": after,
                      "first_forward_seconds": first, "used_kib": used, "n": n}))
    """
)


def _measure_load(side: str, path: Path) -> dict[str, Any]:
    """Load ``path`` once in a fresh interpreter; return its seconds and RSS figures."""
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, side, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _pair(name: str, directory: Path, **overrides: Any) -> tuple[DecoderLM, PreTrainedModel]:
    """A random lego model written by to_hf, read back by from_hf and by transformers."""
    torch.manual_seed(0)
    to_hf(build(name, **overrides), directory)
    ours = from_hf(directory)
    theirs = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    theirs.train(False)
    return ours, theirs


def _check_same(ours: DecoderLM, theirs: PreTrainedModel, vocab: int) -> None:
    ids = torch.randint(0, vocab, (1, 16))
    with torch.no_grad():
        a = ours(ids)
        b = theirs(ids, use_cache=False).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _forward_rows(
    label: str,
    ours: DecoderLM,
    theirs: PreTrainedModel,
    *,
    batches: tuple[int, ...],
    seq_len: int,
    repeat: int,
) -> list[Row]:
    rows: list[Row] = []
    vocab = ours.config.vocab_size
    for batch in batches:
        ids = torch.randint(0, vocab, (batch, seq_len))

        def run_ours(ids: torch.Tensor = ids) -> None:
            with torch.no_grad():
                ours(ids)

        def run_peer(ids: torch.Tensor = ids) -> None:
            with torch.no_grad():
                theirs(ids, use_cache=False)

        log(f"  forward {label} batch {batch} x {seq_len}")
        ours_s, peer_s = compare(run_ours, run_peer, repeat=repeat, number=1)
        tokens = batch * seq_len
        rows.append(
            Row(
                what=f"{label} forward, batch {batch} x {seq_len} tokens (fp32, CPU)",
                ours=tokens * per_second(ours_s),
                peer=PEER,
                peer_value=tokens * per_second(peer_s),
                unit="tokens/s",
            )
        )
    return rows


def _load_rows(label: str, directory: Path) -> list[Row]:
    log(f"  loading {label}")
    ours = _measure_load("ours", directory)
    peer = _measure_load("peer", directory)
    if ours["n"] != peer["n"]:
        raise RuntimeError(f"{label}: lego loaded {ours['n']} parameters, transformers {peer['n']}")
    size_mib = sum(f.stat().st_size for f in directory.glob("*.safetensors")) / 2**20
    return [
        Row(
            what=f"{label} load time ({size_mib:.0f} MiB of safetensors)",
            ours=ours["seconds"],
            peer=PEER,
            peer_value=peer["seconds"],
            unit="s",
            higher_is_better=False,
        ),
        Row(
            what=f"{label} load: peak RSS growth",
            ours=(ours["after_kib"] - ours["before_kib"]) / 1024,
            peer=PEER,
            peer_value=(peer["after_kib"] - peer["before_kib"]) / 1024,
            unit="MiB",
            higher_is_better=False,
            better="smaller",
            worse="larger",
            note=f"weights: {size_mib:.0f} MiB",
        ),
        Row(
            what=f"{label} load + first forward (1 x 16 tokens)",
            ours=ours["first_forward_seconds"],
            peer=PEER,
            peer_value=peer["first_forward_seconds"],
            unit="s",
            higher_is_better=False,
        ),
        Row(
            what=f"{label} load + first forward: peak RSS growth",
            ours=(ours["used_kib"] - ours["before_kib"]) / 1024,
            peer=PEER,
            peer_value=(peer["used_kib"] - peer["before_kib"]) / 1024,
            unit="MiB",
            higher_is_better=False,
            better="smaller",
            worse="larger",
            note="both map the files lazily; the first forward reads every weight",
        ),
    ]


def run(quick: bool) -> BenchResult:
    seq_len = 64 if quick else 256
    repeat = 2 if quick else 3
    llama_overrides: dict[str, Any] = {"n_layers": 2} if quick else {}
    llama_label = "Llama-3.2-1B-shaped" + (" (2 layers)" if quick else "")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, overrides in (
            ("GPT-2 124M", "gpt2", {}),
            (llama_label, "llama-3.2-1b", llama_overrides),
        ):
            directory = Path(tmp) / name
            log(f"{label}: writing and reading {directory}")
            ours, theirs = _pair(name, directory, **overrides)
            _check_same(ours, theirs, ours.config.vocab_size)
            rows += _forward_rows(
                label, ours, theirs, batches=(1, 8), seq_len=seq_len, repeat=repeat
            )
            del ours, theirs
            rows += _load_rows(label, directory)
    return BenchResult(
        name="arch",
        title=f"Model forward and HF loading: {OURS} side by side with {PEER}",
        description=(
            "Forward throughput of the same weights in lego-arch's DecoderLM and in "
            "transformers (fp32, CPU, no_grad, no KV cache), and the time and peak memory "
            "of loading one HF directory with lego.arch.from_hf and with transformers' "
            "AutoModelForCausalLM.from_pretrained, each in a fresh process."
        ),
        rows=rows,
        params={
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "seq_len": seq_len,
            "repeat": repeat,
            "quick": quick,
        },
        notes=[
            "Both models are random (seed 0) and written once by to_hf; transformers and "
            "from_hf read the same files, and their logits agree before timing.",
            "Peak RSS growth: the process's peak resident set (VmHWM; ru_maxrss is not "
            "used on Linux because a child inherits its parent's) after the load minus "
            "before it, in a fresh interpreter that has imported torch and the library.",
            "The machine is shared with other jobs: the ratio of interleaved timings is "
            "the figure to read, not the absolute values.",
        ],
    )
