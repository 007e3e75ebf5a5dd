"""Shared machinery of the side-by-side benchmarks: timing, result rows, writers.

A benchmark module ``bench_<name>.py`` defines ``run(quick: bool) -> BenchResult``. It runs
LegoLLM ("ours") and a named peer on the same input, in the same process, interleaved, and
reports one :class:`Row` per measure. Nothing here asserts on time: benchmarks only report.
"""

from __future__ import annotations

import datetime as _dt
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BenchResult",
    "Row",
    "autonumber",
    "compare",
    "log",
    "machine_info",
    "package_version",
    "per_second",
    "timeit_best",
    "to_json",
    "to_markdown",
    "write_result",
]

Timer = Callable[[], float]


@dataclass(frozen=True)
class Row:
    """One measure of LegoLLM against one peer.

    Attributes:
        what: What was measured, e.g. ``"dict -> validated config"``.
        ours: LegoLLM's value.
        peer: The peer's name, with its version, e.g. ``"pydantic 2.9.2"``.
        peer_value: The peer's value, in the same unit.
        unit: The unit of both values, e.g. ``"ops/s"`` or ``"ms"``.
        higher_is_better: True for throughputs, False for times and memory.
        better: The word for "ours wins" (``"faster"``, ``"smaller"``).
        worse: The word for "ours loses" (``"slower"``, ``"larger"``).
        note: Anything a reader needs to interpret the row.
    """

    what: str
    ours: float
    peer: str
    peer_value: float
    unit: str
    higher_is_better: bool = True
    better: str = "faster"
    worse: str = "slower"
    note: str = ""

    @property
    def ratio(self) -> float:
        """``ours / peer`` in the row's unit (inf when the peer's value is 0)."""
        return self.ours / self.peer_value if self.peer_value else float("inf")

    @property
    def advantage(self) -> float:
        """How many times better ours is: above 1 ours wins, below 1 the peer wins."""
        ratio = self.ratio
        if self.higher_is_better:
            return ratio
        return 1.0 / ratio if ratio else float("inf")

    def verdict(self) -> str:
        """The ratio in words, e.g. ``"1.80x faster"`` or ``"0.60x (1.67x slower)"``."""
        adv = self.advantage
        if adv >= 1.0:
            return f"{adv:.2f}x {self.better}"
        return f"{adv:.2f}x ({1.0 / adv:.2f}x {self.worse})"

    def to_json(self) -> dict[str, Any]:
        """The row as JSON data, ratio and verdict included."""
        return {**asdict(self), "ratio": self.ratio, "verdict": self.verdict()}


@dataclass
class BenchResult:
    """What one benchmark module reports.

    Attributes:
        name: The benchmark's name (``bench_<name>.py``), also the results file stem.
        title: A one-line heading.
        description: What is compared, on which input.
        rows: One row per measure.
        params: Settings that shaped the numbers (repeats, calls per timing, input sizes).
        notes: Caveats and observations, one sentence each.
    """

    name: str
    title: str
    description: str
    rows: list[Row] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# timing


