from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lego.data.prepare as prepare_module
from lego.data.corpora import FileCorpus, IterableCorpus
from lego.data.meta import open_split, read_meta
from lego.data.prepare import plan_document_split, prepare
from lego.protocols import ConfigError, DataError, Tokenizer

EOT = 256

Utf8Factory = Callable[..., Tokenizer]
"""The ``utf8_tokenizer`` fixture: builds a UTF-8 byte tokenizer (see conftest)."""


DOCS = [
    "First document.\n",
    "Second, with ünïcödé and emoji 🐍.",
    "",
    "Third\n\nhas paragraphs",
    "4",
    "fifth " * 50,
    "sixth",
    "seventh and last",
]


class ListCorpus(FileCorpus.__mro__[1]):  # type: ignore[misc,valid-type]
    """An in-memory corpus (a ``Corpus`` subclass)."""

    def __init__(self, docs: Sequence[str], name: str = "list") -> None:
        super().__init__()
        self.docs = list(docs)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def iter_documents(self):  # type: ignore[no-untyped-def]
        yield from self.docs


def expected_stream(docs: Sequence[str], tok: Tokenizer) -> list[int]:
    out: list[int] = []
    for doc in docs:
        out += [*tok.encode(doc), tok.special_tokens["<|endoftext|>"]]
    return out


def read_split(folder: Path, split: str) -> list[int]:
    return [int(i) for i in open_split(folder, split)]


