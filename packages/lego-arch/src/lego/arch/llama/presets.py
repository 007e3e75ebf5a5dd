"""Llama 3 (Meta, 2024): GPT-2's skeleton with the modern bricks.

What a Llama 3 changes, compared with GPT-2:

- **rotary position embeddings** applied to queries and keys inside attention
  (``positions="rope"``, base ``rope_theta=500000``), with **llama3 frequency scaling**
  (``rope_scaling={"rope_type": "llama3", ...}``) that stretches the 8192-token training
  context to 131072 positions: low frequencies are divided by ``factor``, high
  frequencies kept, the band between interpolated;
- **RMSNorm** without bias (eps 1e-5) instead of LayerNorm;
- **grouped-query attention**: 8 key/value heads shared by all query heads (a KV cache
  4x smaller on the 8B), separate ``q_proj`` / ``k_proj`` / ``v_proj``;
- **no biases** anywhere;
- **a SwiGLU feed-forward**: ``down(silu(gate(x)) * up(x))``;
- **tied embeddings for the small models only**: Llama 3.2 1B and 3B share the output head
  with the token embedding, Llama 3.1 8B has its own ``lm_head``;
- a 128256-token vocabulary, no dropout, plain ``N(0, 0.02)`` initialization.

The numbers below are those of the official HF ``config.json`` files
(meta-llama/Llama-3.2-1B, Llama-3.2-3B, Llama-3.1-8B).
"""

from __future__ import annotations

from typing import Any

from lego.arch.config import DecoderConfig

__all__ = ["PRESETS", "llama3_config", "llama3_rope_scaling"]


def llama3_rope_scaling(*, factor: float, original_context: int = 8192) -> dict[str, Any]:
    """The ``rope_scaling`` mapping of Llama 3.1 / 3.2 (HF's shape).

    Args:
        factor: How much longer than ``original_context`` the model reads (8 for
            Llama 3.1, 32 for Llama 3.2).
        original_context: The training context the frequencies were tuned for.

    Returns:
        ``{"rope_type": "llama3", "factor": ..., "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": ...}``.
    """
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": original_context,
    }


def llama3_config(
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    d_ff: int,
    tie_embeddings: bool,
    rope_scaling: dict[str, Any] | None,
    vocab_size: int = 128256,
    context_length: int = 131072,
    head_dim: int | None = None,
    rope_theta: float = 500000.0,
) -> DecoderConfig:
    """A Llama-3-shaped config: everything but the sizes is Llama 3's.

    Args:
        d_model: Width (HF ``hidden_size``).
        n_layers: Number of blocks.
        n_heads: Query heads.
        n_kv_heads: Key/value heads (grouped-query attention).
        d_ff: SwiGLU hidden width (HF ``intermediate_size``).
        tie_embeddings: Share the output head with the token embedding.
        rope_scaling: The RoPE scaling mapping, or None.
        vocab_size: Vocabulary size.
        context_length: HF ``max_position_embeddings``.
        head_dim: Head size; None means ``d_model // n_heads``.
        rope_theta: RoPE's base.

    Returns:
        The config (``family="llama"``).
    """
    return DecoderConfig(
        family="llama",
        vocab_size=vocab_size,
        context_length=context_length,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        d_ff=d_ff,
        norm="rmsnorm",  # no bias: the norm's default
        norm_eps=1e-5,
        positions="rope",
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        ffn="swiglu",  # SiLU on the gate: the feed-forward's default
        mlp_bias=False,
        attention_bias=False,
        out_bias=False,
        fused_qkv=False,
        tie_embeddings=tie_embeddings,
        dropout=0.0,
        initializer_range=0.02,
        scale_residual_init=False,
    )


PRESETS: dict[str, DecoderConfig] = {
    "llama-3.2-1b": llama3_config(
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_ff=8192,
        tie_embeddings=True,
        rope_scaling=llama3_rope_scaling(factor=32.0),
    ),
    "llama-3.2-3b": llama3_config(
        d_model=3072,
        n_layers=28,
        n_heads=24,
        n_kv_heads=8,
        d_ff=8192,
        tie_embeddings=True,
        rope_scaling=llama3_rope_scaling(factor=32.0),
    ),
    "llama-3.1-8b": llama3_config(
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        tie_embeddings=False,
        rope_scaling=llama3_rope_scaling(factor=8.0),
    ),
    # For tests and CPU demos: GQA (4 query heads, 2 KV heads) and llama3 scaling of a
    # 64-token "training" context to 256 positions, so every Llama brick is exercised.
    "llama-tiny": llama3_config(
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=176,
        tie_embeddings=True,
        rope_scaling=llama3_rope_scaling(factor=4.0, original_context=64),
        vocab_size=1000,
        context_length=256,
    ),
}
"""The Llama 3 presets by name."""
