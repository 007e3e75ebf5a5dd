"""GPT-2 (Radford et al., 2019): the family the others are measured against.

What makes a GPT-2 a GPT-2, compared with Llama 3 and Qwen 3:

- **learned absolute positions**: a ``(1024, d_model)`` table added to the token embeddings
  (``positions="learned"``); no rotary embedding, so the context cannot be stretched;
- **LayerNorm with a bias** (eps 1e-5) before attention, before the MLP and at the end;
- **multi-head attention with one fused projection**: HF's ``c_attn`` is kept fused as
  lego attention's ``qkv_proj`` (``fused_qkv=True``; HF stores it as a transposed
  ``Conv1D``, which ``from_hf``/``to_hf`` transpose), every head has its own key and value;
- **biases everywhere**: on q/k/v, on the output projection and in the MLP;
- **a two-layer GELU MLP** (tanh approximation, HF's ``gelu_new``) of width ``4 * d_model``;
- **tied embeddings**: the output head is the token embedding;
- **dropout 0.1** on the embeddings, the attention probabilities and the residual branches
  (active in training mode only), and residual projections initialized with
  ``std / sqrt(2 * n_layers)`` (``scale_residual_init=True``).

Every size uses the 50 257-token byte-level BPE vocabulary and a 1024-token context;
the presets differ in width, depth and head count only.
"""

from __future__ import annotations

from lego.arch.config import DecoderConfig

__all__ = ["PRESETS", "gpt2_config"]


def gpt2_config(
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    vocab_size: int = 50257,
    context_length: int = 1024,
    dropout: float = 0.1,
) -> DecoderConfig:
    """A GPT-2-shaped config: everything but the sizes is GPT-2's.

    Args:
        d_model: Width (HF ``n_embd``); the MLP is ``4 * d_model`` wide.
        n_layers: Number of blocks (HF ``n_layer``).
        n_heads: Attention heads (HF ``n_head``), dividing ``d_model``.
        vocab_size: Vocabulary size.
        context_length: Rows of the learned position table (HF ``n_positions``).
        dropout: Embedding, attention and residual dropout.

    Returns:
        The config (``family="gpt2"``).
    """
    return DecoderConfig(
        family="gpt2",
        vocab_size=vocab_size,
        context_length=context_length,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_ff=4 * d_model,
        norm="layernorm",  # with a bias: the norm's default
        norm_eps=1e-5,
        positions="learned",
        ffn="gelu_mlp",  # tanh GELU, with biases: the MLP's defaults
        attention_bias=True,
        out_bias=True,
        fused_qkv=True,
        tie_embeddings=True,
        dropout=dropout,
        initializer_range=0.02,
        scale_residual_init=True,
    )


PRESETS: dict[str, DecoderConfig] = {
    # OpenAI's four released sizes (HF: openai-community/gpt2, -medium, -large, -xl).
    "gpt2": gpt2_config(d_model=768, n_layers=12, n_heads=12),  # 124M
    "gpt2-medium": gpt2_config(d_model=1024, n_layers=24, n_heads=16),  # 355M
    "gpt2-large": gpt2_config(d_model=1280, n_layers=36, n_heads=20),  # 774M
    "gpt2-xl": gpt2_config(d_model=1600, n_layers=48, n_heads=25),  # 1.5B
    # For tests and CPU demos: two blocks, width 64, a 1000-token vocabulary, no dropout.
    "gpt2-tiny": gpt2_config(
        d_model=64, n_layers=2, n_heads=4, vocab_size=1000, context_length=128, dropout=0.0
    ),
}
"""The GPT-2 presets by name."""
