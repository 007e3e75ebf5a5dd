"""Count pre-tokens (or whole documents) over a corpus, in parallel worker processes.

The corpus is streamed in chunks (see [`iter_chunks`][lego.tokenize.training.sources.iter_chunks]);
each chunk is split at the allowed special tokens (so they never take part in merges), cut
into pre-tokens with the split pattern and counted. Workers return ``{pre-token: count}``
maps that the parent adds up, so memory is bounded by the number of *distinct* pre-tokens,
not by the corpus size. Counts are sums, so they do not depend on the number of workers or
on the order in which chunks finish.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Collection
from multiprocessing.pool import AsyncResult

from lego.protocols import TrainingData, check_int
from lego.protocols.cli import stop_signals_blocked, worker_signals
from lego.tokenize.patterns import compile_pattern
from lego.tokenize.specials import split_specials
from lego.tokenize.training.sources import DEFAULT_CHUNK_SIZE, Errors, iter_chunks

__all__ = ["count_pretokens", "resolve_workers"]

_IN_PROCESS_BELOW = 2  # chunks: a corpus that fits in fewer chunks is counted in-process


def resolve_workers(workers: int | None) -> int:
    """Turn the ``workers`` argument into a process count.

    Args:
        workers: None for ``os.cpu_count()``, else a positive count.

    Returns:
        The number of worker processes (1 means in-process).

    Raises:
        ConfigError: When ``workers`` is not None or a positive integer.
    """
    if workers is None:
        return max(1, os.cpu_count() or 1)
    return check_int(
        "workers", workers, minimum=1, hint="pass None (one per CPU) or a positive integer"
    )


def _count_chunk(task: tuple[str | None, frozenset[str], list[str]]) -> tuple[Counter[str], int]:
    """Count the pre-tokens of one chunk (runs in a worker process)."""
    pattern, specials, pieces = task
    counts: Counter[str] = Counter()
    n_chars = 0
    findall = compile_pattern(pattern).findall if pattern is not None else None
    for piece in pieces:
        n_chars += len(piece)
        for text, is_special in split_specials(piece, specials):
            if is_special:
                continue
            if findall is None:
                counts[text] += 1
            else:
                counts.update(findall(text))
    return counts, n_chars


def _context() -> multiprocessing.context.BaseContext:
    # fork is fast and safe while this process has one thread; otherwise spawn.
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def count_pretokens(
    data: TrainingData,
    *,
    pattern: str | None,
    special_tokens: Collection[str] = (),
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    errors: Errors = "strict",
    on_chunk: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Count the pre-tokens of a corpus.

    Args:
        data: A string, a path, or an iterable of strings and paths.
        pattern: The split regex, or None to count whole documents (naive BPE).
        special_tokens: Strings cut out of the text before splitting (not counted).
        workers: Worker processes; None for one per CPU, 1 for in-process. A corpus that
            fits in one chunk is always counted in-process.
        chunk_size: Characters per chunk.
        errors: ``"strict"`` or ``"replace"`` for undecodable bytes in files.
        on_chunk: Called with the number of characters of each counted chunk (progress).

    Returns:
        Pre-token (or document) strings to their number of occurrences.

    Raises:
        ConfigError: On bad arguments.
        ConfigError: On a training file that does not exist or cannot be read.
        FormatError: On a training file that is not UTF-8 (with ``errors="strict"``).
    """
    n_workers = resolve_workers(workers)
    specials = frozenset(special_tokens)
    if pattern is not None:
        compile_pattern(pattern)  # fail here, not in a worker
    chunks = iter_chunks(
        data, chunk_size=chunk_size, errors=errors, split_documents=pattern is not None
    )
    tasks = ((pattern, specials, chunk) for chunk in chunks)
    head = list(itertools.islice(tasks, _IN_PROCESS_BELOW))
    total: Counter[str] = Counter()
    if n_workers == 1 or len(head) < _IN_PROCESS_BELOW:
        for task in itertools.chain(head, tasks):
            counts, n_chars = _count_chunk(task)
            total.update(counts)
            if on_chunk is not None:
                on_chunk(n_chars)
        return total
    # At most two chunks per worker are in flight, so memory stays bounded whatever the
    # corpus size (Pool.imap would read the whole corpus ahead).
    window = 2 * n_workers
    with stop_signals_blocked():  # signals reach the main thread, never a pool thread
        pool = _context().Pool(n_workers, initializer=worker_signals)  # Ctrl-C: parent only
    in_flight: collections.deque[AsyncResult[tuple[Counter[str], int]]] = collections.deque()

    def collect() -> None:
        nonlocal total
        counts, n_chars = in_flight.popleft().get()
        if total:
            total.update(counts)
        else:
            total = counts
        if on_chunk is not None:
            on_chunk(n_chars)

    try:
        for task in itertools.chain(head, tasks):
            in_flight.append(pool.apply_async(_count_chunk, (task,)))
            if len(in_flight) >= window:
                collect()
        while in_flight:
            collect()
    except Exception:
        # A bad file or a failed chunk: let the chunks already sent finish, so that the pool
        # closes cleanly (terminating a pool with tasks in flight can deadlock).
        for result in in_flight:
            result.wait()
        raise
    except BaseException:  # Ctrl-C or SIGTERM: stop the workers (they ignore SIGINT)
        pool.terminate()
        raise
    finally:
        pool.close()
        pool.join()
    return total
