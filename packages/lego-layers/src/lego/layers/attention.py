"""Causal self-attention: multi-head, grouped-query and multi-query, two backends.

One module, [`CausalSelfAttention`][lego.layers.CausalSelfAttention], covers the attention of
GPT-2 (fused ``c_attn`` with biases), Llama 3 (separate projections, grouped-query, RoPE),
Qwen 2 (q/k/v biases), Qwen 3 (QK-norm, ``head_dim`` independent of ``d_model``) and Mistral
(sliding window). It takes its pieces as sub-modules, so a LoRA-wrapped projection or
another rotary embedding is a different argument, not a different class.

Backends (identical results, see [`CausalSelfAttention`][lego.layers.CausalSelfAttention]):

- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``. Without padding, window,
  packed documents or cached prefix it passes ``is_causal=True`` and no mask, so the fused
  kernels (flash, memory-efficient, CPU flash) are eligible; otherwise an explicit boolean
  mask. One exception: a single new token on the CPU under ``torch.compile`` (a compiled
  decode step) takes the math path, which inductor fuses into one loop over the cache (why:
  the README's benchmark notes).
- ``"math"``: ``softmax(Q K^T * scale + mask) V`` written out, softmax in fp32. Slower and
  memory-hungry (it materializes the ``(B, n_heads, T, S)`` scores) but transparent, and it
  can return the attention weights:
  [`forward_with_weights()`][lego.layers.attention.CausalSelfAttention.forward_with_weights].

Packed sequences: ``document_ids`` ``(B, T)`` numbers the documents packed into each row
(``0, 1, ...``; negative on padding). A query then sees only the keys of its own document at
or before it, never padding, on both backends (one boolean mask ``(B, 1, T, T)``), so a
packed row computes what its documents would compute run one by one (with positions
restarting per document: pass ``position_ids``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.layers._tensor_checks import check_dim
from lego.layers.mask import _check_window, build_attention_mask, causal_mask
from lego.layers.norm import QKNorm
from lego.protocols import (
    ConfigError,
    DataError,
    LayerKVCache,
    Norm,
    PositionalEncoding,
    check_float,
    check_int,
    check_probability,
)
from lego.protocols import did_you_mean as _did_you_mean

__all__ = ["AttentionBackend", "BACKENDS", "CausalSelfAttention", "repeat_kv"]

AttentionBackend = Literal["sdpa", "math"]
"""The name of an attention backend."""

BACKENDS: tuple[str, ...] = ("sdpa", "math")
"""The valid backend names."""


def _torch_at_least(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (IndexError, ValueError):  # an unusual version string: assume a recent torch
        return True


_SDPA_HAS_GQA = _torch_at_least(2, 5)
"""``scaled_dot_product_attention(enable_gqa=True)`` exists (torch >= 2.5)."""


def _features(module: nn.Module, name: str) -> int | None:
    """``in_features`` / ``out_features`` of a projection, or None for a module without."""
    value = getattr(module, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _fused_by_inductor(q: Tensor) -> bool:
    """A single CPU query traced by ``torch.compile``: the math path compiles into one loop."""
    return q.shape[2] == 1 and q.device.type == "cpu" and torch.compiler.is_compiling()


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Repeat each key/value head ``n_rep`` times (grouped-query attention as multi-head).

    Head ``h`` of the result is head ``h // n_rep`` of the input, the same as
    ``x.repeat_interleave(n_rep, dim=1)``.

    Args:
        x: Keys or values, shape ``(B, n_kv_heads, S, head_dim)``.
        n_rep: Query heads per key/value head.

    Returns:
        Shape ``(B, n_kv_heads * n_rep, S, head_dim)`` (``x`` itself when ``n_rep == 1``).
    """
    if n_rep == 1:
        return x
    b, n_kv, s, hd = x.shape
    x = x[:, :, None].expand(b, n_kv, n_rep, s, hd)  # (B, n_kv_heads, n_rep, S, hd)
    return x.reshape(b, n_kv * n_rep, s, hd)  # (B, n_heads, S, hd)


