"""Corpus statistics: sizes, documents, characters, and token counts with a tokenizer.

[`summarize()`][lego.data.summary.summarize] reads a corpus once and returns a
[`Summary`][lego.data.summary.Summary]; ``Summary.table()`` renders it with rich and
[`plot()`][lego.data.summary.plot] draws the document-length and token-frequency
histograms with matplotlib (the ``plot`` extra: ``pip install "lego-data[plot]"``).
"""

from __future__ import annotations

import array
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lego.data.corpora import CorpusSource, get_corpus
from lego.protocols import (
    ConfigError,
    DataError,
    Tokenizer,
    atomic_write_bytes,
    check_int,
    check_output_path,
    import_optional,
)
from lego.tokenize import TokenizerSpec, resolve_tokenizer

__all__ = ["Summary", "TokenStats", "summarize", "plot", "check_plot_path"]


@dataclass(frozen=True)
class TokenStats:
    """What a tokenizer makes of a corpus.

    Attributes:
        tokens: The number of tokens (no end-of-text ids added).
        distinct: How many different ids occur.
        bytes_per_token: UTF-8 bytes per token (compression; higher is better).
        most_common: ``(id, text, count)`` of the most frequent ids, most frequent first.
        counts: Occurrences per id, shape ``(vocab_size,)``, int64.
    """

    tokens: int
    distinct: int
    bytes_per_token: float
    most_common: list[tuple[int, str, int]]
    counts: npt.NDArray[np.int64] = field(repr=False)


