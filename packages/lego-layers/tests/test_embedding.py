from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from lego.layers import LearnedPositionalEmbedding, SinusoidalPositionalEmbedding, TokenEmbedding
from lego.layers.embedding import sinusoidal_table
from lego.protocols import ConfigError, DataError, PositionalEncoding

# --- token embedding ---------------------------------------------------------------------


def test_token_embedding_looks_rows_up() -> None:
    emb = TokenEmbedding(vocab_size=11, d_model=4)
    ids = torch.tensor([[0, 3, 10], [5, 5, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 4)
    assert torch.equal(out[0, 1], emb.weight[3])
    assert torch.equal(out[1, 0], out[1, 1])
    assert emb.vocab_size == 11
    assert emb.d_model == 4
    assert isinstance(emb, torch.nn.Embedding)
    assert list(emb.state_dict()) == ["weight"]


def test_token_embedding_padding_row_is_zero_and_gets_no_gradient() -> None:
    emb = TokenEmbedding(vocab_size=5, d_model=3, padding_idx=0)
    assert torch.equal(emb.weight[0], torch.zeros(3))
    emb(torch.tensor([[0, 1, 0]])).sum().backward()
    assert emb.weight.grad is not None
    assert torch.equal(emb.weight.grad[0], torch.zeros(3))
    assert emb.weight.grad[1].abs().sum() > 0


@pytest.mark.parametrize("bad", [11, 12, -1])
def test_token_embedding_names_out_of_range_ids(bad: int) -> None:
    emb = TokenEmbedding(vocab_size=11, d_model=4)
    with pytest.raises(DataError, match=rf"token id {bad} is out of range .* 11 ids") as info:
        emb(torch.tensor([[1, bad, 2]]))
    assert info.value.tensor == "input_ids"


def test_token_embedding_without_check_uses_torch_errors() -> None:
    emb = TokenEmbedding(vocab_size=4, d_model=2, check_ids=False)
    with pytest.raises(IndexError):
        emb(torch.tensor([4]))


def test_token_embedding_refuses_float_ids() -> None:
    with pytest.raises(DataError, match="integer tensor"):
        TokenEmbedding(vocab_size=4, d_model=2)(torch.tensor([1.0]))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"vocab_size": 0, "d_model": 4}, "vocab_size"),
        ({"vocab_size": 4, "d_model": 0}, "d_model"),
        ({"vocab_size": 4, "d_model": 2, "padding_idx": 4}, "padding_idx"),
        ({"vocab_size": 4, "d_model": 2, "padding_idx": -1}, "padding_idx"),
    ],
)
def test_token_embedding_bad_config(kwargs: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        TokenEmbedding(**kwargs)
    assert info.value.key == key


# --- learned positions -------------------------------------------------------------------


def test_learned_positions_satisfy_the_protocol() -> None:
    assert isinstance(LearnedPositionalEmbedding(max_seq_len=8, d_model=4), PositionalEncoding)
    assert isinstance(SinusoidalPositionalEmbedding(max_seq_len=8, d_model=4), PositionalEncoding)


def test_learned_positions_add_the_table_rows(dtype: torch.dtype) -> None:
    pos = LearnedPositionalEmbedding(max_seq_len=8, d_model=4)
    x = torch.randn(2, 5, 4).to(dtype)
    y = pos(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, x + pos.weight[:5].to(dtype))


def test_learned_positions_explicit_offsets_equal_slicing() -> None:
    pos = LearnedPositionalEmbedding(max_seq_len=16, d_model=4)
    x = torch.randn(2, 10, 4)
    full = pos(x)
    tail = pos(x[:, 6:], position_ids=torch.arange(6, 10))
    torch.testing.assert_close(tail, full[:, 6:])
    per_row = pos(x[:, 6:], position_ids=torch.arange(6, 10).expand(2, 4))
    torch.testing.assert_close(per_row, full[:, 6:])


def test_learned_positions_per_row_ids() -> None:
    pos = LearnedPositionalEmbedding(max_seq_len=8, d_model=3)
    x = torch.zeros(2, 3, 3)
    ids = torch.tensor([[0, 1, 2], [0, 0, 1]])  # second row left-padded by one
    y = pos(x, position_ids=ids)
    assert torch.equal(y[1, 0], pos.weight[0].detach())
    assert torch.equal(y[1, 2], pos.weight[1].detach())


def test_learned_positions_error_names_the_id_and_the_limit() -> None:
    pos = LearnedPositionalEmbedding(max_seq_len=8, d_model=4)
    with pytest.raises(DataError, match=r"position id 9 .* 8 positions \(0\.\.7\)"):
        pos(torch.randn(1, 2, 4), position_ids=torch.tensor([8, 9]))
    with pytest.raises(DataError, match=r"9 tokens needs position id 8"):
        pos(torch.randn(1, 9, 4))
    with pytest.raises(DataError, match=">= 0"):
        pos(torch.randn(1, 2, 4), position_ids=torch.tensor([-1, 0]))


def test_learned_positions_shape_errors() -> None:
    pos = LearnedPositionalEmbedding(max_seq_len=8, d_model=4)
    with pytest.raises(DataError, match="position_ids must have shape"):
        pos(torch.randn(1, 3, 4), position_ids=torch.arange(2))
    with pytest.raises(DataError, match=r"\(B, T, d_model\)"):
        pos(torch.randn(3, 4))


# --- sinusoidal positions ----------------------------------------------------------------


def test_sinusoidal_table_matches_the_paper() -> None:
    d = 6
    table = sinusoidal_table(50, d)
    for p in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert table.dtype == torch.float32


def test_sinusoidal_positions_grow_on_demand(assert_close: Callable[..., None]) -> None:
    pos = SinusoidalPositionalEmbedding(max_seq_len=4, d_model=8)
    assert pos.table.shape[0] == 4
    x = torch.zeros(1, 10, 8)
    y = pos(x)
    assert pos.table.shape[0] >= 10
    assert_close(y[0], sinusoidal_table(10, 8))
    z = pos(torch.zeros(1, 2, 8), position_ids=torch.tensor([[30, 31]]))
    assert pos.table.shape[0] >= 32
    assert_close(z[0], sinusoidal_table(32, 8)[30:32])
    assert "table" not in pos.state_dict()


def test_sinusoidal_offsets_equal_slicing(dtype: torch.dtype) -> None:
    pos = SinusoidalPositionalEmbedding(max_seq_len=16, d_model=8)
    x = torch.randn(2, 12, 8).to(dtype)
    full = pos(x)
    tail = pos(x[:, 5:], position_ids=torch.arange(5, 12))
    assert tail.dtype == dtype
    torch.testing.assert_close(tail, full[:, 5:])


def test_sinusoidal_table_rebuilt_in_fp32_after_a_dtype_cast() -> None:
    pos = SinusoidalPositionalEmbedding(max_seq_len=8, d_model=4).to(torch.bfloat16)
    assert pos.table.dtype == torch.bfloat16  # Module.to casts float buffers
    pos(torch.zeros(1, 3, 4, dtype=torch.bfloat16))
    assert pos.table.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_seq_len": 8, "d_model": 5}, "d_model"),
        ({"max_seq_len": 0, "d_model": 4}, "max_seq_len"),
        ({"max_seq_len": 8, "d_model": 4, "base": 0.0}, "base"),
    ],
)
def test_sinusoidal_bad_config(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SinusoidalPositionalEmbedding(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_learned_bad_config() -> None:
    with pytest.raises(ConfigError, match="max_seq_len must be at least 1, got 0"):
        LearnedPositionalEmbedding(max_seq_len=0, d_model=4)