class CausalSelfAttention(nn.Module):
    """Causal self-attention built from its projections; MHA, GQA or MQA.

    Satisfies [`lego.protocols.Attention`][lego.protocols.Attention]. The computation, for
    ``x`` of shape ``(B, T, d_model)``:

    1. project to queries ``(B, n_heads, T, head_dim)`` and keys/values
       ``(B, n_kv_heads, T, head_dim)`` (one fused projection split as ``[q | k | v]``, or
       three);
    2. QK-norm over ``head_dim`` (if ``q_norm`` / ``k_norm`` are given), *before* RoPE, as
       Qwen 3 does;
    3. rotary positions on queries and keys (if ``rotary`` is given) at ``position_ids``,
       which default to ``kv_cache.seq_len + arange(T)``;
    4. append the keys and values to ``kv_cache`` (if given) and attend over all ``S``
       cached-plus-new positions, causally, within the sliding window, skipping padding;
    5. merge the heads and apply ``out_proj``.

    Backends. ``"sdpa"`` and ``"math"`` compute the same function: in fp32 they agree to
    about 1e-6 (tested at ``atol=1e-5``), in bf16 to bf16 rounding (``atol=2e-2``). The
    ``dropout`` is attention-probability dropout, active in training mode only; residual
    dropout belongs to the block.

    Padding. ``attention_mask`` ``(B, S)`` marks real tokens (1) and padding (0) over the
    cached plus new positions. A padding query with no real key before it attends to
    itself (finite output; see [`lego.layers.mask`][lego.layers.mask]).

    Packed documents. ``document_ids`` ``(B, T)`` keeps the documents of a packed row
    apart: a query attends only to keys of the same document at or before it, within the
    window and ``attention_mask``; keys with a negative id (padding) are never attended. A
    query left with no key (a padding query) attends to its own slot, as with padding.
    Decoding does not pack: ``document_ids`` with a ``kv_cache`` needs an empty cache (a
    packed prefill, whose cache row then holds every document's keys and values).

    Args:
        out_proj: Output projection, ``n_heads * head_dim -> d_model`` (``o_proj``,
            GPT-2's ``c_proj``).
        n_heads: Number of query heads.
        head_dim: Size of each head; need not equal ``d_model / n_heads`` (Qwen 3).
        n_kv_heads: Number of key/value heads: ``n_heads`` (multi-head, the default), a
            divisor of it (grouped-query) or 1 (multi-query).
        qkv_proj: Fused projection ``d_model -> (n_heads + 2 * n_kv_heads) * head_dim``
            whose output is ``[q | k | v]`` (GPT-2's ``c_attn``). Give it, or the three
            below.
        q_proj: Query projection ``d_model -> n_heads * head_dim``.
        k_proj: Key projection ``d_model -> n_kv_heads * head_dim``.
        v_proj: Value projection ``d_model -> n_kv_heads * head_dim``.
        rotary: Rotary embedding applied to queries and keys ``(B, heads, T, head_dim)``
            with ``position_ids``; None for no rotary positions (GPT-2 adds absolute
            positions to the embeddings instead). One module may be shared by all layers.
        q_norm: Norm over ``head_dim`` of the queries (QK-norm), or None.
        k_norm: Norm over ``head_dim`` of the keys (QK-norm), or None.
        sliding_window: Each query sees only the keys within this many positions
            (itself included); None for full causal attention.
        backend: ``"sdpa"`` or ``"math"``.
        dropout: Attention-probability dropout, in ``[0, 1)``.
        scale: Multiplies ``Q K^T``; None means ``1 / sqrt(head_dim)``.

    Raises:
        ConfigError: Projections missing or given twice, head counts that do not divide,
            projection sizes that do not match the head counts, ``sliding_window < 1``,
            an unknown backend, dropout outside ``[0, 1)`` or a non-positive scale.

    Example:
        >>> attn = CausalSelfAttention.build(d_model=64, n_heads=8, n_kv_heads=2)
        >>> attn(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        *,
        out_proj: nn.Module,
        n_heads: int,
        head_dim: int,
        n_kv_heads: int | None = None,
        qkv_proj: nn.Module | None = None,
        q_proj: nn.Module | None = None,
        k_proj: nn.Module | None = None,
        v_proj: nn.Module | None = None,
        rotary: PositionalEncoding | None = None,
        q_norm: Norm | None = None,
        k_norm: Norm | None = None,
        sliding_window: int | None = None,
        backend: AttentionBackend = "sdpa",
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.n_heads = check_int("n_heads", n_heads, minimum=1, owner=owner)
        kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.n_kv_heads = check_int("n_kv_heads", kv_heads, minimum=1, owner=owner)
        self.head_dim = check_int("head_dim", head_dim, minimum=1, owner=owner)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"{owner}: n_kv_heads must divide n_heads, got n_heads={self.n_heads}, "
                f"n_kv_heads={self.n_kv_heads}",
                key="n_kv_heads",
                hint="use n_kv_heads = n_heads (multi-head), a divisor of n_heads "
                "(grouped-query) or 1 (multi-query)",
            )
        self.n_rep = self.n_heads // self.n_kv_heads
        _check_window(sliding_window)
        self.sliding_window = sliding_window
        if backend not in BACKENDS:
            raise ConfigError(
                f"{owner}: unknown attention backend {backend!r}",
                key="backend",
                hint=_did_you_mean(str(backend), BACKENDS),
            )
        self.backend: AttentionBackend = backend
        self.dropout = check_probability("dropout", dropout, owner=owner)
        self.scale = (
            1.0 / math.sqrt(self.head_dim)
            if scale is None
            else check_float("scale", scale, low=0.0, low_open=True, owner=owner)
        )
        """Multiplies ``Q K^T`` before the softmax."""

        q_size = self.n_heads * self.head_dim
        kv_size = self.n_kv_heads * self.head_dim
        separate = (q_proj, k_proj, v_proj)
        if qkv_proj is not None and any(p is not None for p in separate):
            raise ConfigError(
                f"{owner}: got both qkv_proj and q_proj/k_proj/v_proj",
                key="qkv_proj",
                hint="pass one fused qkv_proj or the three separate projections, not both",
            )
        if qkv_proj is None and any(p is None for p in separate):
            missing = [
                n
                for n, p in zip(("q_proj", "k_proj", "v_proj"), separate, strict=True)
                if p is None
            ]
            raise ConfigError(
                f"{owner}: missing projection(s) {', '.join(missing)}",
                key=missing[0],
                hint="pass q_proj, k_proj and v_proj, or one fused qkv_proj",
            )
        expected: dict[str, tuple[nn.Module, int]] = {}
        if qkv_proj is not None:
            expected["qkv_proj"] = (qkv_proj, q_size + 2 * kv_size)
        else:
            assert q_proj is not None
            assert k_proj is not None
            assert v_proj is not None
            expected.update(
                q_proj=(q_proj, q_size), k_proj=(k_proj, kv_size), v_proj=(v_proj, kv_size)
            )
        d_models: set[int] = set()
        for name, (module, size) in expected.items():
            out = _features(module, "out_features")
            if out is not None and out != size:
                raise ConfigError(
                    f"{owner}: {name} has out_features={out}, but n_heads={self.n_heads}, "
                    f"n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim} need {size}",
                    key=name,
                    hint="build the projections from the same head counts and head_dim",
                )
            d_in = _features(module, "in_features")
            if d_in is not None:
                d_models.add(d_in)
        out_in = _features(out_proj, "in_features")
        if out_in is not None and out_in != q_size:
            raise ConfigError(
                f"{owner}: out_proj has in_features={out_in}, but n_heads={self.n_heads} * "
                f"head_dim={self.head_dim} = {q_size}",
                key="out_proj",
                hint="out_proj maps the merged heads (n_heads * head_dim) back to d_model",
            )
        if len(d_models) > 1:
            raise ConfigError(
                f"{owner}: the q/k/v projections take different input sizes {sorted(d_models)}",
                key="q_proj",
                hint="every projection reads the same d_model-sized input",
            )
        out_d = _features(out_proj, "out_features")
        if d_models and out_d is not None and out_d not in d_models:
            raise ConfigError(
                f"{owner}: out_proj maps to {out_d} features but the input has "
                f"{next(iter(d_models))}",
                key="out_proj",
                hint="out_proj must map back to d_model (the residual stream's width)",
            )
        self.d_model: int | None = next(iter(d_models)) if d_models else out_d
        """Width of the input and output, when the projections tell it (else None)."""

        self.qkv_proj = qkv_proj
        self.q_proj = q_proj
        self.k_proj = k_proj
        self.v_proj = v_proj
        self.out_proj = out_proj
        self.rotary = rotary
        self.q_norm = q_norm
        self.k_norm = k_norm

    # -- construction --------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        *,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        fused_qkv: bool = False,
        bias: bool = False,
        out_bias: bool | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        rotary: PositionalEncoding | None = None,
        sliding_window: int | None = None,
        backend: AttentionBackend = "sdpa",
        dropout: float = 0.0,
        scale: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CausalSelfAttention:
        """Build the attention of the common model families with ``nn.Linear`` projections.

        GPT-2: ``fused_qkv=True, bias=True``. Llama 3: ``n_kv_heads=8, rotary=...``.
        Qwen 2: ``bias=True, out_bias=False``. Qwen 3: ``head_dim=128, qk_norm=True``.

        Args:
            d_model: Width of the residual stream.
            n_heads: Number of query heads.
            n_kv_heads: Number of key/value heads; None means ``n_heads``.
            head_dim: Size of each head; None means ``d_model // n_heads`` (which must
                then divide exactly).
            fused_qkv: One ``qkv_proj`` instead of ``q_proj``/``k_proj``/``v_proj``.
            bias: Biases on the q/k/v projections.
            out_bias: Bias on ``out_proj``; None means the same as ``bias``.
            qk_norm: Add `QKNorm` on queries and keys.
            qk_norm_eps: The QK-norm epsilon.
            rotary: A rotary embedding (e.g. `RotaryEmbedding`),
                or None.
            sliding_window: Sliding-window size, or None.
            backend: ``"sdpa"`` or ``"math"``.
            dropout: Attention-probability dropout.
            scale: Score scale; None means ``1 / sqrt(head_dim)``.
            device: Where to create the parameters.
            dtype: Dtype of the parameters.

        Returns:
            The attention module.

        Raises:
            ConfigError: ``d_model`` not divisible by ``n_heads`` when ``head_dim`` is
                None, and everything the constructor raises.
        """
        owner = cls.__name__
        check_int("d_model", d_model, minimum=1, owner=owner)
        check_int("n_heads", n_heads, minimum=1, owner=owner)
        if head_dim is None:
            if d_model % n_heads:
                raise ConfigError(
                    f"{owner}: n_heads must divide d_model when head_dim is not given, got "
                    f"d_model={d_model}, n_heads={n_heads} ({d_model} % {n_heads} = "
                    f"{d_model % n_heads})",
                    key="n_heads",
                    hint="choose n_heads dividing d_model, or pass head_dim explicitly",
                )
            head_dim = d_model // n_heads
        check_int("head_dim", head_dim, minimum=1, owner=owner)
        kv = n_heads if n_kv_heads is None else n_kv_heads
        check_int("n_kv_heads", kv, minimum=1, owner=owner)
        q_size, kv_size = n_heads * head_dim, kv * head_dim
        factory = {"device": device, "dtype": dtype}
        projections: dict[str, nn.Module] = {}
        if fused_qkv:
            projections["qkv_proj"] = nn.Linear(d_model, q_size + 2 * kv_size, bias, **factory)
        else:
            projections["q_proj"] = nn.Linear(d_model, q_size, bias, **factory)
            projections["k_proj"] = nn.Linear(d_model, kv_size, bias, **factory)
            projections["v_proj"] = nn.Linear(d_model, kv_size, bias, **factory)
        out_proj = nn.Linear(q_size, d_model, bias if out_bias is None else out_bias, **factory)
        q_norm: Norm | None = None
        k_norm: Norm | None = None
        if qk_norm:
            q_norm = QKNorm(head_dim=head_dim, eps=qk_norm_eps).to(device=device, dtype=dtype)
            k_norm = QKNorm(head_dim=head_dim, eps=qk_norm_eps).to(device=device, dtype=dtype)
        return cls(
            out_proj=out_proj,
            n_heads=n_heads,
            n_kv_heads=kv,
            head_dim=head_dim,
            rotary=rotary,
            q_norm=q_norm,
            k_norm=k_norm,
            sliding_window=sliding_window,
            backend=backend,
            dropout=dropout,
            scale=scale,
            **projections,
        )

    def extra_repr(self) -> str:
        """Head counts, window and backend, for ``print(module)``."""
        parts = [
            f"n_heads={self.n_heads}",
            f"n_kv_heads={self.n_kv_heads}",
            f"head_dim={self.head_dim}",
            f"backend={self.backend!r}",
        ]
        if self.sliding_window is not None:
            parts.append(f"sliding_window={self.sliding_window}")
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        return ", ".join(parts)

    # -- forward -------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        /,
        *,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Attend causally over the sequence (and the cached positions, if any).

        Args:
            x: Input, shape ``(B, T, d_model)``.
            position_ids: Positions of the ``T`` new tokens, ``(B, T)`` or ``(T,)``, for
                the rotary embedding; None means ``kv_cache.seq_len + arange(T)``
                (``arange(T)`` without a cache). Unused without ``rotary``.
            attention_mask: 1 for real tokens, 0 for padding, shape ``(B, S)`` with ``S``
                the cached length plus ``T``; None means no padding.
            kv_cache: This layer's cache; the new keys and values are appended to it and
                attention covers every cached position.
            document_ids: The document of each token of packed rows, ``(B, T)`` integers
                (``0, 1, ...`` per row, negative on padding): a query attends only to keys
                of its own document. None means one sequence per row. Positions do not
                follow it: pass ``position_ids`` restarting at 0 for every document.

        Returns:
            Output, shape ``(B, T, d_model)``.

        Raises:
            DataError: ``x``, ``position_ids``, ``attention_mask`` or ``document_ids`` has
                the wrong shape (or ``document_ids`` is not an integer tensor).
            ConfigError: ``document_ids`` given with a ``kv_cache`` that is not empty.
            CompatibilityError: The cache does not fit (batch size, heads, device).
        """
        out, _ = self._attend(
            x,
            position_ids=position_ids,
            attention_mask=attention_mask,
            kv_cache=kv_cache,
            document_ids=document_ids,
            backend=self.backend,
            need_weights=False,
        )
        return out

    def forward_with_weights(
        self,
        x: Tensor,
        /,
        *,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
        document_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Like ``forward``, through the math backend, also returning the attention weights.

        Use it to visualize what each head attends to; it runs the ``"math"`` backend
        whatever ``backend`` is set (the output equals ``forward``'s within the backends'
        tolerance).

        Args:
            x: Input, shape ``(B, T, d_model)``.
            position_ids: As in ``forward``.
            attention_mask: As in ``forward``.
            kv_cache: As in ``forward`` (the cache is updated).
            document_ids: As in ``forward``.

        Returns:
            ``(output, weights)``: output ``(B, T, d_model)``, and the softmax
            probabilities before dropout, ``(B, n_heads, T, S)`` in ``x``'s dtype. Each row
            sums to 1 and is 0 on masked keys (future, outside the window, padding, other
            documents).

        Raises:
            DataError: As ``forward``.
            ConfigError: As ``forward``.
            CompatibilityError: As ``forward``.
        """
        out, weights = self._attend(
            x,
            position_ids=position_ids,
            attention_mask=attention_mask,
            kv_cache=kv_cache,
            document_ids=document_ids,
            backend="math",
            need_weights=True,
        )
        assert weights is not None  # the math backend always returns them on request
        return out, weights

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values as ``(B, T, heads * head_dim)`` tensors."""
        q_size = self.n_heads * self.head_dim
        kv_size = self.n_kv_heads * self.head_dim
        if self.qkv_proj is not None:
            qkv = self.qkv_proj(x)  # (B, T, q_size + 2 * kv_size)
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            return q, k, v
        assert self.q_proj is not None
        assert self.k_proj is not None
        assert self.v_proj is not None
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _check_inputs(
        self,
        x: Tensor,
        position_ids: Tensor | None,
        attention_mask: Tensor | None,
        document_ids: Tensor | None,
        kv_cache: LayerKVCache | None,
    ) -> None:
        past = kv_cache.seq_len if kv_cache is not None else 0
        owner = type(self).__name__
        check_dim(x, name="x", ndims=(3,), last=self.d_model, owner=owner, layout="(B, T, d_model)")
        b, t = int(x.shape[0]), int(x.shape[1])
        if position_ids is not None and tuple(position_ids.shape) not in ((b, t), (t,)):
            raise DataError(
                f"{owner}: position_ids must have shape ({b}, {t}) or ({t},), got "
                f"{tuple(position_ids.shape)}",
                tensor="position_ids",
                hint="give one position per new token",
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (b, past + t):
            raise DataError(
                f"{owner}: attention_mask must have shape ({b}, {past + t}) "
                f"({past} cached + {t} new positions), got {tuple(attention_mask.shape)}",
                tensor="attention_mask",
                hint="the mask covers the cached positions and the new ones: append a 1 "
                "per generated token",
            )
        if document_ids is None:
            return
        if past:
            raise ConfigError(
                f"{owner}: document_ids cannot be combined with a kv_cache that holds "
                f"{past} positions (a packed prefill fills an empty cache; cached decoding "
                "keeps one sequence per row)",
                key="document_ids",
                hint="decode each document in its own row (left padding and attention_mask), "
                "or prefill the packed rows into an empty cache",
            )
        if tuple(document_ids.shape) != (b, t) or document_ids.dtype.is_floating_point:
            raise DataError(
                f"{owner}: document_ids must be a ({b}, {t}) integer tensor, got shape "
                f"{tuple(document_ids.shape)} dtype {document_ids.dtype}",
                tensor="document_ids",
                hint="give one document number per token (0, 1, ... per row, -1 on padding)",
            )

    def _attend(
        self,
        x: Tensor,
        *,
        position_ids: Tensor | None,
        attention_mask: Tensor | None,
        kv_cache: LayerKVCache | None,
        document_ids: Tensor | None,
        backend: AttentionBackend,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        self._check_inputs(x, position_ids, attention_mask, document_ids, kv_cache)
        past = kv_cache.seq_len if kv_cache is not None else 0
        b, t, _ = x.shape
        hd = self.head_dim

        q, k, v = self._project(x)  # (B, T, H*hd), (B, T, H_kv*hd), (B, T, H_kv*hd)
        q = q.reshape(b, t, self.n_heads, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.reshape(b, t, self.n_kv_heads, hd).transpose(1, 2)  # (B, H_kv, T, hd)
        v = v.reshape(b, t, self.n_kv_heads, hd).transpose(1, 2)  # (B, H_kv, T, hd)

        if self.q_norm is not None:
            q = self.q_norm(q)  # (B, H, T, hd)
        if self.k_norm is not None:
            k = self.k_norm(k)  # (B, H_kv, T, hd)

        if self.rotary is not None:
            # Without a cached prefix the positions are 0..T-1, the rotary's own default:
            # RotaryEmbedding then slices its tables instead of gathering copies of them
            # (which the backward pass would keep, per layer).
            if position_ids is None and past > 0:
                position_ids = torch.arange(past, past + t, device=x.device)  # (T,)
            q = self.rotary(q, position_ids=position_ids)  # (B, H, T, hd)
            k = self.rotary(k, position_ids=position_ids)  # (B, H_kv, T, hd)

        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, H_kv, S, hd) each, S = past + T
            if k.dtype != q.dtype:  # a cache allocated in another dtype (e.g. autocast)
                k, v = k.to(q.dtype), v.to(q.dtype)  # (B, H_kv, S, hd)

        dropout_p = self.dropout if self.training else 0.0
        if backend == "sdpa" and not _fused_by_inductor(q):
            out = self._sdpa(q, k, v, attention_mask, document_ids, dropout_p)  # (B, H, T, hd)
            weights = None
        else:
            out, weights = self._math(
                q, k, v, attention_mask, document_ids, dropout_p
            )  # (B, H, T, hd), (B, H, T, S)
            if not need_weights:
                weights = None

        out = out.transpose(1, 2).reshape(b, t, self.n_heads * hd)  # (B, T, H*hd)
        out = self.out_proj(out)  # (B, T, d_model)
        return out, weights  # (B, T, d_model), (B, H, T, S) or None

    def _mask(
        self,
        t: int,
        s: int,
        attention_mask: Tensor | None,
        document_ids: Tensor | None,
        device: torch.device,
    ) -> Tensor:
        """The boolean mask ``(B or 1, 1, T, S)`` for ``T`` queries over ``S`` keys."""
        window = self.sliding_window
        if window is not None and window >= s:
            window = None  # a window as long as the keys changes nothing
        if document_ids is None:
            return build_attention_mask(
                q_len=t, kv_len=s, padding_mask=attention_mask, sliding_window=window, device=device
            )
        # Packed documents (no cached prefix, so S == T): same document, at or before the query,
        # never a padding key (negative id), within the window and the padding mask.
        docs = document_ids.to(device)  # (B, T)
        keys = docs >= 0  # (B, S)
        if attention_mask is not None:
            keys = keys & attention_mask.to(device=device, dtype=torch.bool)  # (B, S)
        same = docs[:, :, None] == docs[:, None, :]  # (B, T, S)
        mask = same & keys[:, None, :] & causal_mask(t, s, sliding_window=window, device=device)
        # A query with no key left (padding) attends to its own slot: finite, never read.
        empty = ~mask.any(dim=-1, keepdim=True)  # (B, T, 1)
        own = torch.eye(t, s, dtype=torch.bool, device=device)  # (T, S)
        return (mask | (empty & own))[:, None]  # (B, 1, T, S)

    def _needs_mask(
        self, t: int, s: int, attention_mask: Tensor | None, document_ids: Tensor | None
    ) -> bool:
        """Whether plain causal attention (or no mask at all) is not enough."""
        window_bites = self.sliding_window is not None and self.sliding_window < s
        return attention_mask is not None or document_ids is not None or window_bites

    def _document_spans(
        self,
        q: Tensor,
        document_ids: Tensor | None,
        attention_mask: Tensor | None,
        t: int,
        s: int,
    ) -> list[tuple[int, int]] | None:
        """The ``(start, end)`` of each document of one packed row, when attention splits.

        A single packed row (a packed prefill) without padding, window or gradients runs
        each document's causal attention on its own slice: ``sum(L_i^2)`` scores instead of
        the ``T^2`` of one masked product over the whole row, and each document's result is
        what it gets alone. Training keeps the one masked product (its rounding is what the
        packed-vs-padded equalities are checked with). None: use the mask.
        """
        if (
            document_ids is None
            or attention_mask is not None
            or torch.is_grad_enabled()
            or int(q.shape[0]) != 1
            or t != s
            or (self.sliding_window is not None and self.sliding_window < s)
        ):
            return None
        ids = document_ids[0].tolist()
        if not ids or min(ids) < 0:
            return None  # padding in the row: the mask handles it
        spans: list[tuple[int, int]] = []
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or ids[i] != ids[i - 1]:
                spans.append((start, i))
                start = i
        return spans

    def _sdpa(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attention_mask: Tensor | None,
        document_ids: Tensor | None,
        dropout_p: float,
    ) -> Tensor:
        """``scaled_dot_product_attention``; is_causal without mask, else a boolean mask."""
        t, s = int(q.shape[2]), int(k.shape[2])
        spans = self._document_spans(q, document_ids, attention_mask, t, s)
        if spans is not None:  # one packed row at inference: each document on its own
            return torch.cat(
                [
                    self._sdpa(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, None, dropout_p)
                    for a, b in spans
                ],
                dim=2,
            )  # (1, H, T, hd)
        mask: Tensor | None = None
        is_causal = False
        if self._needs_mask(t, s, attention_mask, document_ids):
            mask = self._mask(t, s, attention_mask, document_ids, q.device)  # (B|1, 1, T, S)
        elif t == s:
            is_causal = True  # no cached prefix: the fused kernels' own causal mask
        elif t != 1:
            mask = causal_mask(t, s, device=q.device)[None, None]  # (1, 1, T, S) offset
        # t == 1 after a cached prefix: the new token sees every key, no mask at all.
        # With a mask, enable_gqa on the CPU when no gradient is taken (decoding, serving):
        # repeat_kv would copy the whole cache per layer (a 16-row decode step over 400 cached
        # columns spent most of its time there). Training keeps repeat_kv, whose rounding the
        # packed-vs-padded equalities are checked with; on CUDA a mask with enable_gqa leaves
        # the memory-efficient kernel, so it repeats.
        gqa_masked = q.device.type == "cpu" and not torch.is_grad_enabled()
        if self.n_rep > 1 and _SDPA_HAS_GQA and (mask is None or gqa_masked):
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=is_causal,
                dropout_p=dropout_p,
                scale=self.scale,
                enable_gqa=True,
            )  # (B, H, T, hd)
        k = repeat_kv(k, self.n_rep)  # (B, H, S, hd)
        v = repeat_kv(v, self.n_rep)  # (B, H, S, hd)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p, scale=self.scale
        )  # (B, H, T, hd)

    def _math(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attention_mask: Tensor | None,
        document_ids: Tensor | None,
        dropout_p: float,
    ) -> tuple[Tensor, Tensor]:
        """Explicit attention; returns the output and the pre-dropout weights.

        Grouped-query heads are handled by broadcasting: the ``n_rep`` query heads of a
        group are stacked against their one key/value head, so keys are never copied.
        """
        b, h, t, hd = q.shape
        s = int(k.shape[2])
        g = self.n_rep
        qg = q.reshape(b, self.n_kv_heads, g, t, hd)  # (B, H_kv, G, T, hd)
        scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2))  # (B, H_kv, G, T, S)
        scores = scores.reshape(b, h, t, s) * self.scale  # (B, H, T, S)
        # softmax in fp32 at least (bf16/fp16 upcast; float64 stays float64)
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # (B, H, T, S)
        if self._needs_mask(t, s, attention_mask, document_ids) or t > 1:
            mask = self._mask(t, s, attention_mask, document_ids, q.device)  # (B|1, 1, T, S)
            scores = scores.masked_fill(~mask, float("-inf"))  # (B, H, T, S)
        weights = torch.softmax(scores, dim=-1).to(q.dtype)  # (B, H, T, S)
        probs = F.dropout(weights, p=dropout_p, training=dropout_p > 0)  # (B, H, T, S)
        probs = probs.view(b, self.n_kv_heads, g, t, s)  # (B, H_kv, G, T, S)
        out = torch.matmul(probs, v.unsqueeze(2))  # (B, H_kv, G, T, hd)
        return out.reshape(b, h, t, hd), weights  # (B, H, T, hd), (B, H, T, S)