def test_document_split_reproduces_the_stream(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    tok = utf8_tokenizer()
    meta = prepare(ListCorpus(DOCS), tok, tmp_path, val_fraction=0.25, workers=1, seed=3)
    mask = plan_document_split(len(DOCS), 0.25, 3)
    train_docs = [d for d, v in zip(DOCS, mask, strict=True) if not v]
    val_docs = [d for d, v in zip(DOCS, mask, strict=True) if v]
    assert len(val_docs) == 2
    assert read_split(tmp_path, "train") == expected_stream(train_docs, tok)
    assert read_split(tmp_path, "val") == expected_stream(val_docs, tok)
    assert meta.split.method == "documents"
    assert meta.splits["train"].documents == 6
    assert meta.splits["val"].documents == 2
    assert meta.splits["train"].tokens + meta.splits["val"].tokens == len(
        expected_stream(DOCS, tok)
    )
    assert meta.source.documents == len(DOCS)
    assert meta.source.bytes == sum(len(d.encode()) for d in DOCS)
    assert meta.eot_id == EOT
    assert meta.dtype == "uint16"
    assert meta.tokenizer.kind == "python"
    assert meta.tokenizer.name == "Utf8Tokenizer"
    assert meta.tokenizer.sha256 is None
    assert read_meta(tmp_path) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_workers_give_identical_files(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    docs = [f"document {i}: " + "word " * (i % 17) for i in range(300)]
    tok = utf8_tokenizer()
    one = prepare(ListCorpus(docs), tok, tmp_path / "one", workers=1, chunk_chars=500)
    two = prepare(ListCorpus(docs), tok, tmp_path / "two", workers=2, chunk_chars=500)
    assert one == two
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    mask = plan_document_split(300, 0.1, 0)
    train = [d for d, v in zip(docs, mask, strict=True) if not v]
    assert read_split(tmp_path / "two", "train") == expected_stream(train, tok)


def test_character_split_of_a_single_document(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    text = "To be, or not to be: that is the question. " * 20
    (tmp_path / "play.txt").write_text(text)
    tok = utf8_tokenizer()
    meta = prepare(tmp_path / "play.txt", tok, tmp_path / "out", workers=1)
    boundary = int(len(text) * 0.9)
    assert meta.split.method == "characters"  # auto: one document
    assert read_split(tmp_path / "out", "train") == [*tok.encode(text[:boundary]), EOT]
    assert read_split(tmp_path / "out", "val") == [*tok.encode(text[boundary:]), EOT]
    assert meta.splits["train"].documents == meta.splits["val"].documents == 1


def test_character_split_across_documents(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    docs = ["aaaa", "bbbbbb", "cccc"]  # 14 characters; 50% -> boundary 7, inside "bbbbbb"
    tok = utf8_tokenizer()
    meta = prepare(ListCorpus(docs), tok, tmp_path, val_fraction=0.5, split="characters", workers=1)
    assert read_split(tmp_path, "train") == expected_stream(["aaaa", "bbb"], tok)
    assert read_split(tmp_path, "val") == expected_stream(["bbb", "cccc"], tok)
    assert (meta.splits["train"].documents, meta.splits["val"].documents) == (2, 2)
    assert meta.source.documents == 3


def test_no_validation(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    tok = utf8_tokenizer()
    meta = prepare(ListCorpus(DOCS), tok, tmp_path, val_fraction=0.0, workers=1)
    assert read_split(tmp_path, "train") == expected_stream(DOCS, tok)
    assert meta.splits["val"].tokens == 0
    assert open_split(tmp_path, "val").size == 0


def test_large_vocabulary_uses_uint32(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    tok = utf8_tokenizer(offset=70000)
    meta = prepare(ListCorpus(["hi", "there"]), tok, tmp_path, val_fraction=0.5, workers=1)
    assert meta.dtype == "uint32"
    assert meta.vocab_size == 70257
    assert (tmp_path / "train.bin").stat().st_size == 4 * meta.splits["train"].tokens
    combined = read_split(tmp_path, "train") + read_split(tmp_path, "val")
    assert sorted(combined) == sorted(expected_stream(["hi", "there"], tok))
    assert max(combined) == 70256


def test_forced_dtype(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    meta = prepare(ListCorpus(["hi"]), utf8_tokenizer(), tmp_path, dtype="uint32", workers=1)
    assert meta.dtype == "uint32"
    with pytest.raises(ConfigError, match="does not fit uint16"):
        prepare(ListCorpus(["hi"]), utf8_tokenizer(offset=70000), tmp_path, dtype="uint16")


@pytest.mark.parametrize("workers", [1, 2])
def test_ids_beyond_the_vocabulary(
    tmp_path: Path, workers: int, utf8_tokenizer: Utf8Factory
) -> None:
    tok = utf8_tokenizer(vocab_size=300)  # claims 300 ids but the EOT is 256: fine...
    tok.offset = 150  # ...until bytes above 149 map beyond 299 (ASCII letters stay below)
    docs = ["plain", "also plain", "\u00ff is two bytes: 0xc3 0xbf"]
    with pytest.raises(DataError, match="outside its vocabulary") as info:
        prepare(ListCorpus(docs), tok, tmp_path, workers=workers, val_fraction=0.0)
    assert "document 2" in info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .tmp, no meta.json


def test_eot_id_rules(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    no_eot = utf8_tokenizer(eot=False, vocab_size=300)
    with pytest.raises(ConfigError, match="no <\\|endoftext\\|>") as info:
        prepare(ListCorpus(["a", "b"]), no_eot, tmp_path)
    assert info.value.key == "eot_id"
    meta = prepare(ListCorpus(["a", "b"]), no_eot, tmp_path, eot_id=299, workers=1)
    assert meta.eot_id == 299
    assert read_split(tmp_path, "train")[-1] == 299
    with pytest.raises(ConfigError, match="at most 299") as info:
        prepare(ListCorpus(["a", "b"]), no_eot, tmp_path, eot_id=300)
    assert info.value.key == "eot_id"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"split": "random"}, "split"),
        ({"workers": 0}, "workers"),
        ({"chunk_chars": 0}, "chunk_chars"),
        ({"dtype": "int8"}, "dtype"),
        ({"val_fraction": True}, "val_fraction"),
        ({"progress": "fancy"}, "progress"),
    ],
)
def test_bad_options(
    tmp_path: Path, kwargs: dict[str, object], key: str, utf8_tokenizer: Utf8Factory
) -> None:
    with pytest.raises(ConfigError) as info:
        prepare(ListCorpus(DOCS), utf8_tokenizer(), tmp_path, **kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_single_document_cannot_split_by_documents(
    tmp_path: Path, utf8_tokenizer: Utf8Factory
) -> None:
    with pytest.raises(ConfigError, match="characters"):
        prepare(ListCorpus(["one"]), utf8_tokenizer(), tmp_path, split="documents")


def test_empty_corpus(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    with pytest.raises(DataError, match="empty"):
        prepare(ListCorpus([]), utf8_tokenizer(), tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_not_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a tokenizer"):
        prepare(ListCorpus(DOCS), object(), tmp_path)


def test_spawned_workers_resolve_a_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, utf8_tokenizer: Utf8Factory
) -> None:
    import multiprocessing

    from lego.tokenize import RegexBPETokenizer

    file = tmp_path / "bytes.json"
    RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": EOT}).save(file)
    monkeypatch.setattr(
        prepare_module, "_pool_context", lambda workers: multiprocessing.get_context("spawn")
    )
    meta = prepare(ListCorpus(DOCS), str(file), tmp_path / "spawned", workers=2, chunk_chars=40)
    prepare(ListCorpus(DOCS), utf8_tokenizer(), tmp_path / "bytes", workers=1)
    for split in ("train", "val"):
        assert read_split(tmp_path / "spawned", split) == read_split(tmp_path / "bytes", split)
    assert (meta.tokenizer.kind, meta.tokenizer.name) == ("lego", "bytes.json")


def test_unpicklable_tokenizer_with_spawned_workers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    utf8_tokenizer: Utf8Factory,
) -> None:
    import multiprocessing

    monkeypatch.setattr(
        prepare_module, "_pool_context", lambda workers: multiprocessing.get_context("spawn")
    )
    tok = utf8_tokenizer()
    tok.callback = lambda: None  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="cannot be sent to worker processes"):
        prepare(ListCorpus(DOCS), tok, tmp_path, workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_documents_given_directly(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    tok = utf8_tokenizer()
    reference = prepare(ListCorpus(DOCS), tok, tmp_path / "corpus", workers=1)

    class Documents:  # a custom re-iterable: every iter() starts over
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(DOCS)

    for name, docs in (
        ("list", list(DOCS)),
        ("tuple", tuple(DOCS)),
        ("factory", lambda: (doc for doc in DOCS)),
        ("iterable", Documents()),
    ):
        meta = prepare(docs, tok, tmp_path / name, workers=2, chunk_chars=30)
        assert meta.splits == reference.splits
        assert meta.source.corpus == "in-memory documents"
        for split in ("train", "val"):
            assert read_split(tmp_path / name, split) == read_split(tmp_path / "corpus", split)


def test_one_shot_documents_are_refused(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    with pytest.raises(ConfigError, match="one-shot iterator") as info:
        prepare((doc for doc in DOCS), utf8_tokenizer(), tmp_path / "out")
    assert "lambda" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="one string"):
        IterableCorpus("a single text")  # type: ignore[arg-type]  # a name for prepare()
    with pytest.raises(ConfigError, match="got int"):
        prepare(42, utf8_tokenizer(), tmp_path / "out")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"document 1 .* is a bytes") as err:
        prepare(["text", b"bytes"], utf8_tokenizer(), tmp_path / "out", workers=1)
    assert err.value.key == "corpus[1]"
    assert not (tmp_path / "out" / "meta.json").exists()


def test_progress_goes_to_the_given_display(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    import io

    from lego.protocols import make_progress

    stream = io.StringIO()
    with make_progress("plain", stream=stream, interval=0) as display:
        prepare(ListCorpus(DOCS), utf8_tokenizer(), tmp_path, workers=1, progress=display)
        display.message("still open")
    lines = stream.getvalue().splitlines()
    characters = sum(len(doc) for doc in DOCS)
    assert lines[0] == f"tokenizing list ({characters} chars) ..."
    assert lines[-2].startswith(f"tokenizing list: done, {characters} chars in ")
    assert lines[-1] == "still open"


def test_rewrites_an_existing_dataset(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    tok = utf8_tokenizer()
    prepare(ListCorpus(DOCS), tok, tmp_path, workers=1)
    meta = prepare(ListCorpus(["short", "docs"]), tok, tmp_path, val_fraction=0.5, workers=1)
    assert read_meta(tmp_path) == meta
    assert len(read_split(tmp_path, "train")) + len(read_split(tmp_path, "val")) == 11


def test_corpus_that_changes_between_passes(tmp_path: Path, utf8_tokenizer: Utf8Factory) -> None:
    class Growing(ListCorpus):
        def iter_documents(self):  # type: ignore[no-untyped-def]
            yield from self.docs
            self.docs.append("one more")

    with pytest.raises(DataError, match="changed while it was read"):
        prepare(Growing(["a", "b", "c"]), utf8_tokenizer(), tmp_path, workers=1)


@pytest.mark.parametrize("n", [2, 3, 10, 101])
@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.5, 0.999])
def test_plan_document_split_counts(n: int, fraction: float) -> None:
    mask = plan_document_split(n, fraction, 0)
    assert mask.shape == (n,)
    assert 1 <= int(mask.sum()) <= n - 1
    assert int(mask.sum()) == min(max(1, round(n * fraction)), n - 1)
    assert np.array_equal(mask, plan_document_split(n, fraction, 0))
    assert not plan_document_split(n, 0.0, 0).any()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    docs=st.lists(st.text(max_size=40), min_size=2, max_size=12).filter(lambda d: "".join(d)),
    fraction=st.sampled_from([0.0, 0.2, 0.5]),
    split=st.sampled_from(["documents", "characters"]),
    seed=st.integers(0, 5),
)
def test_concatenation_property(
    tmp_path_factory: pytest.TempPathFactory,
    docs: list[str],
    fraction: float,
    split: str,
    seed: int,
    utf8_tokenizer: Utf8Factory,
) -> None:
    tok = utf8_tokenizer()
    out = tmp_path_factory.mktemp("prep")
    meta = prepare(
        ListCorpus(docs),
        tok,
        out,
        val_fraction=fraction,
        split=split,
        seed=seed,
        workers=1,  # type: ignore[arg-type]
    )
    train, val = read_split(out, "train"), read_split(out, "val")
    assert meta.splits["train"].tokens == len(train)
    if split == "characters":
        text = "".join(docs)
        boundary = int(len(text) * (1 - fraction))
        # Removing the EOT ids gives back the text's bytes, cut at the character boundary.
        assert bytes(i for i in train if i != EOT).decode() == text[:boundary]
        assert bytes(i for i in val if i != EOT).decode() == text[boundary:]
    else:
        mask = plan_document_split(len(docs), fraction, seed)
        assert train == expected_stream([d for d, v in zip(docs, mask, strict=True) if not v], tok)
        assert val == expected_stream([d for d, v in zip(docs, mask, strict=True) if v], tok)


def test_pool_start_method(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    if not sys.platform.startswith("linux"):
        assert prepare_module._pool_context(2).get_start_method() == "spawn"
        return
    monkeypatch.setattr(prepare_module, "_FORK_WARNS_WITH_THREADS", False)
    assert prepare_module._pool_context(2).get_start_method() == "fork"
    monkeypatch.setattr(prepare_module, "_FORK_WARNS_WITH_THREADS", True)
    if threading.active_count() == 1:  # no other thread in this process
        assert prepare_module._pool_context(2).get_start_method() == "fork"
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert prepare_module._pool_context(2).get_start_method() == "forkserver"
    finally:
        stop.set()
        thread.join()


def test_special_token_text_in_a_document_is_ordinary_text(tmp_path: Path) -> None:
    from lego.tokenize import RegexBPETokenizer

    tok = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": EOT})
    docs = ["before <|endoftext|> after", "second"]
    prepare(docs, tok, tmp_path, val_fraction=0, workers=1)
    ids = read_split(tmp_path, "train")
    assert ids == [*docs[0].encode(), EOT, *docs[1].encode(), EOT]
