"""lego-serve against ``transformers serve --continuous-batching``: streamed requests, same model.

Each model (random weights, written once by ``lego.arch.to_hf`` into a temporary directory
with GPT-2's ``tokenizer.json``) is served by two subprocesses on 127.0.0.1, each on a free
port: ours (``legollm serve --model DIR --max-batch 16``: lego-serve's ``create_app(Engine(...))``
under uvicorn, the KV cache ``16 x context`` positions) and the peer (``transformers serve DIR
--continuous-batching --device cpu``, offline, its paged KV cache given the same number of
positions: ``--cb-num-blocks`` pages of 256). Both are warmed up (one full request and a burst
of 16 short ones), then asked for the same greedy text of one prompt.

The timed part: the same prompts (fixed seed, a mix of lengths, text from
``pydoc_data.topics``), greedy, 128 new tokens each with no early end (the peer is told
``generation_config: {"eos_token_id": -1}``; ``legollm serve`` keeps the model's end-of-text
id, which these random weights never pick greedily on these prompts; every reply's
``usage.completion_tokens`` is checked), streamed ``/v1/completions`` from 1, 4
and 16 concurrent clients (``benchmarks/_serve_client.py``, the same client code for both).
For each concurrency level the two servers alternate ABBA (ours, peer, peer, ours); each
side reports its best run: aggregate output tokens/s, median and p99 time to first token
(TTFT). The CPU seconds each server process used during its own runs, and during the other
side's (idle), are read from ``/proc``.

The full run measures GPT-2 124M (2 runs per side and level, one request per client) and
the 0.43B Llama shape (one run per side and level); ``BENCH_SERVE_MODELS=gpt2`` (or ``llama``)
limits it to one model. ``--quick`` runs GPT-2 alone with 32 new tokens and one run per side
(2 min 50 s at load 7.7). The full run took 8 minutes on a quiet 2-core machine (load
average 0.9 to 1.8) and 29 minutes at a load average of 13.6 falling to 4.9.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from benchmarks._harness import BenchResult, Row, log, package_version
from benchmarks._serve_client import LevelRun, post_completion, run_level
from lego.arch import build, to_hf
from lego.serve import __version__

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OURS = f"lego-serve {__version__}"
PEER = f"transformers {package_version('transformers')} serve --continuous-batching"
NEW_TOKENS = 128
CONCURRENCY = (1, 4, 16)
MAX_BATCH = 16
PEER_PAGE = 256  # tokens per page of the peer's paged KV cache (its default)
TOKENIZER = ROOT.parent / "shared" / "data" / "hf_gpt2" / "tokenizer.json"
PEER_EXTRA = {"generation_config": json.dumps({"eos_token_id": -1})}

# Llama 3 shape, ~0.43B with GPT-2's vocabulary (GQA 16/8 heads of 64, SwiGLU, RoPE, tied)
LLAMA: dict[str, Any] = {
    "d_model": 1024,
    "n_heads": 16,
    "n_kv_heads": 8,
    "d_ff": 4096,
    "n_layers": 24,
    "vocab_size": 50257,
    "context_length": 1024,
}


@dataclass
class Side:
    """One server subprocess and what it measured.

    Attributes:
        name: ``"ours"`` or ``"peer"``.
        command: The command line.
        env: Extra environment variables.
        extra: Extra request body fields.
        port: Its port on 127.0.0.1.
        process: The running process (the leader of its own session).
        model_id: The ``model`` field it answers to.
        runs: Per concurrency level, every timed run.
        cpu_busy: CPU seconds its processes used during its own timed runs.
        busy_wall: Wall seconds of its own timed runs.
        cpu_idle: CPU seconds its processes used while the other side was timed.
        idle_wall: Wall seconds of the other side's timed runs.
        log_path: Where its output goes.
    """

    name: str
    command: list[str]
    env: dict[str, str]
    extra: dict[str, Any]
    port: int
    process: subprocess.Popen[bytes] | None = None
    model_id: str = ""
    runs: dict[int, list[LevelRun]] = field(default_factory=dict)
    cpu_busy: float = 0.0
    busy_wall: float = 0.0
    cpu_idle: float = 0.0
    idle_wall: float = 0.0
    log_path: Path | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _session(self) -> list[Path]:
        """``/proc/<pid>`` of every live process of the server's session (its children too:
        ``transformers serve`` runs the model in a spawned process)."""
        assert self.process is not None
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.process.pid:  # the session id
                found.append(entry)
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server's processes so far (all threads)."""
        total = 0
        for entry in self._session():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> tuple[float, float]:
        """Resident memory of the server's processes now and the sum of their peaks, MiB."""
        now = peak = 0.0
        for entry in self._session():
            try:
                lines = (entry / "status").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                if line.startswith("VmRSS:"):
                    now += int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) / 1024
        return now, peak


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _sides(folder: Path, kv_positions: int) -> tuple[Side, Side]:
    port_ours, port_peer = _free_port(), _free_port()
    bin_dir = Path(sys.executable).parent
    ours_cmd = [str(bin_dir / "legollm"), "serve", "--model", str(folder)]
    ours_cmd += ["--host", "127.0.0.1", "--port", str(port_ours), "--max-batch", str(MAX_BATCH)]
    peer_cmd = [str(bin_dir / "transformers"), "serve", str(folder), "--continuous-batching"]
    peer_cmd += ["--device", "cpu", "--host", "127.0.0.1", "--port", str(port_peer)]
    peer_cmd += ["--cb-num-blocks", str(-(-kv_positions // PEER_PAGE)), "--log-level", "warning"]
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    ours = Side("ours", ours_cmd, {}, {}, port_ours)
    peer = Side("peer", peer_cmd, offline, dict(PEER_EXTRA), port_peer)
    return ours, peer


def _start(side: Side, logs: Path) -> None:
    side.log_path = logs / f"{side.name}.log"
    env = {**os.environ, **side.env}
    with side.log_path.open("wb") as out:
        side.process = subprocess.Popen(
            side.command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _log_tail(side: Side) -> str:
    if side.log_path is None or not side.log_path.exists():
        return ""
    return side.log_path.read_text(errors="replace")[-3000:]


def _wait_ready(side: Side, timeout_s: float = 600.0) -> None:
    """Wait for ``/v1/models`` to answer; take the model id it lists."""
    assert side.process is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if side.process.poll() is not None:
            raise RuntimeError(
                f"{side.name} server exited with {side.process.returncode}:\n{_log_tail(side)}"
            )
        try:
            response = httpx.get(f"{side.url}/v1/models", timeout=5.0)
            if response.status_code == 200 and response.json().get("data"):
                side.model_id = str(response.json()["data"][0]["id"])
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"{side.name} server not ready in {timeout_s:.0f} s:\n{_log_tail(side)}")


def _stop(side: Side) -> None:
    process = side.process
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` prompts of 8 to 250 words (about 10 to 330 GPT-2 tokens), fixed seed."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    words = " ".join(topics[key] for key in sorted(topics)).split()
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        n = rng.choice((8, 24, 60, 120, 250))
        start = rng.randrange(len(words) - n)
        prompts.append(" ".join(words[start : start + n]))
    return prompts


def _write_model(kind: str, folder: Path) -> tuple[str, int]:
    """Write the model and GPT-2's tokenizer into ``folder``: ``(label, context length)``."""
    torch.manual_seed(0)
    model = build("gpt2") if kind == "gpt2" else build("llama-3.2-1b", **LLAMA)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    label = "GPT-2 124M" if kind == "gpt2" else f"Llama-3-shaped {n_params / 1e3:.2f}B"
    context = int(model.config.context_length)
    to_hf(model, folder)
    del model
    shutil.copyfile(TOKENIZER, folder / "tokenizer.json")
    # the same tokenizer.json, as is, for transformers (not a class of the model's own)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return label, context


def _warm_up(side: Side, prompts: Sequence[str], new_tokens: int) -> None:
    """One full-length request, then a burst of 16 short ones (every batch size)."""
    run_level(
        side.url,
        side.model_id,
        prompts[:1],
        concurrency=1,
        max_tokens=new_tokens,
        extra=side.extra,
    )
    burst = [prompts[i % len(prompts)] for i in range(MAX_BATCH)]
    run_level(side.url, side.model_id, burst, concurrency=MAX_BATCH, max_tokens=8, extra=side.extra)


def _first_difference(a: str, b: str) -> str:
    pairs = zip(a, b, strict=False)
    n = next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))
    return f"first difference at character {n}: ours {a[n : n + 40]!r}, peer {b[n : n + 40]!r}"


def _timed(side: Side, other: Side, fn: Callable[[], LevelRun]) -> LevelRun:
    busy0, idle0, start = side.cpu_seconds(), other.cpu_seconds(), time.perf_counter()
    run = fn()
    wall = time.perf_counter() - start
    side.cpu_busy += side.cpu_seconds() - busy0
    side.busy_wall += wall
    other.cpu_idle += other.cpu_seconds() - idle0
    other.idle_wall += wall
    return run


def _check_run(side: Side, run: LevelRun, new_tokens: int, prompt_tokens: dict[int, int]) -> None:
    for reply in run.replies:
        if reply.tokens != new_tokens:
            raise RuntimeError(
                f"{side.name}: prompt {reply.prompt_index} got {reply.tokens} tokens, not "
                f"{new_tokens}: the two sides would not do equal work"
            )
        known = prompt_tokens.setdefault(reply.prompt_index, reply.prompt_tokens)
        if known != reply.prompt_tokens:
            raise RuntimeError(
                f"{side.name}: prompt {reply.prompt_index} has {reply.prompt_tokens} tokens, "
                f"the other server counted {known}: not the same tokenizer"
            )


@dataclass(frozen=True)
class Plan:
    """How much one model is asked.

    Attributes:
        requests: Per concurrency level, the requests sent (one prompt each).
        repeat: Timed runs per side and level, alternated ABBA.
        new_tokens: Tokens per request.
    """

    requests: dict[int, int]
    repeat: int
    new_tokens: int


def _bench_model(kind: str, plan: Plan, notes: list[str]) -> list[Row]:
    rows: list[Row] = []
    new_tokens = plan.new_tokens
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        folder = Path(tmp) / kind
        label, context = _write_model(kind, folder)
        log(f"{label}: written to {folder}; starting both servers")
        ours, peer = _sides(folder, MAX_BATCH * context)
        try:
            for side in (ours, peer):
                _start(side, Path(tmp))
            for side in (ours, peer):
                _wait_ready(side)
            prompts = _prompts(max(plan.requests.values()))
            for side in (ours, peer):
                log(f"  warming up {side.name}")
                _warm_up(side, prompts, new_tokens)
            text_ours, n_ours = post_completion(
                ours.url, ours.model_id, prompts[0], max_tokens=new_tokens, extra=ours.extra
            )
            text_peer, n_peer = post_completion(
                peer.url, peer.model_id, prompts[0], max_tokens=new_tokens, extra=peer.extra
            )
            same = text_ours == text_peer
            detail = "" if same else f" ({_first_difference(text_ours, text_peer)})"
            notes.append(
                f"{label}: one prompt, non-streamed, greedy: the same text on both servers: "
                f"{same}{detail}; {n_ours} and {n_peer} tokens."
            )
            load0 = os.getloadavg()
            prompt_tokens: dict[int, int] = {}
            texts: dict[str, dict[int, str]] = {"ours": {}, "peer": {}}
            for concurrency in CONCURRENCY:
                batch = prompts[: plan.requests[concurrency]]
                order = ([ours, peer, peer, ours] * plan.repeat)[: 2 * plan.repeat]
                for side in order:
                    other = peer if side is ours else ours
                    log(f"  {label}: {side.name}, {concurrency} clients x {len(batch)} requests")

                    def fn(
                        side: Side = side,
                        batch: Sequence[str] = batch,
                        concurrency: int = concurrency,
                    ) -> LevelRun:
                        return run_level(
                            side.url,
                            side.model_id,
                            batch,
                            concurrency=concurrency,
                            max_tokens=new_tokens,
                            extra=side.extra,
                        )

                    run = _timed(side, other, fn)
                    _check_run(side, run, new_tokens, prompt_tokens)
                    for reply in run.replies:
                        texts[side.name].setdefault(reply.prompt_index, reply.text)
                    side.runs.setdefault(concurrency, []).append(run)
                    log(
                        f"    {run.tokens_per_s:.1f} tokens/s, TTFT median "
                        f"{run.ttft_median_s * 1e3:.0f} ms, p99 {run.ttft_p99_s * 1e3:.0f} ms "
                        f"(load {_loads(os.getloadavg())})"
                    )
            load1 = os.getloadavg()
            rows += _rows(label, ours, peer, plan.requests)
            lengths = sorted(prompt_tokens.values())
            agree = sum(texts["ours"][i] == texts["peer"].get(i) for i in texts["ours"])
            notes.append(
                f"{label}: prompts of {lengths[0]} to {lengths[-1]} tokens (median "
                f"{lengths[len(lengths) // 2]}), the same counts on both servers; streamed texts "
                f"identical on both servers for {agree} of {len(texts['ours'])} prompts."
            )
            pace = []
            for c in CONCURRENCY:
                best = {
                    side.name: max(side.runs[c], key=lambda r: r.tokens_per_s)
                    for side in (ours, peer)
                }
                pace.append(
                    f"{c} client{'s' if c > 1 else ''}: ours "
                    f"{best['ours'].tpot_median_s * 1e3:.0f}, peer "
                    f"{best['peer'].tpot_median_s * 1e3:.0f}"
                )
            notes.append(
                f"{label}: median time per output token after the first, in the best run "
                f"(ms): {'; '.join(pace)}."
            )
            for side in (ours, peer):
                now, peak = side.rss_mib()
                notes.append(
                    f"{label}, {side.name} server: {side.cpu_busy / side.busy_wall:.2f} CPU "
                    f"cores busy on average during its own runs, "
                    f"{side.cpu_idle / side.idle_wall:.3f} while idle (the other side's runs); "
                    f"resident memory {now:.0f} MiB (sum of its processes' peaks {peak:.0f} MiB)."
                )
            notes.append(
                f"{label}: load average (1, 5, 15 min) {_loads(load0)} before the timed runs, "
                f"{_loads(load1)} after."
            )
        finally:
            for side in (ours, peer):
                _stop(side)
    return rows


def _loads(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _ttft(run: LevelRun, stat: str) -> float:
    return run.ttft_median_s if stat == "median" else run.ttft_p99_s


def _rows(label: str, ours: Side, peer: Side, requests: dict[int, int]) -> list[Row]:
    rows: list[Row] = []
    for c in CONCURRENCY:
        a, b = ours.runs[c], peer.runs[c]
        what = f"{label}, {c} client{'s' if c > 1 else ''} x {requests[c]} requests"
        rows.append(
            Row(
                f"{what}: output tokens/s",
                max(r.tokens_per_s for r in a),
                PEER,
                max(r.tokens_per_s for r in b),
                "tokens/s",
            )
        )
        for stat in ("median", "p99"):
            rows.append(
                Row(
                    f"{what}: {stat} time to first token",
                    min(_ttft(r, stat) for r in a) * 1e3,
                    PEER,
                    min(_ttft(r, stat) for r in b) * 1e3,
                    "ms",
                    higher_is_better=False,
                )
            )
    return rows


def run(quick: bool) -> BenchResult:
    if not TOKENIZER.exists():
        raise RuntimeError(f"GPT-2's tokenizer.json is missing: {TOKENIZER}")
    models: tuple[str, ...] = ("gpt2",) if quick else ("gpt2", "llama")
    chosen = os.environ.get("BENCH_SERVE_MODELS")
    if chosen:
        models = tuple(m.strip() for m in chosen.split(",") if m.strip())
        unknown = set(models) - {"gpt2", "llama"}
        if unknown:
            raise ValueError(f"BENCH_SERVE_MODELS: unknown {sorted(unknown)}; use gpt2, llama")
    plans = {
        "gpt2": Plan({1: 1, 4: 4, 16: 16}, 1, 32)
        if quick
        else Plan({1: 1, 4: 4, 16: 16}, 2, NEW_TOKENS),
        "llama": Plan({1: 1, 4: 4, 16: 16}, 1, 32 if quick else NEW_TOKENS),
    }
    result = BenchResult(
        name="serve",
        title="lego-serve vs transformers serve --continuous-batching (CPU, streamed)",
        description=(
            "Random-weight models written once by lego.arch.to_hf with GPT-2's tokenizer.json; "
            "each server its own subprocess on 127.0.0.1 (ours: legollm serve --max-batch 16; "
            "the peer: transformers serve --continuous-batching, its paged KV cache as large "
            "as ours); the same prompts (fixed seed, 8 to 250 words), greedy, a fixed number "
            "of new tokens per request (checked on every reply), streamed /v1/completions from "
            "1, 4 and 16 concurrent clients (asyncio + httpx, the same client for both); per "
            "level the servers alternate ABBA and each side reports its best run. Tokens/s is "
            "the aggregate output tokens over the level's wall time; TTFT is from sending a "
            "request to its first streamed text."
        ),
        params={
            "concurrency": list(CONCURRENCY),
            "max_batch": MAX_BATCH,
            "quick": quick,
            "models": list(models),
        },
    )
    for kind in models:
        plan = plans[kind]
        result.params[kind] = {
            "requests": plan.requests,
            "repeat": plan.repeat,
            "new_tokens": plan.new_tokens,
        }
        try:
            result.rows += _bench_model(kind, plan, result.notes)
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            if not result.rows:
                raise  # nothing measured: the benchmark failed
            log(f"{kind}: failed: {exc}")
            result.notes.append(f"{kind}: not measured, the run failed: {exc}")
    result.notes.append(
        "A 2-core machine shared with other work: ratios are side by side, absolute numbers "
        "are noisy; with few requests per level, p99 is close to the largest TTFT."
    )
    return result
