"""Tokenize a corpus into ``train.bin`` / ``val.bin`` token files plus ``meta.json``.

[`prepare()`][lego.data.prepare.prepare] reads the corpus twice, lazily: a first pass
counts documents and characters (to plan the split), the second tokenizes. Documents go in
chunks of about ``chunk_chars`` characters to worker processes; at most two chunks per worker
are in flight and results are written in corpus order as they come back, so memory depends on
the chunk size and the longest document, never on the size of the corpus.

The split (recorded in ``meta.json``):

- ``"documents"``: exactly ``round(N * val_fraction)`` documents (at least one when
  ``val_fraction > 0``, at most ``N - 1``) go to validation, chosen with
  ``numpy.random.default_rng(seed).choice(N, n_val, replace=False)``; both files keep the
  corpus order. Planning needs one byte per document.
- ``"characters"``: the first ``int(C * (1 - val_fraction))`` characters of the concatenated
  documents go to training, the rest to validation (nanoGPT's split of tiny shakespeare); a
  document straddling the boundary is cut there and each piece ends with the EOT id.
- ``"auto"`` (the default): ``"characters"`` for a single-document corpus, else
  ``"documents"``.

Every document (or piece) is encoded as ordinary text (``encode_ordinary`` when the tokenizer
has it, else ``encode``) and followed by the end-of-text id. Ids are checked against the
vocabulary (an id at or beyond ``vocab_size`` is a [`DataError`][lego.protocols.DataError])
and stored as little-endian uint16 (``vocab_size <= 65536``) or uint32.

Writing is safe against crashes, full disks and other writers:

- before anything is read, the outputs are checked: the dataset folder is not a file, and
  no output (``train.bin``, ``val.bin``, ``meta.json``) is a corpus file or a tokenizer file;
- the folder is locked ([`FolderLock`][lego.protocols.locks.FolderLock], ``.lego.lock``):
  a second ``prepare`` into it gets one clear error naming the first; a lock left by a
  dead process is taken over with a note on stderr, and the temporary files that dead
  processes left there are removed;
- token files are written under unique temporary names (``.train.bin.tmp-<host>-<pid>-...``),
  then an old ``meta.json`` is removed, the token files are renamed into place and the new
  ``meta.json`` is written last (atomically): a dataset directory with a ``meta.json`` is
  always complete, and an interrupted or failed run (Ctrl-C, SIGTERM, a full or read-only
  disk: one [`ConfigError`][lego.protocols.ConfigError]) leaves no half-written file behind;
- worker processes ignore Ctrl-C: the parent stops them and reports the interruption once.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.pool
import os
import pickle
import sys
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

import numpy as np
import numpy.typing as npt

from lego.data.corpora import Corpus, CorpusSource, get_corpus
from lego.data.meta import (
    DTYPES,
    SourceInfo,
    SplitFile,
    SplitInfo,
    TokenDtype,
    TokenMeta,
    dtype_for_vocab,
    meta_path,
    write_meta,
)
from lego.data.tokenizers import find_eot_id, resolve_for_prepare
from lego.protocols import (
    ConfigError,
    DataError,
    Progress,
    Tokenizer,
    check_choice,
    check_float,
    check_int,
    check_output_path,
    make_progress,
    remove_stale_temporaries,
    temporary_name,
    write_errors,
)
from lego.protocols.cli import stop_signals_blocked, worker_signals
from lego.protocols.locks import FolderLock
from lego.protocols.progress import PROGRESS_MODES, ProgressMode
from lego.tokenize import TokenizerSpec, resolve_tokenizer

__all__ = ["prepare", "SplitChoice", "plan_document_split", "default_workers"]

SplitChoice = Literal["auto", "documents", "characters"]
"""How to split train and validation (see the module docstring)."""

_OUTPUTS: Final = ("train.bin", "val.bin", "meta.json")
_FORK_WARNS_WITH_THREADS: Final[bool] = sys.version_info >= (3, 12)
_SPLIT_CHOICES: Final = ("auto", "documents", "characters")


def default_workers() -> int:
    """The number of CPUs this process may run on.

    Returns:
        ``len(os.sched_getaffinity(0))`` where available, else ``os.cpu_count()`` (at least 1).
    """
    getter = getattr(os, "sched_getaffinity", None)
    if getter is not None:
        return max(1, len(getter(0)))
    return max(1, os.cpu_count() or 1)


def plan_document_split(documents: int, val_fraction: float, seed: int) -> npt.NDArray[np.bool_]:
    """Choose the validation documents of a ``"documents"`` split.

    Args:
        documents: The number of documents ``N``.
        val_fraction: The fraction to put in validation, in ``[0, 1)``.
        seed: The seed of the choice.

    Returns:
        A boolean mask of shape ``(N,)``: True for validation documents. Exactly
        ``round(N * val_fraction)`` are True, clamped to ``[1, N - 1]`` when
        ``val_fraction > 0``.

    Raises:
        ConfigError: When ``val_fraction > 0`` and ``N < 2`` (nothing to split).
    """
    mask = np.zeros(documents, dtype=np.bool_)
    if val_fraction <= 0.0:
        return mask
    if documents < 2:
        raise ConfigError(
            f"a corpus of {documents} document(s) cannot be split by documents",
            key="split",
            hint="use split='characters' (--split characters), or val_fraction=0",
        )
    n_val = min(max(1, round(documents * val_fraction)), documents - 1)
    chosen = np.random.default_rng(seed).choice(documents, size=n_val, replace=False)
    mask[chosen] = True
    return mask


# ------------------------------------------------------------------------------ workers


@dataclass(frozen=True)
class _Chunk:
    """Documents (or pieces of them) to encode, with their split and corpus index."""

    texts: list[str]
    is_val: list[bool]
    documents: list[int]


@dataclass(frozen=True)
class _Encoded:
    """A chunk's ids per split, already in the file dtype, plus counts."""

    train: npt.NDArray[np.unsignedinteger[Any]]
    val: npt.NDArray[np.unsignedinteger[Any]]
    train_docs: int
    val_docs: int
    characters: int
    nbytes: int


