"""Parameter counts and the FLOPs-per-token estimate used for MFU.

[`flops_per_token()`][lego.layers.counting.flops_per_token] is the estimate of the PaLM paper
(Chowdhery et al., 2022, appendix B), also nanoGPT's ``estimate_mfu``: a forward pass costs
``2 N`` FLOPs per token for the weight matmuls (a multiply and an add per weight) plus
``4 * n_layers * seq_len * d_attn`` for attention's two ``T x T`` products (``Q K^T`` and
``A V``, ``2 * seq_len * d_attn`` each), with ``d_attn = n_heads * head_dim``; a training
step is three times the forward (the backward costs twice the forward):

    training: 6 N + 12 * n_layers * seq_len * n_heads * head_dim
    forward:  2 N +  4 * n_layers * seq_len * n_heads * head_dim

The attention term counts the full ``T x T`` products even though a causal mask leaves half
of them unused (as PaLM and nanoGPT do; kernels such as flash attention skip that half, so
the MFU it gives for them is conservative). Kaplan et al. (2020) count only ``Q K^T``
(``2 N + 2 n_layers seq_len d_attn``); the two agree when ``seq_len`` is small against
``d_model``. Norms, softmax, activations and the router are left out (under 1%).
"""

from __future__ import annotations

from torch import nn

from lego.layers.embedding import LearnedPositionalEmbedding
from lego.protocols import check_int

__all__ = ["count_parameters", "parameter_breakdown", "flops_per_token"]


def _embedding_parameter_ids(module: nn.Module) -> set[int]:
    tables = (nn.Embedding, LearnedPositionalEmbedding)
    return {
        id(param)
        for sub in module.modules()
        if isinstance(sub, tables)
        for param in sub.parameters(recurse=False)
    }


def count_parameters(
    module: nn.Module, *, trainable_only: bool = False, exclude_embeddings: bool = False
) -> int:
    """Count the parameters of a module tree, each shared (tied) tensor once.

    Args:
        module: The model or layer.
        trainable_only: Count only parameters with ``requires_grad``.
        exclude_embeddings: Leave out token and learned position embedding tables (every
            ``nn.Embedding``, [`TokenEmbedding`][lego.layers.TokenEmbedding] included, and
            [`LearnedPositionalEmbedding`][lego.layers.LearnedPositionalEmbedding]) — the
            "non-embedding parameters" of scaling laws. A tied output projection is the
            embedding table, so it is left out too.

    Returns:
        The number of scalars.
    """
    excluded = _embedding_parameter_ids(module) if exclude_embeddings else set()
    seen: set[int] = set()
    total = 0
    for param in module.parameters():  # parameters() already yields a shared tensor once
        if id(param) in seen or id(param) in excluded:
            continue
        seen.add(id(param))
        if trainable_only and not param.requires_grad:
            continue
        total += param.numel()
    return total


def parameter_breakdown(module: nn.Module, *, trainable_only: bool = False) -> dict[str, int]:
    """Count the parameters under each top-level child of a module.

    Args:
        module: The model or layer.
        trainable_only: Count only parameters with ``requires_grad``.

    Returns:
        ``{child name: count}`` in registration order, plus ``"(own)"`` for parameters held
        directly by ``module`` when there are any. A tensor shared by two children is
        counted under the first one only, so the values sum to
        [`count_parameters()`][lego.layers.counting.count_parameters].
    """
    seen: set[int] = set()

    def count(params: list[nn.Parameter]) -> int:
        total = 0
        for param in params:
            if id(param) in seen:
                continue
            seen.add(id(param))
            if not trainable_only or param.requires_grad:
                total += param.numel()
        return total

    breakdown: dict[str, int] = {}
    own = count(list(module.parameters(recurse=False)))
    if own:
        breakdown["(own)"] = own
    for name, child in module.named_children():
        breakdown[name] = count(list(child.parameters()))
    return breakdown


def flops_per_token(
    *,
    n_params: int,
    n_layers: int,
    n_heads: int,
    head_dim: int,
    seq_len: int,
    training: bool = True,
) -> int:
    """The PaLM / nanoGPT estimate of FLOPs per token (see the module notes).

    Args:
        n_params: ``N``, the parameters that take part in a matmul for every token: the
            non-embedding parameters plus the output projection (for a tied model, count
            the token table once as the output projection, as nanoGPT does; leave out
            learned position tables). For a mixture of experts, count only the experts a
            token is routed to (the "active" parameters).
        n_layers: Number of transformer blocks.
        n_heads: Query heads per block.
        head_dim: Size of each head.
        seq_len: Context length the model is run at.
        training: Forward plus backward (``6 N + 12 L T d_attn``); False gives the forward
            only (``2 N + 4 L T d_attn``).

    Returns:
        FLOPs per token. Multiply by tokens per second and divide by the hardware's peak
        FLOP/s for the model FLOPs utilization (MFU).

    Raises:
        ConfigError: A size below 1 (``n_params`` below 0).
    """
    owner = "flops_per_token"
    check_int("n_params", n_params, minimum=0, owner=owner)
    check_int("n_layers", n_layers, minimum=1, owner=owner)
    check_int("n_heads", n_heads, minimum=1, owner=owner)
    check_int("head_dim", head_dim, minimum=1, owner=owner)
    check_int("seq_len", seq_len, minimum=1, owner=owner)
    forward = 2 * n_params + 4 * n_layers * seq_len * n_heads * head_dim
    return 3 * forward if training else forward
