"""lego.eval.perplexity: exact windows, closed-form toy models, batching, errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.eval import (
    PerplexityResult,
    perplexity,
    sliding_windows,
    split_perplexity,
    text_perplexity,
)
from lego.protocols import CompatibilityError, ConfigError, DataError

SETTINGS = settings(max_examples=60, deadline=None)


def _ids(n: int, vocab: int = 11, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=gen).tolist()


class ByteTokenizer:
    vocab_size = 256
    special_tokens: ClassVar[dict[str, int]] = {}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


# -- the windows ---------------------------------------------------------------------------


@SETTINGS
@given(
    n=st.integers(2, 80),
    max_length=st.integers(1, 20),
    data=st.data(),
)
def test_windows_score_every_target_exactly_once(n: int, max_length: int, data: st.DataObject):
    stride = data.draw(st.integers(1, max_length))
    windows = sliding_windows(n, max_length=max_length, stride=stride)
    scored = [t for w in windows for t in range(w.score_from, w.end)]
    assert scored == list(range(1, n))  # in order, none twice, none skipped
    lengths = {w.input_length for w in windows}
    assert lengths == {min(max_length, n - 1)}  # one length: batches need no padding
    for w in windows:
        assert 0 <= w.start < w.score_from < w.end <= n
        # the last target of every window sees the whole window; the first at least
        # max_length - stride + 1 tokens (or all tokens before it)
        assert w.end - 1 - w.start == min(max_length, n - 1)
        assert w.score_from - w.start >= min(w.score_from, max_length - stride + 1)
    for w in windows[1:-1]:
        assert w.num_scored == stride


def test_windows_by_hand() -> None:
    # 10 tokens, 4 fed at a time, 3 new targets per later window; the last one scores 2
    got = [(w.start, w.score_from, w.end) for w in sliding_windows(10, max_length=4, stride=3)]
    assert got == [(0, 1, 5), (3, 5, 8), (5, 8, 10)]
    # fewer tokens than the window: one window, no padding
    assert [(w.start, w.score_from, w.end) for w in sliding_windows(3, max_length=8, stride=2)] == [
        (0, 1, 3)
    ]


@pytest.mark.parametrize(
    ("max_length", "stride"), [(0, 1), (4, 0), (4, 5)], ids=["no-window", "stride-0", "stride>L"]
)
def test_windows_refuse_bad_settings(max_length: int, stride: int) -> None:
    with pytest.raises(ConfigError) as err:
        sliding_windows(10, max_length=max_length, stride=stride)
    assert err.value.key in ("max_length", "stride")


# -- closed-form toy models ----------------------------------------------------------------


@SETTINGS
@given(
    n=st.integers(2, 70),
    max_length=st.integers(1, 16),
    batch_size=st.integers(1, 5),
    prefix=st.booleans(),
    data=st.data(),
)
def test_every_token_once_with_its_exact_context(
    toys: SimpleNamespace,
    n: int,
    max_length: int,
    batch_size: int,
    prefix: bool,
    data: st.DataObject,
) -> None:
    stride = data.draw(st.integers(1, max_length))
    model = toys.ContextLength(context_length=16)
    ids = _ids(n, seed=n)
    prefix_id = 3 if prefix else None
    seq = ([prefix_id] if prefix else []) + ids
    result = perplexity(
        model,
        ids,
        max_length=max_length,
        stride=stride,
        batch_size=batch_size,
        prefix_id=prefix_id,
        return_token_nlls=True,
    )
    expected = [
        model.expected_nll(seq, t, toys.expected_context(t, len(seq), max_length, stride))
        for t in range(1, len(seq))
    ]
    assert result.num_tokens == len(seq) - 1 == (n if prefix else n - 1)
    assert result.token_nlls is not None
    assert result.token_nlls.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert result.total_nats == pytest.approx(sum(expected), rel=1e-6)
    assert all(shape[0] <= batch_size for shape in model.shapes)


def test_bigram_total_by_hand(toys: SimpleNamespace) -> None:
    model = toys.Bigram()
    ids = [1, 4, 4, 2, 9, 0, 7, 7, 3]
    # a bigram ignores context: every token's -ln p is fixed, so any double-count or skip
    # would change the total; windows of 3 with stride 2 cover 8 targets in 4 windows
    result = perplexity(model, ids, max_length=3, stride=2)
    table = torch.log_softmax(model.table.detach().double(), -1)
    by_hand = -sum(float(table[a, b]) for a, b in itertools.pairwise(ids))
    assert result.num_tokens == 8
    assert result.num_windows == 4
    assert result.total_nats == pytest.approx(by_hand, rel=1e-6)
    assert result.mean_nll == pytest.approx(by_hand / 8, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(by_hand / 8), rel=1e-6)
    assert result.bits_per_byte is None


def test_direct_token_by_token(toys: SimpleNamespace) -> None:
    """A context-dependent model: each token equals one forward pass over exactly its context."""
    model = toys.CausalMean(context_length=12).eval()
    ids = _ids(40, seed=5)
    result = perplexity(model, ids, max_length=12, stride=5, return_token_nlls=True)
    direct = []
    for t in range(1, 40):
        context = toys.expected_context(t, 40, 12, 5)
        with torch.no_grad():
            logits = model(torch.tensor([ids[t - context : t]]))[0, -1].double()
        direct.append(-float(torch.log_softmax(logits, -1)[ids[t]]))
    assert result.token_nlls is not None
    assert result.token_nlls.tolist() == pytest.approx(direct, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("n", [9, 40, 101])
def test_same_result_for_every_batch_size_and_chunk(toys: SimpleNamespace, n: int) -> None:
    model = toys.CausalMean(context_length=8).eval()
    ids = _ids(n, seed=n)
    base = perplexity(model, ids, max_length=8, stride=3, batch_size=1)
    for batch_size in (2, 3, 8, 64):
        other = perplexity(model, ids, max_length=8, stride=3, batch_size=batch_size)
        assert other.total_nats == pytest.approx(base.total_nats, rel=1e-6)
        assert other.num_tokens == base.num_tokens
    chunked = perplexity(model, ids, max_length=8, stride=3, batch_size=3, chunk_size=1)
    assert chunked.total_nats == pytest.approx(base.total_nats, rel=1e-6)


def test_strides_with_the_same_contexts_agree(toys: SimpleNamespace) -> None:
    model = toys.CausalMean(context_length=32).eval()
    ids = _ids(30, seed=2)  # 29 targets <= 32: one window whatever the stride
    results = {s: perplexity(model, ids, max_length=32, stride=s).total_nats for s in (1, 7, 32)}
    assert results[1] == pytest.approx(results[7], rel=1e-6)
    assert results[1] == pytest.approx(results[32], rel=1e-6)
    # a longer text: stride changes the contexts, and so the result (the test can fail)
    long = _ids(80, seed=2)
    a = perplexity(model, long, max_length=8, stride=1).total_nats
    b = perplexity(model, long, max_length=8, stride=8).total_nats
    assert a != pytest.approx(b, rel=1e-6)


def test_eval_mode_for_the_measurement_then_restored(toys: SimpleNamespace) -> None:
    model = toys.CausalMean(context_length=8)
    assert model.training
    ids = _ids(30)
    first = perplexity(model, ids, max_length=8, stride=4)
    second = perplexity(model, ids, max_length=8, stride=4)
    assert model.training  # restored
    assert first.total_nats == second.total_nats  # dropout was off both times


def test_tensor_and_numpy_sources(toys: SimpleNamespace) -> None:
    np = pytest.importorskip("numpy")
    model = toys.Bigram()
    ids = _ids(50, seed=9)
    base = perplexity(model, ids, max_length=6, stride=4)
    for source in (torch.tensor(ids), np.array(ids, dtype=np.uint16)):
        assert perplexity(model, source, max_length=6, stride=4).total_nats == pytest.approx(
            base.total_nats, rel=1e-12
        )


def test_text_bits_per_byte() -> None:
    class Uniform(torch.nn.Module):
        config = SimpleNamespace(vocab_size=256, context_length=16)

        def forward(self, ids: torch.Tensor, **_: object) -> torch.Tensor:
            return torch.zeros(*ids.shape, 256)

    text = "héllo, wörld"  # 12 characters, 14 UTF-8 bytes
    result = text_perplexity(Uniform(), ByteTokenizer(), text, max_length=4, stride=3)  # type: ignore[arg-type]
    assert result.num_bytes == 14
    assert result.num_tokens == 13
    assert result.perplexity == pytest.approx(256.0, rel=1e-6)
    # 13 tokens of 8 bits each over 14 bytes
    assert result.bits_per_byte == pytest.approx(13 * 8 / 14, rel=1e-6)
    assert result.to_dict()["bits_per_byte"] == result.bits_per_byte
    with_prefix = text_perplexity(Uniform(), ByteTokenizer(), text, prefix_id=0)  # type: ignore[arg-type]
    assert with_prefix.num_tokens == 14
    assert with_prefix.bits_per_byte == pytest.approx(8.0, rel=1e-6)


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "a"])
def test_text_shorter_than_two_tokens(toys: SimpleNamespace, text: str) -> None:
    with pytest.raises(DataError, match="at least two") as err:
        text_perplexity(toys.Bigram(vocab=256), ByteTokenizer(), text)
    assert "prefix_id" in (err.value.hint or "")
    # with a prefix id, one token is enough
    if text:
        result = text_perplexity(toys.Bigram(vocab=256), ByteTokenizer(), text, prefix_id=0)
        assert result.num_tokens == 1


def test_bad_token_ids(toys: SimpleNamespace) -> None:
    model = toys.Bigram()
    with pytest.raises(DataError, match="at least two"):
        perplexity(model, [5])
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        perplexity(model, [1, 2, 11])
    with pytest.raises(DataError, match="1-D"):
        perplexity(model, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="prefix_id"):
        perplexity(model, [1, 2], prefix_id=-1)


def test_bad_settings(toys: SimpleNamespace) -> None:
    model = toys.Bigram(context_length=8)
    ids = _ids(20)
    with pytest.raises(ConfigError, match="exceeds the model's context_length"):
        perplexity(model, ids, max_length=9)
    with pytest.raises(ConfigError, match="stride"):
        perplexity(model, ids, max_length=8, stride=9)
    with pytest.raises(ConfigError, match="batch_size"):
        perplexity(model, ids, batch_size=0)
    with pytest.raises(ConfigError, match="chunk_size"):
        perplexity(model, ids, chunk_size=0)
    with pytest.raises(ConfigError, match="num_bytes"):
        perplexity(model, ids, num_bytes=-1)


def test_defaults_and_result(toys: SimpleNamespace) -> None:
    model = toys.Bigram(context_length=8)
    result = perplexity(model, _ids(30), num_bytes=30)
    assert (result.max_length, result.stride) == (8, 4)  # the model's context, half of it
    assert isinstance(result, PerplexityResult)
    assert result.token_nlls is None
    assert set(result.to_dict()) == {
        "total_nats",
        "num_tokens",
        "mean_nll",
        "perplexity",
        "num_bytes",
        "bits_per_byte",
        "max_length",
        "stride",
        "num_windows",
    }
    assert result.bits_per_byte == pytest.approx(result.total_nats / (math.log(2) * 30))


def test_split_of_a_prepared_dataset(toys: SimpleNamespace, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    from lego.data.meta import (
        SourceInfo,
        SplitFile,
        SplitInfo,
        TokenizerInfo,
        TokenMeta,
        write_meta,
    )

    ids = _ids(90, seed=4)
    np.array(ids, dtype=np.uint16).tofile(tmp_path / "val.bin")
    np.array(ids[:10], dtype=np.uint16).tofile(tmp_path / "train.bin")
    meta = TokenMeta(
        dtype="uint16",
        vocab_size=11,
        eot_id=0,
        tokenizer=TokenizerInfo(kind="char", name="toy"),
        source=SourceInfo(corpus="toy", documents=1, bytes=90),
        split=SplitInfo(method="characters", val_fraction=0.5, seed=0),
        splits={
            "train": SplitFile(file="train.bin", tokens=10, documents=1),
            "val": SplitFile(file="val.bin", tokens=90, documents=1),
        },
    )
    write_meta(tmp_path, meta)
    model = toys.Bigram()
    got = split_perplexity(model, tmp_path, "val", max_length=8, stride=3, num_bytes=90)
    want = perplexity(model, ids, max_length=8, stride=3, num_bytes=90)
    assert got.total_nats == pytest.approx(want.total_nats, rel=1e-12)
    assert got.bits_per_byte == pytest.approx(want.bits_per_byte, rel=1e-12)
    with pytest.raises(DataError, match="no split"):
        split_perplexity(model, tmp_path, "test")


def test_a_model_that_breaks_the_contract() -> None:
    class Flat(torch.nn.Module):
        config = SimpleNamespace(vocab_size=5, context_length=8)

        def forward(self, ids: torch.Tensor, **_: object) -> torch.Tensor:
            return torch.zeros(ids.shape[0], 5)  # (B, V): no time axis

    with pytest.raises(CompatibilityError, match=r"\(B, T, vocab_size\)"):
        perplexity(Flat(), [1, 2, 3, 4])  # type: ignore[arg-type]
