from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from lego.layers import CausalSelfAttention, RotaryEmbedding, StaticKVCache, StaticLayerKVCache
from lego.layers.attention import BACKENDS
from lego.protocols import CompatibilityError, ConfigError, DataError, KVCache, LayerKVCache


def _layer(batch: int = 2, length: int = 8, heads: int = 3, dim: int = 4) -> StaticLayerKVCache:
    return StaticLayerKVCache(batch_size=batch, max_seq_len=length, n_kv_heads=heads, head_dim=dim)


def _model(layers: int = 3, batch: int = 2, length: int = 8) -> StaticKVCache:
    return StaticKVCache(
        n_layers=layers, batch_size=batch, max_seq_len=length, n_kv_heads=3, head_dim=4
    )


def _kv(batch: int, t: int, heads: int = 3, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, heads, t, dim), torch.randn(batch, heads, t, dim)


def test_satisfies_protocols() -> None:
    cache = _model()
    assert isinstance(cache, KVCache)
    assert isinstance(cache[0], LayerKVCache)
    assert isinstance(_layer(), LayerKVCache)


def test_update_writes_in_place_and_returns_views() -> None:
    cache = _layer()
    storage = cache.k_cache.data_ptr()
    k1, v1 = _kv(2, 3)
    keys, values = cache.update(k1, v1)
    assert keys.shape == values.shape == (2, 3, 3, 4)
    assert cache.seq_len == 3
    torch.testing.assert_close(keys, k1, rtol=0, atol=0)
    k2, v2 = _kv(2, 2)
    keys, values = cache.update(k2, v2)
    assert cache.seq_len == 5
    torch.testing.assert_close(keys, torch.cat([k1, k2], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(values, torch.cat([v1, v2], dim=2), rtol=0, atol=0)
    # no reallocation: the buffers are the same memory, the results views of them
    assert cache.k_cache.data_ptr() == storage
    assert keys.data_ptr() == storage
    assert keys._base is cache.k_cache


@given(sizes=st.lists(st.integers(0, 3), min_size=1, max_size=6))
@settings(max_examples=30, deadline=None)
def test_lengths_accumulate(sizes: list[int]) -> None:
    cache = _layer(batch=1, length=18)
    written = []
    for t in sizes:
        k, v = _kv(1, t)
        keys, _ = cache.update(k, v)
        written.append(k)
        assert cache.seq_len == sum(x.shape[2] for x in written)
        torch.testing.assert_close(keys, torch.cat(written, dim=2), rtol=0, atol=0)


def test_overflow_is_a_clear_error() -> None:
    cache = _layer(length=4)
    cache.update(*_kv(2, 3))
    with pytest.raises(DataError, match="max_seq_len 4") as info:
        cache.update(*_kv(2, 2))
    assert info.value.tensor == "k"
    assert cache.seq_len == 3  # the failed write changed nothing
    cache.update(*_kv(2, 1))
    assert cache.seq_len == 4


@pytest.mark.parametrize(
    ("k_shape", "v_shape", "tensor"),
    [
        ((1, 3, 2, 4), (1, 3, 2, 4), "k"),  # batch size
        ((2, 2, 2, 4), (2, 2, 2, 4), "k"),  # heads
        ((2, 3, 2, 5), (2, 3, 2, 5), "k"),  # head size
        ((2, 3, 2), (2, 3, 2), "k"),  # rank
        ((2, 3, 2, 4), (2, 3, 3, 4), "v"),  # lengths differ
    ],
)
def test_wrong_shapes(k_shape: tuple[int, ...], v_shape: tuple[int, ...], tensor: str) -> None:
    with pytest.raises(CompatibilityError) as info:
        _layer().update(torch.zeros(k_shape), torch.zeros(v_shape))
    assert info.value.tensor == tensor
    assert "(2, 3, T_new, 4)" in str(info.value)


def test_written_values_take_the_cache_dtype() -> None:
    cache = StaticLayerKVCache(
        batch_size=1, max_seq_len=4, n_kv_heads=1, head_dim=2, dtype=torch.bfloat16
    )
    keys, _ = cache.update(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    assert keys.dtype == torch.bfloat16


def test_reset_and_crop() -> None:
    cache = _layer()
    k, v = _kv(2, 6)
    cache.update(k, v)
    cache.crop(4)
    assert cache.seq_len == 4
    k2, v2 = _kv(2, 1)
    keys, _ = cache.update(k2, v2)  # overwrites slot 4
    torch.testing.assert_close(keys, torch.cat([k[:, :, :4], k2], dim=2), rtol=0, atol=0)
    cache.reset()
    assert cache.seq_len == 0
    keys, _ = cache.update(k2, v2)
    assert keys.shape[2] == 1
    with pytest.raises(ConfigError, match="holds 1"):
        cache.crop(2)
    with pytest.raises(ConfigError):
        cache.crop(-1)


def test_reorder_moves_and_repeats_rows() -> None:
    cache = _layer(batch=3)
    k, v = _kv(3, 5)
    cache.update(k, v)
    cache.reorder(torch.tensor([2, 2, 0]))
    keys, values = cache.k_cache[:, :, :5], cache.v_cache[:, :, :5]
    torch.testing.assert_close(keys, k[[2, 2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(values, v[[2, 2, 0]], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("indices", "error"),
    [
        (torch.tensor([0, 1, 1]), DataError),  # wrong length
        (torch.tensor([0.0, 1.0]), DataError),  # float
        (torch.tensor([0, 2]), DataError),  # out of range
        (torch.tensor([-1, 0]), DataError),  # negative
        ([0, 1], DataError),  # not a tensor
    ],
)
def test_bad_reorder_indices(indices: object, error: type[Exception]) -> None:
    cache = _model(batch=2)
    cache[0].update(*_kv(2, 1))
    with pytest.raises(error) as info:
        cache.reorder(indices)  # type: ignore[arg-type]
    assert getattr(info.value, "tensor", None) == "indices"


def test_model_cache_advances_layer_by_layer() -> None:
    cache = _model(layers=3)
    assert (len(cache), cache.seq_len, cache.max_seq_len, cache.batch_size) == (3, 0, 8, 2)
    # one forward of 4 tokens: the blocks update their layer in order
    for i in range(3):
        cache[i].update(*_kv(2, 4))
        assert cache[i].seq_len == 4
        # the common length stays the pre-forward length until the last layer has run
        assert cache.seq_len == (4 if i == 2 else 0)
    # an interrupted forward leaves the layers uneven; crop(seq_len) realigns them
    cache[0].update(*_kv(2, 1))
    assert cache.seq_len == 4
    cache.crop(cache.seq_len)
    assert [cache[i].seq_len for i in range(3)] == [4, 4, 4]
    with pytest.raises(ConfigError):
        cache.crop(5)


def test_model_cache_bookkeeping_acts_on_every_layer() -> None:
    cache = _model(layers=2, batch=2)
    ks = []
    for i in range(2):
        k, v = _kv(2, 3)
        cache[i].update(k, v)
        ks.append(k)
    cache.reorder(torch.tensor([1, 0]))
    for i in range(2):
        torch.testing.assert_close(cache[i].k_cache[:, :, :3], ks[i][[1, 0]], rtol=0, atol=0)
    cache.crop(1)
    assert [cache[i].seq_len for i in range(2)] == [1, 1]
    cache.reset()
    assert cache.seq_len == 0
    assert all(cache[i].seq_len == 0 for i in range(2))


def test_to_moves_every_layer_and_state_dict_is_empty() -> None:
    cache = _model(layers=2)
    cache.to(torch.float64)
    assert cache.dtype == torch.float64
    assert all(cache[i].k_cache.dtype == torch.float64 for i in range(2))
    assert cache.device == torch.device("cpu")
    assert cache.state_dict() == {}


def test_indexing_errors() -> None:
    cache = _model(layers=2)
    with pytest.raises(ConfigError, match="no layer 2"):
        cache[2]
    with pytest.raises(ConfigError):
        cache[-1]
    with pytest.raises(ConfigError):
        cache["0"]  # type: ignore[index]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_layers": 0},
        {"batch_size": 0},
        {"max_seq_len": -1},
        {"n_kv_heads": 1.5},
        {"head_dim": True},
    ],
)
def test_bad_sizes(kwargs: dict[str, object]) -> None:
    sizes: dict[str, object] = {
        "n_layers": 2,
        "batch_size": 1,
        "max_seq_len": 4,
        "n_kv_heads": 1,
        "head_dim": 2,
    }
    sizes.update(kwargs)
    with pytest.raises(ConfigError) as info:
        StaticKVCache(**sizes)  # type: ignore[arg-type]
    assert info.value.key == next(iter(kwargs))


def test_repr_shows_fill_level() -> None:
    cache = _model(layers=1)
    cache[0].update(*_kv(2, 3))
    assert "seq_len=3/8" in repr(cache)


def test_errors_pickle() -> None:
    with pytest.raises(DataError) as info:
        _layer(length=1).update(*_kv(2, 2))
    again = pickle.loads(pickle.dumps(info.value))
    assert again.tensor == "k"


# -- copy_rows / trim_front ------------------------------------------------------------


def _filled(layers: int, batch: int, length: int, t: int) -> tuple[StaticKVCache, list[Tensor]]:
    """A model cache with ``t`` random positions written in every layer; returns the keys."""
    cache = _model(layers=layers, batch=batch, length=length)
    keys = []
    for i in range(layers):
        k, v = _kv(batch, t)
        cache[i].update(k, v)
        keys.append(k)
    return cache, keys


def test_copy_rows_shares_a_prefill_prompt_major() -> None:
    source, keys = _filled(layers=2, batch=2, length=6, t=3)
    target = _model(layers=2, batch=6, length=10)
    target.copy_rows(source, rows=torch.arange(6), source_rows=torch.arange(2).repeat_interleave(3))
    assert target.seq_len == 3
    assert [target[i].seq_len for i in range(2)] == [3, 3]
    for i in range(2):
        for row in range(6):
            torch.testing.assert_close(
                target[i].k_cache[row, :, :3], keys[i][row // 3], rtol=0, atol=0
            )
            torch.testing.assert_close(
                target[i].v_cache[row, :, :3], source[i].v_cache[row // 3, :, :3], rtol=0, atol=0
            )
    # decoding continues from there: the next update lands at position 3
    k, v = _kv(6, 1)
    keys_now, _ = target[0].update(k, v)
    assert keys_now.shape[2] == 4
    torch.testing.assert_close(keys_now[:, :, 3:], k, rtol=0, atol=0)


def test_copy_rows_right_aligned_into_a_running_batch() -> None:
    batch, old = _filled(layers=2, batch=3, length=10, t=5)
    single, new = _filled(layers=2, batch=1, length=10, t=2)
    batch.copy_rows(single, rows=torch.tensor([1]), source_rows=torch.tensor([0]), start=3)
    assert batch.seq_len == 5  # max(5, 3 + 2)
    for i in range(2):
        torch.testing.assert_close(batch[i].k_cache[1, :, 3:5], new[i][0], rtol=0, atol=0)
        # positions not written keep their old values; the other rows are untouched
        torch.testing.assert_close(batch[i].k_cache[1, :, :3], old[i][1, :, :3], rtol=0, atol=0)
        torch.testing.assert_close(batch[i].k_cache[[0, 2], :, :5], old[i][[0, 2]], rtol=0, atol=0)


def test_copy_rows_can_grow_seq_len_and_copy_within_one_cache() -> None:
    cache, keys = _filled(layers=1, batch=2, length=8, t=2)
    cache.copy_rows(cache, rows=torch.tensor([1, 0]), source_rows=torch.tensor([0, 1]), start=3)
    assert cache.seq_len == 5
    torch.testing.assert_close(cache[0].k_cache[1, :, 3:5], keys[0][0], rtol=0, atol=0)
    torch.testing.assert_close(cache[0].k_cache[0, :, 3:5], keys[0][1], rtol=0, atol=0)


def test_copy_rows_of_an_empty_source_or_no_rows() -> None:
    cache, keys = _filled(layers=1, batch=2, length=8, t=3)
    empty = _model(layers=1, batch=1, length=8)
    cache.copy_rows(empty, rows=torch.tensor([0]), source_rows=torch.tensor([0]))
    assert cache.seq_len == 3
    other, _ = _filled(layers=1, batch=1, length=8, t=4)
    cache.copy_rows(
        other,
        rows=torch.tensor([], dtype=torch.long),
        source_rows=torch.tensor([], dtype=torch.long),
    )
    assert cache.seq_len == 4  # max(3, 0 + 4), nothing written
    torch.testing.assert_close(cache[0].k_cache[:, :, :3], keys[0], rtol=0, atol=0)


def test_copy_rows_of_a_span_moves_packed_prompts_to_rows_of_their_own() -> None:
    packed, keys = _filled(layers=2, batch=1, length=10, t=7)  # prompts of 3 and 4 positions
    rows = _model(layers=2, batch=2, length=10)
    rows.copy_rows(packed, rows=torch.tensor([1]), source_rows=torch.tensor([0]), start=2, length=3)
    rows.copy_rows(
        packed, rows=torch.tensor([0]), source_rows=torch.tensor([0]), start=1, source_start=3
    )  # to the end: 4 positions
    assert rows.seq_len == 5
    for i in range(2):
        torch.testing.assert_close(rows[i].k_cache[1, :, 2:5], keys[i][0, :, :3], rtol=0, atol=0)
        torch.testing.assert_close(rows[i].k_cache[0, :, 1:5], keys[i][0, :, 3:7], rtol=0, atol=0)
        torch.testing.assert_close(
            rows[i].v_cache[0, :, 1:5], packed[i].v_cache[0, :, 3:7], rtol=0, atol=0
        )
    layer = _layer(batch=1, length=8)
    layer.copy_rows(
        packed[0], rows=torch.tensor([0]), source_rows=torch.tensor([0]), source_start=5
    )
    assert layer.seq_len == 2
    torch.testing.assert_close(layer.k_cache[0, :, :2], keys[0][0, :, 5:7], rtol=0, atol=0)


def test_layer_copy_rows() -> None:
    source = _layer(batch=1, length=4)
    k, v = _kv(1, 2)
    source.update(k, v)
    target = _layer(batch=3, length=8)
    target.copy_rows(source, rows=torch.tensor([2, 0]), source_rows=torch.tensor([0, 0]), start=1)
    assert target.seq_len == 3
    for row in (0, 2):
        torch.testing.assert_close(target.k_cache[row, :, 1:3], k[0], rtol=0, atol=0)
        torch.testing.assert_close(target.v_cache[row, :, 1:3], v[0], rtol=0, atol=0)
    assert bool((target.k_cache[1] == 0).all())


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"rows": [0], "source_rows": torch.tensor([0])}, "rows"),  # not a tensor
        ({"rows": torch.tensor([[0]]), "source_rows": torch.tensor([0])}, "rows"),  # 2-D
        ({"rows": torch.tensor([0.0]), "source_rows": torch.tensor([0])}, "rows"),  # float
        ({"rows": torch.tensor([3]), "source_rows": torch.tensor([0])}, "rows"),  # range
        ({"rows": torch.tensor([-1]), "source_rows": torch.tensor([0])}, "rows"),  # negative
        ({"rows": torch.tensor([0]), "source_rows": torch.tensor([2])}, "source_rows"),
        ({"rows": torch.tensor([0]), "source_rows": torch.tensor([True])}, "source_rows"),
        ({"rows": torch.tensor([0, 1]), "source_rows": torch.tensor([0])}, "source_rows"),
        ({"rows": torch.tensor([1, 1]), "source_rows": torch.tensor([0, 1])}, "rows"),  # twice
        ({"rows": torch.tensor([0]), "source_rows": torch.tensor([0]), "start": -1}, "start"),
        ({"rows": torch.tensor([0]), "source_rows": torch.tensor([0]), "start": 7}, "start"),
        ({"rows": torch.tensor([0]), "source_rows": torch.tensor([0]), "start": 1.0}, "start"),
        (
            {"rows": torch.tensor([0]), "source_rows": torch.tensor([0]), "source_start": 3},
            "source_start",
        ),
        (
            {"rows": torch.tensor([0]), "source_rows": torch.tensor([0]), "source_start": -1},
            "source_start",
        ),
        ({"rows": torch.tensor([0]), "source_rows": torch.tensor([0]), "length": 3}, "length"),
        (
            {
                "rows": torch.tensor([0]),
                "source_rows": torch.tensor([0]),
                "source_start": 1,
                "length": 2,
            },
            "length",
        ),
        ({"rows": torch.tensor([0]), "source_rows": torch.tensor([0]), "length": -1}, "length"),
    ],
)
def test_copy_rows_bad_arguments(kwargs: dict[str, object], key: str) -> None:
    target, keys = _filled(layers=2, batch=3, length=8, t=1)
    source, _ = _filled(layers=2, batch=2, length=8, t=2)
    with pytest.raises(ConfigError) as info:
        target.copy_rows(source, **kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
    assert target.seq_len == 1  # nothing changed
    torch.testing.assert_close(target[0].k_cache[:, :, :1], keys[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    "source",
    [
        StaticKVCache(n_layers=3, batch_size=1, max_seq_len=4, n_kv_heads=3, head_dim=4),
        StaticKVCache(n_layers=2, batch_size=1, max_seq_len=4, n_kv_heads=2, head_dim=4),
        StaticKVCache(n_layers=2, batch_size=1, max_seq_len=4, n_kv_heads=3, head_dim=5),
        StaticKVCache(
            n_layers=2, batch_size=1, max_seq_len=4, n_kv_heads=3, head_dim=4, dtype=torch.float64
        ),
        "a cache",
    ],
    ids=["layers", "heads", "head_dim", "dtype", "kind"],
)
def test_copy_rows_incompatible_source(source: object) -> None:
    target = _model(layers=2, batch=2, length=8)
    with pytest.raises(CompatibilityError) as info:
        target.copy_rows(source, rows=torch.tensor([0]), source_rows=torch.tensor([0]))  # type: ignore[arg-type]
    assert info.value.tensor == "source"
    assert target.seq_len == 0


def test_layer_copy_rows_incompatible_source() -> None:
    with pytest.raises(CompatibilityError, match="head_dim"):
        _layer().copy_rows(_layer(dim=5), rows=torch.tensor([0]), source_rows=torch.tensor([0]))


def test_trim_front_moves_every_row_and_layer() -> None:
    cache, keys = _filled(layers=2, batch=2, length=8, t=6)
    values = [cache[i].v_cache[:, :, :6].clone() for i in range(2)]
    cache.trim_front(4)  # overlapping ranges are not an issue
    assert cache.seq_len == 2
    for i in range(2):
        torch.testing.assert_close(cache[i].k_cache[:, :, :2], keys[i][:, :, 4:], rtol=0, atol=0)
        torch.testing.assert_close(cache[i].v_cache[:, :, :2], values[i][:, :, 4:], rtol=0, atol=0)
    cache.trim_front(0)
    assert cache.seq_len == 2
    cache.trim_front(2)
    assert cache.seq_len == 0


def test_trim_front_overlapping_and_layer_level() -> None:
    layer = _layer(batch=1, length=8)
    k, v = _kv(1, 5)
    layer.update(k, v)
    layer.trim_front(1)  # kept (4) > count (1): the source and destination overlap
    assert layer.seq_len == 4
    torch.testing.assert_close(layer.k_cache[:, :, :4], k[:, :, 1:], rtol=0, atol=0)
    k2, _ = _kv(1, 1)
    keys, _ = layer.update(k2, k2)
    torch.testing.assert_close(keys, torch.cat([k[:, :, 1:], k2], dim=2), rtol=0, atol=0)


def test_trim_front_realigns_uneven_layers() -> None:
    cache, keys = _filled(layers=2, batch=1, length=8, t=3)
    cache[0].update(*_kv(1, 1))  # an interrupted forward
    cache.trim_front(1)
    assert [cache[i].seq_len for i in range(2)] == [2, 2]
    torch.testing.assert_close(cache[0].k_cache[:, :, :2], keys[0][:, :, 1:], rtol=0, atol=0)


@pytest.mark.parametrize("count", [-1, 4, 1.0, True])
def test_trim_front_bad_count(count: object) -> None:
    cache, _ = _filled(layers=1, batch=1, length=8, t=3)
    with pytest.raises(ConfigError) as info:
        cache.trim_front(count)  # type: ignore[arg-type]
    assert info.value.key == "count"
    assert cache.seq_len == 3
    with pytest.raises(ConfigError):
        cache[0].trim_front(count)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_joined_with_copy_rows_and_trimmed_decode_as_alone(backend: str) -> None:
    """Continuous batching on real attention: prefill alone, join right-aligned, trim."""
    torch.manual_seed(0)
    attn = CausalSelfAttention.build(
        d_model=32, n_heads=4, n_kv_heads=2, backend=backend, rotary=RotaryEmbedding(head_dim=8)
    ).eval()
    lengths, new = [5, 6], 3
    seqs = [torch.randn(1, n + new, 32) for n in lengths]
    alone = [attn(s) for s in seqs]  # the truth: each row by itself, no cache
    batch = StaticKVCache(n_layers=1, batch_size=2, max_seq_len=16, n_kv_heads=2, head_dim=8)
    width = 8  # the running batch's length when the rows join
    mask = torch.zeros(2, 16, dtype=torch.long)
    for row, (n, s) in enumerate(zip(lengths, seqs, strict=True)):
        single = StaticKVCache(n_layers=1, batch_size=1, max_seq_len=8, n_kv_heads=2, head_dim=8)
        prefill = attn(s[:, :n], kv_cache=single[0])  # prefilled alone
        torch.testing.assert_close(prefill, alone[row][:, :n])
        batch.copy_rows(
            single, rows=torch.tensor([row]), source_rows=torch.tensor([0]), start=width - n
        )
        mask[row, width - n : width] = 1
    assert batch.seq_len == width
    # every row has at least 2 leading padding columns: reclaim them
    batch.trim_front(2)
    mask = torch.cat([mask[:, 2:], torch.zeros(2, 2, dtype=torch.long)], dim=1)
    length = width - 2
    for i in range(new):
        token = torch.stack([s[0, n + i] for n, s in zip(lengths, seqs, strict=True)])[:, None]
        mask[:, length] = 1
        positions = torch.tensor([[n + i] for n in lengths])  # (2, 1)
        out = attn(
            token, attention_mask=mask[:, : length + 1], position_ids=positions, kv_cache=batch[0]
        )
        length += 1
        for row, n in enumerate(lengths):
            torch.testing.assert_close(out[row, 0], alone[row][0, n + i], rtol=1e-5, atol=1e-5)
    assert batch.seq_len == length
