"""Rotary position embeddings (RoPE) for per-head queries and keys.

[`RotaryEmbedding`][lego.layers.RotaryEmbedding] satisfies
[`PositionalEncoding`][lego.protocols.PositionalEncoding] on ``(B, n_heads, T, head_dim)``:
position ``p`` rotates each pair of dimensions ``(a_i, b_i)`` by the angle ``p * theta_i``::

    a' = a cos(p theta_i) - b sin(p theta_i)
    b' = b cos(p theta_i) + a sin(p theta_i)

so the dot product of a query at ``m`` with a key at ``n`` depends only on ``m - n``. Which
dimensions form a pair is a layout convention that must match the checkpoint:

- half-split (default; transformers' ``rotate_half``, GPT-NeoX, LLaMA and Qwen on the Hub):
  pair ``i`` is ``(x[i], x[i + r/2])``;
- interleaved (GPT-J, Meta's original LLaMA code): pair ``i`` is ``(x[2i], x[2i + 1])``.

With ``rotary_dim < head_dim`` (partial rotary: GPT-NeoX, Phi) only the first ``rotary_dim``
dimensions rotate; the rest pass through.
"""

from __future__ import annotations

import torch
from torch import nn

from lego.layers._tensor_checks import check_dim, check_position_range
from lego.layers.rope_scaling import DynamicNTKScaling, RopeScaling, rope_inverse_frequencies
from lego.protocols import ConfigError, check_float, check_int