@dataclass(frozen=True)
class Summary:
    """Statistics of one corpus.

    Attributes:
        name: The corpus name.
        bytes: Size in UTF-8 bytes.
        characters: Unicode code points.
        lines: Lines (a final line without a line break counts).
        documents: Documents.
        distinct_characters: Different code points.
        document_lengths: Characters per document, shape ``(documents,)``, int64.
        skipped: Files or parts skipped as unreadable (with ``errors="skip"``).
        tokens: Token statistics, when a tokenizer was given.
    """

    name: str
    bytes: int
    characters: int
    lines: int
    documents: int
    distinct_characters: int
    document_lengths: npt.NDArray[np.int64] = field(repr=False)
    skipped: int = 0
    tokens: TokenStats | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as JSON-ready data (no per-document or per-id arrays)."""
        data: dict[str, Any] = {
            "corpus": self.name,
            "bytes": self.bytes,
            "characters": self.characters,
            "lines": self.lines,
            "documents": self.documents,
            "distinct_characters": self.distinct_characters,
            "skipped": self.skipped,
        }
        if self.tokens is not None:
            data["tokens"] = {
                "tokens": self.tokens.tokens,
                "distinct": self.tokens.distinct,
                "bytes_per_token": self.tokens.bytes_per_token,
                "most_common": [
                    {"id": i, "text": t, "count": c} for i, t, c in self.tokens.most_common
                ],
            }
        return data

    def table(self) -> Any:
        """Render the summary as a ``rich.table.Table`` (print it with a rich console).

        Returns:
            The table: one row per figure, then the most common tokens.
        """
        from rich.table import Table

        table = Table(title=f"corpus {self.name}", show_header=True, header_style="bold")
        table.add_column("measure")
        table.add_column("value", justify="right")
        lengths = self.document_lengths
        rows: list[tuple[str, str]] = [
            ("bytes (UTF-8)", f"{self.bytes:,}"),
            ("characters", f"{self.characters:,}"),
            ("lines", f"{self.lines:,}"),
            ("documents", f"{self.documents:,}"),
            ("distinct characters", f"{self.distinct_characters:,}"),
        ]
        if lengths.size:
            low, mid, high = int(lengths.min()), int(np.median(lengths)), int(lengths.max())
            rows.append(
                ("document length (chars): min / median / max", f"{low:,} / {mid:,} / {high:,}")
            )
        if self.skipped:
            rows.append(("skipped (unreadable)", f"{self.skipped:,}"))
        if self.tokens is not None:
            rows += [
                ("tokens", f"{self.tokens.tokens:,}"),
                ("distinct tokens", f"{self.tokens.distinct:,}"),
                ("bytes per token", f"{self.tokens.bytes_per_token:.3f}"),
            ]
        for name, value in rows:
            table.add_row(name, value)
        if self.tokens is not None and self.tokens.most_common:
            table.add_section()
            for rank, (token_id, text, count) in enumerate(self.tokens.most_common, 1):
                table.add_row(f"#{rank} token {token_id} {text!r}", f"{count:,}")
        return table


def summarize(
    corpus: CorpusSource,
    tokenizer: Tokenizer | TokenizerSpec | str | os.PathLike[str] | object | None = None,
    *,
    top_k: int = 10,
) -> Summary:
    """Read a corpus once and gather its statistics.

    Args:
        corpus: A [`Corpus`][lego.data.corpora.Corpus], a name, path or URL, or the
            documents (see [`get_corpus()`][lego.data.corpora.get_corpus]).
        tokenizer: A tokenizer, a tiktoken encoding or a spec for
            [`lego.tokenize.resolve_tokenizer`][lego.tokenize.resolve_tokenizer]
            (``"tiktoken:gpt2"``), or None for text figures only. Documents are encoded with
            ``encode_ordinary`` when the tokenizer has it.
        top_k: How many of the most common tokens to list.

    Returns:
        The summary.

    Raises:
        DataError: On an empty or unreadable corpus.
    """
    check_int("top_k", top_k, minimum=0, owner="summarize")
    source = get_corpus(corpus)
    tok = resolve_tokenizer(tokenizer) if tokenizer is not None else None  # type: ignore[arg-type]
    encode: Any = None
    counts: npt.NDArray[np.int64] | None = None
    if tok is not None:
        ordinary = getattr(tok, "encode_ordinary", None)
        encode = ordinary if callable(ordinary) else tok.encode
        counts = np.zeros(tok.vocab_size, dtype=np.int64)
    nbytes = characters = lines = 0
    lengths = array.array("q")
    seen: set[str] = set()
    n_tokens = 0
    for document in source:
        nbytes += len(document.encode("utf-8"))
        characters += len(document)
        lines += document.count("\n") + (1 if document and not document.endswith("\n") else 0)
        lengths.append(len(document))
        seen.update(document)
        if encode is not None and counts is not None:
            ids = np.array(encode(document), dtype=np.int64)
            if ids.size:
                if int(ids.min()) < 0 or int(ids.max()) >= counts.size:
                    raise DataError(
                        f"the tokenizer returned ids outside its vocabulary [0, {counts.size})",
                        key="tokenizer",
                    )
                counts += np.bincount(ids, minlength=counts.size)
                n_tokens += int(ids.size)
    stats: TokenStats | None = None
    if tok is not None and counts is not None:
        order = np.argsort(-counts, kind="stable")[:top_k]
        common = [(int(i), tok.decode([int(i)]), int(counts[i])) for i in order if counts[i] > 0]
        stats = TokenStats(
            tokens=n_tokens,
            distinct=int(np.count_nonzero(counts)),
            bytes_per_token=nbytes / n_tokens if n_tokens else 0.0,
            most_common=common,
            counts=counts,
        )
    return Summary(
        name=source.name,
        bytes=nbytes,
        characters=characters,
        lines=lines,
        documents=len(lengths),
        distinct_characters=len(seen),
        document_lengths=np.frombuffer(lengths, dtype=np.int64).copy(),
        skipped=len(source.skipped),
        tokens=stats,
    )


def _log_bins(values: Sequence[int] | npt.NDArray[np.int64], count: int = 40) -> Any:
    high = max(int(np.max(values)), 1)
    return np.unique(np.geomspace(1, high + 1, num=count).astype(np.int64))


def plot(summary: Summary, path: str | os.PathLike[str]) -> Path:
    """Draw the document-length and token-frequency histograms into an image file.

    The left panel is the histogram of document lengths in characters (log-spaced bins).
    With token statistics, the right panel is the histogram of token frequencies: how many
    ids occur how often (log-spaced bins, log scale); without a tokenizer it shows the
    document lengths on a linear scale.

    Args:
        summary: A summary from [`summarize()`][lego.data.summary.summarize].
        path: The image to write; the suffix picks the format (``.png``, ``.svg``, ``.pdf``).

    Returns:
        The path written.

    Raises:
        ConfigError: When matplotlib is not installed (it comes with the ``plot`` extra),
            the suffix names a format it cannot write, the path is a folder, or the file
            cannot be written (it is written atomically: a failure leaves no partial image).
    """
    target, image_format = check_plot_path(path)
    figure_module: Any = import_optional(
        "matplotlib.figure", needed_by="plotting", install='"lego-data[plot]"'
    )
    agg: Any = import_optional(
        "matplotlib.backends.backend_agg", needed_by="plotting", install='"lego-data[plot]"'
    )
    figure = figure_module.Figure(figsize=(11, 4.2), layout="constrained")
    agg.FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    lengths = summary.document_lengths
    nonzero = lengths[lengths > 0]
    if nonzero.size:
        left.hist(nonzero, bins=_log_bins(nonzero), color="#4c72b0")
        left.set_xscale("log")
    left.set_title(f"document lengths ({summary.documents:,} documents)")
    left.set_xlabel("characters per document")
    left.set_ylabel("documents")
    if summary.tokens is not None:
        counts = summary.tokens.counts[summary.tokens.counts > 0]
        if counts.size:
            right.hist(counts, bins=_log_bins(counts), color="#dd8452")
            right.set_xscale("log")
            right.set_yscale("log")
        right.set_title(
            f"token frequencies ({summary.tokens.distinct:,} distinct ids, "
            f"{summary.tokens.tokens:,} tokens)"
        )
        right.set_xlabel("occurrences of an id")
        right.set_ylabel("ids")
    else:
        if lengths.size:
            right.hist(lengths, bins=40, color="#4c72b0")
        right.set_title("document lengths (linear scale; no tokenizer given)")
        right.set_xlabel("characters per document")
        right.set_ylabel("documents")
    figure.suptitle(f"corpus {summary.name}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=image_format)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create the plot's folder: {err.strerror or err}",
            path=target.parent,
            key="plot",
            hint="choose a folder you can write to",
        ) from None
    atomic_write_bytes(target, buffer.getvalue(), what="plot")
    return target


def check_plot_path(
    path: str | os.PathLike[str], *, inputs: Sequence[str | os.PathLike[str]] = ()
) -> tuple[Path, str]:
    """Check a plot's path before the long work: a format matplotlib writes, not an input.

    Args:
        path: The image to write; its suffix picks the format (none: ``.png``).
        inputs: Files the same command reads (the plot never replaces one).

    Returns:
        The path and the image format (``"png"``, ``"svg"``, ...).

    Raises:
        ConfigError: When matplotlib is not installed, the suffix names a format it cannot
            write, the path is a folder, or it is one of ``inputs``.
    """
    backend: Any = import_optional(
        "matplotlib.backends.backend_agg", needed_by="plotting", install='"lego-data[plot]"'
    )
    target = check_output_path(path, inputs=inputs, what="plot", key="plot")
    image_format = target.suffix.lower().lstrip(".") or "png"
    supported = backend.FigureCanvasAgg.get_supported_filetypes()
    if image_format not in supported:
        raise ConfigError(
            f"matplotlib cannot write .{image_format} images",
            path=target,
            key="plot",
            hint=f"use one of: {', '.join('.' + name for name in sorted(supported))}",
        )
    return target, image_format