@dataclass(frozen=True)
class _Encoder:
    """Everything a worker needs: the tokenizer (or its spec), the EOT id, the dtype.

    A forked worker inherits the parent's tokenizer object for free; a spawned one gets
    the spec when there is one (it resolves it itself) and a pickled tokenizer otherwise.
    """

    tokenizer: Tokenizer | TokenizerSpec
    eot_id: int
    vocab_size: int
    dtype: str

    def build(self) -> _Runner:
        tokenizer = self.tokenizer
        if isinstance(tokenizer, TokenizerSpec):
            tokenizer = resolve_tokenizer(tokenizer)
        return _Runner(self, tokenizer)


class _Runner:
    """Encodes chunks with one tokenizer instance."""

    def __init__(self, encoder: _Encoder, tokenizer: Tokenizer) -> None:
        self._encoder = encoder
        ordinary = getattr(tokenizer, "encode_ordinary", None)
        self._encode = ordinary if callable(ordinary) else tokenizer.encode
        self._dtype = np.dtype("<u2") if encoder.dtype == "uint16" else np.dtype("<u4")

    def __call__(self, chunk: _Chunk) -> _Encoded:
        eot = self._encoder.eot_id
        # list.extend only copies pointers; numpy converts and range-checks once per chunk.
        train: list[int] = []
        val: list[int] = []
        ends: list[tuple[bool, int, int]] = []  # (is_val, end offset, document index)
        characters = nbytes = 0
        for text, is_val, document in zip(chunk.texts, chunk.is_val, chunk.documents, strict=True):
            target = val if is_val else train
            target.extend(self._encode(text))
            target.append(eot)
            ends.append((is_val, len(target), document))
            characters += len(text)
            nbytes += len(text.encode("utf-8"))
        val_docs = sum(1 for flag, _, _ in ends if flag)
        return _Encoded(
            train=self._convert(train, [(e, d) for f, e, d in ends if not f]),
            val=self._convert(val, [(e, d) for f, e, d in ends if f]),
            train_docs=len(ends) - val_docs,
            val_docs=val_docs,
            characters=characters,
            nbytes=nbytes,
        )

    def _convert(
        self, ids: list[int], ends: list[tuple[int, int]]
    ) -> npt.NDArray[np.unsignedinteger[Any]]:
        vocab_size = self._encoder.vocab_size
        try:
            values = np.array(ids, dtype=np.int64)
        except OverflowError:  # an id beyond int64: find it the slow way
            values = np.array([i if 0 <= i < vocab_size else -1 for i in ids], dtype=np.int64)
        bad = np.flatnonzero((values < 0) | (values >= vocab_size))
        if bad.size:
            position = int(bad[0])
            document = next(d for end, d in ends if position < end)
            raise DataError(
                f"the tokenizer returned id {ids[position]} for document {document}, "
                f"outside its vocabulary [0, {vocab_size}) and the {self._encoder.dtype} token "
                "file",
                key="tokenizer",
                hint="the tokenizer is inconsistent: its vocab_size must exceed every id it "
                "returns; fix the tokenizer (or its vocab_size)",
            )
        return values.astype(self._dtype)


