"""Qwen 3 (Alibaba, 2025): Llama 3's bricks plus QK-norm, and a mixture-of-experts sibling.

What a Qwen 3 changes, compared with Llama 3:

- **QK-norm**: queries and keys are RMS-normalized per head (over ``head_dim``, with a
  learned scale) before RoPE (``qk_norm=True``), which keeps attention logits bounded;
- **head_dim independent of the width**: 128 for every size, so ``n_heads * head_dim``
  can differ from ``d_model`` (Qwen3-0.6B: 16 x 128 = 2048 against a width of 1024);
- **plain RoPE** with base ``rope_theta=1e6`` and no frequency scaling, a 40960-position
  context, RMSNorm eps 1e-6, a 151936-token vocabulary;
- like Llama 3: grouped-query attention, no biases, SwiGLU, tied embeddings for the small
  sizes (0.6B, 1.7B, 4B) and an untied head for the 8B;
- **Qwen3-30B-A3B** replaces every feed-forward by a **mixture of experts**: 128 SwiGLU
  experts of width 768, 8 chosen per token by a softmax router whose top-8 weights are
  renormalized (``norm_topk_prob=True``), no shared expert, a load-balancing loss of
  weight 0.001. 30.5B parameters in total, about 3.3B used per token.

The numbers below are those of the official HF ``config.json`` files (Qwen/Qwen3-0.6B,
Qwen3-1.7B, Qwen3-4B, Qwen3-8B, Qwen3-30B-A3B).
"""

from __future__ import annotations

from lego.arch.config import DecoderConfig
from lego.arch.llama.presets import llama3_config

__all__ = ["PRESETS", "qwen3_config"]


def qwen3_config(
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    d_ff: int,
    tie_embeddings: bool,
    head_dim: int = 128,
    vocab_size: int = 151936,
    context_length: int = 40960,
    n_experts: int | None = None,
    experts_top_k: int | None = None,
    moe_d_ff: int | None = None,
) -> DecoderConfig:
    """A Qwen-3-shaped config: everything but the sizes is Qwen 3's.

    Args:
        d_model: Width (HF ``hidden_size``).
        n_layers: Number of blocks.
        n_heads: Query heads.
        n_kv_heads: Key/value heads.
        d_ff: SwiGLU hidden width (HF ``intermediate_size``).
        tie_embeddings: Share the output head with the token embedding.
        head_dim: Head size (independent of ``d_model``).
        vocab_size: Vocabulary size.
        context_length: HF ``max_position_embeddings``.
        n_experts: With ``experts_top_k`` and ``moe_d_ff``: make every feed-forward a
            mixture of this many experts (Qwen 3 MoE).
        experts_top_k: Experts per token (HF ``num_experts_per_tok``).
        moe_d_ff: Width of each expert (HF ``moe_intermediate_size``).

    Returns:
        The config (``family="qwen3"``).
    """
    moe = n_experts is not None
    # Llama 3's bricks, then what Qwen 3 changes (see the module docstring).
    llama = llama3_config(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_ff=d_ff,
        tie_embeddings=tie_embeddings,
        rope_scaling=None,
        vocab_size=vocab_size,
        context_length=context_length,
        head_dim=head_dim,
        rope_theta=1000000.0,
    )
    return llama.replace(
        family="qwen3",
        norm_eps=1e-6,
        qk_norm=True,
        ffn="moe" if moe else "swiglu",
        n_experts=n_experts,
        experts_top_k=experts_top_k,
        moe_d_ff=moe_d_ff,
        norm_topk_prob=True,
        router_aux_loss_coef=0.001,
    )


PRESETS: dict[str, DecoderConfig] = {
    "qwen3-0.6b": qwen3_config(
        d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8, d_ff=3072, tie_embeddings=True
    ),
    "qwen3-1.7b": qwen3_config(
        d_model=2048, n_layers=28, n_heads=16, n_kv_heads=8, d_ff=6144, tie_embeddings=True
    ),
    "qwen3-4b": qwen3_config(
        d_model=2560, n_layers=36, n_heads=32, n_kv_heads=8, d_ff=9728, tie_embeddings=True
    ),
    "qwen3-8b": qwen3_config(
        d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8, d_ff=12288, tie_embeddings=False
    ),
    "qwen3-30b-a3b": qwen3_config(
        d_model=2048,
        n_layers=48,
        n_heads=32,
        n_kv_heads=4,
        d_ff=6144,
        tie_embeddings=False,
        n_experts=128,
        experts_top_k=8,
        moe_d_ff=768,
    ),
    # For tests and CPU demos: head_dim 32 with 4 heads over a width of 64 (so
    # n_heads * head_dim != d_model, as in the real models), GQA, QK-norm.
    "qwen3-tiny": qwen3_config(
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        d_ff=128,
        tie_embeddings=True,
        vocab_size=1000,
        context_length=256,
    ),
    "qwen3-moe-tiny": qwen3_config(
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        d_ff=128,
        tie_embeddings=False,
        vocab_size=1000,
        context_length=256,
        n_experts=8,
        experts_top_k=2,
        moe_d_ff=32,
    ),
}
"""The Qwen 3 presets by name (dense and mixture of experts)."""
