"""Run LegoLLM's side-by-side benchmarks and write their results.

    python benchmarks/run.py                 # every benchmarks/bench_*.py
    python benchmarks/run.py config --quick  # one benchmark, fewer repeats
    python benchmarks/run.py --list

Each ``bench_<name>.py`` defines ``run(quick: bool) -> BenchResult``; its rows go to
``<out>/<name>.json`` (with the machine's description) and ``<out>/<name>.md``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # bench modules import benchmarks._harness
    sys.path.insert(0, str(ROOT))

from benchmarks._harness import (  # noqa: E402
    BenchResult,
    log,
    machine_info,
    to_markdown,
    write_result,
)


def discover(folder: Path = HERE) -> dict[str, Path]:
    """Map benchmark names to their files: ``bench_config.py`` is ``config``."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(folder.glob("bench_*.py"))}


def load(name: str, path: Path) -> ModuleType:
    """Import a benchmark module from its path."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def run_one(name: str, path: Path, *, quick: bool) -> BenchResult:
    """Import one benchmark, run it and check that it returned a result."""
    module = load(name, path)
    run = getattr(module, "run", None)
    if not callable(run):
        raise TypeError(f"{path.name} defines no run(quick: bool) -> BenchResult")
    result = run(quick)
    if not isinstance(result, BenchResult):
        raise TypeError(f"{path.name}: run() returned {type(result).__name__}, not BenchResult")
    if result.name != name:
        raise ValueError(f"{path.name}: run() returned a result named {result.name!r}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Run LegoLLM's benchmarks side by side with their peers.",
        epilog="example:\n  python benchmarks/run.py config --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default all)")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats: a smoke run that writes no results"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results folder (default {HERE / 'results'})"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    found = discover()
    if args.list:
        print("\n".join(found))
        return 0
    names: list[str] = args.names or list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        for name in unknown:
            close = difflib.get_close_matches(name, found, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(found)}"
            print(f"error: no benchmark named {name!r} ({hint})", file=sys.stderr)
        return 2
    machine = machine_info()
    failed: list[str] = []
    for name in names:
        log(f"[{name}] running{' (quick)' if args.quick else ''} ...")
        try:
            result = run_one(name, found[name], quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        result.params.setdefault("quick", args.quick)
        print(to_markdown(result))
        if args.quick and args.out is None:
            continue  # a smoke run must not replace measured results
        paths = write_result(result, args.out or HERE / "results", machine)
        log(f"[{name}] wrote {', '.join(str(p) for p in paths)}")
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