_WORKER: _Runner | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _WORKER
    worker_signals()  # Ctrl-C is the parent's to report, once
    _WORKER = encoder.build()


def _work(chunk: _Chunk) -> _Encoded:
    if _WORKER is None:  # pragma: no cover - the pool initializer always runs first
        raise RuntimeError("worker not initialized")
    return _WORKER(chunk)


def _pool_context(workers: int) -> multiprocessing.context.BaseContext:
    # fork is the fast start (no re-import of the tokenizer or of torch) where it is safe:
    # on Linux, unless Python >= 3.12 sees other threads (forking them risks deadlocks and
    # warns); then forkserver. macOS and Windows spawn.
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and "fork" in methods:
        if not _FORK_WARNS_WITH_THREADS or threading.active_count() == 1:
            return multiprocessing.get_context("fork")
        if "forkserver" in methods:
            return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


# ------------------------------------------------------------------------------ planning


def _chunks(
    corpus: Corpus,
    *,
    method: Literal["documents", "characters"],
    val_mask: npt.NDArray[np.bool_] | None,
    boundary: int,
    chunk_chars: int,
    documents: int,
) -> Iterator[_Chunk]:
    """Cut the corpus into chunks of (text, is_val) pieces, in corpus order."""
    texts: list[str] = []
    flags: list[bool] = []
    indices: list[int] = []
    size = 0
    position = 0  # characters before the current document
    index = -1
    for index, document in enumerate(corpus):
        if index >= documents:
            raise DataError(
                f"the corpus {corpus.name!r} changed while it was read: more than {documents} "
                "documents on the second pass",
                hint="prepare from a corpus that does not change",
            )
        if method == "documents":
            assert val_mask is not None
            pieces = [(document, bool(val_mask[index]))]
        else:
            end = position + len(document)
            if end <= boundary:
                pieces = [(document, False)]
            elif position >= boundary:
                pieces = [(document, True)]
            else:
                cut = boundary - position
                pieces = [(document[:cut], False), (document[cut:], True)]
            position = end
        for text, is_val in pieces:
            texts.append(text)
            flags.append(is_val)
            indices.append(index)
            size += len(text)
        if size >= chunk_chars:
            yield _Chunk(texts=texts, is_val=flags, documents=indices)
            texts, flags, indices, size = [], [], [], 0
    if index + 1 != documents:
        raise DataError(
            f"the corpus {corpus.name!r} changed while it was read: {index + 1} documents on "
            f"the second pass, {documents} on the first",
            hint="prepare from a corpus that does not change",
        )
    if texts:
        yield _Chunk(texts=texts, is_val=flags, documents=indices)


def _count(corpus: Corpus) -> tuple[int, int]:
    documents = characters = 0
    for document in corpus:
        documents += 1
        characters += len(document)
    return documents, characters


# ------------------------------------------------------------------------------ prepare