__all__ = ["RotaryEmbedding", "apply_rotary"]


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` dimensions of ``x``; keep the rest.

    The rotation runs in fp32 (float64 for float64 input) and the result is cast back to
    the dtype of ``x``. When every dimension rotates, the result has the memory layout of
    ``x``: queries and keys arrive as the ``(B, T, heads, head_dim)`` output of a
    projection seen as ``(B, heads, T, head_dim)``, scaled-dot-product attention returns
    its output in the layout of the queries, and merging the heads back to
    ``(B, T, heads * head_dim)`` is then a view, not a copy that the output projection
    would keep for its backward pass.

    Args:
        x: Queries or keys, shape ``(..., head_dim)``, e.g. ``(B, n_heads, T, head_dim)``.
        cos: ``cos(p * theta)``, fp32, broadcastable to ``(..., rotary_dim // 2)``, e.g.
            ``(T, r/2)`` or ``(B, 1, T, r/2)``.
        sin: ``sin(p * theta)``, same shape as ``cos``.
        interleaved: Pairs are ``(x[2i], x[2i+1])`` instead of ``(x[i], x[i + r/2])``.

    Returns:
        The rotated tensor, same shape and dtype as ``x``.

    Example:
        >>> q = torch.randn(2, 5, 4, 8).transpose(1, 2)  # (B, heads, T, hd) of (B, T, heads, hd)
        >>> cos, sin = torch.ones(5, 4), torch.zeros(5, 4)  # position 0 everywhere
        >>> out = apply_rotary(q, cos, sin)
        >>> torch.equal(out, q), out.stride() == q.stride()
        (True, True)
    """
    half = cos.shape[-1]
    rotary_dim = 2 * half
    compute = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for fp64 input
    rot = x[..., :rotary_dim].to(compute)  # (..., r), the layout of x
    cos, sin = cos.to(compute), sin.to(compute)  # (..., r/2)
    # Each pair (a, b) becomes (a, b) cos + (-b, a) sin. pairs, a view of rot laid out
    # like x, is the first operand of the product and of the sum, and an elementwise
    # op's result takes its first operand's memory layout; cos and sin broadcast as they
    # are (no per-call copies for the backward pass to keep).
    if interleaved:  # pairs (x[2i], x[2i + 1])
        pairs = torch.unflatten(rot, -1, (half, 2))  # (..., r/2, 2)
        a, b = pairs[..., 0], pairs[..., 1]  # (..., r/2) each
        turned = torch.stack((-b, a), dim=-1)  # (..., r/2, 2)
        cos, sin = cos.unsqueeze(-1), sin.unsqueeze(-1)  # (..., r/2, 1)
    else:  # pairs (x[i], x[i + r/2])
        pairs = torch.unflatten(rot, -1, (2, half))  # (..., 2, r/2)
        a, b = pairs[..., 0, :], pairs[..., 1, :]  # (..., r/2) each
        turned = torch.stack((-b, a), dim=-2)  # (..., 2, r/2)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # (..., 1, r/2)
    out = (pairs * cos + turned * sin).flatten(-2).to(x.dtype)  # (..., r)
    if rotary_dim == x.shape[-1]:
        return out
    return torch.cat((out, x[..., rotary_dim:]), dim=-1)  # (..., head_dim)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with cached fp32 cos/sin tables grown on demand.

    The tables ``cos(p * theta)`` and ``sin(p * theta)`` for ``p < max_seq_len`` are built
    once as non-persistent fp32 buffers (``.to(device)`` moves them; they are not in the
    ``state_dict``). A position beyond them rebuilds the tables, at least twice as long;
    ``module.to(torch.bfloat16)`` casts the buffers, so a non-fp32 table is rebuilt in fp32
    at the next call. With explicit ``position_ids`` each call reads the largest id back to
    the host (one sync) to know whether the tables must grow.

    With [`DynamicNTKScaling`][lego.layers.rope_scaling.DynamicNTKScaling] the frequencies
    depend on the sequence length: calls whose largest position is beyond the original
    context get tables built for that length (rebuilt whenever it changes).

    The rotation itself runs in fp32 and is cast back to the input dtype (transformers
    casts cos/sin to the input dtype first, so bf16 results can differ in the last bit).

    Args:
        head_dim: Size of each head (the last dimension of the input).
        rotary_dim: How many leading dimensions rotate (even, ``<= head_dim``); None means
            all of them.
        base: RoPE's base (``rope_theta``).
        max_seq_len: Initial length of the cached tables (not a limit).
        scaling: A scaling variant from [`lego.layers.rope_scaling`][lego.layers.rope_scaling],
            or None.
        interleaved: Use GPT-J / Meta's interleaved pairs instead of half-split.

    Raises:
        ConfigError: ``head_dim < 1``, ``rotary_dim`` odd, < 2 or > ``head_dim``,
            ``base <= 0`` or ``max_seq_len < 1``.
    """

    cos_cached: torch.Tensor
    sin_cached: torch.Tensor

    def __init__(
        self,
        *,
        head_dim: int,
        rotary_dim: int | None = None,
        base: float = 10000.0,
        max_seq_len: int = 2048,
        scaling: RopeScaling | None = None,
        interleaved: bool = False,
    ) -> None:
        super().__init__()
        owner = "RotaryEmbedding"
        self.head_dim = check_int("head_dim", head_dim, minimum=1, owner=owner)
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        check_int("rotary_dim", rotary_dim, minimum=2, owner=owner)
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ConfigError(
                f"{owner}: rotary_dim must be even and at most head_dim, got rotary_dim="
                f"{rotary_dim} with head_dim={head_dim}",
                key="rotary_dim",
                hint="rotate pairs of dimensions: an even rotary_dim <= head_dim",
            )
        self.rotary_dim = rotary_dim
        self.base = check_float("base", base, low=0.0, low_open=True, owner=owner)
        self.max_seq_len = check_int("max_seq_len", max_seq_len, minimum=1, owner=owner)
        self.scaling = scaling
        self.interleaved = interleaved
        inv_freq = rope_inverse_frequencies(rotary_dim=rotary_dim, base=self.base, scaling=scaling)
        self._table_key: int | None = None  # the dynamic-NTK length the tables were built for
        cos, sin = self._build(inv_freq, max_seq_len)
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def inverse_frequencies(self, seq_len: int | None = None) -> torch.Tensor:
        """Return ``theta``, shape ``(rotary_dim // 2,)``, fp32 (for inspection and tests).

        Args:
            seq_len: The sequence length (matters only for dynamic NTK scaling).
        """
        return rope_inverse_frequencies(
            rotary_dim=self.rotary_dim,
            base=self.base,
            scaling=self.scaling,
            seq_len=seq_len,
            device=self.cos_cached.device,
        )

    @staticmethod
    def _build(inv_freq: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables ``(length, r/2)`` in fp32 for positions ``0..length-1``."""
        positions = torch.arange(length, dtype=torch.int64, device=inv_freq.device).float()
        angles = torch.outer(positions, inv_freq)  # (L, r/2)
        return angles.cos(), angles.sin()

    def _tables(self, needed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Return cos/sin tables covering positions ``0..needed-1`` on ``device``."""
        key: int | None = None
        if isinstance(self.scaling, DynamicNTKScaling):
            original = self.scaling.original_max_position_embeddings
            key = needed if needed > original else None
        cached = self.cos_cached
        stale = (
            cached.shape[0] < needed
            or cached.dtype != torch.float32
            or cached.device != device
            or key != self._table_key
        )
        if stale:
            length = (
                cached.shape[0] if cached.shape[0] >= needed else max(needed, 2 * cached.shape[0])
            )
            inv_freq = rope_inverse_frequencies(
                rotary_dim=self.rotary_dim,
                base=self.base,
                scaling=self.scaling,
                seq_len=key,
                device=device,
            )
            self.cos_cached, self.sin_cached = self._build(inv_freq, length)
            self._table_key = key
        return self.cos_cached, self.sin_cached

    def forward(
        self, x: torch.Tensor, /, *, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rotate queries or keys by their positions.

        Args:
            x: Queries or keys, shape ``(B, n_heads, T, head_dim)``.
            position_ids: Positions, ``(B, T)`` (per row, e.g. left padding) or ``(T,)``;
                None means ``arange(T)``.

        Returns:
            The rotated tensor, shape ``(B, n_heads, T, head_dim)``, dtype of ``x``.

        Raises:
            DataError: A wrong shape of ``x`` or ``position_ids``, or a negative position.
        """
        owner = "RotaryEmbedding"
        check_dim(
            x,
            name="x",
            ndims=(4,),
            last=self.head_dim,
            owner=owner,
            layout="(B, n_heads, T, head_dim)",
        )
        seq_len = x.shape[2]
        if position_ids is None:
            cos, sin = self._tables(seq_len, x.device)  # (L, r/2) each
            cos, sin = cos[:seq_len], sin[:seq_len]  # (T, r/2)
        else:
            high = check_position_range(
                position_ids, limit=None, owner=owner, tensor_length=seq_len
            )
            cos, sin = self._tables(high + 1, x.device)  # (L, r/2) each
            cos, sin = cos[position_ids], sin[position_ids]  # (B, T, r/2) or (T, r/2)
            if position_ids.ndim == 2:
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, r/2)
        return apply_rotary(x, cos, sin, interleaved=self.interleaved)  # (B, n_heads, T, head_dim)

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
            f"scaling={self.scaling}, interleaved={self.interleaved}"
        )
