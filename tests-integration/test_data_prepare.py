"""lego-data with real tokenizers: tiktoken's GPT-2 encoding, lego-tokenize files, plots.

Tiny shakespeare (``$LEGO_SHARED_DATA/input.txt``) with the GPT-2 encoding and a 90/10
character split must give nanoGPT's published counts: 301,966 train and 36,059 val tokens,
before the end-of-text id each split ends with.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from lego.data.cli import run
from lego.data.corpora import FileCorpus, PythonStdlibCorpus
from lego.data.meta import open_split, read_meta
from lego.data.prepare import plan_document_split, prepare
from lego.data.summary import plot, summarize
from lego.data.tokenizers import resolve_for_prepare, resolve_with_spec, tokenizer_info
from lego.protocols import CompatibilityError, run_cli
from lego.tokenize import RegexBPETokenizer, resolve_tokenizer, tokenizer_fingerprint

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LEGO_SHARED_DATA", ROOT.parent / "shared" / "data"))
SHAKESPEARE = SHARED / "input.txt"
EXAMPLE_CONFIG = ROOT / "examples" / "configs" / "datasets" / "tiny_shakespeare.yaml"
GPT2_SHA256 = "b9c16ddda9153c6e3661e476ca75598cdcbdc310e4c8db721c62af263c166bfc"
"""``tokenizer.sha256`` of tiktoken's GPT-2 encoding in the meta.json lego-data 0.1 wrote."""

needs_shakespeare = pytest.mark.skipif(
    not SHAKESPEARE.is_file(), reason=f"reference data missing: {SHAKESPEARE}"
)