def prepare(
    corpus: CorpusSource,
    tokenizer: Tokenizer | TokenizerSpec | str | os.PathLike[str] | object,
    out_dir: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    split: SplitChoice = "auto",
    workers: int | None = None,
    eot_id: int | None = None,
    seed: int = 0,
    dtype: TokenDtype | None = None,
    chunk_chars: int = 1 << 18,
    progress: bool | ProgressMode | Progress = False,
) -> TokenMeta:
    """Tokenize a corpus into ``out_dir/{train,val}.bin`` and ``out_dir/meta.json``.

    Args:
        corpus: A [`Corpus`][lego.data.corpora.Corpus]; a name, path or URL for
            [`get_corpus()`][lego.data.corpora.get_corpus]; or the documents themselves:
            any re-iterable of strings (a list, a custom iterable) or a function that
            returns a new iterator of them (the corpus is read twice).
        tokenizer: Any [`Tokenizer`][lego.protocols.Tokenizer] (it must pickle when
            ``workers > 1`` on a platform that spawns workers), a ``tiktoken.Encoding``, or a
            spec for [`lego.tokenize.resolve_tokenizer`][lego.tokenize.resolve_tokenizer]
            (``"tiktoken:gpt2"``, ``"gpt2"``, a lego tokenizer ``.json`` path,
            ``"hf:tokenizer.json"``) that spawned workers resolve themselves. Documents are
            encoded with ``encode_ordinary`` when the tokenizer has it: special-token text
            in a document is ordinary text.
        out_dir: The dataset directory (created; existing token files are replaced).
        val_fraction: The fraction of documents or characters for validation, in ``[0, 1)``.
        split: ``"auto"``, ``"documents"`` or ``"characters"`` (see the module docstring).
        workers: Worker processes (default: the CPUs available); 1 encodes in this process.
        eot_id: The id appended after each document (default: the tokenizer's
            ``<|endoftext|>``).
        seed: The seed of the document split.
        dtype: Force the token dtype (default: uint16 when ``vocab_size <= 65536``, else
            uint32).
        chunk_chars: About how many characters go to a worker at a time.
        progress: Report progress: True (or ``"auto"``) for a rich bar on a terminal and
            plain lines otherwise, a mode of [`make_progress`][lego.protocols.make_progress],
            or a [`Progress`][lego.protocols.Progress] display to report to (left open).

    Returns:
        The metadata written to ``meta.json``.

    Raises:
        ConfigError: On an invalid option, a tokenizer without ``<|endoftext|>`` and no
            ``eot_id``, a tokenizer that cannot be sent to workers, an ``out_dir`` that is a
            file or whose outputs would replace an input, a folder another process is
            writing, or a disk that cannot take the files (full, read-only).
        DataError: On an empty or unreadable corpus, or ids outside the vocabulary.

    Example:
        >>> import tempfile
        >>> from lego.tokenize import RegexBPETokenizer
        >>> tok = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256})
        >>> docs = ["first document", "second one", "third"]
        >>> meta = prepare(docs, tok, tempfile.mkdtemp(), val_fraction=0.3, workers=1)
        >>> meta.splits["train"].documents, meta.splits["val"].documents
        (2, 1)
    """
    check_float(
        "val_fraction",
        val_fraction,
        low=0.0,
        high=1.0,
        high_open=True,
        owner="prepare",
        hint="e.g. 0.1 for 10% validation, 0 for none",
    )
    check_choice("split", split, _SPLIT_CHOICES, owner="prepare")
    if workers is not None:
        check_int("workers", workers, minimum=1, owner="prepare")
    check_int("chunk_chars", chunk_chars, minimum=1, owner="prepare")
    if dtype is not None:
        check_choice("dtype", dtype, tuple(DTYPES), owner="prepare")
    if not isinstance(progress, (bool, Progress)):
        check_choice("progress", progress, PROGRESS_MODES, owner="prepare")
    source = get_corpus(corpus)
    tok, spec, info = resolve_for_prepare(tokenizer)
    vocab_size = tok.vocab_size
    eot = find_eot_id(tok, eot_id)
    chosen_dtype = dtype if dtype is not None else dtype_for_vocab(vocab_size)
    if vocab_size > DTYPES[chosen_dtype]:
        raise ConfigError(
            f"a vocabulary of {vocab_size} ids does not fit {chosen_dtype}",
            key="dtype",
            hint="leave dtype unset to choose it from the vocabulary size",
        )
    n_workers = default_workers() if workers is None else workers
    folder = _check_out_dir(out_dir, inputs=[*getattr(source, "files", []), *_spec_files(spec)])

    with FolderLock(folder, what="dataset folder"):
        remove_stale_temporaries(folder)
        documents, characters = _count(source)
        method: Literal["documents", "characters"] = (
            ("characters" if documents == 1 else "documents") if split == "auto" else split
        )
        val_mask = (
            plan_document_split(documents, val_fraction, seed) if method == "documents" else None
        )
        boundary = int(characters * (1.0 - val_fraction))
        encoder = _Encoder(tokenizer=tok, eot_id=eot, vocab_size=vocab_size, dtype=chosen_dtype)
        chunks = _chunks(
            source,
            method=method,
            val_mask=val_mask,
            boundary=boundary,
            chunk_chars=chunk_chars,
            documents=documents,
        )
        totals = {"train": 0, "val": 0, "train_docs": 0, "val_docs": 0, "bytes": 0}
        results = _encode_all(chunks, encoder, spec, n_workers)
        train_tmp = temporary_name(folder / "train.bin")
        val_tmp = temporary_name(folder / "val.bin")
        try:
            with (
                write_errors(folder, what="dataset"),
                contextlib.closing(results),  # stops the worker pool on any error or interrupt
                open(train_tmp, "wb") as train_file,
                open(val_tmp, "wb") as val_file,
                _display(progress) as display,
                display.task(f"tokenizing {source.name}", total=characters, unit="chars") as task,
            ):
                done = 0
                for encoded in results:
                    # file.write, not ndarray.tofile: a full disk is an OSError with errno
                    train_file.write(encoded.train.data)
                    val_file.write(encoded.val.data)
                    totals["train"] += int(encoded.train.size)
                    totals["val"] += int(encoded.val.size)
                    totals["train_docs"] += encoded.train_docs
                    totals["val_docs"] += encoded.val_docs
                    totals["bytes"] += encoded.nbytes
                    done += encoded.characters
                    task.update(done)
                _sync(train_file)
                _sync(val_file)
            meta = TokenMeta(
                dtype=chosen_dtype,
                vocab_size=vocab_size,
                eot_id=eot,
                tokenizer=info,
                source=SourceInfo(corpus=source.name, documents=documents, bytes=totals["bytes"]),
                split=SplitInfo(method=method, val_fraction=float(val_fraction), seed=seed),
                splits={
                    "train": SplitFile(
                        file="train.bin", tokens=totals["train"], documents=totals["train_docs"]
                    ),
                    "val": SplitFile(
                        file="val.bin", tokens=totals["val"], documents=totals["val_docs"]
                    ),
                },
            )
            with write_errors(folder, what="dataset"):
                meta_path(folder).unlink(missing_ok=True)
                os.replace(train_tmp, folder / "train.bin")
                os.replace(val_tmp, folder / "val.bin")
            write_meta(folder, meta)
        finally:
            for leftover in (train_tmp, val_tmp):
                with contextlib.suppress(OSError):  # gone already, or a read-only folder
                    leftover.unlink()
    return meta


