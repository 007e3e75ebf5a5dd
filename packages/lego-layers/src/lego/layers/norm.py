"""Normalizations over the last dimension: LayerNorm, RMSNorm and QK-norm.

All three satisfy [`Norm`][lego.protocols.Norm]: ``norm(x)`` keeps the shape and dtype of
``x``. Parameter names follow transformers (``weight``, ``bias``), so checkpoints map by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from lego.layers._tensor_checks import check_dim
from lego.protocols import check_float, check_int

__all__ = ["LayerNorm", "RMSNorm", "QKNorm"]


class LayerNorm(nn.Module):
    """Layer normalization with a learned scale and an optional bias (GPT-2, BERT, OLMo).

    ``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`` over the last dimension, with
    the biased variance. torch's kernel accumulates in fp32 for half-precision inputs; the
    result has the input's dtype.

    Args:
        dim: Size of the normalized (last) dimension.
        eps: Added to the variance; must be > 0.
        bias: Learn an additive bias (GPT-2: True; OLMo and some modern models: False).

    Raises:
        ConfigError: ``dim < 1`` or ``eps <= 0``.
    """

    def __init__(self, *, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1, owner="LayerNorm")
        self.eps = check_float("eps", eps, low=0.0, low_open=True, owner="LayerNorm")
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor, /) -> torch.Tensor:
        """Normalize ``x`` over its last dimension.

        Args:
            x: Input, shape ``(..., dim)``.

        Returns:
            Output, shape ``(..., dim)``, dtype of ``x``.

        Raises:
            DataError: The last dimension of ``x`` is not ``dim``.
        """
        check_dim(x, name="x", ndims=None, last=self.dim, owner="LayerNorm", layout="(..., dim)")
        weight = self.weight.to(x.dtype)  # (dim,)
        bias = self.bias.to(x.dtype) if self.bias is not None else None  # (dim,)
        return F.layer_norm(x, (self.dim,), weight, bias, self.eps)  # (..., dim)

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"dim={self.dim}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """Root-mean-square normalization (LLaMA, Qwen, Mistral), computed in fp32.

    ``y = weight * (x / sqrt(mean(x**2) + eps))``, in the order transformers' ``LlamaRMSNorm``
    uses: ``x`` is upcast to fp32 (float64 stays float64), normalized, cast back to the input
    dtype, and only then multiplied by ``weight``. The product is returned in the input dtype
    (when ``weight`` is fp32 and ``x`` bf16, as under autocast, transformers would return fp32;
    this module keeps the [`Norm`][lego.protocols.Norm] contract of the input dtype).

    Args:
        dim: Size of the normalized (last) dimension.
        eps: Added to the mean square; must be > 0.

    Raises:
        ConfigError: ``dim < 1`` or ``eps <= 0``.
    """

    def __init__(self, *, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        owner = type(self).__name__
        self.dim = check_int("dim", dim, minimum=1, owner=owner)
        self.eps = check_float("eps", eps, low=0.0, low_open=True, owner=owner)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, /) -> torch.Tensor:
        """Normalize ``x`` over its last dimension.

        Args:
            x: Input, shape ``(..., dim)``.

        Returns:
            Output, shape ``(..., dim)``, dtype of ``x``.

        Raises:
            DataError: The last dimension of ``x`` is not ``dim``.
        """
        check_dim(
            x, name="x", ndims=None, last=self.dim, owner=type(self).__name__, layout="(..., dim)"
        )
        dtype = x.dtype
        h = x.to(torch.promote_types(dtype, torch.float32))  # (..., dim) fp32 (fp64 stays)
        mean_square = h.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
        h = h * torch.rsqrt(mean_square + self.eps)  # (..., dim)
        return (self.weight * h.to(dtype)).to(dtype)  # (..., dim)

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"dim={self.dim}, eps={self.eps}"


class QKNorm(RMSNorm):
    """RMSNorm over the head dimension of per-head queries or keys (Qwen 3's q_norm/k_norm).

    Applied to ``(B, n_heads, T, head_dim)`` (or any ``(..., head_dim)``) before RoPE, with
    one weight of size ``head_dim`` shared by all heads. It is an
    [`RMSNorm`][lego.layers.RMSNorm] with ``dim=head_dim``; the separate name documents
    where it goes and lets an attention module check what it was given.

    Args:
        head_dim: Size of each head.
        eps: Added to the mean square; must be > 0.

    Raises:
        ConfigError: ``head_dim < 1`` or ``eps <= 0``.
    """

    def __init__(self, *, head_dim: int, eps: float = 1e-6) -> None:
        check_int("head_dim", head_dim, minimum=1, owner="QKNorm")
        super().__init__(dim=head_dim, eps=eps)

    @property
    def head_dim(self) -> int:
        """The normalized head size (same as ``dim``)."""
        return self.dim
