"""A tiny causal LM with its own KV cache (lego-arch is not installed in unit tests)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lego.generate.native import build, unavailable
from lego.protocols import native as protocols_native

VOCAB = 40


@dataclass(frozen=True)
class TinyConfig:
    """What ModelConfigLike asks for."""

    vocab_size: int = VOCAB
    context_length: int = 64
    d_model: int = 16
    n_layers: int = 2

    def to_dict(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "context_length": self.context_length}


class LayerCache:
    """Keys and values of one layer, preallocated."""

    def __init__(self, batch: int, max_len: int, dim: int) -> None:
        self.k = torch.zeros(batch, max_len, dim)
        self.v = torch.zeros(batch, max_len, dim)
        self.seq_len = 0
        self.max_seq_len = max_len

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = self.seq_len + k.shape[1]
        self.k[:, self.seq_len : end] = k
        self.v[:, self.seq_len : end] = v
        self.seq_len = end
        return self.k[:, :end], self.v[:, :end]


class TinyCache:
    """Satisfies lego.protocols.KVCache."""

    def __init__(self, layers: int, batch: int, max_len: int, dim: int) -> None:
        self.layers = [LayerCache(batch, max_len, dim) for _ in range(layers)]
        self.crops: list[int] = []
        self.copies: list[tuple[list[int], list[int], int]] = []

    @property
    def seq_len(self) -> int:
        return min(layer.seq_len for layer in self.layers)

    @property
    def max_seq_len(self) -> int:
        return self.layers[0].max_seq_len

    @property
    def batch_size(self) -> int:
        return int(self.layers[0].k.shape[0])

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]

    def reset(self) -> None:
        for layer in self.layers:
            layer.seq_len = 0

    def crop(self, length: int) -> None:
        self.crops.append(length)
        for layer in self.layers:
            layer.seq_len = length

    def reorder(self, indices: Tensor) -> None:
        for layer in self.layers:
            layer.k = layer.k.index_select(0, indices)
            layer.v = layer.v.index_select(0, indices)

    def copy_rows(
        self, source: TinyCache, *, rows: Tensor, source_rows: Tensor, start: int = 0
    ) -> None:
        self.copies.append((rows.tolist(), source_rows.tolist(), start))
        length = source.seq_len
        for mine, theirs in zip(self.layers, source.layers, strict=True):
            mine.k[rows, start : start + length] = theirs.k[source_rows, :length]
            mine.v[rows, start : start + length] = theirs.v[source_rows, :length]
            mine.seq_len = max(mine.seq_len, start + length)

    def trim_front(self, count: int) -> None:
        for layer in self.layers:
            kept = layer.seq_len - count
            layer.k[:, :kept] = layer.k[:, count : layer.seq_len].clone()
            layer.v[:, :kept] = layer.v[:, count : layer.seq_len].clone()
            layer.seq_len = kept


class TinyLM(nn.Module):
    """Token + position embeddings, ``n_layers`` single-head causal attention layers, a head."""

    def __init__(self, config: TinyConfig | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self._config = config or TinyConfig()
        c = self._config
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(torch.randn(c.vocab_size, c.d_model, generator=gen))
        self.pos = nn.Parameter(torch.randn(c.context_length, c.d_model, generator=gen) * 0.5)
        self.qkv = nn.ParameterList(
            nn.Parameter(torch.randn(c.d_model, 3 * c.d_model, generator=gen) / 4)
            for _ in range(c.n_layers)
        )
        self.head = nn.Parameter(torch.randn(c.d_model, c.vocab_size, generator=gen))
        self.calls: list[tuple[int, int]] = []
        self.caches: list[TinyCache] = []

    @property
    def config(self) -> TinyConfig:
        return self._config

    def new_kv_cache(
        self, batch_size: int, max_seq_len: int, *, dtype: Any = None, device: Any = None
    ) -> TinyCache:
        cache = TinyCache(self._config.n_layers, batch_size, max_seq_len, self._config.d_model)
        self.caches.append(cache)
        return cache

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: TinyCache | None = None,
    ) -> Tensor:
        b, t = input_ids.shape
        self.calls.append((int(b), int(t)))
        past = kv_cache.seq_len if kv_cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t)[None].expand(b, t)  # (B, T)
        x = self.embed[input_ids] + self.pos[position_ids]  # (B, T, D)
        s = past + t
        causal = torch.ones(t, s, dtype=torch.bool).tril(diagonal=past)  # (T, S)
        allowed = causal[None].expand(b, t, s)  # (B, T, S)
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, :]
            allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        for i, weight in enumerate(self.qkv):
            q, k, v = (x @ weight).chunk(3, dim=-1)  # (B, T, D) each
            if kv_cache is not None:
                k, v = kv_cache[i].update(k, v)  # (B, S, D)
            att = (q @ k.transpose(1, 2)) / math.sqrt(x.shape[-1])  # (B, T, S)
            att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            x = x + torch.tanh(att @ v)  # (B, T, D)
        return x @ self.head  # (B, T, V)


class PlainLM(nn.Module):
    """The same network without ``new_kv_cache``: a plain CausalLM."""

    def __init__(self, inner: TinyLM) -> None:
        super().__init__()
        self.inner = inner

    @property
    def config(self) -> TinyConfig:
        return self.inner.config

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: Any = None,
    ) -> Tensor:
        return self.inner(input_ids, attention_mask=attention_mask, position_ids=position_ids)


class ByteTokenizer:
    """Ids 0..255 are bytes (modulo the vocabulary in the tiny model), plus specials."""

    def __init__(self, specials: dict[str, int] | None = None) -> None:
        self._specials = dict(specials or {})

    @property
    def vocab_size(self) -> int:
        return 256 + len(self._specials)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        inverse = {v: k for k, v in self._specials.items()}
        out = bytearray()
        for i in ids:
            out += inverse[i].encode() if i in inverse else bytes([i % 256])
        return out.decode("utf-8", errors="replace")


@pytest.fixture(autouse=True, scope="session")
def _kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Build the native kernels into a temporary folder, not the user's cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LEGO_KERNELS_HOME", str(tmp_path_factory.mktemp("kernels")))
    patch.setattr(protocols_native, "_loaded", {})  # no load of an earlier cache folder
    build._load.cache_clear()
    yield
    patch.undo()
    build._load.cache_clear()


@pytest.fixture
def fresh_warnings() -> Iterator[None]:
    """Forget which NativeKernelsUnavailableWarning reasons were given (once per process)."""
    unavailable._warned.clear()
    yield
    unavailable._warned.clear()


@pytest.fixture
def model() -> TinyLM:
    return TinyLM().eval()


@pytest.fixture
def plain(model: TinyLM) -> PlainLM:
    return PlainLM(model).eval()


class BytesTokenizer(ByteTokenizer):
    """Adds decode_bytes, as lego-tokenize's byte-level BPE has."""

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return bytes(i % 256 for i in ids)


@dataclass(frozen=True)
class Kit:
    """The test classes, handed out as a fixture (conftest is not importable by tests)."""

    TinyLM: type[TinyLM] = TinyLM
    TinyCache: type[TinyCache] = TinyCache
    TinyConfig: type[TinyConfig] = TinyConfig
    PlainLM: type[PlainLM] = PlainLM
    ByteTokenizer: type[ByteTokenizer] = ByteTokenizer
    BytesTokenizer: type[BytesTokenizer] = BytesTokenizer


@pytest.fixture(scope="session")
def kit() -> Kit:
    return Kit()
