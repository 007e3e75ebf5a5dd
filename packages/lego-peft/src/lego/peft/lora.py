"""The adapter layers, which wrap the module they adapt.

[`LoraLinear`][lego.peft.lora.LoraLinear] and [`LoraEmbedding`][lego.peft.lora.LoraEmbedding]:
each wraps the base module it adapts (``base_layer``, as in PEFT) and adds a low-rank
update, so a layer computes::

    LoRA   y = base(x) + scale * B(A(dropout(x)))
    DoRA   y = m / ||W + scale * B @ A|| * (W x + scale * B(A(x))) + bias

with ``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)`` for rsLoRA), ``m`` the learned
magnitude per output feature and the norm taken per output feature and detached from the
backward pass (DoRA paper section 4.3, as PEFT does). Parameter names are PEFT's:
``lora_A`` / ``lora_B`` (``nn.Linear``) for linear layers, ``lora_embedding_A`` /
``lora_embedding_B`` for embeddings, ``lora_magnitude_vector`` for DoRA.

``merge()`` folds the update into the base weight: the base weight parameter keeps its
identity (an optimizer or a tied head still sees it) and its original values are kept
aside, so ``unmerge()`` puts back exactly the tensor that was there (no subtraction, no
rounding drift). A base whose weight is stored quantized (anything with
``dequantized_weight()``, such as lego-peft's NF4 layer) cannot hold a merged weight: its
merged weight is a separate higher-precision tensor the layer computes with until
``unmerge()``.

    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> base = nn.Linear(8, 4)
    >>> layer = LoraLinear(base_layer=base, r=2, lora_alpha=4, init_lora_weights=False)
    >>> x = torch.randn(3, 8)
    >>> before = base.weight.detach().clone()
    >>> out = layer(x)
    >>> layer.merge()
    >>> torch.allclose(layer(x), out, atol=1e-6)
    True
    >>> layer.unmerge()
    >>> torch.equal(base.weight, before)
    True
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.peft.config import InitLoraWeights
from lego.protocols import CompatibilityError, ConfigError, DataError, check_int

__all__ = ["LoraLinear", "LoraEmbedding", "LoraLayer", "QuantizedLinear", "is_linear"]


@runtime_checkable
class QuantizedLinear(Protocol):
    """A linear layer whose weight is stored quantized (e.g. lego-peft's NF4 layer).

    ``layer(x)`` computes ``x @ W.T + bias`` for ``x`` of shape ``(..., in_features)``;
    ``dequantized_weight()`` returns ``W`` as a floating-point ``(out_features,
    in_features)`` tensor (for merging and DoRA's weight norm only).
    """

    in_features: int
    out_features: int

    def dequantized_weight(self) -> Tensor:
        """The weight in floating point, ``(out_features, in_features)``."""
        ...

    def __call__(self, x: Tensor) -> Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        ...


def is_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer an adapter can wrap (``nn.Linear`` or quantized).

    Args:
        module: Any module.

    Returns:
        True for ``nn.Linear`` and for modules with ``in_features``, ``out_features`` and
        ``dequantized_weight()``.
    """
    return isinstance(module, (nn.Linear, QuantizedLinear))


def _adapter_dtype(weight: Tensor) -> torch.dtype:
    """Adapters train in float32 on half-precision or quantized bases (as PEFT's autocast)."""
    if weight.dtype in (torch.float16, torch.bfloat16) or not weight.dtype.is_floating_point:
        return torch.float32
    return weight.dtype


def _scaling(r: int, lora_alpha: float, use_rslora: bool) -> float:
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def _row_norm(weight: Tensor) -> Tensor:
    """The L2 norm of each row of a ``(rows, columns)`` matrix: ``(rows,)``."""
    norm: Tensor = torch.linalg.norm(weight, dim=1)
    return norm


class _Adapted(nn.Module):
    """What the two layer kinds share: rank, scaling, the on/off switch and merge state."""

    _unmerged_weight: Tensor | None
    _merged_weight: Tensor | None

    def __init__(self, *, r: int, lora_alpha: float, use_rslora: bool) -> None:
        super().__init__()
        self.r = check_int("r", r, minimum=1, owner=type(self).__name__)
        self.lora_alpha = float(lora_alpha)
        self.use_rslora = bool(use_rslora)
        self.scaling = _scaling(self.r, self.lora_alpha, self.use_rslora)
        self.disabled = False
        # The base weight's values from before merge() (or, for a quantized base, the
        # merged weight itself): non-persistent buffers, so .to() moves them along and
        # state_dict() never holds them.
        self.register_buffer("_unmerged_weight", None, persistent=False)
        self.register_buffer("_merged_weight", None, persistent=False)

    @property
    def merged(self) -> bool:
        """Whether the update is folded into the weight the layer computes with."""
        return self._unmerged_weight is not None or self._merged_weight is not None

    def _check_can_merge(self) -> None:
        if self.merged:
            raise ConfigError(
                f"{type(self).__name__}: the adapter is already merged",
                hint="check .merged first, or call unmerge() before merging again",
            )

    def _check_can_unmerge(self) -> None:
        if not self.merged:
            raise ConfigError(
                f"{type(self).__name__}: the adapter is not merged, there is nothing to unmerge",
                hint="check .merged first",
            )

    @staticmethod
    def _check_finite(merged: Tensor, what: str) -> None:
        if not bool(torch.isfinite(merged).all()):
            raise DataError(
                f"merging gives non-finite weights in {what}: the adapter is broken",
                tensor=what,
                hint="check the adapter's tensors for NaN or infinity (a diverged run?)",
            )

    @torch.no_grad()
    def _swap_in(self, weight: nn.Parameter, merged: Tensor) -> None:
        """Make ``weight`` hold ``merged``, keeping its original tensor for ``unmerge``."""
        self._unmerged_weight = weight.data
        weight.data = merged.to(weight.dtype)

    @torch.no_grad()
    def _swap_out(self, weight: nn.Parameter) -> None:
        original = self._unmerged_weight
        assert original is not None
        weight.data = original
        self._unmerged_weight = None


class LoraLinear(_Adapted):
    """A linear layer with a LoRA (or DoRA) adapter.

    Args:
        base_layer: The layer to adapt: an ``nn.Linear`` (weight ``(out, in)``) or a
            [`QuantizedLinear`][lego.peft.lora.QuantizedLinear]. It is not modified (until
            ``merge()``).
        r: The rank, at least 1.
        lora_alpha: The update is scaled by ``lora_alpha / r`` (or ``/ sqrt(r)``).
        lora_dropout: Dropout on the adapter's input, in ``[0, 1)``.
        use_rslora: Scale by ``lora_alpha / sqrt(r)``.
        use_dora: Add DoRA's magnitude vector ``lora_magnitude_vector`` ``(out,)``.
        init_lora_weights: ``True`` (``A`` Kaiming-uniform, ``B`` zero), ``"gaussian"``
            (``A`` normal with std ``1 / r``, ``B`` zero) or ``False`` (both Kaiming-uniform,
            PEFT's test mode).

    Attributes:
        base_layer: The wrapped layer.
        lora_A: ``nn.Linear(in, r, bias=False)``.
        lora_B: ``nn.Linear(r, out, bias=False)``.
        lora_dropout: ``nn.Dropout`` or ``nn.Identity``.
        lora_magnitude_vector: DoRA's magnitude ``(out,)``, or None.
        scaling: The factor applied to the update.
        disabled: When True the layer computes the base layer alone.

    The adapter's parameters are float32 on a half-precision or quantized base, else the
    base weight's dtype, on the base weight's device.
    """

    lora_magnitude_vector: nn.Parameter | None

    def __init__(
        self,
        *,
        base_layer: nn.Module,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
        use_dora: bool = False,
        init_lora_weights: InitLoraWeights = True,
    ) -> None:
        super().__init__(r=r, lora_alpha=lora_alpha, use_rslora=use_rslora)
        if not is_linear(base_layer):
            raise CompatibilityError(
                f"LoraLinear: the base layer is a {type(base_layer).__name__}, not a linear layer",
                hint="wrap nn.Linear (or a quantized linear layer with dequantized_weight())",
            )
        self.base_layer = base_layer
        self.quantized = not isinstance(base_layer, nn.Linear)
        in_features, out_features = self.in_features, self.out_features
        weight = self._reference_weight()
        factory = {"device": weight.device, "dtype": _adapter_dtype(weight)}
        self.lora_A = nn.Linear(in_features, self.r, bias=False, **factory)  # (r, in)
        self.lora_B = nn.Linear(self.r, out_features, bias=False, **factory)  # (out, r)
        self.lora_dropout: nn.Module = (
            nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        )
        self._initialize(init_lora_weights)
        if use_dora:
            self.lora_magnitude_vector = nn.Parameter(self._dora_weight_norm().detach())
        else:
            self.register_parameter("lora_magnitude_vector", None)

    # -- the base layer's shape -----------------------------------------------------------

    @property
    def in_features(self) -> int:
        """The input width."""
        return int(getattr(self.base_layer, "in_features"))  # noqa: B009 - Module typing

    @property
    def out_features(self) -> int:
        """The output width."""
        return int(getattr(self.base_layer, "out_features"))  # noqa: B009 - Module typing

    @property
    def weight(self) -> Tensor:
        """The base layer's weight (merged while ``merged``), as PEFT's layers expose it."""
        weight = self.base_layer.weight
        assert isinstance(weight, Tensor)
        return weight

    @property
    def bias(self) -> Tensor | None:
        """The base layer's bias, or None."""
        bias = getattr(self.base_layer, "bias", None)
        return bias if isinstance(bias, Tensor) else None

    @property
    def use_dora(self) -> bool:
        """Whether the layer is a DoRA layer."""
        return self.lora_magnitude_vector is not None

    def _reference_weight(self) -> Tensor:
        """A tensor on the base's device with its storage dtype (packed for a quantized base)."""
        weight = getattr(self.base_layer, "weight", None)
        if isinstance(weight, Tensor):
            return weight
        return self.base_weight()

    def base_weight(self) -> Tensor:
        """The base weight in floating point, ``(out, in)`` (dequantized for a quantized base)."""
        if self.quantized:
            assert isinstance(self.base_layer, QuantizedLinear)
            return self.base_layer.dequantized_weight()
        return self.weight

    @torch.no_grad()
    def _initialize(self, init: InitLoraWeights) -> None:
        if init is False:
            return  # nn.Linear's own Kaiming-uniform init, for both A and B
        if init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1.0 / self.r)
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # -- computing --------------------------------------------------------------------------

    def delta_weight(self) -> Tensor:
        """The update ``scale * B @ A``, ``(out, in)``, in the adapter's dtype."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, in)

    def _dora_weight_norm(self) -> Tensor:
        """``||W + scale * B @ A||`` per output feature, ``(out,)``, without gradient."""
        with torch.no_grad():
            weight = self.base_weight().to(self.lora_A.weight.dtype)  # (out, in)
            lora_weight = self.lora_B.weight @ self.lora_A.weight  # (out, in)
            return _row_norm(weight + self.scaling * lora_weight)  # (out,)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the base layer and the update.

        Args:
            x: ``(..., in_features)``.

        Returns:
            ``(..., out_features)`` in the base layer's output dtype.
        """
        if self._merged_weight is not None:  # a quantized base, merged
            return F.linear(x.to(self._merged_weight.dtype), self._merged_weight, self.bias)
        result: Tensor = self.base_layer(x)  # (..., out)
        if self.disabled or self.merged:
            return result
        dtype = self.lora_A.weight.dtype
        x = x.to(dtype)
        if self.lora_magnitude_vector is None:
            update: Tensor = self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
            return (result + update).to(result.dtype)
        return self._dora_forward(x, result).to(result.dtype)

    def _dora_forward(self, x: Tensor, result: Tensor) -> Tensor:
        """DoRA's output given the base output ``result`` ``(..., out)``."""
        assert self.lora_magnitude_vector is not None
        weight = self.base_weight().to(x.dtype)  # (out, in)
        weight_norm = self._dora_weight_norm().to(x.dtype)  # (out,), detached
        mag_norm_scale = self.lora_magnitude_vector / weight_norm  # (out,)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            bias = self.bias
            base_result = result - bias if bias is not None else result  # (..., out)
        else:
            x = self.lora_dropout(x)
            base_result = F.linear(x, weight)  # (..., out)
        lora_result: Tensor = self.lora_B(self.lora_A(x))  # (..., out)
        return (
            result
            + (mag_norm_scale - 1) * base_result
            + mag_norm_scale * lora_result * self.scaling
        )

    # -- merging ----------------------------------------------------------------------------

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """The weight that computes base plus update in one product, ``(out, in)``.

        ``W + scale * B @ A`` for LoRA; ``m / ||W + scale * B @ A|| * (W + scale * B @ A)``
        (per output feature) for DoRA. Computed in the adapter's dtype, returned in the
        base weight's floating-point dtype.
        """
        base = self.base_weight()
        delta = self.delta_weight()  # (out, in)
        merged = base.to(delta.dtype) + delta  # (out, in)
        if self.lora_magnitude_vector is not None:
            factor = self.lora_magnitude_vector / _row_norm(merged)  # (out,)
            merged = factor.view(-1, 1) * merged
        return merged.to(base.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (reversible exactly with ``unmerge()``).

        Raises:
            ConfigError: The layer is already merged.
            DataError: The merged weight has NaN or infinite values (nothing is changed).
        """
        self._check_can_merge()
        merged = self.merged_weight()
        self._check_finite(merged, "weight")
        if self.quantized:
            self._merged_weight = merged
        else:
            weight = self.base_layer.weight
            assert isinstance(weight, nn.Parameter)
            self._swap_in(weight, merged)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight bit for bit (the tensor kept by ``merge()``).

        Raises:
            ConfigError: The layer is not merged.
        """
        self._check_can_unmerge()
        if self.quantized:
            self._merged_weight = None
        else:
            weight = self.base_layer.weight
            assert isinstance(weight, nn.Parameter)
            self._swap_out(weight)

    def extra_repr(self) -> str:
        """Rank, scaling and variant."""
        kind = "DoRA" if self.use_dora else "LoRA"
        return f"{kind}, r={self.r}, lora_alpha={self.lora_alpha:g}, scaling={self.scaling:g}"


class LoraEmbedding(_Adapted):
    """An embedding with a LoRA (or DoRA) adapter (PEFT's layout).

    ``y = base(ids) + scale * embed(ids, A.T) @ B.T`` with ``lora_embedding_A`` ``(r,
    num_embeddings)`` and ``lora_embedding_B`` ``(embedding_dim, r)``. As in PEFT there is
    no dropout on embeddings, and DoRA's magnitude ``(embedding_dim,)`` is per embedding
    feature (the norm is taken over the vocabulary).

    Args:
        base_layer: The ``nn.Embedding`` to adapt.
        r: The rank, at least 1.
        lora_alpha: The update is scaled by ``lora_alpha / r`` (or ``/ sqrt(r)``).
        use_rslora: Scale by ``lora_alpha / sqrt(r)``.
        use_dora: Add DoRA's magnitude vector.
        init_lora_weights: ``True`` or ``"gaussian"`` (``A`` zero, ``B`` standard normal:
            PEFT's embedding init) or ``False`` (both standard normal).
    """

    lora_embedding_A: nn.Parameter  # noqa: N815 - PEFT's name
    lora_embedding_B: nn.Parameter  # noqa: N815 - PEFT's name
    lora_magnitude_vector: nn.Parameter | None

    def __init__(
        self,
        *,
        base_layer: nn.Embedding,
        r: int,
        lora_alpha: float,
        use_rslora: bool = False,
        use_dora: bool = False,
        init_lora_weights: InitLoraWeights = True,
    ) -> None:
        super().__init__(r=r, lora_alpha=lora_alpha, use_rslora=use_rslora)
        if not isinstance(base_layer, nn.Embedding):
            raise CompatibilityError(
                f"LoraEmbedding: the base layer is a {type(base_layer).__name__}, not an "
                "nn.Embedding",
                hint="wrap an nn.Embedding",
            )
        self.base_layer = base_layer
        num_embeddings, embedding_dim = base_layer.weight.shape
        weight = base_layer.weight
        device, dtype = weight.device, _adapter_dtype(weight)
        self.lora_embedding_A = nn.Parameter(
            torch.empty(self.r, num_embeddings, device=device, dtype=dtype)
        )
        self.lora_embedding_B = nn.Parameter(
            torch.empty(embedding_dim, self.r, device=device, dtype=dtype)
        )
        with torch.no_grad():
            if init_lora_weights is False:
                nn.init.normal_(self.lora_embedding_A)
            else:
                nn.init.zeros_(self.lora_embedding_A)
            nn.init.normal_(self.lora_embedding_B)
        if use_dora:
            self.lora_magnitude_vector = nn.Parameter(self._dora_weight_norm().detach())
        else:
            self.register_parameter("lora_magnitude_vector", None)

    @property
    def weight(self) -> Tensor:
        """The base embedding's weight ``(num_embeddings, embedding_dim)``."""
        return self.base_layer.weight

    @property
    def num_embeddings(self) -> int:
        """The vocabulary size."""
        return int(self.base_layer.num_embeddings)

    @property
    def embedding_dim(self) -> int:
        """The embedding width."""
        return int(self.base_layer.embedding_dim)

    @property
    def use_dora(self) -> bool:
        """Whether the layer is a DoRA layer."""
        return self.lora_magnitude_vector is not None

    def delta_weight(self) -> Tensor:
        """The update ``scale * (B @ A).T``, ``(num_embeddings, embedding_dim)``."""
        return (self.lora_embedding_B @ self.lora_embedding_A).T * self.scaling

    def _dora_weight_norm(self) -> Tensor:
        """``||W.T + scale * B @ A||`` per embedding feature, ``(embedding_dim,)``."""
        with torch.no_grad():
            weight = self.base_layer.weight.to(self.lora_embedding_A.dtype).T  # (dim, num)
            lora_weight = self.lora_embedding_B @ self.lora_embedding_A  # (dim, num)
            return _row_norm(weight + self.scaling * lora_weight)  # (dim,)

    def _embed(self, ids: Tensor, weight: Tensor) -> Tensor:
        base = self.base_layer
        return F.embedding(
            ids,
            weight,
            padding_idx=base.padding_idx,
            max_norm=base.max_norm,
            norm_type=base.norm_type,
            scale_grad_by_freq=base.scale_grad_by_freq,
            sparse=base.sparse,
        )

    def forward(self, ids: Tensor) -> Tensor:
        """Embed ``ids`` and add the update.

        Args:
            ids: Token ids ``(B, T)`` (any shape).

        Returns:
            ``(B, T, embedding_dim)`` in the base weight's dtype.
        """
        result: Tensor = self.base_layer(ids)  # (B, T, dim)
        if self.disabled or self.merged:
            return result
        after_a = self._embed(ids, self.lora_embedding_A.T)  # (B, T, r)
        update = after_a @ self.lora_embedding_B.T  # (B, T, dim)
        if self.lora_magnitude_vector is None:
            return (result + update * self.scaling).to(result.dtype)
        mag_norm_scale = self.lora_magnitude_vector / self._dora_weight_norm()  # (dim,)
        dora = mag_norm_scale * update * self.scaling  # (B, T, dim)
        return (mag_norm_scale * result + dora).to(result.dtype)

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """The embedding table with the update folded in, ``(num_embeddings, embedding_dim)``."""
        base = self.base_layer.weight
        delta = self.delta_weight()  # (num, dim)
        merged = base.to(delta.dtype) + delta
        if self.lora_magnitude_vector is not None:
            factor = self.lora_magnitude_vector / _row_norm(merged.T)  # (dim,)
            merged = factor.view(1, -1) * merged
        return merged.to(base.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the embedding table (reversible exactly with ``unmerge()``).

        A head tied to this table (``lm_head.weight is embedding.weight``) sees the merged
        table too, as in PEFT.

        Raises:
            ConfigError: The layer is already merged.
            DataError: The merged table has NaN or infinite values (nothing is changed).
        """
        self._check_can_merge()
        merged = self.merged_weight()
        self._check_finite(merged, "weight")
        weight = self.base_layer.weight
        assert isinstance(weight, nn.Parameter)
        self._swap_in(weight, merged)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the embedding table bit for bit.

        Raises:
            ConfigError: The layer is not merged.
        """
        self._check_can_unmerge()
        weight = self.base_layer.weight
        assert isinstance(weight, nn.Parameter)
        self._swap_out(weight)

    def extra_repr(self) -> str:
        """Rank, scaling and variant."""
        kind = "DoRA" if self.use_dora else "LoRA"
        return f"{kind}, r={self.r}, lora_alpha={self.lora_alpha:g}, scaling={self.scaling:g}"


LoraLayer = LoraLinear | LoraEmbedding
"""Either adapter layer."""