@pytest.fixture(autouse=True)
def _tiktoken_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point tiktoken at the shared cache, so the GPT-2 encoding loads without a network."""
    pytest.importorskip("tiktoken", reason="tiktoken is not installed")
    cache = SHARED / "tiktoken-cache"
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        if not cache.is_dir():
            pytest.skip(f"reference data missing: {cache}")
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))


@needs_shakespeare
def test_tiny_shakespeare_matches_nanogpt(tmp_path: Path) -> None:
    meta = prepare(SHAKESPEARE, "tiktoken:gpt2", tmp_path, val_fraction=0.1, workers=2)
    assert meta.split.method == "characters"
    assert meta.splits["train"].tokens - 1 == 301_966
    assert meta.splits["val"].tokens - 1 == 36_059
    assert (meta.dtype, meta.vocab_size, meta.eot_id) == ("uint16", 50257, 50256)
    assert meta.source.bytes == 1_115_394
    import tiktoken

    encoding = tiktoken.get_encoding("gpt2")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    boundary = int(len(text) * 0.9)
    train = open_split(tmp_path, "train")
    val = open_split(tmp_path, "val")
    assert train[:-1].tolist() == encoding.encode_ordinary(text[:boundary])
    assert val[:-1].tolist() == encoding.encode_ordinary(text[boundary:])
    assert int(train[-1]) == int(val[-1]) == 50256


@needs_shakespeare
def test_example_config_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shakespeare"
    code = run_cli(
        run,
        [
            "prepare",
            "--config",
            str(EXAMPLE_CONFIG),
            f"corpus={SHAKESPEARE}",
            f"out_dir={out}",
            "--quiet",
        ],
        prog="lego-data",
    )
    assert code == 0
    assert "train 301,967 tokens" in capsys.readouterr().out
    meta = read_meta(out)
    assert (meta.tokenizer.kind, meta.tokenizer.name) == ("tiktoken", "gpt2")
    assert meta.tokenizer.sha256 == GPT2_SHA256  # the same identity as before the resolver
    gpt2 = resolve_tokenizer("tiktoken:gpt2")
    meta.check_tokenizer(
        gpt2.vocab_size, gpt2.special_tokens["<|endoftext|>"], tokenizer_fingerprint(gpt2)
    )
    cl100k = resolve_tokenizer("cl100k_base")
    with pytest.raises(CompatibilityError):
        meta.check_tokenizer(
            cl100k.vocab_size, cl100k.special_tokens["<|endoftext|>"], tokenizer_fingerprint(cl100k)
        )


def test_tiktoken_through_the_one_resolver() -> None:
    import tiktoken

    encoding = tiktoken.get_encoding("gpt2")
    tok, spec = resolve_with_spec("gpt2")  # a bare encoding name, as lego-data 0.1 took it
    assert isinstance(tok, RegexBPETokenizer)
    assert (tok.vocab_size, tok.special_tokens["<|endoftext|>"]) == (50257, 50256)
    text = "hello <|endoftext|> world"
    assert tok.encode_ordinary(text) == encoding.encode_ordinary(text)  # special text: ordinary
    assert tok.decode(tok.encode_ordinary("héllo wörld")) == "héllo wörld"
    assert pickle.loads(pickle.dumps(tok)).encode_ordinary(text) == tok.encode_ordinary(text)
    first = tokenizer_info(tok, spec)
    assert first.sha256 == GPT2_SHA256
    assert first == tokenizer_info(*resolve_with_spec("tiktoken:gpt2"))
    assert first == tokenizer_info(*resolve_with_spec(encoding), given=encoding)
    assert first.sha256 != tokenizer_info(*resolve_with_spec("cl100k_base")).sha256
    shared, _, info = resolve_for_prepare("gpt2")  # prepare's: resolved once per process
    assert resolve_for_prepare("tiktoken:gpt2")[0] is shared
    assert info == first


def test_a_tiktoken_encoding_object_and_its_name_give_the_same_dataset(tmp_path: Path) -> None:
    import tiktoken

    docs = ["hello <|endoftext|> world", "more text", "and more"] * 4
    by_name = prepare(docs, "gpt2", tmp_path / "name", workers=2)
    by_object = prepare(docs, tiktoken.get_encoding("gpt2"), tmp_path / "object", workers=2)
    assert by_name == by_object
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "name" / name).read_bytes() == (tmp_path / "object" / name).read_bytes()


def test_stdlib_with_one_and_two_workers(tmp_path: Path) -> None:
    corpus = PythonStdlibCorpus()
    one = prepare(corpus, "gpt2", tmp_path / "one", workers=1)
    two = prepare(corpus, "gpt2", tmp_path / "two", workers=2, chunk_chars=1 << 17)
    assert one == two
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert one.source.documents == one.splits["train"].documents + one.splits["val"].documents


def test_lego_tokenizer_file(tmp_path: Path) -> None:
    import lego.tokenize as tokenize

    docs = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 5
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for i, doc in enumerate(docs):
        (corpus_dir / f"{i:02d}.txt").write_text(doc)
    trainer = tokenize.RegexBPETokenizer(pattern="gpt4")
    trainer.train(docs, 300, special_tokens={"<|endoftext|>": 299})
    path = tmp_path / "tok.json"
    trainer.save(path)
    meta = prepare(FileCorpus(corpus_dir), str(path), tmp_path / "out", workers=2)
    assert meta.tokenizer.kind == "lego"
    assert meta.tokenizer.name == "tok.json"
    loaded = tokenize.load(path)
    encode = getattr(loaded, "encode_ordinary", loaded.encode)
    mask = plan_document_split(len(docs), 0.1, 0)
    for split, is_val in (("train", False), ("val", True)):
        expected = [
            i for d, v in zip(docs, mask, strict=True) if v == is_val for i in [*encode(d), 299]
        ]
        assert open_split(tmp_path / "out", split).tolist() == expected


@needs_shakespeare
def test_summary_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (lego-data[plot])")
    summary = summarize(SHAKESPEARE, "gpt2", top_k=5)
    assert summary.tokens is not None
    assert summary.tokens.tokens == 338_025  # the whole play in one piece
    out = plot(summary, tmp_path / "plots" / "summary.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = run_cli(
        run,
        ["summary", str(SHAKESPEARE), "--tokenizer", "gpt2", "--plot", str(tmp_path / "cli.png")],
        prog="lego-data",
    )
    assert code == 0
    assert (tmp_path / "cli.png").stat().st_size > 10_000