def _spec_files(spec: TokenizerSpec | None) -> list[Path]:
    return spec.files if spec is not None else []


def _check_out_dir(out_dir: str | os.PathLike[str], *, inputs: list[Path]) -> Path:
    """Check the dataset folder and its outputs before anything is read or written."""
    folder = check_output_path(out_dir, what="dataset folder", key="out_dir", kind="folder")
    for name in _OUTPUTS:
        check_output_path(folder / name, inputs=inputs, what=f"dataset's {name}", key="out_dir")
    return folder


def _display(
    progress: bool | ProgressMode | Progress,
) -> contextlib.AbstractContextManager[Progress]:
    """The display to report to: a caller's stays open, one made here closes at the end."""
    return make_progress(progress)


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _encode_all(
    chunks: Iterator[_Chunk], encoder: _Encoder, spec: TokenizerSpec | None, workers: int
) -> Generator[_Encoded, None, None]:
    """Encode chunks in order: in this process, or in a pool with a bounded window."""
    if workers == 1:
        runner = encoder.build()
        for chunk in chunks:
            yield runner(chunk)
        return
    context = _pool_context(workers)
    if context.get_start_method() != "fork":
        if spec is not None:  # the workers resolve the spec: nothing big to pickle
            encoder = dataclasses.replace(encoder, tokenizer=spec)
        try:
            pickle.dumps(encoder)
        except Exception as err:
            raise ConfigError(
                f"the tokenizer cannot be sent to worker processes ({type(err).__name__}: {err})",
                key="tokenizer",
                hint="pass workers=1, a picklable tokenizer, or a spec such as 'tiktoken:gpt2' "
                "or a tokenizer .json path",
            ) from None
    with stop_signals_blocked():  # signals reach the main thread, which waits below
        pool: multiprocessing.pool.Pool = context.Pool(
            processes=workers, initializer=_init_worker, initargs=(encoder,)
        )
    window: collections.deque[multiprocessing.pool.AsyncResult[_Encoded]] = collections.deque()
    try:
        limit = 2 * workers
        for chunk in chunks:
            window.append(pool.apply_async(_work, (chunk,)))
            if len(window) >= limit:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()
    except (Exception, GeneratorExit):
        # A failed chunk, a bad document or a consumer that stopped early: let the chunks
        # already sent finish, so that the pool closes cleanly (terminating a pool with tasks
        # in flight can deadlock).
        for result in window:
            result.wait()
        raise
    except BaseException:  # Ctrl-C or SIGTERM: stop the workers (they ignore SIGINT)
        pool.terminate()
        raise
    finally:
        pool.close()
        pool.join()