def _time_calls(fn: Callable[[], object], number: int, timer: Timer) -> float:
    """Seconds for ``number`` calls of ``fn`` (garbage collection off, as in ``timeit``)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = timer()
        for _ in range(number):
            fn()
        return timer() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def timeit_best(
    fn: Callable[[], object],
    *,
    repeat: int,
    number: int,
    timer: Timer = time.perf_counter,
) -> float:
    """Return the best per-call time of ``fn`` in seconds over ``repeat`` timings.

    Each timing runs ``number`` calls; the minimum is the least noisy estimate of what the
    code costs (slower timings measure the machine's other work, not the code).

    Args:
        fn: The work, taking no arguments.
        repeat: How many timings.
        number: Calls per timing.
        timer: The clock.

    Returns:
        Seconds per call.
    """
    if repeat < 1 or number < 1:
        raise ValueError("repeat and number must be at least 1")
    fn()  # warm up: caches, lazy imports, first-call costs
    return min(_time_calls(fn, number, timer) for _ in range(repeat)) / number


def compare(
    ours: Callable[[], object],
    peer: Callable[[], object],
    *,
    repeat: int,
    number: int,
    timer: Timer = time.perf_counter,
) -> tuple[float, float]:
    """Time ``ours`` and ``peer`` interleaved; return both best per-call times in seconds.

    The timings alternate in ABBA order (ours, peer, peer, ours, ...), so a slow phase of
    the machine (another process, a frequency change) hits both sides alike and neither
    always runs first.

    Args:
        ours: LegoLLM's work, taking no arguments.
        peer: The peer's work on the same input.
        repeat: Timings per side.
        number: Calls per timing.
        timer: The clock.

    Returns:
        ``(ours_seconds_per_call, peer_seconds_per_call)``, each the best of ``repeat``.
    """
    if repeat < 1 or number < 1:
        raise ValueError("repeat and number must be at least 1")
    ours()
    peer()
    best_ours = best_peer = float("inf")
    for i in range(repeat):
        order = (ours, peer) if i % 2 == 0 else (peer, ours)
        for fn in order:
            seconds = _time_calls(fn, number, timer) / number
            if fn is ours:
                best_ours = min(best_ours, seconds)
            else:
                best_peer = min(best_peer, seconds)
    return best_ours, best_peer


def autonumber(
    fn: Callable[[], object], *, min_time: float, timer: Timer = time.perf_counter
) -> int:
    """Return a call count for which one timing of ``fn`` lasts at least ``min_time`` s.

    Like ``timeit.Timer.autorange``: tries 1, 2, 5, 10, 20, 50, ... calls.

    Args:
        fn: The work, taking no arguments.
        min_time: Seconds one timing should last, at least.
        timer: The clock.

    Returns:
        The number of calls per timing.
    """
    fn()
    base = 1
    while True:
        for factor in (1, 2, 5):
            number = base * factor
            if _time_calls(fn, number, timer) >= min_time:
                return number
        base *= 10


def per_second(seconds_per_call: float) -> float:
    """Turn seconds per call into calls per second."""
    return 1.0 / seconds_per_call if seconds_per_call > 0 else float("inf")


# ---------------------------------------------------------------------------------------
# machine and package information


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--exclude", "*"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """Where and when the numbers were taken (torch is looked up, never imported)."""
    torch = package_version("torch") if importlib.util.find_spec("torch") else None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch,
        "git": _git_commit(Path(__file__).resolve().parent),
    }


# ---------------------------------------------------------------------------------------
# writers


def _fmt(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):  # nan / inf
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def to_markdown(result: BenchResult, machine: dict[str, Any] | None = None) -> str:
    """Render a result as Markdown: heading, description, table, notes, machine line."""
    lines = [f"# {result.title}", "", result.description, ""]
    lines += [
        "| What | LegoLLM | Peer | Peer value | Unit | Ours / peer |",
        "| --- | ---: | --- | ---: | --- | --- |",
    ]
    for row in result.rows:
        what = row.what + (f" ({row.note})" if row.note else "")
        lines.append(
            f"| {what} | {_fmt(row.ours)} | {row.peer} | {_fmt(row.peer_value)} "
            f"| {row.unit} | {row.verdict()} |"
        )
    lines.append("")
    if result.notes:
        lines += [f"- {note}" for note in result.notes]
        lines.append("")
    if result.params:
        params = ", ".join(f"{k}={v}" for k, v in result.params.items())
        lines += [f"Settings: {params}.", ""]
    if machine:
        lines += [
            f"Machine: {machine['cpu']} ({machine['cpu_count']} CPUs), "
            f"{machine['implementation']} {machine['python']}, {machine['platform']}; "
            f"{machine['date']}" + (f"; git {machine['git']}" if machine.get("git") else "") + ".",
            "",
        ]
    return "\n".join(lines)


def to_json(result: BenchResult, machine: dict[str, Any]) -> dict[str, Any]:
    """The result as JSON data: name, texts, machine, settings, rows, notes."""
    return {
        "benchmark": result.name,
        "title": result.title,
        "description": result.description,
        "machine": machine,
        "params": result.params,
        "rows": [row.to_json() for row in result.rows],
        "notes": result.notes,
    }


def write_result(
    result: BenchResult, out: Path, machine: dict[str, Any] | None = None
) -> Sequence[Path]:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md``; return both paths."""
    machine = machine if machine is not None else machine_info()
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{result.name}.json"
    md_path = out / f"{result.name}.md"
    json_path.write_text(
        json.dumps(to_json(result, machine), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    md_path.write_text(to_markdown(result, machine), encoding="utf-8")
    return json_path, md_path


def log(message: str) -> None:
    """Progress for the person running the benchmarks (stderr, so stdout stays the table)."""
    print(message, file=sys.stderr, flush=True)
