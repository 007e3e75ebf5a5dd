"""Token embeddings and absolute position embeddings (learned and sinusoidal).

[`TokenEmbedding`][lego.layers.TokenEmbedding] maps ids to vectors. The two absolute
position embeddings satisfy [`PositionalEncoding`][lego.protocols.PositionalEncoding]:
``pos(x, position_ids=...)`` returns ``x + P[position_ids]`` for ``x`` of shape
``(B, T, d_model)``.

Checking ids costs a host synchronization. On the CPU it is free in practice; on CUDA it
stalls the launch queue once per call, which matters for decoding loops under CUDA graphs
or ``torch.compile``. The token table and the learned position table take ``check_ids``
(default True): keep it on while developing and turn it off where ids are known to be in
range. Without the check an out-of-range id fails inside ``torch.nn.functional.embedding``
(an ``IndexError`` on the CPU, a device-side assert on CUDA). When ``position_ids`` is
None, no check and no sync happen: the length ``T`` is known on the host. The sinusoidal
table always reads the largest explicit position back, because it grows to fit it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from lego.layers._tensor_checks import check_dim, check_position_range
from lego.protocols import ConfigError, DataError, check_float, check_int

__all__ = ["TokenEmbedding", "LearnedPositionalEmbedding", "SinusoidalPositionalEmbedding"]


class TokenEmbedding(nn.Embedding):
    """A token embedding table: an ``nn.Embedding`` with a keyword-only constructor and id checks.

    It is a subclass of ``torch.nn.Embedding``, so the parameter is ``weight`` of shape
    ``(vocab_size, d_model)`` (transformers' ``wte.weight`` / ``embed_tokens.weight``) and
    weight tying (``lm_head.weight = embedding.weight``) works as usual.

    Args:
        vocab_size: Number of ids.
        d_model: Width of each vector.
        padding_idx: An id whose vector stays zero and gets no gradient, or None.
        check_ids: Check that ids lie in ``[0, vocab_size)`` on every call (one host sync)
            and raise a [`DataError`][lego.protocols.DataError] that names the bad id.

    Raises:
        ConfigError: ``vocab_size < 1``, ``d_model < 1`` or a ``padding_idx`` out of range.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int,
        padding_idx: int | None = None,
        check_ids: bool = True,
    ) -> None:
        check_int("vocab_size", vocab_size, minimum=1, owner="TokenEmbedding")
        check_int("d_model", d_model, minimum=1, owner="TokenEmbedding")
        if padding_idx is not None:
            check_int("padding_idx", padding_idx, minimum=0, owner="TokenEmbedding")
            if padding_idx >= vocab_size:
                raise ConfigError(
                    f"TokenEmbedding: padding_idx {padding_idx} is not an id "
                    f"(vocab_size is {vocab_size})",
                    key="padding_idx",
                    hint=f"pass an id in 0..{vocab_size - 1} or None",
                )
        super().__init__(vocab_size, d_model, padding_idx=padding_idx)
        self.check_ids = check_ids

    @property
    def vocab_size(self) -> int:
        """Number of ids (``num_embeddings``)."""
        return self.num_embeddings

    @property
    def d_model(self) -> int:
        """Width of each vector (``embedding_dim``)."""
        return self.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Look the ids up.

        Args:
            input_ids: Token ids, shape ``(B, T)`` (any shape works), an integer dtype.

        Returns:
            Vectors, shape ``(B, T, d_model)``, the dtype of ``weight``.

        Raises:
            DataError: ``check_ids`` is on and an id is negative or ``>= vocab_size``, or
                ``input_ids`` is not an integer tensor.
        """
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex:
            raise DataError(
                f"TokenEmbedding: input_ids must be an integer tensor, got {input_ids.dtype}",
                tensor="input_ids",
                hint="pass torch.long token ids",
            )
        # The range check reads the ids back (a sync); a compiled graph skips it.
        if self.check_ids and input_ids.numel() > 0 and not torch.compiler.is_compiling():
            low, high = (int(v) for v in torch.stack(torch.aminmax(input_ids)).tolist())
            if low < 0 or high >= self.num_embeddings:
                bad = low if low < 0 else high
                raise DataError(
                    f"TokenEmbedding: token id {bad} is out of range for a vocabulary of "
                    f"{self.num_embeddings} ids (0..{self.num_embeddings - 1})",
                    tensor="input_ids",
                    hint="check that the tokenizer and the model agree on vocab_size",
                )
        return F.embedding(input_ids, self.weight, self.padding_idx)  # (B, T, d_model)


class LearnedPositionalEmbedding(nn.Module):
    """A learned absolute position table added to the input (GPT-2's ``wpe``).

    Args:
        max_seq_len: Number of positions (GPT-2: 1024). Positions ``>= max_seq_len`` are an
            error: a learned table cannot grow.
        d_model: Width of each vector.
        check_ids: Check explicit ``position_ids`` against the table on every call (one host
            sync; see the module notes).

    Attributes:
        weight: The table, shape ``(max_seq_len, d_model)``.

    Raises:
        ConfigError: ``max_seq_len < 1`` or ``d_model < 1``.
    """

    def __init__(self, *, max_seq_len: int, d_model: int, check_ids: bool = True) -> None:
        super().__init__()
        owner = "LearnedPositionalEmbedding"
        self.max_seq_len = check_int("max_seq_len", max_seq_len, minimum=1, owner=owner)
        self.d_model = check_int("d_model", d_model, minimum=1, owner=owner)
        self.check_ids = check_ids
        self.weight = nn.Parameter(torch.empty(max_seq_len, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(
        self, x: torch.Tensor, /, *, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Add the position vectors to ``x``.

        Args:
            x: Token embeddings, shape ``(B, T, d_model)``.
            position_ids: Positions, ``(B, T)`` or ``(T,)``; None means ``arange(T)``.

        Returns:
            ``x + weight[position_ids]``, shape ``(B, T, d_model)``, dtype of ``x``.

        Raises:
            DataError: A wrong shape, or a position outside ``[0, max_seq_len)``.
        """
        owner = "LearnedPositionalEmbedding"
        check_dim(x, name="x", ndims=(3,), last=self.d_model, owner=owner, layout="(B, T, d_model)")
        seq_len = x.shape[1]
        if position_ids is None:
            if seq_len > self.max_seq_len:
                raise DataError(
                    f"{owner}: a sequence of {seq_len} tokens needs position id {seq_len - 1}, "
                    f"but this table has {self.max_seq_len} positions (0..{self.max_seq_len - 1})",
                    tensor="x",
                    hint="shorten the sequence or build the module with a larger max_seq_len",
                )
            pos = self.weight[:seq_len]  # (T, d_model)
        else:
            if self.check_ids and not torch.compiler.is_compiling():  # a sync; see above
                check_position_range(
                    position_ids, limit=self.max_seq_len, owner=owner, tensor_length=seq_len
                )
            pos = F.embedding(position_ids, self.weight)  # (B, T, d_model) or (T, d_model)
        return x + pos.to(x.dtype)  # (B, T, d_model)

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"max_seq_len={self.max_seq_len}, d_model={self.d_model}"


def sinusoidal_table(
    length: int, d_model: int, *, base: float = 10000.0, device: torch.device | None = None
) -> torch.Tensor:
    """Return the sinusoidal position table of "Attention Is All You Need", in fp32.

    ``P[p, 2i] = sin(p / base**(2i/d_model))`` and ``P[p, 2i+1] = cos(p / base**(2i/d_model))``
    (sines and cosines interleaved, as in the paper and in tensor2tensor's reference layout
    after its concatenation is undone).

    Args:
        length: Number of positions.
        d_model: Width, even.
        base: The wavelength base.
        device: Where to build the table.

    Returns:
        The table, shape ``(length, d_model)``, fp32.
    """
    positions = torch.arange(length, dtype=torch.float64, device=device)  # (L,)
    exponents = torch.arange(0, d_model, 2, dtype=torch.float64, device=device) / d_model
    inv_freq = base ** (-exponents)  # (d_model/2,)
    angles = positions[:, None] * inv_freq[None, :]  # (L, d_model/2)
    table = torch.empty(length, d_model, dtype=torch.float64, device=device)  # (L, d_model)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.to(torch.float32)


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal absolute positions added to the input (the original transformer).

    The table is a non-persistent fp32 buffer (not in ``state_dict``; ``.to(device)`` moves
    it). It starts with ``max_seq_len`` rows and is rebuilt, twice as long or to the needed
    length, whenever a position beyond it is asked for, so there is no hard limit. The
    angles are computed in float64 before the fp32 cast, so far positions stay exact to fp32
    precision.

    Args:
        max_seq_len: Initial number of positions in the table.
        d_model: Width, even.
        base: The wavelength base (10000 in the paper).

    Explicit ``position_ids`` always cost one host sync: the largest id decides whether the
    table must grow (negative ids are refused at the same time).

    Raises:
        ConfigError: ``max_seq_len < 1``, ``d_model`` odd or < 2, or ``base <= 0``.
    """

    table: torch.Tensor

    def __init__(self, *, max_seq_len: int, d_model: int, base: float = 10000.0) -> None:
        super().__init__()
        owner = "SinusoidalPositionalEmbedding"
        self.max_seq_len = check_int("max_seq_len", max_seq_len, minimum=1, owner=owner)
        self.d_model = check_int("d_model", d_model, minimum=2, owner=owner)
        if d_model % 2:
            raise ConfigError(
                f"{owner}: d_model must be even (sines and cosines in pairs), got {d_model}",
                key="d_model",
                hint=f"use d_model={d_model + 1} or {d_model - 1}",
            )
        self.base = check_float("base", base, low=0.0, low_open=True, owner=owner)
        self.register_buffer(
            "table", sinusoidal_table(max_seq_len, d_model, base=base), persistent=False
        )

    def _ensure(self, length: int, device: torch.device) -> torch.Tensor:
        """Return a table of at least ``length`` rows on ``device``, rebuilding it if needed."""
        table = self.table
        if table.shape[0] < length or table.dtype != torch.float32 or table.device != device:
            rows = table.shape[0] if table.shape[0] >= length else max(length, 2 * table.shape[0])
            self.table = sinusoidal_table(rows, self.d_model, base=self.base, device=device)
        return self.table

    def forward(
        self, x: torch.Tensor, /, *, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Add the position vectors to ``x``.

        Args:
            x: Token embeddings, shape ``(B, T, d_model)``.
            position_ids: Positions, ``(B, T)`` or ``(T,)``; None means ``arange(T)``.

        Returns:
            ``x + P[position_ids]``, shape ``(B, T, d_model)``, dtype of ``x``.

        Raises:
            DataError: A wrong shape or a negative position.
        """
        owner = "SinusoidalPositionalEmbedding"
        check_dim(x, name="x", ndims=(3,), last=self.d_model, owner=owner, layout="(B, T, d_model)")
        seq_len = x.shape[1]
        if position_ids is None:
            pos = self._ensure(seq_len, x.device)[:seq_len]  # (T, d_model)
        else:
            high = check_position_range(
                position_ids, limit=None, owner=owner, tensor_length=seq_len
            )
            table = self._ensure(high + 1, x.device)  # (L, d_model)
            pos = F.embedding(position_ids, table)  # (B, T, d_model) or (T, d_model)
        return x + pos.to(x.dtype)  # (B, T, d_model)

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"d_model={self.d_model}, base={self.base}, cached={self.table.shape[0]}"
